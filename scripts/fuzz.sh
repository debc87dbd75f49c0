#!/usr/bin/env bash
# `make fuzz` (not part of `make test`): runs each fuzz target in fuzz/ with
# cargo-fuzz on nightly for RUNS executions (default 3,400,000 each, about 10
# million in all) and prints what libFuzzer reports. Installs nightly and
# cargo-fuzz (crates.io) when missing. A crash stops the run, leaves the input
# under fuzz/artifacts/ and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3400000}
TARGETS=${TARGETS:-review sanitiser layout}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for target in $TARGETS; do
  mkdir -p "fuzz/corpus/$target"
  # Seeds: the recorded reviews (their objects, for the sanitiser).
  case $target in
    review) cp tests/fixtures/admission/k8s-1.19/*.json "fuzz/corpus/$target/" 2>/dev/null || true ;;
    sanitiser)
      for f in tests/fixtures/admission/k8s-1.19/*.json; do
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["review"]["request"]; o=r.get("object") or r.get("oldObject"); print(json.dumps(o)) if o else None' "$f" \
          >"fuzz/corpus/$target/$(basename "$f")"
      done ;;
    layout) printf '\n{namespace}/{group}/{resource}/{name}.yaml\nteam-a\napp-config' >"fuzz/corpus/$target/default" ;;
  esac
  echo "== $target" >&2
  cargo +nightly fuzz run "$target" -- -runs="$RUNS" -max_len=65536 2>&1 |
    tee "fuzz/$target.log" | grep -E '^(Done|==[0-9]+==|SUMMARY|#[0-9]+ +DONE)' || true
  grep -q '^Done ' "fuzz/$target.log" || { echo "fuzz target $target did not finish: see fuzz/$target.log" >&2; exit 1; }
done
