"""An image built FROM an imgfs image: imgfs layers at the bottom, a plain gzip layer on top.

The imgfs layers are pulled lazily (one bootstrap range each) and served by a fusefs mount
of just those layers (`imgfs mount --layer-count`); containerd downloads and unpacks the
plain layer as usual, onto an overlay over the mount; the container sees all of it,
the plain layer's whiteout applied.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
import requests

from tests.snapshotter.test_e2e import blob_gets, log_lines, manifest
from tests.support.tinyimage import put_blob

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _plain_layer() -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("opt", "opt/plain"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        data = b"hello from a plain layer\n"
        ti = tarfile.TarInfo("opt/plain/hello")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
        tar.addfile(tarfile.TarInfo("etc/.wh.debian_version"))      # deletes a file of the imgfs part
    return gzip.compress(raw.getvalue(), mtime=0), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def push_mixed(host: str, imgfs_ref: str) -> tuple[str, list[str], str]:
    """Pushes imgfs_ref + one plain layer as REPO:mixed; returns (ref, imgfs layer digests,
    plain layer digest)."""
    repo = imgfs_ref.split("/", 1)[1].rpartition(":")[0]
    base = f"http://{host}"
    man = manifest(host, imgfs_ref)
    config = requests.get(f"{base}/v2/{repo}/blobs/{man['config']['digest']}", timeout=30).json()
    layer, diff_id = _plain_layer()
    layer_digest = put_blob(base, repo, layer)
    config["rootfs"]["diff_ids"].append(diff_id)
    cfg_bytes = json.dumps(config).encode()
    cfg_digest = put_blob(base, repo, cfg_bytes)
    mixed = {**man, "config": {**man["config"], "digest": cfg_digest, "size": len(cfg_bytes)},
             "layers": [*man["layers"], {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                          "digest": layer_digest, "size": len(layer)}]}
    requests.put(f"{base}/v2/{repo}/manifests/mixed", data=json.dumps(mixed).encode(), timeout=30,
                 headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
    return f"{host}/{repo}:mixed", [d["digest"] for d in man["layers"]], layer_digest


def test_imgfs_base_with_a_plain_layer_on_top_runs_lazily(stack, registry, debian_refs):
    ref, imgfs_layers, plain_layer = push_mixed(registry.host, debian_refs["imgfs"])
    since = log_lines(registry)
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    gets = blob_gets(registry, since, {*imgfs_layers, plain_layer})
    lazy = [g for g in gets if g[0] in imgfs_layers]
    assert sorted(d for d, _, _ in lazy) == sorted(imgfs_layers), gets     # one bootstrap range each
    assert all(status == 206 for _, status, _ in lazy), gets
    assert [(d, s) for d, s, _ in gets if d == plain_layer] == [(plain_layer, 200)], gets
    assert "FALLBACK" not in stack.snap.log_text()

    out = stack.run(ref, "mixed-1", "/bin/sh", "-c",
                    "cat /opt/plain/hello; test -e /etc/debian_version && echo present || echo gone; "
                    "python3 -c 'print(6 * 7)'")
    assert out.split() == ["hello", "from", "a", "plain", "layer", "gone", "42"], out

    cmdlines = []
    for pid in stack.daemon_pids():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdlines.append(f.read().split(b"\0"))
    assert any(b"--layer-count" in c and c[c.index(b"--layer-count") + 1] == b"2" for c in cmdlines), \
        cmdlines
