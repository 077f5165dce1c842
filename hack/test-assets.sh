#!/usr/bin/env bash
# Builds the real Kubernetes binaries that the integration tests run, from the Go module proxy only (no
# release downloads), using the pinned tools modules in hack/tools/. The binaries land in cache
# directories outside the repository and are reused when already there.
#
#   kube-apiserver, kubectl, etcd           -> --dir       (KUBEBUILDER_ASSETS of the API-server-only tests)
#   krew, validate-krew-manifest            -> --dir       (sigs.k8s.io/krew: test/release installs the
#                                                           release archive with the real krew)
#   kubelet, kube-controller-manager,       -> --node-dir  (the real-node cluster of test/harness/realnode;
#   kube-scheduler, kube-proxy,                            runc, CNI plugins, iptables and conntrack come
#   containerd, containerd-shim-runc-v2, ctr               from Debian packages, see .ci/run)
#   registry                                -> --node-dir  (the CNCF distribution registry the real node
#                                                           pulls the agent image from)
#   Liqo's CRDs (LIQO_VERSIONS)             -> the Go module cache: `go mod download` of github.com/liqotech/liqo
#                                              at each version, nothing built; the tests find them with
#                                              the same command (test/fixtures/liqo), Liqo is no go.mod
#                                              dependency
#
# Each group has its own "already built" check, so adding a tool never rebuilds the others.
#
#   hack/test-assets.sh              build whatever is missing in both directories, print the --dir one
#   hack/test-assets.sh --dir        print the API server directory only
#   hack/test-assets.sh --node-dir   print the node directory only
#   hack/test-assets.sh --api-only   build only the API server directory (no node binaries), print it
#   hack/test-assets.sh --node-only  build only the node directory, print it
set -euo pipefail

K8S_VERSION=1.36.3
ETCD_VERSION=3.6.8
CONTAINERD_VERSION=2.2.9
# Keep in step with hack/tools/registry/go.mod and hack/tools/krew/go.mod.
REGISTRY_VERSION=3.1.2
KREW_VERSION=0.4.3
# The Liqo releases whose CRDs the tests run on; keep in step with test/fixtures/liqo.Versions.
LIQO_VERSIONS="v1.2.0 v1.0.0"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/apiproxy
OUT=${APIPROXY_ASSETS_DIR:-$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION}
NODE_OUT=${APIPROXY_NODE_ASSETS_DIR:-$CACHE/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION}

case "${1:-}" in
  --dir) echo "$OUT"; exit 0 ;;
  --node-dir) echo "$NODE_OUT"; exit 0 ;;
  --api-only|--node-only|"") ;;
  *) echo "usage: $0 [--dir|--node-dir|--api-only|--node-only]" >&2; exit 2 ;;
esac

all_there() { # dir binaries...
  local d=$1; shift
  for b in "$@"; do [[ -x "$d/$b" ]] || return 1; done
}

# Build to temporary names and rename at the end, so an interrupted build never leaves a half-written
# binary that the "already built" check would trust.
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
LDF="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
LDF="$LDF -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean"

API_BINS=(kube-apiserver kubectl etcd)
if [[ "${1:-}" != "--node-only" ]] && ! all_there "$OUT" "${API_BINS[@]}"; then
  mkdir -p "$OUT"
  echo ">> building kube-apiserver, kubectl and etcd into $OUT (about 5 minutes on a cold cache)" >&2
  (
    cd "$ROOT/hack/tools/k8s"
    go build -ldflags "$LDF" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    go build -ldflags "$LDF" -o "$OUT/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
  )
  (
    cd "$ROOT/hack/tools/etcd"
    go build -ldflags "-s -w" -o "$OUT/etcd.tmp" .
  )
  for b in "${API_BINS[@]}"; do mv "$OUT/$b.tmp" "$OUT/$b"; done
  "$OUT/kube-apiserver" --version >&2
  "$OUT/etcd" --version | head -1 >&2
fi

