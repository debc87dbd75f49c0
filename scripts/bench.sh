#!/usr/bin/env bash
# `make bench`: every performance figure of docs/performance.md, each next to a
# baseline measured in the same run (these machines are noisy; ratios travel, raw
# numbers do not). Everything runs on 127.0.0.1 and stops by itself.
#
# Knobs (environment): REQUESTS (per latency run, default 8000), RATE (req/s for the
# latency runs, default 1000), CONCURRENCY (connections, default 32), COMMITS (changes
# for the commit-throughput run, default 20000), ROUNDS (alternating latency rounds,
# default 7: the VM is noisy, so many short alternating rounds and their median),
# NONE_RULES (the rules of the `wait: none` server, to measure the request path
# alone), LATENCY_ONLY=1 (stop after the latency rounds), PUSH_ONLY=1 (the
# push figures, after the index and snapshot ones), PUSH_REQUESTS (wait: push writes per run, default 3000), NAIVE
# (writes of the one-push-per-write baseline, default 40), CHECK_FILES (manifests for
# the check timing, default 1000), CHECK_ONLY=1 (that, after the
# index and snapshot), REMOTE_TUNED=1 (the push
# remote keeps pushes as packs and runs no gc on pushes), SNAPSHOT_OBJECTS (objects
# of the reconcile snapshot, default 10000; a list, "10000 50000 100000", runs each),
# SNAPSHOT_ORDER=spread (the cluster lists each object in the next namespace instead of
# kube-apiserver's key order), SNAPSHOT_PRUNE=always (the snapshot
# also prunes: every file is read back), SNAPSHOT_ONLY=1 (only that), INDEX_MANIFESTS
# (objects of the synthetic repository the index is built of, default 10000),
# INDEX_ONLY=1 (only that), CPU_REQUESTS and CPU_RATE (requests per server for the
# CPU figures, default 30000, and their pace, default 5000/s), CHURN_RATE, CHURN_SECONDS
# and CHURN_OBJECTS (the watch churn: changes/s, default 1000, for how long, default
# 60, over how many objects, default 10000), CHURN_ONLY=1 (only that).
# LARGE_FILES (files of the large repository, default 100000), LARGE_WRITES and
# LARGE_ROUNDS (one-at-a-time writes per round into it and into an empty one, default
# 200 and 3), LARGE_ONLY=1 (only that).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-8000}
RATE=${RATE:-1000}
CONCURRENCY=${CONCURRENCY:-32}
COMMITS=${COMMITS:-20000}
INDEX_MANIFESTS=${INDEX_MANIFESTS:-10000}
ROUNDS=${ROUNDS:-7}
OUT=target/bench
# The report of what ran so far, for the *_ONLY runs that stop early.
report_and_exit() {
  python3 scripts/bench_report.py "$OUT/runs.jsonl" | tee "$OUT/report.md"
  exit 0
}
BIN=target/release

cargo build --release --locked --bins
rm -rf "$OUT"
mkdir -p "$OUT"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts kubescribe with a config and waits until /readyz answers; sets $server_pid.
# (Not run in a subshell, so the cleanup trap knows every pid.)
start_kubescribe() {
  local name=$1 port=$2 rules=$3
  cat >"$OUT/$name.yaml" <<YAML
server:
  listen: 127.0.0.1:$port
  devCertDir: $OUT/certs
dataDir: $OUT/$name
rules:
$rules
YAML
  RUST_LOG=warn "$BIN/kubescribe" serve --config "$OUT/$name.yaml" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_ready "$port"
  server_pid=$pid
}

wait_ready() {
  for _ in $(seq 1 200); do
    if curl -sf --cacert "$OUT/certs/ca.crt" "https://127.0.0.1:$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "server on port $1 did not become ready" >&2
  exit 1
}

load() { # label port rate-or-empty requests concurrency offset
  local rate_args=()
  [[ -n $3 ]] && rate_args=(--rate "$3")
  "$BIN/kubescribe-load" run --addr "127.0.0.1:$2" --ca "$OUT/certs/ca.crt" --label "$1" \
    --requests "$4" --concurrency "$5" --offset "$6" "${rate_args[@]}" | tee -a "$OUT/runs.jsonl"
}

