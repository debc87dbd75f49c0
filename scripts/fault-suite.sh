#!/usr/bin/env bash
# The fault suite (`make faults`; not part of `make test`): what kubescribe promises
# under kill -9, a full disk and a remote that is down, measured on the release
# binary with real git repositories. Prints one summary line per scenario and exits
# non-zero if any promise broke.
#
#   kill      TRIALS (100) kill -9 at a random moment under load, for `wait: commit`
#             and for `wait: push`: acknowledged writes lost (must be 0), `git fsck`
#             after every restart, leftovers removed at the restart.
#   disk      the data directory on a small tmpfs that fills up: waiting writes are
#             denied with a clear message, nothing acknowledged is lost, and writes
#             are recorded again without a restart once space is back. Needs root.
#   outage    the remote gone for OUTAGE seconds (300) under load: nothing
#             acknowledged lost, the backlog pushed after, peak memory.
#
# SCENARIOS="kill disk outage" by default; TRIALS and OUTAGE shorten a run.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIALS=${TRIALS:-100}
OUTAGE=${OUTAGE:-300}
SCENARIOS=${SCENARIOS:-kill disk outage}

cargo build --release --locked --bin kubescribe --bin kubescribe-load >&2
BIN=$PWD/target/release/kubescribe
LOAD=$PWD/target/release/kubescribe-load
FIXTURES=$PWD/tests/fixtures/admission/k8s-1.19
WORK=$(mktemp -d /tmp/kubescribe-faults.XXXXXX)
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill -9 "$SERVER" 2>/dev/null || true
  mountpoint -q "$WORK/disk" 2>/dev/null && umount "$WORK/disk" || true
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
failed=0

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start <config> <log>: serve in the background; waits for /readyz.
start() {
  "$BIN" serve --config "$1" >>"$2" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 200); do
    if curl -fsS --cacert "$CERTS/ca.crt" "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$SERVER" 2>/dev/null || { echo "kubescribe exited at start:" >&2; tail -5 "$2" >&2; return 1; }
    sleep 0.05
  done
  echo "kubescribe not ready after 10 s" >&2
  return 1
}

