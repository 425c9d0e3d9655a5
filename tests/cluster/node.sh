#!/usr/bin/env bash
# A real Kubernetes node on this machine, joined to the control plane of control-plane.sh, for
# the node test tier: containerd with runc, the kubelet, kube-scheduler, kube-proxy (iptables)
# and kube-router's NetworkPolicy controller; Pods on a local bridge (CNI bridge + host-local
# IPAM); upstreams for the tests in a network namespace this script creates. Binaries come from
# .ci/k8s/build-node.sh, images (the sandbox runner and pause, assembled without a Docker
# daemon) from tests/cluster/images/build.sh; both are cached.
#
# There is no Kata or TDX here: RuntimeClass `runc` (handler runc, plain Linux containers)
# stands in for the confidential RuntimeClass, and the key and quote providers are the tests'
# dstack stand-ins on a host socket.
#
#   node.sh up      start (the control plane must be running); prints the env file on the last line
#   node.sh down    stop what this script started (and only that); remove its mounts, network
#                   namespace, bridge and the iptables rules of kube-proxy and kube-router
#   node.sh status  say whether it is running
#   node.sh run CMD...  up, run CMD with the OAUTH3_NODE_* variables of the env file set, down
#
#   OAUTH3_CLUSTER_DIR  the control plane's state directory (default: <repo>/.cluster)
#   OAUTH3_NODE_DIR     this node's state directory (default: <repo>/.node): config, logs, pids,
#                       containerd's and the kubelet's data
#   OAUTH3_NODE_LOCK    the lock `run` holds, one node per machine (default: /tmp/oauth3-node.lock)
#
# Network (fixed names: one such node per machine): bridge oauth3br0 10.88.0.1/16 (Pods get
# 10.88.0.2 and up; the node's own address is 10.88.0.1), network namespace oauth3-up reached
# over the veth pair oauth3up-h/oauth3up-n with 192.88.99.1 on the host side and 192.88.99.10
# and 192.88.99.20 inside. The upstreams need addresses the operator's egress rules count as
# public (documentation and private ranges are refused, as they must be), so they come from
# 192.88.99.0/24, the deprecated 6to4 relay anycast block (RFC 7526): while the node runs, this
# machine routes it to the namespace and nowhere else.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=${OAUTH3_CLUSTER_DIR:-$repo/.cluster}
DIR=${OAUTH3_NODE_DIR:-$repo/.node}
NODE=oauth3-node
BRIDGE=oauth3br0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
NETNS=oauth3-up
UP_HOST=192.88.99.1
UPSTREAMS="192.88.99.10 192.88.99.20"
RUNTIME_CLASS=runc
log() { echo "node: $*" >&2; }

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

api() {
  curl -sf --max-time 5 --cacert "$CLUSTER/ca.crt" --cert "$CLUSTER/admin.crt" \
    --key "$CLUSTER/admin.key" "https://127.0.0.1:$(cat "$CLUSTER/apiserver.port")$1" "${@:2}"
}

node_ready() {
  api "/api/v1/nodes/$NODE" 2>/dev/null | python3 -c 'import json,sys
n=json.load(sys.stdin)
sys.exit(0 if any(c["type"]=="Ready" and c["status"]=="True" for c in n["status"].get("conditions",[])) else 1)' 2>/dev/null
}

ports() {
  python3 -c 'import socket
s=[socket.socket() for _ in range('"$1"')]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])'
}

start() { # name, command...
  local name=$1; shift
  "$@" > "$DIR/$name.log" 2>&1 &
  echo $! > "$DIR/$name.pid"
}

wait_for() { # what, seconds, test command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 2))); do
    "$@" && return 0
    sleep 0.5
  done
  log "$what not ready after ${secs}s"; return 1
}

