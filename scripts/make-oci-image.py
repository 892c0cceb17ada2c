#!/usr/bin/env python3
"""Build a tiny OCI image (an OCI image layout tar) from a static busybox.

    scripts/make-oci-image.py OUT.tar [NAME:TAG] [BUSYBOX]

One layer: /bin/busybox, a symlink per applet it lists, /etc/passwd and /etc/group
(root and nobody), empty /tmp, /proc, /sys, /dev, /run. The tar is what
`ctr image import` takes: oci-layout, index.json (with the
org.opencontainers.image.ref.name annotation ctr names the image by), the
manifest, the config and the layer blob, all content-addressed by sha256.
Deterministic: the same busybox gives the same digests.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry_dir(name, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def entry_file(name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def entry_link(name, target):
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    return info, None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    ref = sys.argv[2] if len(sys.argv) > 2 else "phantom-test/busybox:latest"
    busybox = sys.argv[3] if len(sys.argv) > 3 else "/bin/busybox"
    with open(busybox, "rb") as f:
        bb = f.read()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()

    entries = [entry_dir(d) for d in ["bin", "etc", "proc", "sys", "dev", "run", "root"]]
    entries.append(entry_dir("tmp", 0o1777))
    entries.append(entry_file("bin/busybox", bb, 0o755))
    for a in sorted(set(applets)):
        if a != "busybox":
            entries.append(entry_link("bin/" + a, "busybox"))
    entries.append(entry_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
    entries.append(entry_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n"))
    layer_tar = tar_bytes(entries)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer = gzip.compress(layer_tar, mtime=0)

    config = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/make-oci-image.py"}],
    }, sort_keys=True).encode()

    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest),
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}}],
    }, sort_keys=True).encode()

    files = [entry_file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), entry_dir("blobs"), entry_dir("blobs/sha256")]
    for digest, data in sorted(blobs.items()):
        files.append(entry_file("blobs/sha256/" + digest.split(":", 1)[1], data))
    files.append(entry_file("index.json", index))
    with open(out, "wb") as f:
        f.write(tar_bytes(files))
    print(ref)


if __name__ == "__main__":
    main()
