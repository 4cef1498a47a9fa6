#!/usr/bin/env python3
"""Prints every criterion result under target/criterion: its median and its ratio to
baseline/hmac_sha256 (one HMAC-SHA256 over the same sign content, measured in the same run).

Usage: python3 benches/report.py [CRITERION_DIR]   (default: target/criterion)
Run `cargo bench --all-features` first; ratios compare figures of one run, never across runs.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
medians = {}
for estimates in sorted(root.glob("**/new/estimates.json")):
    benchmark = estimates.parent / "benchmark.json"
    if not benchmark.exists():
        continue
    full_id = json.loads(benchmark.read_text())["full_id"]
    medians[full_id] = json.loads(estimates.read_text())["median"]["point_estimate"]
if not medians:
    sys.exit("no criterion results under %s: run `cargo bench --all-features` first" % root)

baseline = medians.get("baseline/hmac_sha256")


def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return "%.2f %s" % (ns / scale, unit)
    return "%.1f ns" % ns


print("%-36s %12s  %s" % ("benchmark", "median", "× baseline/hmac_sha256"))
for full_id, ns in sorted(medians.items()):
    ratio = "%.2f" % (ns / baseline) if baseline else "(no baseline in this run)"
    print("%-36s %12s  %s" % (full_id, human(ns), ratio))
