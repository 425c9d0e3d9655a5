#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kwok from the published Go modules with the local Go toolchain.
# Binaries are cached outside the repository in $CI_K8S_CACHE (default /var/cache/ci-k8s); a run
# with everything cached takes well under a second. Prints the binary directory on the last line.
#
#   K8S_COMPONENTS  kube components to build (default: kube-apiserver)
#   WITH_KWOK=0     skip kwok/kwokctl (built by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
: "${K8S_COMPONENTS:=kube-apiserver}"
: "${WITH_KWOK:=1}"
CACHE=${CI_K8S_CACHE:-/var/cache/ci-k8s}
BIN=$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION
export GOTOOLCHAIN=local CGO_ENABLED=0 GOMODCACHE=$CACHE/gomod GOCACHE=$CACHE/gobuild GOFLAGS= GOPATH=$CACHE/gopath
command -v go >/dev/null || { echo "build-bins: no Go toolchain on PATH" >&2; exit 1; }
mkdir -p "$BIN"
log() { echo "build-bins: $*" >&2; }

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging=v0.${K8S_VERSION#v1.}                      # v1.36.4 -> v0.36.4
need=
for c in $K8S_COMPONENTS; do [ -x "$BIN/$c" ] || need=1; done
if [ -n "$need" ]; then
  log "building $K8S_COMPONENTS $K8S_VERSION (cold: 10-20 min on 2 cores)"
  w=$CACHE/src/k8s-$K8S_VERSION; rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init local.test/k8sbins >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  # Every staging module is required at v0.0.0 and replaced by ./staging/... upstream; point each
  # at its published v0.Y.Z release instead. The list is derived, never hard-coded.
  mods=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u)
  [ -n "$mods" ] || { log "no staging modules found in $gomod"; exit 1; }
  for m in $mods; do go mod edit -replace="$m=$m@$staging"; done
  gd=$(awk '$1 == "godebug" && $2 ~ /=/ {print $2}' "$gomod")
  [ -z "$gd" ] || go mod edit -godebug="$gd"
  pkgs=$(for c in $K8S_COMPONENTS; do echo "k8s.io/kubernetes/cmd/$c"; done)
  # shellcheck disable=SC2046
  go get $(for p in $pkgs; do echo "$p@$K8S_VERSION"; done)
  X=k8s.io/component-base/version
  # shellcheck disable=SC2086
  go build -trimpath -o "$BIN/" -ldflags "-s -w -X $X.gitVersion=$K8S_VERSION -X $X.gitMajor=1 \
    -X $X.gitMinor=$minor -X $X.gitTreeState=clean" $pkgs
fi
if [ ! -x "$BIN/etcd" ]; then
  log "building etcd $ETCD_VERSION"
  w=$CACHE/src/etcd-$ETCD_VERSION; rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init local.test/etcdbin >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
fi
if [ "$WITH_KWOK" = 1 ] && [ ! -x "$BIN/kwok" ]; then
  log "building kwok $KWOK_VERSION"
  GOBIN=$BIN go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
fi
echo "$BIN"
