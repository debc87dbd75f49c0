#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench.sh into the markdown table of docs/performance.md."""
import json
import statistics
import sys

runs = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        record = json.loads(line)
        runs[record["label"]] = record

rounds = sorted(int(k.rsplit("_", 1)[1]) for k in runs if k.startswith("none_paced_"))
noop = [runs[f"noop_paced_{r}"] for r in rounds]
none = [runs[f"none_paced_{r}"] for r in rounds]
noop_p99 = statistics.median(r["p99_ms"] for r in noop)
none_p99 = statistics.median(r["p99_ms"] for r in none)
none_rate = statistics.median(r["throughput"] for r in none)
commit = runs["commit_max"]
commits = runs["commit_count"]["commits"]
commit_rate = commits / commit["seconds"]
fast = runs["fast_import"]
fast_rate = fast["commits"] / fast["seconds"]
rss_mb = runs["idle_rss"]["kb"] / 1024

def row(*cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")

print("| figure | kubescribe | baseline (same run) | ratio | target |")
print("|---|---|---|---|---|")
ratios = sorted(n["p99_ms"] / o["p99_ms"] for n, o in zip(none, noop))
row("`wait: none` p99 at a paced %.0f req/s (medians of %d alternating rounds)" % (none_rate, len(rounds)),
    "%.2f ms" % none_p99, "%.2f ms (no-op axum+rustls)" % noop_p99,
    "%.2f× (per-round ratios %s)" % (statistics.median(ratios), ", ".join("%.2f" % r for r in ratios)),
    "≤ 1.5×, at ≥ 1,000 req/s")
row("`wait: none` p50 / max (same rounds)",
    "%.2f / %.2f ms" % (statistics.median(r["p50_ms"] for r in none), statistics.median(r["max_ms"] for r in none)),
    "%.2f / %.2f ms" % (statistics.median(r["p50_ms"] for r in noop), statistics.median(r["max_ms"] for r in noop)),
    "", "")
row("`wait: none` max throughput (closed loop)", "%.0f req/s" % runs["none_max"]["throughput"],
    "%.0f req/s" % runs["noop_max"]["throughput"], "%.2f×" % (runs["none_max"]["throughput"] / runs["noop_max"]["throughput"]), "")
row("`wait: commit` durable commits/s (one commit per change, 64 connections)",
    "%.0f commits/s (%d commits, p99 %.1f ms)" % (commit_rate, commits, commit["p99_ms"]),
    "%.0f commits/s (`git fast-import` + sync)" % fast_rate, "%.2f×" % (commit_rate / fast_rate), "≥ 1,000 commits/s")
row("idle RSS", "%.1f MB" % rss_mb, "", "", "≤ 30 MB")
errors = sum(r.get("errors", 0) for r in runs.values())
denied = sum(r.get("denied", 0) for r in runs.values())
print()
print("Errors: %d, denied: %d, commits expected %d." % (errors, denied, commit["requests"]))