# CPU seconds (utime+stime) of a pid, its threads (the writer's background fold of
# packs among them) and its children such as `git`: those it reaped (in its
# cutime/cstime) and those not reaped yet, so reaping moves time, never adds it.
cpu_of() {
  local hz
  hz=$(getconf CLK_TCK)
  { cat "/proc/$1/stat"; { grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null |
      sed 's/status$/stat/' | xargs -r cat 2>/dev/null; } || true; } |
    awk -v hz="$hz" '{ s += $14 + $15 + $16 + $17 } END { print s / hz }'
}
# Waits until a server stops using CPU (its writer's backlog and folds done).
quiesce() {
  local last now
  last=$(cpu_of "$1")
  while sleep 0.3; now=$(cpu_of "$1"); [[ $now != "$last" ]]; do last=$now; done
}
# CPU seconds of this shell's finished children in a file bash's `times` wrote (run
# in this shell: in a subshell they would be the subshell's children).
children_cpu() { awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } print s }' "$1"; }
CPU_REQUESTS=${CPU_REQUESTS:-30000}
# Paced, so a `wait: none` server's writer keeps up: under a closed loop it sheds
# writes its queue has no room for (admitted unrecorded), which is not the cost of
# recording them.
CPU_RATE=${CPU_RATE:-5000}

PUSH_REQUESTS=${PUSH_REQUESTS:-3000}
NAIVE=${NAIVE:-40}

CHECK_FILES=${CHECK_FILES:-1000}
SNAPSHOT_OBJECTS=${SNAPSHOT_OBJECTS:-10000}

# Starts `kubescribe-load cluster` on a port with the arguments after it (its output
# into $OUT/<name>-cluster.json), writes $OUT/<name>-kubeconfig for it and waits until
# it answers; sets $cluster_pid.
start_cluster() {
  local name=$1 port=$2
  shift 2
  "$BIN/kubescribe-load" cluster --listen "127.0.0.1:$port" "$@" >"$OUT/$name-cluster.json" &
  cluster_pid=$!
  pids+=("$cluster_pid")
  cat >"$OUT/$name-kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "http://127.0.0.1:$port"}}]
contexts: [{name: bench, context: {cluster: bench, user: bench}}]
current-context: bench
users: [{name: bench, user: {}}]
KCFG
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/version" >/dev/null && return 0; sleep 0.05; done
  echo "kubescribe-load cluster on port $port did not answer" >&2
  exit 1
}