preflight() {
  [ "$(id -u)" = 0 ] || { log "needs root (network namespaces, containers, iptables)"; exit 1; }
  local t
  for t in ip iptables ipset curl python3; do
    command -v "$t" >/dev/null || { log "needs $t (apt-get install iproute2 iptables ipset curl python3)"; exit 1; }
  done
  [ -f "$CLUSTER/apiserver.port" ] || { log "no control plane in $CLUSTER: start it with control-plane.sh up"; exit 1; }
  local free
  free=$(df -Pk "$repo" | awk 'NR==2 {print $4}')
  if [ "${free:-0}" -lt $((4 * 1024 * 1024)) ]; then
    log "only $((free / 1024)) MiB free under $repo: the kubelet evicts Pods under disk pressure; free at least 4 GiB"
    exit 1
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1 && ! running kubelet; then
    log "bridge $BRIDGE exists but no node of this checkout runs: another node.sh (or a stale one) owns it; run 'node.sh down' where it was started, or remove it with 'ip link del $BRIDGE'"
    exit 1
  fi
}

network() {
  sysctl -qw net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "warning: bridge-nf-call-iptables unavailable (policies between Pods on the bridge are not enforced)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip netns add "$NETNS"
  ip link add oauth3up-h type veth peer name oauth3up-n
  ip link set oauth3up-n netns "$NETNS"
  ip addr add "$UP_HOST/24" dev oauth3up-h
  ip link set oauth3up-h up
  local a
  for a in $UPSTREAMS; do ip -n "$NETNS" addr add "$a/24" dev oauth3up-n; done
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link set oauth3up-n up
  ip -n "$NETNS" route add default via "$UP_HOST"
}

up() {
  if running kubelet && node_ready; then
    log "already running (state in $DIR)"; echo "$DIR/env"; return 0
  fi
  preflight
  down >/dev/null 2>&1 || true
  local bin images kc
  bin=$(bash "$repo/.ci/k8s/build-node.sh" | tail -n1)
  images=$(bash "$repo/tests/cluster/images/build.sh" | tail -n1)
  rm -rf "$DIR"; mkdir -p "$DIR/cni/net.d" "$DIR/kubelet"
  kc=$CLUSTER/kubeconfig
  network
  read -r KP KSP PMP PHP < <(ports 4)

  cat > "$DIR/containerd.toml" <<EOF
version = 3
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd.sock"
[ttrpc]
  address = "$DIR/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE: no process may lower its oom_score_adj, so
  # containers keep containerd's instead of the kubelet's negative QoS values.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = '$RUNTIME_CLASS'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.$RUNTIME_CLASS]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.$RUNTIME_CLASS.options]
        BinaryName = '$bin/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$bin/cni']
    conf_dir = '$DIR/cni/net.d'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'oauth3.local/pause:3.10'
