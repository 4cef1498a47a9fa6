#!/usr/bin/env python3
"""Prints every criterion result under target/criterion: its median and its ratio to
baseline/hmac_sha256 (one HMAC-SHA256 over the same sign content, key set up per call,
measured in the same run), then issue 7's ratio targets, met or not.

Usage: python3 benches/report.py [CRITERION_DIR]   (default: target/criterion)
Run `cargo bench --all-features` first; ratios compare figures of one run, never across runs:
a result written before this run's baseline is marked "(earlier run)" and left out of the
targets.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
medians, written = {}, {}
for estimates in sorted(root.glob("**/new/estimates.json")):
    benchmark = estimates.parent / "benchmark.json"
    if not benchmark.exists():
        continue
    full_id = json.loads(benchmark.read_text())["full_id"]
    medians[full_id] = json.loads(estimates.read_text())["median"]["point_estimate"]
    written[full_id] = estimates.stat().st_mtime
if not medians:
    sys.exit("no criterion results under %s: run `cargo bench --all-features` first" % root)

BASELINE = "baseline/hmac_sha256"
baseline = medians.get(BASELINE)
# The baseline is the first id of benches/auth.rs, the first bench cargo runs.
this_run = lambda full_id: baseline is not None and written[full_id] >= written[BASELINE]


def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return "%.2f %s" % (ns / scale, unit)
    return "%.1f ns" % ns


print("%-36s %12s  %s" % ("benchmark", "median", "× " + BASELINE))
for full_id, ns in sorted(medians.items()):
    if not baseline:
        ratio = "(no baseline in this run)"
    elif not this_run(full_id):
        ratio = "(earlier run)"
    else:
        ratio = "%.2f" % (ns / baseline)
    print("%-36s %12s  %s" % (full_id, human(ns), ratio))

print()
print("targets (issue 7):")
def target(name, ids, holds, describe):
    if not all(i in medians and this_run(i) for i in ids):
        print("  %-52s not measured in this run" % name)
        return
    value = describe(*[medians[i] for i in ids])
    print("  %-52s %-22s %s" % (name, value[0], "met" if holds(*[medians[i] for i in ids]) else "NOT met"))

target("verify_mqtt/hmacsha256 <= 1.25 x baseline", ["verify_mqtt/hmacsha256", BASELINE],
       lambda v, b: v <= 1.25 * b, lambda v, b: ("%.2f x" % (v / b),))
target("authenticate/memory <= 1.2 x baseline", ["authenticate/memory", BASELINE],
       lambda v, b: v <= 1.2 * b, lambda v, b: ("%.2f x" % (v / b),))
target("bad_first_byte within 5 % of bad_last_byte",
       ["verify_mqtt/bad_first_byte", "verify_mqtt/bad_last_byte"],
       lambda f, l: abs(f - l) <= 0.05 * l, lambda f, l: ("%+.1f %%" % (100 * (f - l) / l),))
