#!/usr/bin/env bash
# Installs what the tests and benchmarks need beyond the Rust toolchain, from Debian
# packages. Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
command -v mount >/dev/null || need+=(mount)
command -v curl >/dev/null || need+=(curl)
command -v pgrep >/dev/null || need+=(procps)
command -v rustfmt >/dev/null || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need ${need[*]} but not running as root; install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
