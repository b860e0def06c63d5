"""A tiny plain OCI image (dash + libc from this machine), pushed over the registry HTTP API.

Fast to build (no mmdebstrap) and enough to run `sh -c 'echo ...'` in a container:
the snapshotter's plain path is tested with it. Built in memory, gzip with a fixed
mtime, so the same machine gives the same digests.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import requests

FILES = ("/usr/bin/dash", "/usr/bin/sleep", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")


def _layer() -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "usr", "usr/bin", "lib", "lib/x86_64-linux-gnu", "lib64", "tmp", "etc", "proc",
                  "dev", "sys"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, 0
            tar.addfile(ti)
        for path in FILES:
            with open(os.path.realpath(path), "rb") as f:
                data = f.read()
            ti = tarfile.TarInfo(path.lstrip("/"))
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 0
            tar.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("bin/sh")
        ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "/usr/bin/dash", 0
        tar.addfile(ti)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return gzip.compress(raw.getvalue(), mtime=0), diff_id


def put_blob(base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
    r.raise_for_status()
    loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = base + loc
    sep = "&" if "?" in loc else "?"
    requests.put(f"{loc}{sep}digest={digest}", data=data, timeout=60,
                 headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    return digest


def push_tiny_image(registry_host: str, repo: str, tag: str = "latest") -> str:
    """Pushes the image to http://registry_host/repo:tag; returns the manifest digest."""
    base = f"http://{registry_host}"
    layer, diff_id = _layer()
    layer_digest = put_blob(base, repo, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_digest = put_blob(base, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer)}]}).encode()
    r = requests.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest, timeout=30,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
