"""A real two-layer Debian bookworm image for tests and benchmarks, built once and cached.

Why a real image: the format, the converter, fusefs and containerd must agree on
what a real distribution looks like (hardlinks, device nodes, setuid bits, long
paths, dpkg's replaced files), which synthetic trees miss.

How: `mmdebstrap --mode=root` builds two rootfs dirs from the machine's own Debian
mirror (taken from /etc/apt, so it works wherever apt works; override with
$IMGFS_DEBIAN_MIRROR): `base` (minbase + python3-minimal) and `full` (the same +
EXTRA_PACKAGES). `full` is then edited so that the top layer also removes things:
a removed dir and file (whiteouts `.wh.NAME`) and a replaced dir (opaque marker
`.wh..wh..opq`), plus a user xattr and a hardlink pair. Layer 1 is a tar of `base`,
layer 2 the diff `base` -> `full`; both are written with Python's tarfile
(owners, modes, mtimes, xattrs, hardlinks, devices) and gzip with fixed headers,
so rebuilding from the same mirror state gives the same bytes. mtimes are cut to
whole seconds and clamped to SOURCE_DATE_EPOCH (tar layers keep seconds; files
the build itself touches get a fixed time). `full` is kept as the merged rootfs
for comparisons; it must be treated as read-only.

mmdebstrap needs root here (`--mode=root`: the trees keep real owners and device
nodes); the whole suite runs as root anyway (FUSE, containerd). A build takes
~30 s on an idle 2-core machine (both rootfs are built in parallel; 2.5 min
measured at load 10), ~500 MB of disk while building and ~280 MB once done.
Rebuilding from the same mirror state was checked to give identical digests.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from tests.support.trees import clamp_mtimes, tree_diff, walk

IMAGE_VERSION = "1"             # bump whenever the recipe below changes: it keys the cache
SUITE = "bookworm"
BASE_PACKAGES = ("python3-minimal",)
EXTRA_PACKAGES = ("file", "less")
SOURCE_DATE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z; newer mtimes are clamped to it
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"

# What the top layer removes (whiteouts), replaces wholesale (opaque), and marks.
REMOVED_PATHS = ("usr/share/doc/debconf", "etc/issue.net")
OPAQUE_DIRS = ("etc/skel",)
XATTR = ("etc/skel/README", "user.imgfs.layer", b"2")
HARDLINKS = ("usr/local/bin/pager-a", "usr/local/lib/pager-b")


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The URI this machine's apt uses for SUITE (deb822 or one-line format)."""
    env = os.environ.get("IMGFS_DEBIAN_MIRROR")
    if env:
        return env
    files = [apt_dir / "sources.list"] + sorted((apt_dir / "sources.list.d").glob("*"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for para in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in para.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if ("deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split()
                        and fields.get("enabled", "yes").lower() != "no" and fields.get("uris")):
                    return fields["uris"].split()[0]
        elif f.suffix in (".list", ""):
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words and words[0] == "deb":
                    words = [w for w in words[1:] if "=" not in w and not w.startswith("[")
                             and not w.endswith("]")]
                    if len(words) >= 2 and words[1] == SUITE:
                        return words[0]
    return "http://deb.debian.org/debian"


def cached_build(cache_dir: Path, key: str, build: Callable[[Path], None]) -> Path:
    """Return cache_dir/key, calling build(tmpdir) first if it is not there yet.

    Safe across processes (pytest-xdist, parallel suites): an exclusive flock on
    cache_dir/.key.lock serialises builders; the result is renamed into place only
    when complete, so a crashed build leaves only a tmp dir that the next one removes.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / key
    if final.is_dir():
        return final
    with open(cache_dir / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():
                return final
            tmp = cache_dir / f".{key}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            build(tmp)
            os.rename(tmp, final)
            return final
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recipe_key() -> str:
    recipe = json.dumps([IMAGE_VERSION, SUITE, BASE_PACKAGES, EXTRA_PACKAGES, SOURCE_DATE_EPOCH,
                         REMOVED_PATHS, OPAQUE_DIRS, apt_mirror()])
    return f"debian-{SUITE}-v{IMAGE_VERSION}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def debian_image(cache_dir: Path) -> Path:
    """OCI layout dir (tag "latest") of the two-layer Debian image; built once per cache_dir."""
    return cached_build(Path(cache_dir), _recipe_key(), _build) / "oci"


def debian_rootfs(cache_dir: Path) -> Path:
    """The merged rootfs of debian_image (what a runtime sees). Read-only for tests."""
    return cached_build(Path(cache_dir), _recipe_key(), _build) / "rootfs"


def push_oci(layout: Path, registry_host: str, repo: str, tag: str = "latest") -> None:
    """Copy the layout's "latest" image to a plain-HTTP registry, digests preserved (skopeo)."""
    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
           "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{registry_host}/{repo}:{tag}"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"skopeo copy to {registry_host}/{repo}:{tag} failed: {out.stderr.strip()}")


# --- build ----------------------------------------------------------------------------------

def _mmdebstrap(target: Path, packages: Iterable[str], log: Path) -> subprocess.Popen:
    mirror = apt_mirror()
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
           f"--include={','.join(packages)}", SUITE, str(target), f"deb {mirror} {SUITE} main"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    with open(log, "wb") as lf:
        return subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _edit_top(full: Path) -> None:
    """Make the top layer remove, replace and mark things (see REMOVED_PATHS etc.)."""
    for rel in REMOVED_PATHS:
        p = full / rel
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for rel in OPAQUE_DIRS:
        d = full / rel
        for child in d.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        (d / ".profile").write_text("# imgfs test image: replaced by the top layer\nPATH=/usr/bin:/bin\n")
    path, name, value = XATTR
    (full / path).write_text("This directory was replaced by layer 2 (opaque whiteout).\n")
    os.setxattr(full / path, name, value)
    a, b = (full / p for p in HARDLINKS)
    a.parent.mkdir(parents=True, exist_ok=True)
    b.parent.mkdir(parents=True, exist_ok=True)
    a.write_text("#!/bin/sh\nexec less \"$@\"\n")
    a.chmod(0o755)
    os.link(a, b)


def _build(out: Path) -> None:
    base, full = out / "base", out / "rootfs"
    procs = [(_mmdebstrap(base, BASE_PACKAGES, out / "base.log"), out / "base.log"),
             (_mmdebstrap(full, BASE_PACKAGES + EXTRA_PACKAGES, out / "full.log"), out / "full.log")]
    failed = [(p.wait(), log) for p, log in procs]
    for rc, log in failed:
        if rc != 0:
            raise RuntimeError(f"mmdebstrap failed ({rc}): {log.read_text(errors='replace')[-3000:]}")
    _edit_top(full)
    for root in (base, full):
        clamp_mtimes(root, SOURCE_DATE_EPOCH)
    layout = out / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layers = [_write_layer(layout, base, [(p, None) for p in walk(base)])]
    layers.append(_write_layer(layout, full, tree_diff(base, full, OPAQUE_DIRS)))
    _write_image(layout, layers)
    shutil.rmtree(base)


class _HashingSink:
    """Write-only file object that hashes and counts what passes through it."""

    def __init__(self, dest: BinaryIO) -> None:
        self.dest, self.sha, self.size = dest, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.dest.write(data)

    def flush(self) -> None:
        self.dest.flush()


def _add(tar: tarfile.TarFile, root: Path, rel: str, marker: str | None) -> None:
    """Add one entry: a real path of root, or a whiteout/opaque marker named rel."""
    if marker is not None:
        ti = tarfile.TarInfo(rel)
        ti.mode, ti.mtime = 0o644, SOURCE_DATE_EPOCH
        tar.addfile(ti)
        return
    full = os.path.join(root, rel)
    ti = tar.gettarinfo(full, arcname=rel)
    ti.uname = ti.gname = ""            # numeric owners only: host passwd must not leak in
    ti.mtime = int(os.lstat(full).st_mtime)
    for name in sorted(os.listxattr(full, follow_symlinks=False)):
        value = os.getxattr(full, name, follow_symlinks=False)
        ti.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    if ti.isreg():
        with open(full, "rb") as f:
            tar.addfile(ti, f)
    else:
        tar.addfile(ti)


def _write_layer(layout: Path, root: Path, entries: list[tuple[str, str | None]]) -> dict:
    """Write entries as a gzip tar blob; return its descriptor plus "diff_id"."""
    tmp = layout / "blobs" / "sha256" / ".layer.tmp"
    with open(tmp, "wb") as raw:
        compressed = _HashingSink(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
            plain = _HashingSink(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel, marker in entries:
                    _add(tar, root, rel, marker)
    digest = compressed.sha.hexdigest()
    os.rename(tmp, layout / "blobs" / "sha256" / digest)
    return {"mediaType": LAYER_MEDIA_TYPE, "digest": f"sha256:{digest}", "size": compressed.size,
            "diff_id": f"sha256:{plain.sha.hexdigest()}"}


def _put_json(layout: Path, obj: dict) -> tuple[str, int]:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _write_image(layout: Path, layers: list[dict]) -> None:
    created = "2026-01-01T00:00:00Z"
    config = {
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/bash"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
        "history": [{"created": created, "created_by": f"mmdebstrap minbase {','.join(BASE_PACKAGES)}"},
                    {"created": created, "created_by": f"apt install {' '.join(EXTRA_PACKAGES)}; "
                                                       "rm, replace and mark files (imgfs test image)"}],
    }
    cfg_digest, cfg_size = _put_json(layout, config)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cfg_digest, "size": cfg_size},
                "layers": [{k: v for k, v in layer.items() if k != "diff_id"} for layer in layers]}
    man_digest, man_size = _put_json(layout, manifest)
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
             "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": man_digest, "size": man_size,
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

