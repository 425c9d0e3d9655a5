#!/usr/bin/env bash
# Builds what the real-node tier runs besides the control plane, from the published Go modules
# with the local Go toolchain: the kubelet, kube-proxy and kube-scheduler (via build-bins.sh),
# containerd with its runc shim and ctr, the CNI plugins (bridge, host-local, loopback, portmap)
# kube-router (its NetworkPolicy controller) and runc (with seccomp: cgo and libseccomp-dev; the
# distribution's runc 1.1 cannot run the OCI specs containerd 2 writes). Cached outside the repository in
# $CI_K8S_CACHE (default /var/cache/ci-k8s); a run with everything cached takes well under a
# second. Prints the binary directory on the last line (CNI plugins are in its cni/ folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
CACHE=${CI_K8S_CACHE:-/var/cache/ci-k8s}
BIN=$CACHE/bin/node-$K8S_VERSION-containerd-$CONTAINERD_VERSION-cni-$CNI_PLUGINS_VERSION-kube-router-$KUBE_ROUTER_VERSION-runc-$RUNC_VERSION
export GOTOOLCHAIN=local CGO_ENABLED=0 GOMODCACHE=$CACHE/gomod GOCACHE=$CACHE/gobuild GOFLAGS= GOPATH=$CACHE/gopath
command -v go >/dev/null || { echo "build-node: no Go toolchain on PATH" >&2; exit 1; }
log() { echo "build-node: $*" >&2; }
mkdir -p "$BIN/cni"

kube=$(K8S_COMPONENTS="kube-apiserver kubelet kube-proxy kube-scheduler" bash "$here/build-bins.sh" | tail -n1)
for c in kubelet kube-proxy kube-scheduler; do ln -sf "$kube/$c" "$BIN/$c"; done

if [ ! -x "$BIN/containerd" ] || [ ! -x "$BIN/containerd-shim-runc-v2" ] || [ ! -x "$BIN/ctr" ]; then
  log "building containerd $CONTAINERD_VERSION (cold: a few minutes on 2 cores)"
  m=github.com/containerd/containerd/v2/cmd
  GOBIN=$BIN go install -trimpath -ldflags "-s -w" -tags "no_btrfs no_devmapper no_zfs" \
    "$m/containerd@$CONTAINERD_VERSION" "$m/containerd-shim-runc-v2@$CONTAINERD_VERSION" "$m/ctr@$CONTAINERD_VERSION"
fi
plugins=(main/bridge main/loopback ipam/host-local meta/portmap)
need=
for p in "${plugins[@]}"; do [ -x "$BIN/cni/${p#*/}" ] || need=1; done
if [ -n "$need" ]; then
  log "building the CNI plugins $CNI_PLUGINS_VERSION"
  # shellcheck disable=SC2046
  GOBIN=$BIN/cni go install -trimpath -ldflags "-s -w" \
    $(for p in "${plugins[@]}"; do echo "github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION"; done)
fi
if [ ! -x "$BIN/runc" ]; then
  log "building runc $RUNC_VERSION"
  CGO_ENABLED=1 GOBIN=$BIN go install -trimpath -ldflags "-s -w" -tags seccomp \
    "github.com/opencontainers/runc@$RUNC_VERSION"
fi
if [ ! -x "$BIN/kube-router" ]; then
  log "building kube-router $KUBE_ROUTER_VERSION"
  GOBIN=$BIN go install -trimpath -ldflags "-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
fi
echo "$BIN"
