"""Test helpers: build layer tars, write OCI layouts and docker archives, push with skopeo.

Layers are given as uncompressed tar bytes (compressed here, per layer), or as
`RawLayer` (already-compressed bytes, possibly deliberately broken) or
`FileLayer` (a blob on disk, for layers too large for memory). Everything is
deterministic: fixed mtimes, gzip without timestamps, sorted JSON.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
MTIME = 1_700_000_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return "sha256:" + h.hexdigest()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(compression)


@dataclass
class RawLayer:
    """An already-compressed layer blob; `diff_id` is what the config claims."""

    blob: bytes
    diff_id: str
    media_type: str = MEDIA["gzip"]


@dataclass
class FileLayer:
    """A layer blob stored in a file (hard-linked or copied into the layout)."""

    path: Path
    diff_id: str
    media_type: str = MEDIA["gzip"]


class TarBuilder:
    """Small helper over tarfile for writing layer tars in memory (PAX format)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _info(self, name: str, type_: bytes, mode: int, uid: int = 0, gid: int = 0,
              mtime: int = MTIME, xattrs: dict[str, bytes] | None = None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, mtime
        ti.uname = ti.gname = ""
        if xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                              for k, v in xattrs.items()}
        return ti

    def dir(self, name: str, mode: int = 0o755, **kw) -> TarBuilder:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw) -> TarBuilder:
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str, **kw) -> TarBuilder:
        ti = self._info(name, tarfile.SYMTYPE, 0o777, **kw)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def hardlink(self, name: str, target: str, **kw) -> TarBuilder:
        ti = self._info(name, tarfile.LNKTYPE, 0o644, **kw)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> TarBuilder:
        ti = self._info(name, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, mode)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)
        return self

    def fifo(self, name: str, mode: int = 0o644) -> TarBuilder:
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode))
        return self

    def whiteout(self, name: str) -> TarBuilder:
        head, _, base = name.rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}")

    def opaque(self, dirname: str) -> TarBuilder:
        return self.file(f"{dirname}/.wh..wh..opq")

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def default_config(diff_ids: list[str], extra: dict | None = None) -> dict:
    cfg = {"architecture": "amd64", "os": "linux",
           "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids},
           "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))]}
    cfg.update(extra or {})
    return cfg


@dataclass
class OCIImage:
    """What write_oci_layout wrote (digests to corrupt or look up in tests)."""

    dir: Path
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str] = field(default_factory=list)

    def blob(self, digest: str) -> Path:
        return self.dir / "blobs" / "sha256" / digest.split(":", 1)[1]


def _layer_blob(layer: bytes | RawLayer | FileLayer, compression: str) -> tuple[bytes | Path, str, str]:
    if isinstance(layer, RawLayer):
        return layer.blob, layer.diff_id, layer.media_type
    if isinstance(layer, FileLayer):
        return layer.path, layer.diff_id, layer.media_type
    return compress(layer, compression), sha256(layer), MEDIA[compression]


def write_oci_layout(dir: Path, layers: list, *, compression: str | list[str] = "gzip",
                     tag: str | None = "latest", config: dict | None = None,
                     config_bytes: bytes | None = None, manifest_bytes: bytes | None = None) -> OCIImage:
    """Write an OCI layout with one image. `config_bytes`/`manifest_bytes` override (for broken ones)."""
    bdir = dir / "blobs" / "sha256"
    bdir.mkdir(parents=True, exist_ok=True)
    (dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    comps = compression if isinstance(compression, list) else [compression] * len(layers)
    descs, diff_ids = [], []
    for layer, comp in zip(layers, comps):
        blob, diff_id, media = _layer_blob(layer, comp)
        if isinstance(blob, Path):
            digest, size = file_sha256(blob), blob.stat().st_size
            dest = bdir / digest.split(":", 1)[1]
            if not dest.exists():
                try:
                    os.link(blob, dest)
                except OSError:
                    shutil.copyfile(blob, dest)
        else:
            digest, size = sha256(blob), len(blob)
            (bdir / digest.split(":", 1)[1]).write_bytes(blob)
        descs.append({"mediaType": media, "digest": digest, "size": size})
        diff_ids.append(diff_id)
    if config_bytes is None:
        config_bytes = json.dumps(config or default_config(diff_ids), sort_keys=True).encode()
    cfg_digest = sha256(config_bytes)
    (bdir / cfg_digest.split(":", 1)[1]).write_bytes(config_bytes)
    if manifest_bytes is None:
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(config_bytes)},
                    "layers": descs}
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    m_digest = sha256(manifest_bytes)
    (bdir / m_digest.split(":", 1)[1]).write_bytes(manifest_bytes)
    entry = {"mediaType": OCI_MANIFEST, "digest": m_digest, "size": len(manifest_bytes)}
    if tag:
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (dir / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return OCIImage(dir, m_digest, cfg_digest, [d["digest"] for d in descs], diff_ids)


def write_docker_archive(path: Path, layers: list[bytes], *, config: dict | None = None,
                         legacy: bool = True, tag: str = "test/image:latest") -> Path:
    """Write a `docker save`-style archive: legacy (<id>/layer.tar) or OCI-style blobs/sha256 paths."""
    diff_ids = [sha256(t) for t in layers]
    cfg = json.dumps(config or default_config(diff_ids), sort_keys=True).encode()
    cfg_hex = sha256(cfg).split(":", 1)[1]
    members: list[tuple[str, bytes]] = []
    names = []
    for i, tar in enumerate(layers):
        if legacy:
            lid = hashlib.sha256(f"{i}{diff_ids[i]}".encode()).hexdigest()
            members.append((f"{lid}/VERSION", b"1.0"))
            members.append((f"{lid}/json", json.dumps({"id": lid}).encode()))
            members.append((f"{lid}/layer.tar", tar))
            names.append(f"{lid}/layer.tar")
        else:
            name = f"blobs/sha256/{diff_ids[i].split(':', 1)[1]}"
            members.append((name, tar))
            names.append(name)
    cfg_name = f"{cfg_hex}.json" if legacy else f"blobs/sha256/{cfg_hex}"
    members.append((cfg_name, cfg))
    manifest = [{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), MTIME, 0o644
            out.addfile(ti, io.BytesIO(data))
    return path


def push_oci_layout(dir: Path, host: str, repo: str, tag: str, src_tag: str | None = "latest") -> None:
    """Push an OCI layout to the test registry with skopeo (the reference implementation)."""
    src = f"oci:{dir}:{src_tag}" if src_tag else f"oci:{dir}"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", src,
                    f"docker://{host}/{repo}:{tag}"], check=True, capture_output=True, timeout=300)


def write_multi_platform_layout(dir: Path, images: dict[str, list], tag: str = "latest",
                                compression: str = "gzip") -> dict[str, OCIImage]:
    """An OCI layout whose tag names a (nested) image index with one image per platform ("os/arch")."""
    written = {}
    entries = []
    for plat, layers in images.items():
        os_, arch = plat.split("/")[:2]
        img = write_oci_layout(dir, layers, compression=compression, tag=None,
                               config=default_config(
                                   [sha256(t) if isinstance(t, bytes) else t.diff_id for t in layers],
                                   {"os": os_, "architecture": arch}))
        written[plat] = img
        size = img.blob(img.manifest_digest).stat().st_size
        entries.append({"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": size,
                        "platform": {"os": os_, "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}, sort_keys=True).encode()
    digest = sha256(index)
    (dir / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(index)
    top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len(index),
           "annotations": {"org.opencontainers.image.ref.name": tag}}
    (dir / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return written
