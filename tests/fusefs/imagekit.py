"""Build small imgfs images for the fusefs tests, without depending on imgconv.

Layers are tars built with tarfile, converted with ``imgformat.layer.convert_layer`` and
written as an OCI layout (manifest with the imgfs annotations, config with diff_ids),
then pushed to the test registry with skopeo (digests preserved). ``convert_layout``
does the same for an existing gzip OCI layout (the shared Debian test image).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

from imgformat import constants as C
from imgformat.layer import PrefetchEntry, convert_layer

MTIME = 1_700_000_000


class Tar:
    """A tiny deterministic tar builder."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed in bytes()

    def _info(self, name: str, type_: bytes, mode: int, **kw) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = type_, mode, MTIME, kw.get("uid", 0), kw.get("gid", 0)
        for k, v in (kw.get("xattrs") or {}).items():
            ti.pax_headers["SCHILY.xattr." + k] = v
        return ti

    def dir(self, name: str, mode: int = 0o755, **kw) -> Tar:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name: str, data: bytes, mode: int = 0o644, **kw) -> Tar:
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str) -> Tar:
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def hardlink(self, name: str, target: str) -> Tar:
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def whiteout(self, path: str) -> Tar:
        d, _, base = path.rpartition("/")
        return self.file(f"{d + '/' if d else ''}.wh.{base}", b"")

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def blob_data(seed: int, size: int) -> bytes:
    """Incompressible-ish deterministic bytes (so chunk sizes and byte counts are real)."""
    return random.Random(seed).randbytes(size)


def _put(layout: Path, data: bytes) -> tuple[str, int]:
    h = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / h).write_bytes(data)
    return "sha256:" + h, len(data)


def write_imgfs_layout(layout: Path, tars: list, *, chunk_size: int = 1 << 20,
                       prefetch: list[str] | None = None) -> dict:
    """Convert uncompressed tars (bytes or binary streams) into an imgfs OCI layout (tag "latest").

    Returns {"layers": [LayerResult...], "manifest": digest}.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    results, descs = [], []
    for i, tar in enumerate(tars):
        stream = io.BytesIO(tar) if isinstance(tar, bytes) else tar
        tmp = blobs / f".layer{i}.tmp"
        with open(tmp, "wb") as out:
            res = convert_layer(stream, out, chunk_size=chunk_size,
                                prefetch=[PrefetchEntry(p) for p in prefetch] if prefetch else None)
        tmp.rename(blobs / res.blob_digest.split(":", 1)[1])
        results.append(res)
        descs.append({"mediaType": C.LAYER_MEDIA_TYPE, "digest": res.blob_digest, "size": res.blob_size,
                      "annotations": {C.ANNOTATION_BOOTSTRAP_DIGEST: res.bootstrap_digest,
                                      C.ANNOTATION_BOOTSTRAP_OFFSET: str(res.bootstrap_offset),
                                      C.ANNOTATION_BOOTSTRAP_SIZE: str(res.bootstrap_size),
                                      C.ANNOTATION_VERSION: C.FORMAT_VERSION,
                                      C.ANNOTATION_UNCOMPRESSED: res.diff_id}})
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [r.diff_id for r in results]}}
    cd, cs = _put(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                "layers": descs}
    md, ms = _put(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return {"layers": results, "manifest": md}


def convert_layout(src: Path, dst: Path) -> dict:
    """Convert a gzip OCI layout (tag "latest") into an imgfs layout."""
    index = json.loads((src / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((src / "blobs" / "sha256" / mdigest).read_bytes())
    streams = [gzip.open(src / "blobs" / "sha256" / d["digest"].split(":", 1)[1], "rb")  # noqa: SIM115
               for d in manifest["layers"]]
    try:
        return write_imgfs_layout(dst, streams)
    finally:
        for s in streams:
            s.close()


def push(layout: Path, host: str, repo: str, tag: str = "latest") -> str:
    """skopeo copy to the plain-HTTP test registry; returns the docker:// IMAGE string."""
    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
           "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{host}/{repo}:{tag}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"skopeo copy to {host}/{repo}:{tag} failed: {out.stderr.strip()}")
    return f"docker://{host}/{repo}:{tag}"


def layer_bootstraps(layout: Path) -> list[tuple[str, object]]:
    """(blob digest, Bootstrap) of every layer of an imgfs layout, bottom first."""
    from imgformat.bootstrap import Bootstrap

    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    out = []
    for d in man["layers"]:
        blob = (layout / "blobs/sha256" / d["digest"][7:]).read_bytes()
        off = int(d["annotations"][C.ANNOTATION_BOOTSTRAP_OFFSET])
        size = int(d["annotations"][C.ANNOTATION_BOOTSTRAP_SIZE])
        out.append((d["digest"], Bootstrap.from_blob_bytes(blob[off:off + size], blob_digest=d["digest"])))
    return out


def file_chunks(layout: Path, path: str, layer: int = 0) -> tuple[str, list]:
    """(blob digest, [ChunkInfo]) holding ``path`` in layer ``layer`` of an imgfs layout."""
    digest, bs = layer_bootstraps(layout)[layer]
    ino = bs.root
    for part in path.split("/"):
        ino = bs.lookup(ino, part.encode())
        assert ino is not None, path
    return digest, [bs.chunk(s.chunk_index) for s in bs.segments(ino, 0, bs.getattr(ino).size)]


def push_frames_blob(registry_host: str, repo: str, n_chunks: int, raw_size: int, seed: int,
                     workdir: Path) -> tuple[str, list, list[bytes], int]:
    """Pushes a blob of ``n_chunks`` independent zstd frames of random (incompressible) bytes
    to ``repo``; returns (blob digest, the chunks' ChunkRefs, their raw bytes, blob size)."""
    import zstandard

    from fusefs.plan import ChunkRef
    from imgformat.records import ChunkInfo
    from registry.client import RegistryClient

    rnd = random.Random(seed)
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=True)
    out, infos, raws = bytearray(), [], []
    for _ in range(n_chunks):
        raw = rnd.randbytes(raw_size)
        frame = cctx.compress(raw)
        infos.append(ChunkInfo(0, len(out), len(frame), len(raw), hashlib.sha256(raw).digest()))
        raws.append(raw)
        out += frame
    digest = "sha256:" + hashlib.sha256(out).hexdigest()
    with RegistryClient(registry_host, plain_http=True, docker_config=workdir / "none.json") as c:
        c.push_blob(repo, digest, bytes(out))
    return digest, [ChunkRef(digest, info) for info in infos], raws, len(out)
