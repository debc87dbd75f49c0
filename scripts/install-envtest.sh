#!/usr/bin/env bash
# Builds the control plane the end-to-end tests run against (tests/envtest/):
# kube-apiserver, kube-controller-manager and kubectl 1.20.2 from Debian bookworm's
# `kubernetes` source package, plus Debian's etcd. No registry ships these binaries;
# the Debian source package is the whole upstream tree with vendor/, and it builds
# offline with Debian's Go.
#
# The binaries are cached in $KUBESCRIBE_ENVTEST_DIR (default
# ~/.cache/kubescribe/envtest/1.20.2), so only the first run pays the ~5 minute build.
# With $KUBEBUILDER_ASSETS set (controller-runtime's envtest convention, e.g. from
# `setup-envtest use`), the tests use those binaries and this script builds nothing.
# Idempotent.
set -euo pipefail

VERSION=1.20.2
MINOR=20
DEB_VERSION=1.20.5+really1.20.2
CACHE=${KUBESCRIBE_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubescribe/envtest/$VERSION}
BINARIES=(kube-apiserver kube-controller-manager kubectl)

log() { echo "install-envtest: $*" >&2; }

if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS: the tests use those binaries, nothing to build"
  exit 0
fi

have_all=true
for b in "${BINARIES[@]}"; do [[ -x $CACHE/$b ]] || have_all=false; done
# etcd is Debian's package; the cache links it so that the cache alone is a complete
# KUBEBUILDER_ASSETS directory.
[[ -x $CACHE/etcd ]] || have_all=false
if $have_all && [[ -x /usr/bin/etcd ]]; then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  log "the envtest binaries are missing from $CACHE and building them needs apt-get (root)."
  log "Either run this script as root, or point KUBEBUILDER_ASSETS at a directory holding"
  log "etcd, kube-apiserver and kubectl (for example: setup-envtest use -p path 1.20.x)."
  exit 1
fi

need=()
command -v go >/dev/null || need+=(golang-go)
[[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] || need+=(golang-github-modern-go-reflect2-dev)
[[ -x /usr/bin/etcd ]] || need+=(etcd-server)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)

# apt-get source needs a deb-src entry for bookworm main: the same archive and keyring
# as the machine's own Debian source.
SRC_LIST=/etc/apt/sources.list.d/kubescribe-src.sources
updated=false
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src ' /etc/apt/sources.list; then
  cat >"$SRC_LIST" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
if ((${#need[@]})); then
  apt-get update -qq
  updated=true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$CACHE"
ln -sf /usr/bin/etcd "$CACHE/etcd"

$have_all && exit 0

# A fixed build directory, so Go's build cache (~/.cache/go-build) still matches when
# a failed build is run again; removed once the binaries are in the cache.
work=$CACHE.build
rm -rf "$work"
mkdir -p "$work"
log "building kube-apiserver, kube-controller-manager and kubectl $VERSION from Debian's source package (about 5 minutes on 2 cores)"
cd "$work"
$updated || apt-get update -qq
apt-get source --download-only "kubernetes=$DEB_VERSION*" >/dev/null 2>&1 \
  || apt-get source --download-only kubernetes >/dev/null
orig=$(ls kubernetes_*.orig.tar.gz)
mkdir -p gopath/src/k8s.io
tar -xzf "$orig" -C gopath/src/k8s.io
mv gopath/src/k8s.io/kubernetes-* gopath/src/k8s.io/kubernetes
K8S=$work/gopath/src/k8s.io/kubernetes

# module mode stops with "updates to go.mod needed": build in GOPATH mode.
export GOPATH=$work/gopath GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
# The vendored reflect2 1.0.1 crashes under Go >= 1.18; Debian's 1.0.2 works.
rm -rf "$K8S/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$K8S/vendor/github.com/modern-go/reflect2"

# The tarball lacks pkg/generated/openapi/zz_generated.openapi.go. Generate it the way
# build/root/Makefile.generated_files does: every package with a +k8s:openapi-gen= tag,
# staging/src/k8s.io/* named as their vendor/k8s.io/* equivalents.
cd "$K8S"
go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
dirs=$(find -H . \( -path ./vendor -o -path './_*' -o -path './.*' \) -prune -o -type f -name '*.go' -print \
  | sed 's|^./staging/src|vendor|; s|^\./||' \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
  | xargs grep -l '^// *+k8s:openapi-gen=' \
  | xargs -n1 dirname | LC_ALL=C sort -u \
  | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
"$work/openapi-gen" --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
  -r "$work/violations.report" 2>"$work/openapi-gen.log" \
  || { tail -20 "$work/openapi-gen.log" >&2; exit 1; }

# The version the tarball's build scripts would stamp (hack/lib/version.sh), so
# `kubectl version` and /version say 1.20.2, not v0.0.0-master.
ldflags=""
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=debian-$DEB_VERSION"
done
for b in "${BINARIES[@]}"; do
  go build -trimpath -tags providerless -ldflags "$ldflags" -o "$work/bin/$b" "./cmd/$b"
done
for b in "${BINARIES[@]}"; do install -m 0755 "$work/bin/$b" "$CACHE/$b"; done
cd /
rm -rf "$work"
log "built into $CACHE"
"$CACHE/kube-apiserver" --version
