#!/usr/bin/env bash
# Builds the real kube-apiserver, kubectl and etcd that the integration tests run, from the Go module
# proxy only (no release downloads), using the pinned tools modules in hack/tools/. The binaries land
# in a cache directory outside the repository and are reused when already there.
#
#   hack/test-assets.sh            build if missing, print the directory
#   hack/test-assets.sh --dir      print the directory only
set -euo pipefail

K8S_VERSION=1.36.3
ETCD_VERSION=3.6.8
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${APIPROXY_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/apiproxy/k8s-$K8S_VERSION-etcd-$ETCD_VERSION}

if [[ "${1:-}" == "--dir" ]]; then echo "$OUT"; exit 0; fi

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/kubectl" && -x "$OUT/etcd" ]]; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT"
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
LDF="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
LDF="$LDF -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean"

echo ">> building test assets into $OUT (takes about 5 minutes on a cold cache)" >&2
(
  cd "$ROOT/hack/tools/k8s"
  # Build to temporary names and rename, so an interrupted build never leaves a half-written binary
  # that the "already built" check above would trust.
  go build -ldflags "$LDF" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  go build -ldflags "$LDF" -o "$OUT/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
)
(
  cd "$ROOT/hack/tools/etcd"
  go build -ldflags "-s -w" -o "$OUT/etcd.tmp" .
)
for b in kube-apiserver kubectl etcd; do mv "$OUT/$b.tmp" "$OUT/$b"; done
"$OUT/kube-apiserver" --version >&2
"$OUT/etcd" --version | head -1 >&2
echo "$OUT"
