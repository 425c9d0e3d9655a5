#!/usr/bin/env bash
# Assembles the images the real-node tier runs, without a Docker daemon, as OCI image archives
# `ctr images import` loads: the sandbox runner (the image sandbox-runner/Dockerfile describes:
# one static binary on an empty filesystem, entrypoint /oauth3-sandbox-runner, user 65532:65532,
# no shell), the Pod sandbox's pause image and the node tests' probe (probe.c). Prints the
# directory holding the archives.
#
# The Dockerfile links the runner statically against musl; this machine has no musl target for
# Rust, so the runner is linked statically against glibc instead (`-C target-feature=+crt-static`),
# the same code and the same image layout. Built with cargo into target/static (incremental
# after the first build); an archive is rewritten only when its binary changed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
here=$repo/tests/cluster/images
out=$repo/target/static/images
mkdir -p "$out"
log() { echo "images: $*" >&2; }
host=$(rustc -vV | sed -n 's/^host: //p')
log "building the static sandbox runner ($host, crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$repo/target/static \
  cargo build -q -p oauth3-sandbox-runner --bin oauth3-sandbox-runner --target "$host" \
  --manifest-path "$repo/Cargo.toml"
runner=$repo/target/static/$host/debug/oauth3-sandbox-runner
if ! file -b "$runner" 2>/dev/null | grep -q 'static'; then
  ldd "$runner" 2>&1 | grep -q 'statically linked\|not a dynamic' || { log "$runner is not static"; exit 1; }
fi
image() { # binary, name, archive, extra args
  local bin=$1 name=$2 tar=$3; shift 3
  local sum; sum=$(sha256sum "$bin" | cut -d' ' -f1)
  if [ -f "$tar" ] && [ "$(cat "$tar.sum" 2>/dev/null)" = "$sum" ]; then return 0; fi
  python3 "$here/oci-image.py" --binary "$bin" --name "$name" --out "$tar" "$@" >/dev/null
  echo "$sum" > "$tar.sum"
  log "wrote $name ($tar)"
}
strip -o "$out/oauth3-sandbox-runner" "$runner"
image "$out/oauth3-sandbox-runner" oauth3.local/sandbox-runner:dev "$out/sandbox-runner.tar" \
  --user 65532:65532 --entrypoint /oauth3-sandbox-runner
if [ ! -x "$out/pause" ] || [ "$here/pause.c" -nt "$out/pause" ]; then
  gcc -static -Os -o "$out/pause" "$here/pause.c"
fi
image "$out/pause" oauth3.local/pause:3.10 "$out/pause.tar" --entrypoint /pause
# The node tests' probe: run with a sandbox Pod's spec, it reports what the container really is.
if [ ! -x "$out/probe" ] || [ "$here/probe.c" -nt "$out/probe" ]; then
  gcc -static -Os -o "$out/probe" "$here/probe.c"
fi
image "$out/probe" oauth3.local/probe:dev "$out/probe.tar" --user 65532:65532 --entrypoint /probe
echo "$out"