# Watch churn (issue 18): a synthetic cluster whose ConfigMaps watch streams
# CHURN_RATE changes/s for CHURN_SECONDS after a warm-up of 50 changes at 10/s (the
# idle baseline, in the same run). Lag is kubescribe's own histogram, from a watch
# event's arrival to git having it; the cluster reports how late it could hand each
# change over (a reader that falls behind holds the stream back).
churn_run() {
echo "== watch churn: $CHURN_RATE changes/s for $CHURN_SECONDS s over $CHURN_OBJECTS objects"
start_cluster churn 18472 --objects "$CHURN_OBJECTS" \
  --churn-rate "$CHURN_RATE" --churn-seconds "$CHURN_SECONDS" --churn-warmup 50
rm -rf "$OUT/churn"
cat >"$OUT/churn.yaml" <<YAML
server:
  listen: 127.0.0.1:18473
  metricsListen: 127.0.0.1:18474
  devCertDir: $OUT/certs
dataDir: $OUT/churn
rules:
  - name: default
reconcile:
  enabled: true
  kubeconfig: $PWD/$OUT/churn-kubeconfig
YAML
RUST_LOG=warn "$BIN/kubescribe" serve --config "$OUT/churn.yaml" >"$OUT/churn.log" 2>&1 &
local pid=$!
pids+=("$pid")
until curl -sf http://127.0.0.1:18474/readyz >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { echo "kubescribe (churn) exited" >&2; exit 1; }
  sleep 0.05
done
local before
before=$(git --git-dir "$OUT/churn/repo.git" rev-list --count main)
lag_count() { curl -sf http://127.0.0.1:18474/metrics | awk '/^kubescribe_reconcile_watch_lag_seconds_count/ {print $2}'; }
local waited=0
until [[ $(lag_count) -ge 50 ]]; do
  kill -0 "$pid" 2>/dev/null || { echo "kubescribe (churn) exited" >&2; exit 1; }
  waited=$((waited + 1))
  [[ $waited -le 300 ]] || { echo "churn: the warm-up's 50 changes never reached git" >&2; exit 1; }
  sleep 0.2
done
curl -sf http://127.0.0.1:18474/metrics >"$OUT/churn-warm.prom"
local cpu0 total
cpu0=$(cpu_of "$pid")
total=$((CHURN_RATE * CHURN_SECONDS))
: >"$OUT/churn-rss.txt"
# Memory every second until every change is in git (or nothing moves for 30 s).
local last=-1 still=0 now
while true; do
  awk '/RssAnon/ {a = $2} /VmRSS/ {r = $2} END {print a, r}' "/proc/$pid/status" >>"$OUT/churn-rss.txt"
  now=$(lag_count)
  [[ -s $OUT/churn-cluster.json && $now -ge $((total + 50)) ]] && break
  if [[ $now == "$last" ]]; then still=$((still + 1)); else still=0; fi
  [[ $still -ge 30 ]] && { echo "churn: no progress for 30 s at $now of $((total + 50)) changes" >&2; break; }
  last=$now
  sleep 1
done
curl -sf http://127.0.0.1:18474/metrics >"$OUT/churn-end.prom"
local cpu1 after
cpu1=$(cpu_of "$pid")
after=$(git --git-dir "$OUT/churn/repo.git" rev-list --count main)
python3 - "$OUT" "$CHURN_RATE" "$CHURN_SECONDS" "$CHURN_OBJECTS" "$before" "$after" "$cpu0" "$cpu1" <<'PY' | tee -a "$OUT/runs.jsonl"
import json, sys
out, rate, seconds, objects, before, after, cpu0, cpu1 = sys.argv[1:]
def hist(name):
    buckets, count = [], 0.0
    for line in open(f"{out}/{name}"):
        if line.startswith("kubescribe_reconcile_watch_lag_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
        elif line.startswith("kubescribe_reconcile_watch_commits_total"):
            count = float(line.split()[-1])
    return buckets, count
def quantile(buckets, q):
    total = buckets[-1][1]
    if total == 0:
        return None
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= q * total:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (q * total - prev_n) / max(n - prev_n, 1e-9)) * 1000
        prev_le, prev_n = le, n
warm, warm_commits = hist("churn-warm.prom")
end, end_commits = hist("churn-end.prom")
churn = [(le, n - w) for (le, n), (_, w) in zip(end, warm)]
rss = [tuple(map(int, l.split())) for l in open(f"{out}/churn-rss.txt") if l.strip()]
# The cluster reports once it has handed over every change; a reconciler that fell
# too far behind leaves it unsent (reported as not keeping up).
lines = open(f"{out}/churn-cluster.json").read().splitlines()
server = json.loads(lines[-1]) if lines else {"late_p99_ms": None, "late_max_ms": None}
changes = churn[-1][1]
commits = end_commits - warm_commits
print(json.dumps({"label": "churn", "rate": int(rate), "seconds": int(seconds), "objects": int(objects),
    "changes": changes, "commits": commits, "git_commits": int(after) - int(before),
    "lag_p50_ms": quantile(churn, 0.5), "lag_p99_ms": quantile(churn, 0.99),
    "idle_lag_p50_ms": quantile(warm, 0.5), "idle_lag_p99_ms": quantile(warm, 0.99),
    "late_p99_ms": server["late_p99_ms"], "late_max_ms": server["late_max_ms"],
    "cpu_seconds": float(cpu1) - float(cpu0),
    "anon_kb_first": rss[0][0], "anon_kb_max": max(r[0] for r in rss), "anon_kb_last": rss[-1][0],
    "rss_kb_max": max(r[1] for r in rss)}))
PY
kill "$pid" "$cluster_pid"
wait "$pid" "$cluster_pid" 2>/dev/null || true
}
CHURN_RATE=${CHURN_RATE:-1000}
CHURN_SECONDS=${CHURN_SECONDS:-60}
CHURN_OBJECTS=${CHURN_OBJECTS:-10000}
if [[ -n ${CHURN_ONLY:-} ]]; then churn_run; report_and_exit; fi

# A repository of LARGE_FILES files (issue 18): the idle RSS of a server on it, and
# one recorded write's latency (`wait: commit`, one at a time) next to the same
# writes into an empty repository, in alternating rounds of the same run.
large_run() {
echo "== a repository of $LARGE_FILES files"
rm -rf "$OUT/large" "$OUT/small"
mkdir -p "$OUT/large"
git init -q --bare -b main "$OUT/large/repo.git"
# One commit of LARGE_FILES ConfigMaps in the directories the load writes into
# (team-a-0 … team-a-63, as `kubescribe-load run` spreads them).
python3 - "$LARGE_FILES" <<'PY' | git --git-dir "$OUT/large/repo.git" fast-import --quiet
import sys
files = int(sys.argv[1])
out = sys.stdout.buffer
out.write(b"commit refs/heads/main\ncommitter bench <bench@example.com> 1700000000 +0000\ndata 5\nbulk\n")
for i in range(files):
    ns = "team-a-%d" % (i % 64)
    body = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bulk-%d\n  namespace: %s\ndata:\n  index: '%d'\n  payload: %s\n" % (i, ns, i, "x" * 120)).encode()
    out.write(b"M 100644 inline %s/core/configmaps/bulk-%d.yaml\ndata %d\n" % (ns.encode(), i, len(body)))
    out.write(body + b"\n")
out.write(b"\n")
PY
local rules="  - name: default
    wait: commit"
start_kubescribe large 18480 "$rules"
local large_pid=$server_pid
start_kubescribe small 18481 "$rules"
local small_pid=$server_pid
sleep 2
local large_rss small_rss
large_rss=$(awk '/VmRSS/ {print $2}' "/proc/$large_pid/status")
small_rss=$(awk '/VmRSS/ {print $2}' "/proc/$small_pid/status")
local offset=1000000
for round in $(seq 1 "$LARGE_ROUNDS"); do
  load "large_write_$round" 18480 20 "$LARGE_WRITES" 1 "$offset"
  load "small_write_$round" 18481 20 "$LARGE_WRITES" 1 "$offset"
  offset=$((offset + LARGE_WRITES))
done
local files
files=$(git --git-dir "$OUT/large/repo.git" ls-tree -r --name-only main | wc -l)
local large_after small_after
large_after=$(awk '/VmRSS/ {print $2}' "/proc/$large_pid/status")
small_after=$(awk '/VmRSS/ {print $2}' "/proc/$small_pid/status")
echo "{\"label\":\"large_repo\",\"files\":$files,\"idle_kb\":$large_rss,\"empty_idle_kb\":$small_rss,\"after_kb\":$large_after,\"empty_after_kb\":$small_after,\"rounds\":$LARGE_ROUNDS}" | tee -a "$OUT/runs.jsonl"
kill "$large_pid" "$small_pid"
wait "$large_pid" "$small_pid" 2>/dev/null || true
}
LARGE_FILES=${LARGE_FILES:-100000}
LARGE_WRITES=${LARGE_WRITES:-200}
LARGE_ROUNDS=${LARGE_ROUNDS:-3}
if [[ -n ${LARGE_ONLY:-} ]]; then large_run; report_and_exit; fi

echo "== index of an existing repository: $INDEX_MANIFESTS manifests"
# The index of what people declared (issue 15), next to its floor: parsing every
# document of the same files once. Also the real fixture repositories.
"$BIN/kubescribe-load" index --manifests "$INDEX_MANIFESTS" >"$OUT/index.json"
python3 - "$OUT/index.json" <<'PY' | tee -a "$OUT/runs.jsonl"
import json, sys
report = json.load(open(sys.argv[1]))
s = report["synthetic"]
print(json.dumps({"label": "index", "manifests": s["manifests"], "files": s["files"], "objects": s["objects"],
                  "seconds": s["build_s"], "floor_seconds": s["floor_parse_s"],
                  "lookup_ns": s["lookup_ns"], "update_seconds": s["update_one_file_s"], "peak_kb": s["peak_rss_kib"],
                  "fixtures": {k: v for k, v in report.items() if k not in ("synthetic", "edit")},
                  "edit": report["edit"]}))
PY
if [[ -n ${INDEX_ONLY:-} ]]; then report_and_exit; fi

# One run per size in SNAPSHOT_OBJECTS (space-separated, e.g. "10000 50000 100000"):
# the cost per object should stay flat as the cluster grows.
for snapshot_objects in $SNAPSHOT_OBJECTS; do
echo "== reconcile snapshot of $snapshot_objects objects"
# A synthetic cluster (recorded core discovery, N ConfigMaps made from a recorded one,
# paged like kube-apiserver, in its key order, or in SNAPSHOT_ORDER=spread, each object
# in the next namespace) on plain HTTP; kubescribe lists it at start and is ready once
# every file is committed.
start_cluster snapshot 18470 --objects "$snapshot_objects" --order "${SNAPSHOT_ORDER:-key}"
# Baseline: reading the same pages (500 objects each) and parsing them, nothing else.
list_s=$(python3 - <<'PY'
import json, time, urllib.request
start, token = time.time(), ""
while True:
    url = "http://127.0.0.1:18470/api/v1/configmaps?limit=500" + ("&continue=" + token if token else "")
    page = json.load(urllib.request.urlopen(url))
    token = page["metadata"].get("continue", "")
    if not token:
        break
print("%.3f" % (time.time() - start))
PY
)
rm -rf "$OUT/snapshot"
cat >"$OUT/snapshot.yaml" <<YAML
server:
  listen: 127.0.0.1:18471
  devCertDir: $OUT/certs
dataDir: $OUT/snapshot
rules:
  - name: default
    prune: ${SNAPSHOT_PRUNE:-never}
reconcile:
  enabled: true
  kubeconfig: $PWD/$OUT/snapshot-kubeconfig
YAML
t0=$(date +%s%N)
RUST_LOG=info "$BIN/kubescribe" serve --config "$OUT/snapshot.yaml" >"$OUT/snapshot.log" 2>&1 &
snapshot_pid=$!
pids+=("$snapshot_pid")
until curl -sf --cacert "$OUT/certs/ca.crt" https://127.0.0.1:18471/readyz >/dev/null 2>&1; do
  kill -0 "$snapshot_pid" 2>/dev/null || { echo "kubescribe (snapshot) exited" >&2; exit 1; }
  sleep 0.02
done
t1=$(date +%s%N)
# Peak RSS, and at the end its anonymous and file-backed parts (the binary and the
# packs gix maps are file-backed: clean page cache).
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$snapshot_pid/status")
anon_kb=$(awk '/RssAnon/ {print $2}' "/proc/$snapshot_pid/status")
file_kb=$(awk '/RssFile/ {print $2}' "/proc/$snapshot_pid/status")
cpu_s=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15 + $16 + $17) / hz}' "/proc/$snapshot_pid/stat")
files=$(git --git-dir "$OUT/snapshot/repo.git" ls-tree -r --name-only main | wc -l)
ready_s=$(awk "BEGIN {print ($t1 - $t0) / 1e9}")
echo "{\"label\":\"snapshot\",\"order\":\"${SNAPSHOT_ORDER:-key}\",\"objects\":$snapshot_objects,\"files\":$files,\"seconds\":$ready_s,\"cpu_seconds\":$cpu_s,\"list_seconds\":$list_s,\"peak_kb\":$peak_kb,\"anon_kb\":$anon_kb,\"file_kb\":$file_kb}" | tee -a "$OUT/runs.jsonl"
kill "$snapshot_pid" "$cluster_pid"
wait "$snapshot_pid" "$cluster_pid" 2>/dev/null || true
done
if [[ -n ${SNAPSHOT_ONLY:-} ]]; then report_and_exit; fi

