#!/usr/bin/env bash
# Builds helm from its published Go module (helm.sh/helm/v3/cmd/helm) with the local Go toolchain,
# cached like the control plane in $CI_K8S_CACHE (default /var/cache/ci-k8s). A cached run takes
# well under a second; a cold build takes about 4 minutes on 2 cores. Prints the binary's path on
# the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
CACHE=${CI_K8S_CACHE:-/var/cache/ci-k8s}
BIN=$CACHE/bin/helm-$HELM_VERSION
export GOTOOLCHAIN=local CGO_ENABLED=0 GOMODCACHE=$CACHE/gomod GOCACHE=$CACHE/gobuild GOFLAGS= GOPATH=$CACHE/gopath
command -v go >/dev/null || { echo "build-helm: no Go toolchain on PATH" >&2; exit 1; }
if [ ! -x "$BIN/helm" ]; then
  echo "build-helm: building helm $HELM_VERSION" >&2
  mkdir -p "$BIN"
  w=$CACHE/src/helm-$HELM_VERSION; rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init local.test/helmbin >/dev/null 2>&1
  go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  # As upstream's Makefile does: the Kubernetes version helm assumes without a cluster
  # (`helm template`, `helm lint`) follows its client-go (v0.37 -> 1.37), not the default 1.20.
  kv=$(go list -f '{{.Version}}' -m k8s.io/client-go); kv=${kv#v0.}; kminor=${kv%%.*}
  v=helm.sh/helm/v3/internal/version
  go build -trimpath -o "$BIN/helm" -ldflags "-s -w -X $v.version=$HELM_VERSION -X $v.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kminor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor" \
    helm.sh/helm/v3/cmd/helm
fi
echo "$BIN/helm"
