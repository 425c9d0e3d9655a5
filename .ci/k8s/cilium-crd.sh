#!/usr/bin/env bash
# Fetches (once, cached in $CI_K8S_CACHE) Cilium's Go module and prints, on the last line, the
# path of the CiliumNetworkPolicy CRD YAML it ships: the egress tests install it in the local
# kube-apiserver to check the operator's CiliumNetworkPolicies against Cilium's own schema.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
CACHE=${CI_K8S_CACHE:-/var/cache/ci-k8s}
export GOTOOLCHAIN=local GOMODCACHE=$CACHE/gomod GOFLAGS= GOPATH=$CACHE/gopath
crd=$GOMODCACHE/github.com/cilium/cilium@$CILIUM_VERSION/pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml
if [ ! -f "$crd" ]; then
  echo "cilium-crd: fetching github.com/cilium/cilium@$CILIUM_VERSION (about 30 MB, once)" >&2
  mkdir -p "$CACHE/src/cilium" && cd "$CACHE/src/cilium"
  [ -f go.mod ] || go mod init local.test/ciliumcrd >/dev/null 2>&1
  go mod download "github.com/cilium/cilium@$CILIUM_VERSION" >&2
fi
[ -f "$crd" ] || { echo "cilium-crd: $crd not found in the module" >&2; exit 1; }
echo "$crd"