# The push and check figures alone need neither.
if [[ -z ${PUSH_ONLY:-}${CHECK_ONLY:-} ]]; then
  churn_run
  large_run
fi

echo "== kubescribe check on $CHECK_FILES manifests"
# The same manifests for both: the tests' check fixtures (ConfigMaps, a Flux-managed
# Deployment, an oversized object, a Secret, a List), renamed into distinct files.
check_dir="$OUT/check-manifests"
mkdir -p "$check_dir"
python3 - "$check_dir" "$CHECK_FILES" <<'PY'
import pathlib, sys
out, count = pathlib.Path(sys.argv[1]), int(sys.argv[2])
sources = sorted(p for p in pathlib.Path("tests/fixtures/check/manifests").rglob("*") if p.suffix in (".yaml", ".json") and p.name != "broken.yaml")
for i in range(count):
    src = sources[i % len(sources)]
    text = src.read_text().replace("name: ", "name: n%d-" % i).replace('"name": "', '"name": "n%d-' % i)
    (out / ("%04d-%s" % (i, src.name))).write_text(text)
PY
best() { # command...: the fastest of 5 runs, in seconds (the machine is noisy)
  local best_s=""
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || true
    t1=$(date +%s%N)
    best_s=$(awk -v a="$best_s" -v b="$(( t1 - t0 ))" 'BEGIN {b /= 1e9; if (a == "" || b < a) print b; else print a}')
  done
  echo "$best_s"
}
check_s=$(best "$BIN/kubescribe" check -f "$check_dir" --config tests/fixtures/check/config.yaml -o json)
reader_s=$(best python3 -c 'import sys, pathlib, yaml
for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    list(yaml.safe_load_all(p.read_text()))' "$check_dir")
echo "{\"label\":\"check\",\"files\":$CHECK_FILES,\"seconds\":$check_s,\"reader_seconds\":$reader_s}" | tee -a "$OUT/runs.jsonl"
if [[ -n ${CHECK_ONLY:-} ]]; then report_and_exit; fi


if [[ -z ${PUSH_ONLY:-}${CHECK_ONLY:-} ]]; then
echo "== idle RSS and wait: none latency"
start_kubescribe none 18443 "${NONE_RULES:-- name: all
  wait: none}"
