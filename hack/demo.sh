#!/usr/bin/env bash
# make demo / make demo-down: the seed's cl01/cl02 example on this machine, end to end.
#
# As root on Linux with the node binaries built (hack/test-assets.sh), cl02 is a real-node cluster
# (test/harness/realnode) and the agents run as pods; otherwise cl02 is an API server only and its
# proxy a process on this machine. APIPROXY_DEMO_REAL_NODE=0 forces the API-server-only demo;
# APIPROXY_DEMO_LOCK_WAIT (seconds, default 300) is how long to wait for another real-node cluster.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
DEMO=.demo
LOCK_WAIT=${APIPROXY_DEMO_LOCK_WAIT:-300}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

down() {
  local clean=0
  if [[ -f $DEMO/env.pid ]]; then
    pid=$(cat $DEMO/env.pid)
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      # The real node's teardown (pods, containerd, kubelet, rules, links, mounts) takes a while.
      for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "demo environment (pid $pid) did not stop within 120s: killing it"
        kill -KILL "$pid"
      fi
    fi
    [[ -f $DEMO/env.log ]] && grep -E '^demo: |teardown' "$DEMO/env.log" | tail -3 || true
    grep -q '^demo: stopped in' "$DEMO/env.log" 2>/dev/null && clean=1
    grep -q 'real-node teardown:' "$DEMO/env.log" 2>/dev/null && clean=0
    # Nothing to clean when the node never started (e.g. the lock was held).
    grep -q '^starting cl02 on a real node' "$DEMO/env.log" 2>/dev/null || clean=1
  fi
  stop_recorded_children
  # A real-node demo that was killed (or crashed) leaves the node's processes, links, rules and
  # mounts: remove them, unless another real-node cluster holds the machine's lock now.
  if [[ $clean == 0 && -f $DEMO/realnode && -x bin/demo-env ]]; then
    bin/demo-env --cleanup --node-assets "$(cat $DEMO/realnode)"
  fi
  rm -rf "$DEMO"
  echo "demo stopped and $DEMO removed"
}

