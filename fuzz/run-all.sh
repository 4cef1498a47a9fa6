#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each; prints `target execs crashes` per target and exits
# non-zero when any target crashed. Usage: fuzz/run-all.sh SECONDS [TARGET...]
#
# Nightly (`cargo +nightly fuzz`) where it is installed, else stable with RUSTC_BOOTSTRAP=1.
# Each toolchain builds into its own target dir: a failed rustc probe cached by one toolchain
# in .rustc_info.json would break the other's builds.
# New inputs go to a scratch corpus (the committed seeds stay as they are); crashes,
# with the logs, go to $FUZZ_OUT (default: fuzz/out).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
seconds=${1:?usage: fuzz/run-all.sh SECONDS [TARGET...]}
shift
out=${FUZZ_OUT:-$here/out}
mkdir -p "$out"

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    target_dir=$here/target/nightly
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    target_dir=$here/target/stable
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <("${fuzz[@]}" list); fi
"${fuzz[@]}" build --target-dir "$target_dir" >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 2; }

failed=0
for target in "${targets[@]}"; do
    scratch=$out/corpus/$target
    artifacts=$out/artifacts/$target
    mkdir -p "$scratch" "$artifacts"
    log=$out/$target.log
    "${fuzz[@]}" run --target-dir "$target_dir" "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -dict=dict/iotauth.dict \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
    echo "$target ${execs:-0} $crashes"
    [ "$crashes" -eq 0 ] || failed=1
done
[ "$failed" -eq 0 ] || echo "crashes: see $out/artifacts and $out/<target>.log" >&2
exit "$failed"
