#!/usr/bin/env python3
"""Writes a single-layer OCI image archive without a registry or a container engine.

    mkimage.py OUT.tar REF ENTRYPOINT_JSON ENTRY [ENTRY ...]

ENTRY is SRC:DEST (a file copied to DEST), DEST@LINK (a symlink DEST -> LINK) or DEST/ (a directory).
REF is the full image reference; `ctr images import` keeps it as the image name. The layer is
reproducible (fixed mtimes and owners), so rebuilding unchanged inputs gives the same digest.
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(entries) -> bytes:
    buf = io.BytesIO()
    dirs = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(path):
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(ti)
        for spec in entries:
            if spec.endswith("/") and ":" not in spec and "@" not in spec:
                add_dir(spec)
                # World-writable scratch dirs (like /tmp) need the sticky bit.
                continue
            if "@" in spec and ":" not in spec:
                dest, target = spec.split("@", 1)
                add_dir(os.path.dirname(dest.strip("/")))
                ti = tarfile.TarInfo(dest.strip("/"))
                ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, target, 0o777, 0
                tar.addfile(ti)
                continue
            src, dest = spec.split(":", 1)
            dest = dest.strip("/")
            add_dir(os.path.dirname(dest))
            ti = tar.gettarinfo(src, arcname=dest)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = 0
            with open(src, "rb") as f:
                tar.addfile(ti, f)
    return buf.getvalue()


def main():
    out, ref, entrypoint = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    layer = layer_tar(sys.argv[4:])
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
                       "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": ref}}],
    }, sort_keys=True).encode()
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 0
            t.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for blob in (layer, config, manifest):
            add("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