# stop_recorded_children stops, by PID, what a killed demo environment left running (the API servers
# and etcd it started; bin/demo-env recorded their PIDs with their start times in $DEMO/children).
stop_recorded_children() {
  [[ -f $DEMO/children ]] || return 0
  local pid start left=() dirs=()
  while read -r pid start; do
    # Still the same process: field 22 of /proc/PID/stat is its start time (the name has no spaces).
    [[ -r /proc/$pid/stat && $(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) == "$start" ]] || continue
    [[ $(awk '{print $3}' "/proc/$pid/stat") == Z ]] && continue
    # envtest's data and certificate directories, which its Stop would have removed.
    mapfile -t -O "${#dirs[@]}" dirs < <(tr '\0' '\n' < "/proc/$pid/cmdline" | grep -oE '^--(data|cert)-dir=/tmp/k8s_test_framework_[0-9]+$' | cut -d= -f2)
    kill -TERM "$pid" 2>/dev/null && left+=("$pid")
  done < "$DEMO/children"
  if ((${#left[@]})); then
    echo "stopping ${#left[@]} processes the demo environment left running: ${left[*]}"
    local alive
    for _ in $(seq 1 50); do
      alive=()
      for pid in "${left[@]}"; do
        if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then alive+=("$pid"); fi
      done
      ((${#alive[@]})) || break
      sleep 0.2
    done
    ((${#alive[@]} == 0)) || kill -KILL "${alive[@]}" 2>/dev/null || true
  fi
  if ((${#dirs[@]})); then rm -rf "${dirs[@]}"; fi
}

# why_not_real_node prints why cl02 cannot be a real node here, or nothing when it can.
why_not_real_node() {
  if [[ ${APIPROXY_DEMO_REAL_NODE:-} == 0 ]]; then echo "APIPROXY_DEMO_REAL_NODE=0"; return; fi
  if [[ $(uname -s) != Linux ]]; then echo "this is $(uname -s), and a real node (kubelet, containerd) needs Linux"; return; fi
  if [[ $(id -u) != 0 ]]; then echo "not root, and a real node (kubelet, containerd, bridge, iptables) needs root: sudo make demo"; return; fi
  local dir missing=()
  dir=$(hack/test-assets.sh --node-dir)
  for b in kubelet kube-controller-manager kube-scheduler kube-proxy containerd containerd-shim-runc-v2 ctr; do
    [[ -x $dir/$b ]] || missing+=("$b")
  done
  if ((${#missing[@]})); then echo "the node binaries are not built (${missing[*]} missing in $dir): run hack/test-assets.sh (several minutes, once)"; return; fi
  for p in /usr/sbin/runc /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap /usr/lib/cni/loopback; do
    [[ -x $p ]] || { echo "$p is missing: apt-get install runc containernetworking-plugins"; return; }
  done
  for b in iptables ip6tables conntrack; do
    command -v $b >/dev/null || { echo "$b is missing: apt-get install iptables conntrack"; return; }
  done
}

# start_env runs bin/demo-env in the background and shows its log until it is ready.
start_env() { # timeout-seconds args...
  local timeout=$1; shift
  nohup bin/demo-env --dir "$DEMO" "$@" > "$DEMO/env.log" 2>&1 &
  echo $! > "$DEMO/env.pid"
  local pid shown=0 start=$SECONDS n
  pid=$(cat $DEMO/env.pid)
  while [[ ! -f $DEMO/ready ]]; do
    if [[ -f $DEMO/env.log ]]; then
      n=$(wc -l < "$DEMO/env.log")
      if ((n > shown)); then sed -n "$((shown + 1)),${n}p" "$DEMO/env.log" | grep -v '^--- \|^\s' || true; shown=$n; fi
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n +$((shown + 1)) "$DEMO/env.log"
      echo "demo environment failed to start (log: $DEMO/env.log)"; down; exit 1
    fi
    if ((SECONDS - start > timeout)); then
      echo "demo environment not ready after ${timeout}s (log: $DEMO/env.log)"; down; exit 1
    fi
    sleep 0.5
  done
  tail -n +$((shown + 1)) "$DEMO/env.log"
}

up() {
  if [[ -f $DEMO/env.pid ]] && kill -0 "$(cat $DEMO/env.pid)" 2>/dev/null; then
    echo "the demo is already running (make demo-down stops it)"; exit 1
  fi
  rm -rf "$DEMO"; mkdir -p "$DEMO"
  trap 'echo "make demo failed above; what started still runs, for a look (KUBECONFIG=$PWD/$DEMO/kubeconfig): make demo-down stops it"' ERR
  why=$(why_not_real_node)
  if [[ -z $why ]]; then up_real_node; else up_api_only "$why"; fi
}

up_api_only() {
  say "cl02 runs as an API server only (no node): $1"
  echo "(as root on Linux, with the node binaries of hack/test-assets.sh, cl02 is a real node and the agents run as pods)"
  say "Building the plugin, the agent and the test cluster binaries (kube-apiserver, etcd, kubectl)"
  make -s build
  ASSETS=$(hack/test-assets.sh --api-only)  # this demo runs API servers only: no node binaries
  go build -o bin/demo-env ./hack/demo

  say "Starting two clusters, cl01 (consumer) and cl02 (provider), each a real kube-apiserver + etcd"
  echo "cl02's proxy IP 127.70.0.3 (in 127.70.0.0/16) is what Liqo's fabric would remap; cl01's"
  echo "Configuration for cl02 says that CIDR appears as 127.81.0.0/16 in cl01. 'agent proxy' listens"
  echo "on 127.81.0.3:8118 and forwards every CONNECT to cl02's API server, holding no credentials."
  start_env 60 --agent bin/agent --assets "$ASSETS"
  # As a user runs it: the plugin through kubectl (v1.36, from the test assets).
  export KUBECONFIG=$PWD/$DEMO/kubeconfig PATH=$PWD/bin:$ASSETS:$PATH

  say "get-ip: the address by which cl01 reaches cl02's proxy"
  run kubectl apiproxy --context cl02 get-ip --remote cl01 -o wide
  run kubectl apiproxy --context cl02 get-ip --remote cl01

  say "connect: kubectl get ns on cl02, tunnelled through the proxy (TLS end to end)"
  run kubectl apiproxy --context cl02 connect --remote cl01 -- kubectl get ns
  echo "(only-in-cl02 exists in cl02 alone: the answer came from cl02's API server)"

  say "A kubeconfig with proxy-url, for clients inside cl01"
  kubectl apiproxy --context cl02 connect --remote cl01 --write-kubeconfig "$DEMO/cl02-via-proxy.yaml"
  kubectl --kubeconfig "$DEMO/cl02-via-proxy.yaml" get ns only-in-cl02
  try_it "$ASSETS"
}

up_real_node() {
  NODE_ASSETS=$(hack/test-assets.sh --node-dir)
  say "cl02 runs on a real node (root, Linux, node binaries in $NODE_ASSETS): the agents run as pods"
  say "Building the plugin, the agent image (make image, no Docker) and the test images"
  make -s build
  ASSETS=$(hack/test-assets.sh --api-only)
  # Tagged with the plugin's version (make passes VERSION), so status reports no version skew. The
  # node pulls it from its registry by digest: AGENT_IMAGE in env.sh.
  AGENT_REF=apiproxy.local/agent:${VERSION:-demo}
  make -s image IMAGE=$AGENT_REF DIST=$DEMO/images
  go build -o bin/demo-env ./hack/demo
  CGO_ENABLED=0 go build -o $DEMO/images/pause ./test/images/pause
  CGO_ENABLED=0 go build -o $DEMO/images/app ./test/images/app
  echo "$NODE_ASSETS" > $DEMO/realnode

  say "Starting cl02 (a real node on bridge apxnode0, with an OCI registry) and cl01 (an API server only)"
  echo "Only one real-node cluster runs per machine ($LOCK_WAIT s wait at most if another one holds /run/apiproxy-realnode.lock)."
  start_env $((LOCK_WAIT + 300)) --real-node --assets "$ASSETS" --node-assets "$NODE_ASSETS" \
    --agent-image $DEMO/images/agent-image.tar --agent-ref $AGENT_REF \
    --pause $DEMO/images/pause --app $DEMO/images/app --lock-wait "${LOCK_WAIT}s"
  # shellcheck disable=SC1091
  source $DEMO/env.sh
  # As a user runs it: the plugin through kubectl (v1.36, from the test assets).
  export KUBECONFIG=$PWD/$DEMO/kubeconfig PATH=$PWD/bin:$ASSETS:$PATH
  k() { printf '$ kubectl %s\n' "$*"; kubectl "$@"; }

  say "install: the proxy, node and webhook agents as pods on cl02, waiting until they are Ready"
  echo "(pods reach kubernetes.default.svc through $HOST_ALIAS_IP, an address the node agent puts on the node;"
  echo " the node pulls the agent image from its registry, by digest)"
  run kubectl apiproxy --context cl02 install --roles proxy,node,webhook --apiserver-fqdn kubernetes.default.svc \
    --host-alias-ip "$HOST_ALIAS_IP" --node-ip "$HOST_ALIAS_IP" --setup-iptables --image "$AGENT_IMAGE" --wait --timeout 3m
  run kubectl apiproxy --context cl02 status
  k --context cl02 -n apiproxy-system get pods -o wide
  k --context cl02 -n apiproxy-system get events --field-selector reason=Pulled -o custom-columns=POD:.involvedObject.name,MESSAGE:.message

  say "webhook: a new pod gets the injected API server address"
  k --context cl02 run client --image "$APP_IMAGE" --image-pull-policy Never --restart Never -- serve :8080
  k --context cl02 get pod client -o jsonpath='KUBERNETES_SERVICE_HOST={.spec.containers[0].env[?(@.name=="KUBERNETES_SERVICE_HOST")].value}{"\n"}hostAliases={.spec.hostAliases}{"\n"}'
  k --context cl02 wait --for=condition=Ready pod/client --timeout 90s

  say "the pod lists pods with its in-cluster config, through the node IP $HOST_ALIAS_IP"
  printf '$ kubectl exec client -- /app kube-get /api/v1/namespaces/default/pods\n'
  kubectl --context cl02 exec client -- /app kube-get /api/v1/namespaces/default/pods | cut -c1-160
  echo "(the node agent keeps $HOST_ALIAS_IP on the node; its forwarder, a proxy on that address, carried the request:)"
  k --context cl02 -n apiproxy-system logs daemonset/apiproxy-node -c node --tail 1
  # Two forwarders share the node IP's sockets (one accepts, the other stands by): read both.
  printf '$ kubectl --context cl02 -n apiproxy-system logs daemonset/apiproxy-node --all-containers --prefix | grep tunnel\n'
  kubectl --context cl02 -n apiproxy-system logs daemonset/apiproxy-node --all-containers --prefix | grep '"tunnel"' | tail -1

  say "Liqo: cl02's proxy Service as cl01 sees it"
  CLUSTER_IP=$(kubectl --context cl02 -n apiproxy-system get service apiproxy-proxy -o jsonpath='{.spec.clusterIP}')
  k --context cl02 -n liqo get ips.ipam.liqo.io -o wide
  echo "(Liqo's IPAM would now give the IP its remapped address; this demo's peering maps cl02's"
  echo " Service range $SERVICE_CIDR to itself in cl01, so the address is the ClusterIP, which this"
  echo " machine reaches through kube-proxy and the bridge)"
  k --context cl02 -n liqo patch ips.ipam.liqo.io api-server-proxy --subresource status --type merge \
    -p "{\"status\":{\"ip\":\"$CLUSTER_IP\",\"cidr\":\"$SERVICE_CIDR\"}}"
  run kubectl apiproxy --context cl02 get-ip --remote cl01 -o wide

  say "connect: kubectl get ns on cl02 through the proxy pod (TLS end to end)"
  run kubectl apiproxy --context cl02 connect --remote cl01 -- kubectl get ns
  echo "(only-in-cl02 exists in cl02 alone: the answer came from cl02's API server, via the proxy pod)"
  printf '$ kubectl --context cl02 -n apiproxy-system logs -l app.kubernetes.io/component=proxy --all-containers --prefix | grep tunnel\n'
  kubectl --context cl02 -n apiproxy-system logs -l app.kubernetes.io/component=proxy --all-containers --prefix --tail 50 | grep '"tunnel"' | tail -1

  say "A kubeconfig with proxy-url, for clients inside cl01"
  kubectl apiproxy --context cl02 connect --remote cl01 --write-kubeconfig "$DEMO/cl02-via-proxy.yaml"
  kubectl --kubeconfig "$DEMO/cl02-via-proxy.yaml" get ns only-in-cl02
  try_it "$ASSETS"
}

try_it() {
  say "Try it yourself"
  cat <<EOT
  export KUBECONFIG=$PWD/$DEMO/kubeconfig PATH=$PWD/bin:$1:\$PATH   # the plugin and kubectl v1.36
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