# krew v0.4.3 pins Kubernetes libraries of its time: they stay inside its own tools module. No
# version is stamped in on purpose: an unstamped krew is a "development build", which never asks
# GitHub for a newer release (the tests also set KREW_NO_UPGRADE_CHECK).
KREW_BINS=(krew validate-krew-manifest)
if [[ "${1:-}" != "--node-only" ]] && ! all_there "$OUT" "${KREW_BINS[@]}"; then
  mkdir -p "$OUT"
  echo ">> building krew v$KREW_VERSION and validate-krew-manifest into $OUT (about 2 minutes on a cold cache)" >&2
  (
    cd "$ROOT/hack/tools/krew"
    for b in "${KREW_BINS[@]}"; do
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/$b.tmp" "sigs.k8s.io/krew/cmd/$b"
    done
  )
  for b in "${KREW_BINS[@]}"; do mv "$OUT/$b.tmp" "$OUT/$b"; done
fi

# Liqo's CRDs: a download into the Go module cache (a no-op when there), outside this repository's
# module so that neither go.mod nor GOFLAGS matter.
if [[ "${1:-}" != "--node-only" ]]; then
  for v in $LIQO_VERSIONS; do
    (cd "${TMPDIR:-/tmp}" && GOFLAGS= GOWORK=off GO111MODULE=on go mod download github.com/liqotech/liqo@"$v") ||
      { echo "downloading Liqo $v's CRDs (go mod download github.com/liqotech/liqo@$v) failed" >&2; exit 1; }
  done
fi

NODE_BINS=(kubelet kube-controller-manager kube-scheduler kube-proxy containerd containerd-shim-runc-v2 ctr)
WANT_NODE=1
[[ "${1:-}" == "--api-only" ]] && WANT_NODE=0
if [[ "$(uname -s)" != Linux ]]; then
  # The real node (kubelet, containerd's runc shim) is Linux only; its tests skip elsewhere.
  [[ "${1:-}" == "--node-only" ]] && { echo "the node binaries are built on Linux only" >&2; exit 1; }
  WANT_NODE=0
fi
if ((WANT_NODE)) && ! all_there "$NODE_OUT" "${NODE_BINS[@]}"; then
  mkdir -p "$NODE_OUT"
  echo ">> building the node binaries into $NODE_OUT (about 8 minutes on a cold cache, see README)" >&2
  (
    cd "$ROOT/hack/tools/containerd"
    # Static, and without the snapshotters that need C libraries or kernel features the node does not use.
    for b in containerd containerd-shim-runc-v2 ctr; do
      CGO_ENABLED=0 go build -tags "no_btrfs no_devmapper no_zfs no_aufs" \
        -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=v$CONTAINERD_VERSION" \
        -o "$NODE_OUT/$b.tmp" "github.com/containerd/containerd/v2/cmd/$b"
    done
  )
  (
    cd "$ROOT/hack/tools/k8s"
    for b in kube-scheduler kube-proxy kube-controller-manager kubelet; do
      go build -ldflags "$LDF" -o "$NODE_OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    done
  )
  for b in "${NODE_BINS[@]}"; do mv "$NODE_OUT/$b.tmp" "$NODE_OUT/$b"; done
  "$NODE_OUT/kubelet" --version >&2
  "$NODE_OUT/containerd" --version >&2
fi
if ((WANT_NODE)) && ! all_there "$NODE_OUT" registry; then
  mkdir -p "$NODE_OUT"
  echo ">> building the distribution registry v$REGISTRY_VERSION into $NODE_OUT (about 2 minutes on a cold cache)" >&2
  (
    cd "$ROOT/hack/tools/registry"
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=v$REGISTRY_VERSION" \
      -o "$NODE_OUT/registry.tmp" github.com/distribution/distribution/v3/cmd/registry
  )
  mv "$NODE_OUT/registry.tmp" "$NODE_OUT/registry"
  "$NODE_OUT/registry" --version >&2
fi
if [[ "${1:-}" == "--node-only" ]]; then echo "$NODE_OUT"; else echo "$OUT"; fi
