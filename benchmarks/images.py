"""Build the workload images once, offline-reproducibly, from Debian packages (mmdebstrap).

Layout of the cache (.cache/benchimages, or $IMGBENCH_CACHE):
    base-<key>/rootfs, base-<key>/layer/...   Debian minbase, its layer blob written once
    <name>-<key>/oci                           OCI layout (tag "latest"): base layer + app layer

Why this way: the base rootfs is built once and every app image reuses the very same
base blob (same digest, stored once in the registry, like a shared `FROM debian`).
An app layer is the diff between the base rootfs and a full mmdebstrap of minbase +
the app's packages, computed by tests.support.trees.tree_diff and written by the
deterministic tar+gzip writer of tests.support.images (imported, not copied), so a
rebuild from the same mirror state gives the same bytes. Apps are built in parallel
(mmdebstrap is mostly download and dpkg bound). `--mode=root` keeps real owners.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.workloads import Workload

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # the console script runs from .venv/bin
    sys.path.insert(0, str(ROOT))

from tests.support import images as ti  # mmdebstrap + deterministic layer writer
from tests.support.trees import clamp_mtimes, tree_diff, walk

RECIPE_VERSION = "1"       # bump when the recipe changes: it keys the cache
CACHE_DIR = Path(os.environ.get("IMGBENCH_CACHE", ROOT / ".cache" / "benchimages"))


def _key(*parts: object) -> str:
    blob = json.dumps([RECIPE_VERSION, ti.SUITE, ti.SOURCE_DATE_EPOCH, ti.apt_mirror(), *parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _run_mmdebstrap(target: Path, packages: tuple[str, ...], log: Path) -> subprocess.Popen:
    # tests.support.images always passes --include: name apt (part of minbase) for plain minbase.
    return ti._mmdebstrap(target, packages or ("apt",), log)


def _wait(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    for p, log in procs:
        if p.wait() != 0:
            raise RuntimeError(f"mmdebstrap failed ({p.returncode}), log {log}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")


def base_dir(cache: Path = CACHE_DIR) -> Path:
    """The base (Debian minbase) rootfs and its layer blob; built once per cache."""
    def build(out: Path) -> None:
        _wait([(_run_mmdebstrap(out / "rootfs", (), out / "mmdebstrap.log"), out / "mmdebstrap.log")])
        clamp_mtimes(out / "rootfs", ti.SOURCE_DATE_EPOCH)
        (out / "layer" / "blobs" / "sha256").mkdir(parents=True)
        desc = ti._write_layer(out / "layer", out / "rootfs", [(p, None) for p in walk(out / "rootfs")])
        (out / "layer" / "descriptor.json").write_text(json.dumps(desc))
    return ti.cached_build(cache, f"base-{_key('minbase')}", build)


def _add_files(rootfs: Path, w: Workload) -> None:
    for rel, data in w.files.items():
        p = rootfs / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if rel.endswith(".java"):        # ship the compiled class, built with the host's JDK
            r = subprocess.run(["javac", "--release", "17", "-d", str(p.parent), str(p)],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"javac {rel} failed: {r.stderr.strip()}")


def _write_image(layout: Path, layers: list[dict], w: Workload) -> None:
    """OCI config + manifest + index (tag "latest") for the two layers."""
    created = "2026-01-01T00:00:00Z"
    config = {"architecture": "amd64", "os": "linux", "created": created,
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                         "Cmd": w.command(), "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d in layers]},
              "history": [{"created": created, "created_by": "mmdebstrap --variant=minbase"},
                          {"created": created, "created_by": f"apt install {' '.join(w.packages)}"}]}
    cfg_digest, cfg_size = ti._put_json(layout, config)
    manifest = {"schemaVersion": 2, "mediaType": ti.MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": ti.CONFIG_MEDIA_TYPE, "digest": cfg_digest, "size": cfg_size},
                "layers": [{k: v for k, v in d.items() if k != "diff_id"} for d in layers]}
    man_digest, man_size = ti._put_json(layout, manifest)
    index = {"schemaVersion": 2, "mediaType": ti.INDEX_MEDIA_TYPE,
             "manifests": [{"mediaType": ti.MANIFEST_MEDIA_TYPE, "digest": man_digest, "size": man_size,
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def _app_key(w: Workload) -> str:
    return f"{w.name}-{_key(w.packages, w.check, sorted((k, v.hex()) for k, v in w.files.items()))}"


def image_layout(w: Workload, cache: Path = CACHE_DIR) -> Path | None:
    """The cached OCI layout of w, or None when it was not built yet."""
    p = cache / _app_key(w) / "oci"
    return p if p.is_dir() else None


def build_images(workloads: list[Workload], cache: Path = CACHE_DIR, log=print) -> dict[str, Path]:
    """OCI layout per workload; builds the base once and the missing apps in parallel."""
    cache.mkdir(parents=True, exist_ok=True)
    base = base_dir(cache)
    base_desc = json.loads((base / "layer" / "descriptor.json").read_text())
    out: dict[str, Path] = {}
    todo = [w for w in workloads if image_layout(w, cache) is None]
    for w in workloads:
        if w not in todo:
            out[w.name] = image_layout(w, cache)
    if not todo:
        return out
    work = Path(tempfile.mkdtemp(prefix="imgbench-build-", dir=cache))
    try:
        log(f"building {', '.join(w.name for w in todo)} with mmdebstrap (in parallel) ...")
        procs = [(_run_mmdebstrap(work / w.name, w.packages, work / f"{w.name}.log"), work / f"{w.name}.log")
                 for w in todo]
        _wait(procs)
        for w in todo:
            full = work / w.name
            _add_files(full, w)
            clamp_mtimes(full, ti.SOURCE_DATE_EPOCH)

            def build(dest: Path, w: Workload = w, full: Path = full) -> None:
                layout = dest / "oci"
                (layout / "blobs" / "sha256").mkdir(parents=True)
                blob = base_desc["digest"].split(":", 1)[1]
                os.link(base / "layer" / "blobs" / "sha256" / blob, layout / "blobs" / "sha256" / blob)
                app = ti._write_layer(layout, full, tree_diff(base / "rootfs", full))
                _write_image(layout, [base_desc, app], w)
            out[w.name] = ti.cached_build(cache, _app_key(w), build) / "oci"
            shutil.rmtree(full, ignore_errors=True)
            log(f"  {w.name}: {out[w.name]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