stop() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=; }
crash() { kill -9 "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=; }

metric() {
  curl -fsS --cacert "$CERTS/ca.crt" "https://127.0.0.1:$PORT/metrics" |
    awk -v name="$1" 'index($1, name) == 1 && (length($1) == length(name) || substr($1, length(name) + 1, 1) == "{") { sum += $2 } END { print sum + 0 }'
}

# config <file> <data dir> <wait> [remote]
config() {
  PORT=$(port)
  CERTS=$WORK/certs
  {
    echo "server:"
    echo "  listen: 127.0.0.1:$PORT"
    echo "  devCertDir: $CERTS"
    echo "  clientAuth:"
    echo "    allowUnauthenticated: true"
    echo "dataDir: $2"
    if [ -n "${4:-}" ]; then
      echo "repository:"
      echo "  remote:"
      echo "    url: file://$4"
      echo "    maxBackoff: 2s"
    fi
    echo "rules:"
    echo "- name: all"
    echo "  wait: $3"
  } >"$1"
}

# missing <acked file> <repository> <branch>: acknowledged paths not in the branch.
missing() {
  git --git-dir "$2" ls-tree -r --name-only "$3" 2>/dev/null | sort -u >"$WORK/present"
  sort -u "$1" | comm -23 - "$WORK/present" | wc -l
}

# leftovers <repo>: what a crash leaves that the next start should have removed;
# listed in $WORK/leftovers, counted on stdout.
leftovers() {
  local repo=$1
  {
    find "$repo/refs" -name '*.lock'
    find "$repo/objects/pack" \( -name '*.keep' -o -name '*.tmp' -o -name 'tmp_*' \)
    for pack in "$repo"/objects/pack/*.pack; do
      if [ -e "$pack" ] && [ ! -e "${pack%.pack}.idx" ]; then echo "$pack"; fi
    done
  } 2>/dev/null | tee -a "$WORK/leftovers" | wc -l
}

kill_trials() {
  local wait=$1 dir=$WORK/kill-$1 acked=0 lost=0 fsck_bad=0 recovered=0 left=0
  mkdir -p "$dir"
  local remote=
  if [ "$wait" = push ]; then
    remote=$dir/remote.git
    git init -q --bare -b main "$remote"
    # No background gc on the remote: fsck would race it, and it is not ours.
    git --git-dir "$remote" config gc.auto 0
    git --git-dir "$remote" config receive.autogc false
  fi
  config "$dir/config.yaml" "$dir/data" "$wait" "$remote"
  local repo=$dir/data/repo.git
  : >"$dir/acked"
  for trial in $(seq 1 "$TRIALS"); do
    start "$dir/config.yaml" "$dir/log"
    "$LOAD" acked --addr "127.0.0.1:$PORT" --ca "$CERTS/ca.crt" --fixtures "$FIXTURES" \
      --offset $((trial * 1000000)) --concurrency 8 >>"$dir/acked" 2>/dev/null &
    local load=$!
    # Somewhere in the first 1.5 s of load: mid-batch, mid-push, mid-repack.
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.1, 1.5), 3))')"
    crash
    wait "$load" || true
    start "$dir/config.yaml" "$dir/log"
    recovered=$((recovered + $(metric kubescribe_store_recovered_total)))
    if [ "$wait" = push ]; then
      # One more pushed write: everything committed before it is on the remote.
      "$LOAD" acked --addr "127.0.0.1:$PORT" --ca "$CERTS/ca.crt" --fixtures "$FIXTURES" \
        --offset $((trial * 1000000 + 999999)) --requests 1 --concurrency 1 >>"$dir/acked"
    fi
    stop
    left=$((left + $(leftovers "$repo")))
    git --git-dir "$repo" fsck --strict --no-progress >"$dir/fsck" 2>&1 ||
      { fsck_bad=$((fsck_bad + 1)); echo "trial $trial: local fsck:" >&2; head -5 "$dir/fsck" >&2; }
    if [ -n "$remote" ]; then
      git --git-dir "$remote" fsck --strict --no-progress >"$dir/fsck" 2>&1 ||
        { fsck_bad=$((fsck_bad + 1)); echo "trial $trial: remote fsck:" >&2; head -5 "$dir/fsck" >&2; }
    fi
  done
  acked=$(sort -u "$dir/acked" | wc -l)
  if [ "$wait" = push ]; then lost=$(missing "$dir/acked" "$remote" main); else lost=$(missing "$dir/acked" "$repo" main); fi
  [ "$left" -eq 0 ] || { echo "left after a restart:" >&2; sort -u "$WORK/leftovers" >&2; }
  echo "kill -9, wait: $wait: $TRIALS trials, $acked writes acknowledged, $lost lost, $fsck_bad fsck failures, $recovered leftovers removed at restarts, $left left after"
  [ "$lost" -eq 0 ] && [ "$fsck_bad" -eq 0 ] && [ "$left" -eq 0 ] || failed=1
}

disk_full() {
  if [ "$(id -u)" != 0 ]; then
    echo "disk: needs root to mount a tmpfs; not run" >&2
    failed=1
    return
  fi
  local dir=$WORK/disk
  mkdir -p "$dir"
  mount -t tmpfs -o size=8m tmpfs "$dir"
  config "$WORK/disk.yaml" "$dir/data" commit
  start "$WORK/disk.yaml" "$WORK/disk.log"
  : >"$WORK/disk-acked"
  # Fill the disk, leaving a few KiB.
  dd if=/dev/zero of="$dir/filler" bs=64k 2>/dev/null || true
  "$LOAD" acked --addr "127.0.0.1:$PORT" --ca "$CERTS/ca.crt" --fixtures "$FIXTURES" \
    --offset 0 --requests 200 --concurrency 4 >>"$WORK/disk-acked"
  local during
  during=$(sort -u "$WORK/disk-acked" | wc -l)
  local message
  message=$(curl -sS --cacert "$CERTS/ca.crt" -H 'Content-Type: application/json' \
    --data-binary @<(python3 -c "import json,sys; d=json.load(open('$FIXTURES/009-validate-create-configmaps.json')); r=d['review']; r['request']['name']='full'; r['request']['object']['metadata']['name']='full'; print(json.dumps(r))") \
    "https://127.0.0.1:$PORT/validate?timeout=5s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["response"].get("status",{}).get("message",""))')
  rm -f "$dir/filler"
  # No restart: the writer's next batch finds the space.
  "$LOAD" acked --addr "127.0.0.1:$PORT" --ca "$CERTS/ca.crt" --fixtures "$FIXTURES" \
    --offset 1000 --requests 50 --concurrency 4 >>"$WORK/disk-acked"
  local after=$(( $(sort -u "$WORK/disk-acked" | wc -l) - during ))
  stop
  local lost
  lost=$(missing "$WORK/disk-acked" "$dir/data/repo.git" main)
  git --git-dir "$dir/data/repo.git" fsck --strict --no-progress >/dev/null 2>&1 && fsck=clean || fsck=BROKEN
  echo "disk full: $during of 200 writes acknowledged while full, denial: \"${message:0:160}\"; after freeing space, $after of 50 acknowledged without a restart; $lost lost; fsck $fsck"
  umount "$dir"
  [ "$lost" -eq 0 ] && [ "$after" -eq 50 ] && [ "$fsck" = clean ] && [[ "$message" == *"No space left"* ]] || failed=1
}

outage() {
  local dir=$WORK/outage remote=$WORK/outage/remote.git
  mkdir -p "$dir"
  git init -q --bare -b main "$remote"
  config "$dir/config.yaml" "$dir/data" none "$remote"
  # Waiting writes acknowledge only what reached git: `wait: commit` here, so the
  # backlog is what an outage builds up.
  sed -i 's/  wait: none/  wait: commit/' "$dir/config.yaml"
  start "$dir/config.yaml" "$dir/log"
  : >"$dir/acked"
  mv "$remote" "$remote.away"
  local until=$(( $(date +%s) + OUTAGE )) n=0 peak=0
  while [ "$(date +%s)" -lt "$until" ]; do
    "$LOAD" acked --addr "127.0.0.1:$PORT" --ca "$CERTS/ca.crt" --fixtures "$FIXTURES" \
      --offset $((n * 100)) --requests 100 --concurrency 2 >>"$dir/acked"
    n=$((n + 1))
    sleep 1
  done
  peak=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$SERVER/status")
  local unpushed
  unpushed=$(metric kubescribe_unpushed_commits)
  mv "$remote.away" "$remote"
  local started=$SECONDS
  while [ "$(metric kubescribe_unpushed_commits)" != 0 ]; do
    [ $((SECONDS - started)) -lt 120 ] || break
    sleep 0.5
  done
  local drained=$((SECONDS - started))
  stop
  local acked lost
  acked=$(sort -u "$dir/acked" | wc -l)
  lost=$(missing "$dir/acked" "$remote" main)
  echo "remote down ${OUTAGE} s: $acked writes acknowledged, $unpushed commits waiting at the end, pushed within ${drained} s after, $lost missing from the remote; peak RSS ${peak} MiB"
  [ "$lost" -eq 0 ] || failed=1
}

for scenario in $SCENARIOS; do
  case $scenario in
    kill) for mode in ${MODES:-commit push}; do kill_trials "$mode"; done ;;
    disk) disk_full ;;
    outage) outage ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
exit "$failed"