none_pid=$server_pid
sleep 2 # let the process settle before reading its idle footprint
idle_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$none_pid/status")
echo "{\"label\":\"idle_rss\",\"kb\":$idle_rss_kb}" | tee -a "$OUT/runs.jsonl"

"$BIN/kubescribe-load" noop --listen 127.0.0.1:18444 --cert "$OUT/certs/tls.crt" --key "$OUT/certs/tls.key" &
noop_pid=$!
pids+=("$noop_pid")
wait_ready_noop() {
  for _ in $(seq 1 200); do
    if curl -s --cacert "$OUT/certs/ca.crt" -o /dev/null "https://127.0.0.1:18444/validate" -d '{}' -H 'Content-Type: application/json'; then return 0; fi
    sleep 0.05
  done
  exit 1
}
wait_ready_noop

# The wait: none server keeps committing (and folding packs) briefly after a round;
# let it finish so it does not slow down the baseline's next round.
settle() {
  quiesce "$none_pid"
}

offset=0
for round in $(seq 1 "$ROUNDS"); do
  settle
  load "noop_paced_$round" 18444 "$RATE" "$REQUESTS" "$CONCURRENCY" "$offset" >/dev/null
  load "none_paced_$round" 18443 "$RATE" "$REQUESTS" "$CONCURRENCY" "$offset" >/dev/null
  offset=$((offset + REQUESTS))
