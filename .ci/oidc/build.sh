#!/usr/bin/env bash
# Builds the tests' OpenID provider (.ci/oidc/main.go: the example provider of the published
# github.com/zitadel/oidc/v3 module, with device and rotating refresh grants) with the local Go
# toolchain. Cached outside the repository in $CI_K8S_CACHE (default /var/cache/ci-k8s); a run
# with the binary cached takes well under a second. Prints the binary's path on the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OIDC_VERSION=v3.52.0
CACHE=${CI_K8S_CACHE:-/var/cache/ci-k8s}
sum=$(sha256sum "$here/main.go" | cut -c1-12)
BIN=$CACHE/bin/oidc-provider-$OIDC_VERSION-$sum
export GOTOOLCHAIN=local CGO_ENABLED=0 GOMODCACHE=$CACHE/gomod GOCACHE=$CACHE/gobuild GOFLAGS= GOPATH=$CACHE/gopath
command -v go >/dev/null || { echo "oidc build: no Go toolchain on PATH" >&2; exit 1; }
mkdir -p "$CACHE/bin"
# Tests call this script too: one build at a time, the others wait for its binary.
exec 9>"$CACHE/bin/.oidc-provider.lock"
flock 9
if [ ! -x "$BIN" ]; then
  echo "oidc build: building the OpenID provider from github.com/zitadel/oidc/v3@$OIDC_VERSION" >&2
  w=$CACHE/src/oidc-provider-$OIDC_VERSION; rm -rf "$w"; mkdir -p "$w" "$(dirname "$BIN")"; cd "$w"
  go mod init local.test/oidcprovider >/dev/null 2>&1
  cp "$here/main.go" .
  go get "github.com/zitadel/oidc/v3@$OIDC_VERSION" >&2
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" . && mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
