#!/usr/bin/env bash
# `make bench`, memory part: kubescribe's peak RSS while 64 clients each send a
# maximum-size body (server.maxBodyBytes, 8 MiB) at once, the default maxInFlight.
# Two bodies: an UPDATE review of a ConfigMap whose data is one long string, in
# object and oldObject (what the apiserver can send, near its request limits), and
# the same size of small numbers in a custom resource (what a forger without
# clientAuth could send: JSON values cost far more memory than their text). Each
# runs against a fresh server; the baseline is that server's idle RSS, and the
# chart's memory limit (256 MiB) is the bar. Figures go to target/bench-memory.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-64}
OUT=target/bench-memory
BIN=target/release
cargo build --release --locked --bins
rm -rf "$OUT"
mkdir -p "$OUT"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
limit = 8 * 1024 * 1024
def review(obj, old, name):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "00000000-0000-0000-0000-000000000001",
        "kind": {"group": obj["apiVersion"].rpartition("/")[0], "version": obj["apiVersion"].rpartition("/")[2], "kind": obj["kind"]},
        "resource": {"group": obj["apiVersion"].rpartition("/")[0], "version": obj["apiVersion"].rpartition("/")[2], "resource": name},
        "name": obj["metadata"]["name"], "namespace": "bench", "operation": "UPDATE",
        "userInfo": {"username": "alice@example.com", "groups": ["developers"]},
        "object": obj, "oldObject": old, "dryRun": False}}
def fit(make):
    # The largest body under the limit.
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(json.dumps(make(mid))) <= limit: lo = mid
        else: hi = mid - 1
    return make(lo)
def strings(n):
    half = n // 2
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": "bench"}, "data": {"blob": "x" * half}}
    old = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": "bench"}, "data": {"blob": "y" * half}}
    return review(obj, old, "configmaps")
def numbers(n):
    half = n // 2
    obj = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "big", "namespace": "bench"}, "spec": {"values": [0] * half}}
    old = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "big", "namespace": "bench"}, "spec": {"values": [1] * half}}
    return review(obj, old, "things")
for name, make in [("strings", strings), ("numbers", numbers)]:
    body = json.dumps(fit(make))
    open(f"{out}/{name}.json", "w").write(body)
    print(f"{name}: {len(body)} bytes", file=sys.stderr)
PY

rss_kib() { awk -v key="$2" '$1 == key":" {print $2}' "/proc/$1/status"; }
port=18470
for body in ${BODIES:-strings numbers}; do
  cat >"$OUT/$body.yaml" <<YAML
server:
  listen: 127.0.0.1:$port
  devCertDir: $OUT/certs
dataDir: $OUT/data-$body
YAML
  "$BIN/kubescribe" serve --config "$OUT/$body.yaml" >"$OUT/$body.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf --cacert "$OUT/certs/ca.crt" "https://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
  done
  idle=$(rss_kib "$pid" VmRSS)
  codes=$(seq "$CLIENTS" | xargs -P "$CLIENTS" -I{} curl -s --http2 --max-time 60 \
    --cacert "$OUT/certs/ca.crt" -H 'Content-Type: application/json' \
    --data-binary "@$OUT/$body.json" -o /dev/null -w '%{http_code}\n' \
    "https://127.0.0.1:$port/validate?timeout=30s" | sort | uniq -c | tr '\n' ' ' || true)
  peak=$(rss_kib "$pid" VmHWM)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "{\"label\":\"memory_$body\",\"clients\":$CLIENTS,\"idle_mib\":$((idle / 1024)),\"peak_mib\":$((peak / 1024)),\"chart_limit_mib\":256,\"answers\":\"$codes\"}" |
    tee -a "$OUT/runs.jsonl"
  port=$((port + 1))
done
