"""v2 of the shared Debian test image: the same recipe plus one package, rebuilt from scratch.

Why a rebuild and not v1 + a third layer: a third layer leaves v1's layers byte-identical, so plain
OCI layer sharing would already save everything and dedup would prove nothing. Here the top layer
is rebuilt (as a new CI build of an application would be): its tar differs from v1's, so OCI layer
sharing saves only the base layer, and whatever more dedup finds is real.

v2 = v1's base layer (same bytes: the base rootfs is the same recipe) + a top layer that turns the
base into `full` + V2_PACKAGES, with the same edits (whiteouts, opaque dir, xattr, hardlinks). The
base tree is recovered by extracting v1's layer 1 (GNU tar as root keeps owners, modes, devices,
xattrs) instead of a second mmdebstrap run. Built once per cache dir, like v1 (~40 s idle).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.support import images as v1
from tests.support.trees import clamp_mtimes, tree_diff

V2_PACKAGES = ("nano",)


def _v2_key() -> str:
    recipe = json.dumps([v1._recipe_key(), V2_PACKAGES, "dedup-v2-1"])
    return f"debian-v2-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def debian_v2_image(cache_dir: Path) -> Path:
    """OCI layout (tag "latest") of v2; builds v1 first if needed."""
    v1_layout = v1.debian_image(cache_dir)
    return v1.cached_build(Path(cache_dir), _v2_key(), lambda out: _build(out, v1_layout)) / "oci"


def _v1_layers(layout: Path) -> list[dict]:
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    cfg = json.loads((layout / "blobs" / "sha256" / man["config"]["digest"][7:]).read_bytes())
    return [{**d, "diff_id": diff} for d, diff in zip(man["layers"], cfg["rootfs"]["diff_ids"], strict=True)]


def _build(out: Path, v1_layout: Path) -> None:
    full = out / "rootfs"
    proc = v1._mmdebstrap(full, v1.BASE_PACKAGES + v1.EXTRA_PACKAGES + V2_PACKAGES, out / "full.log")
    base_layer = _v1_layers(v1_layout)[0]
    base = out / "base"
    base.mkdir()
    subprocess.run(["tar", "-xzf", str(v1_layout / "blobs" / "sha256" / base_layer["digest"][7:]),
                    "-C", str(base), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                    "--same-permissions", "--same-owner"], check=True, capture_output=True)
    if proc.wait() != 0:
        raise RuntimeError(f"mmdebstrap failed: {(out / 'full.log').read_text(errors='replace')[-3000:]}")
    v1._edit_top(full)
    clamp_mtimes(full, v1.SOURCE_DATE_EPOCH)
    clamp_mtimes(base, v1.SOURCE_DATE_EPOCH)
    layout = out / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    src = v1_layout / "blobs" / "sha256" / base_layer["digest"][7:]
    os.link(src, layout / "blobs" / "sha256" / base_layer["digest"][7:])
    layers = [base_layer, v1._write_layer(layout, full, tree_diff(base, full, v1.OPAQUE_DIRS))]
    v1._write_image(layout, layers)
    shutil.rmtree(base)


def new_content(v1_rootfs: Path, v2_rootfs: Path, level: int = 3) -> tuple[int, int, int]:
    """The truly new content of v2: regular files whose bytes occur nowhere in v1.

    Returns (files, raw bytes, bytes after zstd -level of each file alone): the last is what any
    file-granular store must add at least (imgfs compresses each chunk alone, like this)."""
    import zstandard

    def files(root: Path) -> dict[str, str]:
        out = {}
        for dp, _dn, fn in os.walk(root):
            for f in fn:
                p = os.path.join(dp, f)
                if not os.path.islink(p) and os.path.isfile(p):
                    out[os.path.relpath(p, root)] = p
        return out

    def digest(p: str) -> bytes:
        with open(p, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()

    old = {digest(p) for p in files(v1_rootfs).values()}
    cctx = zstandard.ZstdCompressor(level=level)
    n = raw = comp = 0
    for p in files(v2_rootfs).values():
        if digest(p) not in old:
            data = Path(p).read_bytes()
            n, raw, comp = n + 1, raw + len(data), comp + len(cctx.compress(data))
    return n, raw, comp


def debian_v2_rootfs(cache_dir: Path) -> Path:
    """The merged rootfs of v2 (read-only)."""
    return debian_v2_image(cache_dir).parent / "rootfs"
