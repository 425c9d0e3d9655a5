#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver) on random loopback ports, for tests
# and local development. Binaries come from .ci/k8s/build-bins.sh (built once, cached).
#
#   control-plane.sh up      start; prints the kubeconfig path on the last line
#   control-plane.sh down    stop the processes this script started (and only those)
#   control-plane.sh status  say whether it is running
#   control-plane.sh run CMD...  up, run CMD with TEST_KUBECONFIG/KUBECONFIG set (and OAUTH3_KWOK,
#                                the kwok binary of the kwok test tier, unless already set), down
#
#   OAUTH3_CLUSTER_DIR  state directory (default: <repo>/.cluster); holds the PKI, logs, pids
#                       and the kubeconfig
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${OAUTH3_CLUSTER_DIR:-$repo/.cluster}
log() { echo "control-plane: $*" >&2; }

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

ready() {
  curl -sf --max-time 3 --cacert "$DIR/ca.crt" --cert "$DIR/admin.crt" --key "$DIR/admin.key" \
    "https://127.0.0.1:$(cat "$DIR/apiserver.port")/readyz" >/dev/null 2>&1
}

pki() {
  cd "$DIR"
  local q=(-days 30 -sha256)
  openssl req -x509 -newkey rsa:2048 -nodes "${q[@]}" -subj /CN=oauth3-test-ca \
    -keyout ca.key -out ca.crt 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.cnf
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.cnf
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial "${q[@]}" \
    -extfile server.cnf -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=oauth3-admin" -keyout admin.key -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial "${q[@]}" \
    -extfile client.cnf -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

up() {
  if running apiserver && running etcd && ready; then
    log "already running (state in $DIR)"; echo "$DIR/kubeconfig"; return 0
  fi
  down >/dev/null 2>&1 || true
  local bin
  bin=$(bash "$repo/.ci/k8s/build-bins.sh" | tail -n1)
  rm -rf "$DIR"; mkdir -p "$DIR"
  pki
  read -r EP PP AP < <(python3 -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  echo "$AP" > "$DIR/apiserver.port"
  "$bin/etcd" --name oauth3-test --data-dir "$DIR/etcd" --unsafe-no-fsync --log-level warn \
    --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
    --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "oauth3-test=http://127.0.0.1:$PP" > "$DIR/etcd.log" 2>&1 &
  echo $! > "$DIR/etcd.pid"
  "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$EP" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$AP" --cert-dir="$DIR" \
    --tls-cert-file="$DIR/apiserver.crt" --tls-private-key-file="$DIR/apiserver.key" \
    --client-ca-file="$DIR/ca.crt" --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --service-account-issuer="https://127.0.0.1:$AP" --service-account-key-file="$DIR/sa.pub" \
    --service-account-signing-key-file="$DIR/sa.key" --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none > "$DIR/apiserver.log" 2>&1 &
  echo $! > "$DIR/apiserver.pid"
  cat > "$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: oauth3-test
  cluster:
    server: https://127.0.0.1:$AP
    certificate-authority: $DIR/ca.crt
users:
- name: oauth3-admin
  user:
    client-certificate: $DIR/admin.crt
    client-key: $DIR/admin.key
contexts:
- name: oauth3-test
  context: {cluster: oauth3-test, user: oauth3-admin, namespace: default}
current-context: oauth3-test
KC
  for _ in $(seq 1 180); do
    ready && break
    running etcd || { tail -30 "$DIR/etcd.log" >&2; log "etcd exited"; down; return 1; }
    running apiserver || { tail -40 "$DIR/apiserver.log" >&2; log "kube-apiserver exited"; down; return 1; }
    sleep 0.5
  done
  ready || { tail -60 "$DIR/apiserver.log" >&2; log "kube-apiserver not ready after 90s"; down; return 1; }
  log "kube-apiserver ready on https://127.0.0.1:$AP (state in $DIR)"
  echo "$DIR/kubeconfig"
}

down() {
  local p pid
  for p in apiserver etcd; do
    if running "$p"; then pid=$(cat "$DIR/$p.pid"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$p.pid"
  done
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running apiserver && ready; then echo "running: export KUBECONFIG=$DIR/kubeconfig"; else echo "not running"; exit 1; fi ;;
  run)
    shift
    started=
    if ! (running apiserver && ready); then started=1; fi
    kc=$(up | tail -n1)
    [ -z "$started" ] || trap down EXIT
    kwok=${OAUTH3_KWOK:-$(bash "$repo/.ci/k8s/build-bins.sh" | tail -n1)/kwok}
    set +e
    TEST_KUBECONFIG=$kc KUBECONFIG=$kc OAUTH3_KWOK=$kwok "$@"
    rc=$?
    exit $rc ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
