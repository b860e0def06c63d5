"""Where converted images go: an OCI layout directory or a registry repository.

Both sinks publish in the same order, so a failure never leaves a visible,
half-written image: every blob first, then the per-platform manifests by
digest, then the one thing that names the image (the tag in the registry,
index.json in the layout) last. A new OCI layout is built in a temporary
sibling directory and renamed into place; into an existing layout, blobs are
added (content-addressed, harmless if orphaned) and index.json is replaced
atomically.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import BadInput, IOFailure
from converter.location import Location
from converter.sources import REF_NAME, registry_client

PUSH_JOBS = 4

@dataclass(frozen=True)
class Blob:
    """A blob to publish: content is a local file or bytes."""

    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class ManifestDoc:
    digest: str
    data: bytes
    media_type: str


class Sink(ABC):
    """Publishes blobs, then sub-manifests, then the root (tagged) document."""

    @abstractmethod
    def publish(self, blobs: list[Blob], manifests: list[ManifestDoc], root: ManifestDoc) -> None:
        """All or nothing as far as readers of the image name can tell."""

    def close(self) -> None:
        """Release connections."""


class OCILayoutSink(Sink):
    def __init__(self, location: Location):
        self.dir = Path(location.path)
        self.ref = location.ref

    def publish(self, blobs: list[Blob], manifests: list[ManifestDoc], root: ManifestDoc) -> None:
        try:
            if self.dir.exists() and any(self.dir.iterdir()):
                self._publish_into_existing(blobs, manifests, root)
            else:
                self._publish_new(blobs, manifests, root)
        except OSError as e:
            raise IOFailure(f"writing OCI layout {self.dir}: {e}") from None

    def _publish_new(self, blobs: list[Blob], manifests: list[ManifestDoc], root: ManifestDoc) -> None:
        parent = self.dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)            # mkdtemp makes 0700; a layout is an ordinary dir
            (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
            self._write_blobs(tmp, blobs, manifests, root)
            _atomic_write(tmp / "index.json", self._index({"schemaVersion": 2, "manifests": []}, root))
            if self.dir.exists():
                self.dir.rmdir()            # empty (checked above); rename needs it gone
            os.rename(tmp, self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish_into_existing(self, blobs: list[Blob], manifests: list[ManifestDoc],
                               root: ManifestDoc) -> None:
        index_path = self.dir / "index.json"
        if not (self.dir / "oci-layout").is_file() or not index_path.is_file():
            raise BadInput(f"{self.dir} exists and is not an OCI layout; refusing to write into it")
        try:
            index = json.loads(index_path.read_bytes())
        except ValueError as e:
            raise BadInput(f"{index_path} does not parse: {e}") from None
        self._write_blobs(self.dir, blobs, manifests, root)
        _atomic_write(index_path, self._index(index, root))

    def _write_blobs(self, top: Path, blobs: list[Blob], manifests: list[ManifestDoc],
                     root: ManifestDoc) -> None:
        bdir = top / "blobs" / "sha256"
        bdir.mkdir(parents=True, exist_ok=True)
        docs = [Blob(m.digest, len(m.data), data=m.data) for m in [*manifests, root]]
        for blob in [*blobs, *docs]:
            dest = bdir / blob.digest.split(":", 1)[1]
            if dest.exists() and dest.stat().st_size == blob.size:
                continue
            tmp = dest.with_name(dest.name + ".tmp")
            if blob.path is not None:
                try:
                    os.link(blob.path, tmp)     # same filesystem: no copy
                except OSError:
                    shutil.copyfile(blob.path, tmp)
            else:
                tmp.write_bytes(blob.data or b"")
            os.replace(tmp, dest)

    def _index(self, index: dict, root: ManifestDoc) -> bytes:
        entry: dict[str, Any] = {"mediaType": root.media_type, "digest": root.digest, "size": len(root.data)}
        if self.ref:
            entry["annotations"] = {REF_NAME: self.ref}
        kept = [e for e in index.get("manifests", [])
                if not (self.ref and (e.get("annotations") or {}).get(REF_NAME) == self.ref)]
        out = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [*kept, entry]}
        return json.dumps(out, separators=(",", ":")).encode()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RegistrySink(Sink):
    def __init__(self, location: Location, client: Any):
        self.location = location
        self.client = client

    def publish(self, blobs: list[Blob], manifests: list[ManifestDoc], root: ManifestDoc) -> None:
        repo = self.location.repo

        def push(blob: Blob) -> None:
            src = blob.path if blob.path is not None else blob.data
            self.client.push_blob(repo, blob.digest, src, size=blob.size)

        # a few uploads at once hide per-request latency; the client is thread-safe
        with ThreadPoolExecutor(max_workers=PUSH_JOBS, thread_name_prefix="imgconv-push") as pool:
            for f in [pool.submit(push, b) for b in blobs]:
                f.result()                  # first error propagates; no manifest is pushed after it
        for m in manifests:
            self.client.push_manifest(repo, m.digest, m.data, m.media_type)
        self.client.push_manifest(repo, self.location.ref, root.data, root.media_type)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def open_sink(location: Location, plain_http: bool = False, insecure: bool = False,
              **registry_opts: Any) -> Sink:
    if location.kind == "oci":
        return OCILayoutSink(location)
    if location.kind == "docker":
        return RegistrySink(location, registry_client(location.host, plain_http, insecure, **registry_opts))
    raise BadInput(f"cannot write to {location}: use docker:// or oci:")