done
settle
load noop_max 18444 "" "$REQUESTS" "$CONCURRENCY" "$offset" >/dev/null
load none_max 18443 "" "$REQUESTS" "$CONCURRENCY" "$offset" >/dev/null
offset=$((offset + REQUESTS))

echo "== CPU per request ($CPU_REQUESTS requests each at $CPU_RATE/s)"
# The request path alone: a server whose rule matches no namespace records nothing.
start_kubescribe quiet 18446 "- name: nothing
  namespaces: [no-such-namespace]
  wait: none"
quiet_pid=$server_pid
for target in "noop 18444 $noop_pid" "quiet 18446 $quiet_pid" "none 18443 $none_pid"; do
  read -r name port pid <<<"$target"
  commits() { git --git-dir "$OUT/$name/repo.git" rev-list --count main 2>/dev/null || echo 0; }
  quiesce "$pid"
  before=$(cpu_of "$pid")
  commits_before=$(commits)
  load "cpu_$name" "$port" "$CPU_RATE" "$CPU_REQUESTS" "$CONCURRENCY" "$offset" >/dev/null
  quiesce "$pid" # a `wait: none` server's commits come after its answers
  after=$(cpu_of "$pid")
  offset=$((offset + CPU_REQUESTS))
  echo "{\"label\":\"cpu_${name}_seconds\",\"requests\":$CPU_REQUESTS,\"cpu_seconds\":$(awk -v a="$before" -v b="$after" 'BEGIN {print b - a}'),\"commits\":$(( $(commits) - commits_before ))}" | tee -a "$OUT/runs.jsonl"
done

# Stop the latency servers first: the wait: none server may still be committing or
# repacking its backlog, which would compete with the next run.
cleanup
pids=()

if [[ -n ${LATENCY_ONLY:-} ]]; then exit 0; fi # the latency rounds only (runs.jsonl)
echo "== wait: commit throughput"
start_kubescribe commit 18445 "- name: all
  wait: commit"
commit_pid=$server_pid
before=$(cpu_of "$commit_pid")
load commit_max 18445 "" "$COMMITS" 64 0 >/dev/null
quiesce "$commit_pid"
commit_cpu=$(awk -v a="$before" -v b="$(cpu_of "$commit_pid")" 'BEGIN {print b - a}')
commit_count=$(git --git-dir "$OUT/commit/repo.git" rev-list --count main)
echo "{\"label\":\"commit_count\",\"commits\":$commit_count,\"requests\":$COMMITS,\"cpu_seconds\":$commit_cpu}" | tee -a "$OUT/runs.jsonl"