EOF
  cat > "$DIR/cni/net.d/10-oauth3.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "oauth3-node", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  start containerd env PATH="$bin:$PATH" "$bin/containerd" --config "$DIR/containerd.toml"
  wait_for containerd 30 "$bin/ctr" -a "$DIR/containerd.sock" version >/dev/null 2>&1 \
    || { tail -20 "$DIR/containerd.log" >&2; down; return 1; }
  local tar
  for tar in "$images"/*.tar; do
    "$bin/ctr" -a "$DIR/containerd.sock" -n k8s.io images import "$tar" >/dev/null
  done

  cat > "$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine has hybrid cgroups (v1 controllers); kubelets of 1.35+ need this to start there.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$DIR/containerd.sock
address: 127.0.0.1
port: $KP
readOnlyPort: 0
healthzPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
resolvConf: ""
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  start kubelet "$bin/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$kc" \
    --root-dir "$DIR/kubelet" --cert-dir "$DIR/kubelet/pki" --hostname-override "$NODE" \
    --node-ip "$NODE_IP" --v=1
  wait_for "the kubelet's node" 90 node_ready \
    || { tail -30 "$DIR/kubelet.log" >&2; down; return 1; }
  # There is no kube-controller-manager: set the Pod range it would assign (kube-router reads
  # it) and lift the not-ready taint its node lifecycle controller lifts once the node is Ready.
  api "/api/v1/nodes/$NODE" -X PATCH -H 'Content-Type: application/merge-patch+json' \
    -d "{\"spec\":{\"podCIDR\":\"$POD_CIDR\",\"podCIDRs\":[\"$POD_CIDR\"],\"taints\":null}}" >/dev/null

  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kc" --authentication-kubeconfig "$kc" \
    --authorization-kubeconfig "$kc" --leader-elect=false --bind-address=127.0.0.1 \
    --secure-port="$KSP"
  cat > "$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$kc"}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:$PMP
healthzBindAddress: 127.0.0.1:$PHP
conntrack: {maxPerCore: 0, min: 0}
EOF
  start kube-proxy "$bin/kube-proxy" --config "$DIR/kube-proxy.yaml"
  start kube-router "$bin/kube-router" --kubeconfig="$kc" --hostname-override="$NODE" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-ipv6=false \
    --service-cluster-ip-range=10.0.0.0/24 --health-port=0 --metrics-port=0
  sleep 2
  local p
  for p in kube-scheduler kube-proxy kube-router; do
    running "$p" || { tail -30 "$DIR/$p.log" >&2; log "$p exited"; down; return 1; }
  done
  api /apis/node.k8s.io/v1/runtimeclasses -X POST -H 'Content-Type: application/json' \
    -d "{\"apiVersion\":\"node.k8s.io/v1\",\"kind\":\"RuntimeClass\",\"metadata\":{\"name\":\"$RUNTIME_CLASS\"},\"handler\":\"$RUNTIME_CLASS\"}" \
    >/dev/null 2>&1 || true
  cat > "$DIR/env" <<EOF
OAUTH3_NODE=$NODE
OAUTH3_NODE_IP=$NODE_IP
OAUTH3_NODE_RUNTIME_CLASS=$RUNTIME_CLASS
OAUTH3_NODE_RUNNER_IMAGE=oauth3.local/sandbox-runner:dev
OAUTH3_NODE_NETNS=/var/run/netns/$NETNS
OAUTH3_NODE_UPSTREAMS="$UPSTREAMS"
OAUTH3_NODE_DIR=$DIR
EOF
  log "node $NODE ready: containerd + runc, kubelet, kube-scheduler, kube-proxy, kube-router (state in $DIR)"
  echo "$DIR/env"
}

down() {
  local bin p pid
  bin=$(bash "$repo/.ci/k8s/build-node.sh" 2>/dev/null | tail -n1) || bin=
  for p in kube-router kube-proxy kube-scheduler kubelet; do
    if running "$p"; then pid=$(cat "$DIR/$p.pid"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$p.pid"
  done
  if [ -n "$bin" ]; then
    [ ! -f "$DIR/kube-router.log" ] || "$bin/kube-router" --cleanup-config >/dev/null 2>&1 || true
    [ ! -f "$DIR/kube-proxy.yaml" ] || "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  if running containerd && [ -n "$bin" ]; then
    local ctr=("$bin/ctr" -a "$DIR/containerd.sock" -n k8s.io) c
    for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
      "${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
      "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true
    done
    pid=$(cat "$DIR/containerd.pid"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/containerd.pid"
  # Pod network namespaces and volume mounts (secrets are tmpfs) of this node only.
  if [ -d "$DIR" ]; then
    findmnt -rn -o TARGET | grep -F "$DIR/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  ip netns del "$NETNS" 2>/dev/null || true
  ip link del oauth3up-h 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running kubelet && node_ready; then echo "running: node $NODE (state in $DIR)"; else echo "not running"; exit 1; fi ;;
  run)
    shift
    # One such node per machine (fixed names): a second checkout's run waits for the first.
    exec 9>"${OAUTH3_NODE_LOCK:-/tmp/oauth3-node.lock}"
    if ! flock -n 9; then log "another node tier runs on this machine; waiting for it"; flock 9; fi
    started=
    if ! (running kubelet && node_ready); then started=1; fi
    env_file=$(up | tail -n1)
    [ -z "$started" ] || trap down EXIT
    set -a
    # shellcheck disable=SC1090
    source "$env_file"
    set +a
    set +e
    "$@"
    exit $? ;;
  *) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
