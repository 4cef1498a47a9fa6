#!/usr/bin/env bash
# Where the time of one benchmark id goes: perf samples (cpu-clock, so it works in VMs without
# hardware counters) of benches/auth.rs running that id alone, top functions by self time.
# Usage: bash benches/profile.sh 'verify_mqtt/hmacsha256$' [SECONDS]   (needs Debian's linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
ID=${1:?a benchmark id (a regex), e.g. 'authenticate/memory'}
SECONDS_RUN=${2:-5}
BENCH=$(cargo bench --bench auth --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "auth" and m.get("executable"):
        print(m["executable"])')
DATA=$(mktemp)
trap 'rm -f "$DATA"' EXIT
perf record -q -e cpu-clock -F 5000 -o "$DATA" "$BENCH" --bench --profile-time "$SECONDS_RUN" "$ID" >/dev/null 2>&1
perf report -i "$DATA" --no-children --stdio --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | sed 's/ *- *- *$//' | head -20