echo "== git fast-import baseline ($commit_count commits)"
"$BIN/kubescribe-load" fast-import --commits "$commit_count" >"$OUT/fast-import.stream"
git init -q --bare "$OUT/fast-import.git"
start=$(date +%s%N)
times >"$OUT/times.before"
git --git-dir "$OUT/fast-import.git" fast-import --quiet <"$OUT/fast-import.stream"
sync -f "$OUT/fast-import.git" # durable, like kubescribe's answer
times >"$OUT/times.after"
cpu_before=$(children_cpu "$OUT/times.before")
cpu_after=$(children_cpu "$OUT/times.after")
end=$(date +%s%N)
seconds=$(awk "BEGIN {print ($end - $start) / 1e9}")
fast_import_cpu=$(awk -v a="$cpu_before" -v b="$cpu_after" 'BEGIN {print b - a}')
echo "{\"label\":\"fast_import\",\"commits\":$commit_count,\"seconds\":$seconds,\"cpu_seconds\":$fast_import_cpu}" | tee -a "$OUT/runs.jsonl"

fi # PUSH_ONLY

echo "== wait: push against smart HTTP (git http-backend behind lighttpd, basic auth)"
# The remote: lighttpd running git http-backend as CGI, basic auth, on loopback.
http_root="$OUT/http"
mkdir -p "$http_root/htdocs" "$http_root/uploads"
git init -q --bare -b main "$http_root/remote.git"
git --git-dir "$http_root/remote.git" config http.receivepack true
if [[ -n ${REMOTE_TUNED:-} ]]; then
  # As busy git servers are set up: pushes stay packs, housekeeping off the push path.
  git --git-dir "$http_root/remote.git" config receive.unpackLimit 1
  git --git-dir "$http_root/remote.git" config receive.autogc false
fi
echo "kube:s3cret-token" >"$http_root/users"
printf 's3cret-token' >"$OUT/git-token"
cat >"$http_root/lighttpd.conf" <<CONF
server.document-root = "$PWD/$http_root/htdocs"
server.bind = "127.0.0.1"
server.port = 18450
server.upload-dirs = ( "$PWD/$http_root/uploads" )
server.modules = ( "mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi" )
auth.backend = "plain"
auth.backend.plain.userfile = "$PWD/$http_root/users"
auth.require = ( "" => ( "method" => "basic", "realm" => "bench", "require" => "valid-user" ) )
alias.url = ( "/git/" => "$(git --exec-path)/git-http-backend/" )
\$HTTP["url"] =~ "^/git/" {
  cgi.assign = ( "" => "" )
  setenv.set-environment = ( "GIT_PROJECT_ROOT" => "$PWD/$http_root", "GIT_HTTP_EXPORT_ALL" => "1" )
}
CONF
lighttpd -D -f "$http_root/lighttpd.conf" >"$OUT/lighttpd.log" 2>&1 &
pids+=("$!")
remote_url="http://127.0.0.1:18450/git/remote.git"
auth_header="Authorization: Basic $(printf 'kube:s3cret-token' | base64)"
for _ in $(seq 1 100); do
  git -c "http.extraHeader=$auth_header" ls-remote "$remote_url" >/dev/null 2>&1 && break
  sleep 0.05
done

