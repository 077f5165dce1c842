#!/usr/bin/env bash
# make demo / make demo-down: the seed's cl01/cl02 example on this machine, end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=.demo
PLUGIN=bin/kubectl-apiproxy

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

down() {
  if [[ -f $DEMO/env.pid ]]; then
    pid=$(cat $DEMO/env.pid)
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
  fi
  rm -rf "$DEMO"
  echo "demo stopped and $DEMO removed"
}

up() {
  if [[ -f $DEMO/env.pid ]] && kill -0 "$(cat $DEMO/env.pid)" 2>/dev/null; then
    echo "the demo is already running (make demo-down stops it)"; exit 1
  fi
  rm -rf "$DEMO"; mkdir -p "$DEMO"
  say "Building the plugin, the agent and the test cluster binaries (kube-apiserver, etcd, kubectl)"
  make -s build
  ASSETS=$(hack/test-assets.sh --api-only)  # the demo runs API servers only: no node binaries
  go build -o bin/demo-env ./hack/demo

  say "Starting two clusters, cl01 (consumer) and cl02 (provider), each a real kube-apiserver + etcd"
  echo "cl02's proxy IP 127.70.0.3 (in 127.70.0.0/16) is what Liqo's fabric would remap; cl01's"
  echo "Configuration for cl02 says that CIDR appears as 127.81.0.0/16 in cl01. 'agent proxy' listens"
  echo "on 127.81.0.3:8118 and forwards every CONNECT to cl02's API server, holding no credentials."
  nohup bin/demo-env --dir "$DEMO" --agent bin/agent --assets "$ASSETS" > "$DEMO/env.log" 2>&1 &
  echo $! > "$DEMO/env.pid"
  for _ in $(seq 1 300); do
    [[ -f $DEMO/ready ]] && break
    kill -0 "$(cat $DEMO/env.pid)" 2>/dev/null || { cat "$DEMO/env.log"; echo "demo environment failed to start"; exit 1; }
    sleep 0.2
  done
  [[ -f $DEMO/ready ]] || { cat "$DEMO/env.log"; echo "demo environment not ready after 60s"; down; exit 1; }
  cat "$DEMO/env.log"
  export KUBECONFIG=$PWD/$DEMO/kubeconfig
  KUBECTL=$ASSETS/kubectl

  say "get-ip: the address by which cl01 reaches cl02's proxy"
  echo "\$ kubectl apiproxy --context cl02 get-ip --remote cl01 -o wide"
  $PLUGIN --context cl02 get-ip --remote cl01 -o wide
  echo "\$ kubectl apiproxy --context cl02 get-ip --remote cl01"
  $PLUGIN --context cl02 get-ip --remote cl01

  say "connect: kubectl get ns on cl02, tunnelled through the proxy (TLS end to end)"
  echo "\$ kubectl apiproxy --context cl02 connect --remote cl01 -- kubectl get ns"
  $PLUGIN --context cl02 connect --remote cl01 -- "$KUBECTL" get ns
  echo "(only-in-cl02 exists in cl02 alone: the answer came from cl02's API server)"

  say "A kubeconfig with proxy-url, for clients inside cl01"
  $PLUGIN --context cl02 connect --remote cl01 --write-kubeconfig "$DEMO/cl02-via-proxy.yaml"
  "$KUBECTL" --kubeconfig "$DEMO/cl02-via-proxy.yaml" get ns only-in-cl02

  say "Try it yourself"
  cat <<EOT
  export KUBECONFIG=$PWD/$DEMO/kubeconfig PATH=$PWD/bin:$ASSETS:\$PATH   # the plugin and kubectl v1.36
  kubectl apiproxy --context cl02 get-ip --remote cl01 -o yaml
  kubectl apiproxy --context cl02 connect --remote cl01      # a local listener, until Ctrl-C
  kubectl --kubeconfig $DEMO/cl02-via-proxy.yaml get ns
  make demo-down                                             # stop everything
EOT
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down"; exit 2 ;;
esac
