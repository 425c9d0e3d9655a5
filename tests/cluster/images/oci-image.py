#!/usr/bin/env python3
"""Writes a single-layer OCI image archive (an OCI layout in a tar, as `ctr images import` takes
it) without a Docker daemon: one static binary at the root of an otherwise empty filesystem,
like a `FROM scratch` Dockerfile. The archive is reproducible: same inputs, same bytes.

usage: oci-image.py --binary PATH --name NAME:TAG --out FILE [--user UID:GID]
                    [--entrypoint /path] [--arch amd64]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return "sha256:" + digest, len(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True, help="static executable to put in the image")
    p.add_argument("--name", required=True, help="image reference, e.g. oauth3.local/runner:dev")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--user", default="", help="UID:GID the image runs as (default: root)")
    p.add_argument("--entrypoint", help="path of the binary in the image (default: /<name>)")
    p.add_argument("--arch", default="amd64")
    a = p.parse_args()

    with open(a.binary, "rb") as f:
        exe = f.read()
    path = a.entrypoint or "/" + os.path.basename(a.binary)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as layer:
        add_bytes(layer, path.lstrip("/"), exe, mode=0o755)
    layer_tar = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(layer_tar)

    blobs = {}
    layer_digest, layer_size = blob(blobs, gz.getvalue())
    config = {
        "architecture": a.arch,
        "os": "linux",
        "config": {"Entrypoint": [path], "User": a.user, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_digest, config_size = blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": a.arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": a.name,
                            "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1]},
        }],
    }
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        add_bytes(out, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes(out, "index.json", json.dumps(index, sort_keys=True).encode())
        for digest in sorted(blobs):
            add_bytes(out, "blobs/sha256/" + digest, blobs[digest])
    os.replace(tmp, a.out)
    print(manifest_digest)


if __name__ == "__main__":
    sys.exit(main())