# Baseline: the naive loop, one commit and one push per write, as a script would do
# it. Each push's own time is the single push round trip.
naive="$OUT/naive"
git clone -q -c "http.extraHeader=$auth_header" "$remote_url" "$naive" 2>/dev/null
git -C "$naive" checkout -q -b main 2>/dev/null || true
naive_pushes() { # label writes
  local push_ms=() start end seconds median t0 t1 i
  start=$(date +%s%N)
  for i in $(seq 1 "$2"); do
    echo "value: $i" >"$naive/$1-$i.yaml"
    git -C "$naive" add "$1-$i.yaml"
    git -C "$naive" -c user.name=bench -c user.email=bench@x commit -qm "$1 $i"
    t0=$(date +%s%N)
    git -C "$naive" -c "http.extraHeader=$auth_header" push -q origin HEAD:refs/heads/naive
    t1=$(date +%s%N)
    push_ms+=("$(awk "BEGIN {print ($t1 - $t0) / 1e6}")")
  done
  end=$(date +%s%N)
  seconds=$(awk "BEGIN {print ($end - $start) / 1e9}")
  median=$(printf '%s\n' "${push_ms[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  # What the remote holds by now: its push cost grows with its packs and loose objects.
  local packs loose
  # (The remote's own gc may remove files while find walks them.)
  packs=$({ find "$http_root/remote.git/objects/pack" -name '*.pack' 2>/dev/null || true; } | wc -l)
  loose=$({ find "$http_root/remote.git/objects" -mindepth 2 -type f -path '*/objects/[0-9a-f][0-9a-f]/*' 2>/dev/null || true; } | wc -l)
  echo "{\"label\":\"$1\",\"writes\":$2,\"seconds\":$seconds,\"push_median_ms\":$median,\"remote_packs\":$packs,\"remote_loose\":$loose}" | tee -a "$OUT/runs.jsonl"
}
naive_pushes naive_push "$NAIVE"

push_rules="- name: all
  wait: push"
start_push_server() { # name port branch transport
  cat >"$OUT/$1.yaml" <<YAML
server:
  listen: 127.0.0.1:$2
  devCertDir: $OUT/certs
  # The load generator is the only caller, on loopback; it presents no credentials.
  clientAuth:
    allowUnauthenticated: true
dataDir: $OUT/$1
repository:
  branch: $3
  remote:
    url: $remote_url
    username: kube
    tokenFile: $PWD/$OUT/git-token
    transport: $4
rules:
$push_rules
YAML
  RUST_LOG=warn "$BIN/kubescribe" serve --config "$OUT/$1.yaml" >"$OUT/$1.log" 2>&1 &
  pids+=("$!")
  wait_ready "$2"
}
start_push_server push 18451 main builtin
# Enough connections that 200 writes/s are sent even while each waits for a push.
# The mean time of one push under load, from the server's own histogram.
push_mean() { # port label
  curl -s --cacert "$OUT/certs/ca.crt" "https://127.0.0.1:$1/metrics" | awk -v label="$2" '
    /^kubescribe_push_duration_seconds_sum/ {sum = $2}
    /^kubescribe_push_duration_seconds_count/ {count = $2}
    END {printf "{\"label\":\"%s\",\"pushes\":%d,\"mean_ms\":%.1f}\n", label, count, 1000 * sum / count}' |
    tee -a "$OUT/runs.jsonl"
}
load push_paced 18451 200 "$PUSH_REQUESTS" 128 0 >/dev/null
push_mean 18451 push_mean
# The same idle push again, against the remote as that load left it.
naive_pushes naive_push_after 10
# Kept for a closer look: the push histogram, and how often a push was held.
curl -s --cacert "$OUT/certs/ca.crt" https://127.0.0.1:18451/metrics >"$OUT/push-paced.prom"
# Where a write's wait went: its commit, the wait for a push to start, the push.
python3 - "$OUT/push-paced.prom" <<'PY' | tee -a "$OUT/runs.jsonl"
import json, re, sys
stages = {}
for line in open(sys.argv[1]):
    m = re.match(r'kubescribe_push_wait_seconds_(bucket|sum|count)\{(.*)\} (\S+)', line)
    if not m:
        continue
    kind, labels, value = m.groups()
    if 'repository="default"' not in labels:
        continue
    stage = re.search(r'stage="(\w+)"', labels).group(1)
    s = stages.setdefault(stage, {"buckets": []})
    if kind == "bucket":
        le = re.search(r'le="([^"]+)"', labels).group(1)
        s["buckets"].append((float(le), float(value)))
    else:
        s[kind] = float(value)
out = {"label": "push_stages"}
for stage, s in stages.items():
    if not s.get("count"):
        continue
    # The 99th percentile as Prometheus' histogram_quantile estimates it: linear
    # within the bucket it falls in.
    rank, lower, below, p99 = 0.99 * s["count"], 0.0, 0.0, None
    for le, cumulative in sorted(s["buckets"]):
        if cumulative >= rank:
            p99 = lower if le == float("inf") else lower + (le - lower) * (rank - below) / max(cumulative - below, 1)
            break
        lower, below = le, cumulative
    out[stage] = {"mean_ms": 1000 * s["sum"] / s["count"], "p99_ms": 1000 * p99, "writes": int(s["count"])}
print(json.dumps(out))
PY
load push_max 18451 "" "$PUSH_REQUESTS" 256 "$PUSH_REQUESTS" >/dev/null
pushed=$(git --git-dir "$http_root/remote.git" rev-list --count main)
echo "{\"label\":\"push_count\",\"commits\":$pushed}" | tee -a "$OUT/runs.jsonl"
# The same paced run with `git push` doing every push (`transport: git`), to its own
# branch of the same remote: what the builtin transport saves.
start_push_server push-git 18453 git-cli git
load push_paced_git 18453 200 "$PUSH_REQUESTS" 128 $((2 * PUSH_REQUESTS)) >/dev/null
push_mean 18453 push_mean_git

python3 scripts/bench_report.py "$OUT/runs.jsonl" | tee "$OUT/report.md"
