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

def row(*cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")

print("| figure | kubescribe | baseline (same run) | ratio | target |")
print("|---|---|---|---|---|")

rounds = sorted(int(k.rsplit("_", 1)[1]) for k in runs if k.startswith("none_paced_"))
if rounds:
    noop = [runs[f"noop_paced_{r}"] for r in rounds]
    none = [runs[f"none_paced_{r}"] for r in rounds]
    noop_p99 = statistics.median(r["p99_ms"] for r in noop)
    none_p99 = statistics.median(r["p99_ms"] for r in none)
    none_rate = statistics.median(r["throughput"] for r in none)
    ratios = sorted(n["p99_ms"] / o["p99_ms"] for n, o in zip(none, noop))
    row("`wait: none` p99 at a paced %.0f req/s (medians of %d alternating rounds)" % (none_rate, len(rounds)),
        "%.2f ms" % none_p99, "%.2f ms (no-op axum+rustls)" % noop_p99,
        "%.2f× (per-round ratios %s)" % (statistics.median(ratios), ", ".join("%.2f" % r for r in ratios)),
        "≤ 1.5×, at ≥ 1,000 req/s")
    row("`wait: none` p50 / max (same rounds)",
        "%.2f / %.2f ms" % (statistics.median(r["p50_ms"] for r in none), statistics.median(r["max_ms"] for r in none)),
        "%.2f / %.2f ms" % (statistics.median(r["p50_ms"] for r in noop), statistics.median(r["max_ms"] for r in noop)),
        "", "")
if "none_max" in runs:
    row("`wait: none` max throughput (closed loop)", "%.0f req/s" % runs["none_max"]["throughput"],
        "%.0f req/s" % runs["noop_max"]["throughput"], "%.2f×" % (runs["none_max"]["throughput"] / runs["noop_max"]["throughput"]), "")
if "commit_max" in runs:
    commit = runs["commit_max"]
    commits = runs["commit_count"]["commits"]
    commit_rate = commits / commit["seconds"]
    fast = runs["fast_import"]
    fast_rate = fast["commits"] / fast["seconds"]
    row("`wait: commit` durable commits/s (one commit per change, 64 connections)",
        "%.0f commits/s (%d commits, p99 %.1f ms)" % (commit_rate, commits, commit["p99_ms"]),
        "%.0f commits/s (`git fast-import` + sync)" % fast_rate, "%.2f×" % (commit_rate / fast_rate), "≥ 1,000 commits/s")
if "idle_rss" in runs:
    row("idle RSS", "%.1f MB" % (runs["idle_rss"]["kb"] / 1024), "", "", "≤ 30 MB")
if "push_paced" in runs:
    naive = runs["naive_push"]
    rtt = naive["push_median_ms"]
    naive_rate = naive["writes"] / naive["seconds"]
    paced = runs["push_paced"]
    row("`wait: push` p99 at a paced %.0f writes/s (smart HTTP, basic auth)" % paced["throughput"],
        "%.1f ms (p50 %.1f, max %.1f)" % (paced["p99_ms"], paced["p50_ms"], paced["max_ms"]),
        "%.1f ms (one `git push` round trip, median of %d)" % (rtt, naive["writes"]),
        "%.2f×" % (paced["p99_ms"] / rtt), "≤ 2.5×, at 200 writes/s (issue 18)")
    if "naive_push_after" in runs:
        after = runs["naive_push_after"]
        row("one idle `git push` right after that load (median of %d; the remote then held %d packs and %d loose objects, %d and %d after the first baseline)"
            % (after["writes"], after["remote_packs"], after["remote_loose"], naive.get("remote_packs", 0), naive.get("remote_loose", 0)),
            "%.1f ms" % after["push_median_ms"], "%.1f ms (before the load)" % rtt,
            "%.2f× (the p99 over it: %.2f×)" % (after["push_median_ms"] / rtt, paced["p99_ms"] / after["push_median_ms"]), "")
    if "push_mean" in runs:
        row("one push under that load (mean, from `kubescribe_push_duration_seconds`)",
            "%.1f ms (%d pushes)" % (runs["push_mean"]["mean_ms"], runs["push_mean"]["pushes"]),
            "%.1f ms (one `git push` round trip)" % rtt, "%.2f×" % (runs["push_mean"]["mean_ms"] / rtt), "")
    if "push_stages" in runs:
        stages = runs["push_stages"]
        row("where that wait went, mean / p99 (`kubescribe_push_wait_seconds`)",
            "; ".join("%s %.1f / %.1f ms" % (stage, stages[stage]["mean_ms"], stages[stage]["p99_ms"])
                      for stage in ("commit", "queued", "pushing") if stage in stages),
            "", "", "")
    if "push_paced_git" in runs:
        git_paced = runs["push_paced_git"]
        git_mean = runs.get("push_mean_git", {})
        row("the same with `transport: git` (every push a `git push`)",
            "p99 %.1f ms (p50 %.1f); one push %.1f ms" % (git_paced["p99_ms"], git_paced["p50_ms"], git_mean.get("mean_ms", float("nan"))),
            "%.1f ms" % rtt, "%.2f×" % (git_paced["p99_ms"] / rtt), "")
    top = runs["push_max"]
    row("`wait: push` throughput (closed loop, 256 connections; every answer = pushed)",
        "%.0f writes/s (p99 %.1f ms)" % (top["throughput"], top["p99_ms"]),
        "%.1f writes/s (naive: commit + push per write)" % naive_rate,
        "%.0f×" % (top["throughput"] / naive_rate), "≥ 20×")

# Every snapshot size of the run (SNAPSHOT_OBJECTS), smallest first.
snapshots = sorted((json.loads(l) for l in open(sys.argv[1]) if '"label":"snapshot"' in l), key=lambda c: c["objects"])
for c in snapshots:
    row("reconcile snapshot of %d objects from a paged API in %s order (start to ready; %d files committed)" % (c["objects"], c.get("order", "spread"), c["files"]),
        "%.2f s, %.1f µs/object (peak RSS %.1f MB; at the end %.1f MB anonymous, %.1f MB file-backed)" % (
            c["seconds"], c["seconds"] / c["objects"] * 1e6, c["peak_kb"] / 1024,
            c.get("anon_kb", 0) / 1024, c.get("file_kb", 0) / 1024),
        "%.2f s (python3 reading and parsing the same pages)" % c["list_seconds"],
        "%.1f×" % (c["seconds"] / c["list_seconds"]), "≤ 10 s and ≤ 100 MB at 100,000")
# A large repository (issue 18): idle RSS, and one write at a time into it against
# the same writes into an empty repository (medians of alternating rounds).
if "large_repo" in runs:
    c = runs["large_repo"]
    rounds = range(1, c["rounds"] + 1)
    large = [runs["large_write_%d" % r] for r in rounds]
    small = [runs["small_write_%d" % r] for r in rounds]
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    row("idle RSS with a repository of %d files" % c["files"], "%.1f MB (%.1f MB after the writes)" % (c["idle_kb"] / 1024, c["after_kb"] / 1024),
        "%.1f MB (empty repository)" % (c["empty_idle_kb"] / 1024), "%.2f×" % (c["idle_kb"] / c["empty_idle_kb"]), "≤ 30 MB")
    row("one `wait: commit` write at a time into it: p50 / p99 (medians of %d alternating rounds)" % c["rounds"],
        "%.2f / %.2f ms" % (med(large, "p50_ms"), med(large, "p99_ms")),
        "%.2f / %.2f ms (the same writes into an empty repository)" % (med(small, "p50_ms"), med(small, "p99_ms")),
        "%.2f× / %.2f×" % (med(large, "p50_ms") / med(small, "p50_ms"), med(large, "p99_ms") / med(small, "p99_ms")), "≤ 1.5×")
# Watch churn (issue 18): lag from a watch event's arrival to git having it, under
# the churn and in the warm-up at 10 changes/s (the baseline, same run).
for c in (json.loads(l) for l in open(sys.argv[1]) if '"label": "churn"' in l or '"label":"churn"' in l):
    late = ("the cluster handed changes over at most %.1f ms late" % c["late_max_ms"]
            if c["late_max_ms"] is not None else "DID NOT KEEP UP: the cluster never finished handing its changes over")
    row("watch churn: %d changes/s for %d s over %d objects; lag p99 (p50)" % (c["rate"], c["seconds"], c["objects"]),
        "%.1f ms (%.1f ms); %d changes in %d commits (%.1f per commit); %s; CPU %.1f s (children included); anonymous RSS %.1f → max %.1f → %.1f MB" % (
            c["lag_p99_ms"], c["lag_p50_ms"], c["changes"], c["commits"], c["changes"] / max(c["commits"], 1),
            late, c["cpu_seconds"], c["anon_kb_first"] / 1024, c["anon_kb_max"] / 1024, c["anon_kb_last"] / 1024),
        "%.1f ms (%.1f ms) at 10 changes/s" % (c["idle_lag_p99_ms"], c["idle_lag_p50_ms"]),
        "%.1f×" % (c["lag_p99_ms"] / c["idle_lag_p99_ms"]), "keeps up, batched, flat memory")
# CPU per request (issue 18): utime+stime of each server, children included, per
# 10,000 requests of the same closed-loop load; a recorded write against the no-op
# plus `git fast-import`'s CPU for the same commits.
if "cpu_noop_seconds" in runs:
    noop = runs["cpu_noop_seconds"]
    per = lambda r: r["cpu_seconds"] / r["requests"] * 10000
    fast = runs.get("fast_import")
    fast_per_commit = fast["cpu_seconds"] / fast["commits"] if fast and fast.get("cpu_seconds") is not None else None
    if "cpu_quiet_seconds" in runs:
        q = runs["cpu_quiet_seconds"]
        row("CPU per 10,000 requests, nothing recorded (the request path)", "%.2f s" % per(q),
            "%.2f s (no-op axum+rustls, same load)" % per(noop), "%.2f×" % (per(q) / per(noop)), "≤ 2×")
    if "cpu_none_seconds" in runs:
        n = runs["cpu_none_seconds"]
        floor = per(noop) + (fast_per_commit * n["commits"] / n["requests"] * 10000 if fast_per_commit else 0)
        row("CPU per 10,000 requests, `wait: none` recording (%d of %d writes committed)" % (n["commits"], n["requests"]),
            "%.2f s" % per(n), "%.2f s (no-op + fast-import's CPU per commit)" % floor,
            "%.2f×" % (per(n) / floor), "≤ 1×")
    c = runs.get("commit_count")
    if c and c.get("cpu_seconds") is not None and fast_per_commit:
        floor = per(noop) + fast_per_commit * 10000
        row("CPU per 10,000 writes, `wait: commit` (64 connections)", "%.2f s" % (c["cpu_seconds"] / c["requests"] * 10000),
            "%.2f s (no-op + fast-import's CPU per commit)" % floor,
            "%.2f×" % (c["cpu_seconds"] / c["requests"] * 10000 / floor), "≤ 1×")
if "check" in runs:
    c = runs["check"]
    row("`kubescribe check` on %d manifest files (fastest of 5)" % c["files"],
        "%.3f s" % c["seconds"], "%.3f s (python3 + PyYAML `safe_load_all`, reading only)" % c["reader_seconds"],
        "%.2f×" % (c["seconds"] / c["reader_seconds"]), "< 1 s")

if "index" in runs:
    i = runs["index"]
    row("index of an existing repository, %d manifests (%d objects) in %d files (best of 5)" % (i["manifests"], i["objects"], i["files"]),
        "%.3f s" % i["seconds"], "%.3f s (every document parsed once, serde_yaml_ng)" % i["floor_seconds"],
        "%.2f×" % (i["seconds"] / i["floor_seconds"]), "< 1 s")
    row("index lookup (one object, of %d)" % i["objects"], "%.0f ns" % i["lookup_ns"], "", "", "O(1)")
    row("index update after one changed manifest (best of 5)", "%.2f ms" % (i["update_seconds"] * 1e3),
        "%.3f s (a whole build)" % i["seconds"], "%.3f×" % (i["update_seconds"] / i["seconds"]), "")
    for name, f in sorted(i["fixtures"].items()):
        row("index of `%s` (%d files, %d objects, best of 20)" % (name, f["files"], f["objects"]),
            "%.2f ms" % (f["build_s"] * 1e3), "%.2f ms (parse)" % (f["floor_parse_s"] * 1e3),
            "%.2f×" % f["build_over_floor"], "")
    for name, e in sorted(i.get("edit", {}).items()):
        row("in-place edit: %s (best of 5 × 2,000)" % name,
            "%.0f µs" % e["in_place_us"], "%.1f µs (canonical: sanitise and render)" % e["canonical_us"],
            "%.1f×" % e["in_place_over_canonical"], "")

errors = sum(r.get("errors", 0) for r in runs.values() if isinstance(r.get("errors", 0), int))
denied = sum(r.get("denied", 0) for r in runs.values())
print()
expected = []
if "commit_max" in runs:
    expected.append("commits expected %d" % runs["commit_max"]["requests"])
if "push_count" in runs:
    expected.append("pushed commits %d of %d writes" % (runs["push_count"]["commits"], runs["push_paced"]["requests"] + runs["push_max"]["requests"]))
print("Errors: %d, denied: %d%s." % (errors, denied, "".join(", " + e for e in expected)))
