"""Where blobs come from: an OCI layout dir, a docker-archive tar, or a registry.

A `Source` answers "give me the root manifest, a manifest by digest, a blob
stream, a range of a blob". It knows nothing of platforms or image semantics
(that is converter.image); each backend only hides its storage. Blob streams
are returned unverified; callers wrap them in streams.DigestReader, so every
backend is checked the same way.

Every open_blob() opens its own file handle: layers are read by parallel
worker threads, and a shared file position would interleave their reads.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from converter.errors import BadInput, IOFailure
from converter.location import Location

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_JSON = 16 << 20     # manifests and configs larger than this are refused (registries cap at 4 MiB)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def check_digest(digest: Any, what: str) -> str:
    """A digest we can use as a file name and verify: only sha256 is accepted."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise BadInput(f"{what}: unsupported or malformed digest {digest!r}")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_json(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{what} does not parse as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{what} is not a JSON object")
    return doc


class Source(ABC):
    """Blob storage of one image location."""

    location: Location

    @abstractmethod
    def root(self) -> tuple[bytes, str | None]:
        """The top manifest or index the location names, and its declared media type."""

    @abstractmethod
    def manifest(self, digest: str) -> bytes:
        """A manifest (or nested index) by digest, verified."""

    @abstractmethod
    def open_blob(self, digest: str) -> BinaryIO:
        """The raw blob as a stream (not yet verified)."""

    @abstractmethod
    def read_range(self, digest: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a blob."""

    def read_blob(self, digest: str, what: str, limit: int = MAX_JSON) -> bytes:
        """A small blob (config), verified against its digest."""
        with self.open_blob(digest) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BadInput(f"{what} {digest} is larger than {limit} bytes")
        if sha256_digest(data) != digest:
            raise BadInput(f"{what} {digest}: digest mismatch (content is {sha256_digest(data)})")
        return data

    def close(self) -> None:
        """Release connections or handles."""


class _LocalSource(Source):
    """Common part of the two file-backed sources: blobs are byte ranges of local files."""

    @abstractmethod
    def _blob_file(self, digest: str) -> tuple[Path, int, int]:
        """(file, offset, length) where the blob lives."""

    def open_blob(self, digest: str) -> BinaryIO:
        path, offset, length = self._blob_file(digest)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the returned _Window)
        except OSError as e:
            raise IOFailure(f"{self.location}: cannot open blob {digest}: {e}") from None
        f.seek(offset)
        return _Window(f, length)

    def read_range(self, digest: str, start: int, end: int) -> bytes:
        path, offset, length = self._blob_file(digest)
        if not 0 <= start <= end <= length:
            raise BadInput(f"{self.location}: range [{start}, {end}) outside blob {digest} of {length} bytes")
        with open(path, "rb") as f:
            f.seek(offset + start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise BadInput(f"{self.location}: blob {digest} is shorter than expected")
        return data

    def manifest(self, digest: str) -> bytes:
        return self.read_blob(check_digest(digest, str(self.location)), "manifest")


class _Window(io.RawIOBase):
    """At most `length` bytes of an open file from its current position."""

    def __init__(self, f: BinaryIO, length: int):
        self._f = f
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._left <= 0:
            return 0
        n = self._f.readinto(memoryview(b)[:min(len(b), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


class OCILayoutSource(_LocalSource):
    """An OCI image layout directory (oci-layout, index.json, blobs/sha256/...)."""

    def __init__(self, location: Location):
        self.location = location
        self.dir = Path(location.path)
        layout = self.dir / "oci-layout"
        if not layout.is_file():
            raise BadInput(f"{location}: not an OCI layout (no {layout})")
        version = parse_json(_read_small(layout), f"{layout}").get("imageLayoutVersion")
        if version != "1.0.0":
            raise BadInput(f"{layout}: unsupported imageLayoutVersion {version!r}")
        self.index = parse_json(_read_small(self.dir / "index.json"), f"{self.dir}/index.json")

    def root(self) -> tuple[bytes, str | None]:
        entries = self.index.get("manifests")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise BadInput(f"{self.dir}/index.json: 'manifests' is not a list of descriptors")
        ref = self.location.ref
        if ref is not None:
            chosen = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == ref]
            if not chosen:
                raise BadInput(f"{self.location}: no image tagged {ref!r} in index.json")
        else:
            chosen = entries
        if len(chosen) == 1:
            desc = chosen[0]
            return self.manifest(check_digest(desc.get("digest"), "index.json")), desc.get("mediaType")
        # several untagged images: index.json itself is the index to pick a platform from
        return json.dumps(self.index).encode(), OCI_INDEX

    def _blob_file(self, digest: str) -> tuple[Path, int, int]:
        check_digest(digest, str(self.location))
        path = self.dir / "blobs" / "sha256" / digest.split(":", 1)[1]
        try:
            size = path.stat().st_size
        except OSError:
            raise BadInput(f"{self.location}: blob {digest} is missing") from None
        return path, 0, size


class DockerArchiveSource(_LocalSource):
    """A `docker save` tar (manifest.json + config + layer tars, legacy or OCI-style paths).

    The archive has no OCI manifest; one is synthesised with layer descriptors
    whose digests we can verify while streaming: the blob name when it is
    content-addressed, else the config's diff_id for an uncompressed layer,
    else the sha256 computed up front.
    """

    def __init__(self, location: Location):
        self.location = location
        self.path = Path(location.path)
        try:
            with tarfile.open(self.path, "r:") as tar:
                self._members = {self._norm(m.name): m for m in tar.getmembers()}
        except OSError as e:
            raise IOFailure(f"{location}: {e}") from None
        except tarfile.TarError as e:
            raise BadInput(f"{location}: not a readable tar archive: {e}") from None
        self._blobs: dict[str, tarfile.TarInfo] = {}
        self._manifest = self._synthesise()

    @staticmethod
    def _norm(name: str) -> str:
        return str(PurePosixPath("/", name))[1:]

    def _member(self, name: str, what: str) -> tarfile.TarInfo:
        m = self._members.get(self._norm(name))
        for _ in range(8):                       # follow symlinked duplicates (legacy layout)
            if m is None or not m.issym():
                break
            target = PurePosixPath(self._norm(m.name)).parent / m.linkname
            m = self._members.get(self._norm(str(target)))
        if m is None or not m.isfile():
            raise BadInput(f"{self.location}: {what} {name!r} is missing from the archive")
        return m

    def _read_member(self, m: tarfile.TarInfo, limit: int = MAX_JSON) -> bytes:
        if m.size > limit:
            raise BadInput(f"{self.location}: {m.name} is larger than {limit} bytes")
        with self._window(m) as f:
            return f.read()

    def _window(self, m: tarfile.TarInfo) -> BinaryIO:
        f = open(self.path, "rb")  # noqa: SIM115 (closed by the returned reader)
        f.seek(m.offset_data)
        return io.BufferedReader(_Window(f, m.size))

    def _synthesise(self) -> dict:
        try:
            entries = json.loads(self._read_member(self._member("manifest.json", "manifest.json")))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"{self.location}: manifest.json does not parse: {e}") from None
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            raise BadInput(f"{self.location}: manifest.json is not a non-empty list of images")
        entry = entries[0]
        cfg_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(cfg_name, str) or not isinstance(layer_names, list):
            raise BadInput(f"{self.location}: manifest.json lacks Config or Layers")
        cfg_member = self._member(cfg_name, "config")
        cfg_bytes = self._read_member(cfg_member)
        config = parse_json(cfg_bytes, f"{self.location}: config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        cfg_digest = sha256_digest(cfg_bytes)
        self._blobs[cfg_digest] = cfg_member
        layers = []
        for i, name in enumerate(layer_names):
            if not isinstance(name, str):
                raise BadInput(f"{self.location}: layer name {name!r} is not a string")
            m = self._member(name, "layer")
            with self._window(m) as f:
                head = f.read(4)
            media = _media_type_for(head)
            digest = self._layer_digest(name, m, media, diff_ids[i] if i < len(diff_ids) else None)
            self._blobs[digest] = m
            layers.append({"mediaType": media, "digest": digest, "size": m.size})
        return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
                "layers": layers}

    def _layer_digest(self, name: str, m: tarfile.TarInfo, media: str, diff_id: Any) -> str:
        parts = PurePosixPath(self._norm(name)).parts
        if len(parts) == 3 and parts[0] == "blobs" and DIGEST_RE.match(f"{parts[1]}:{parts[2]}"):
            return f"{parts[1]}:{parts[2]}"
        if media.endswith(".tar") and isinstance(diff_id, str) and DIGEST_RE.match(diff_id):
            return diff_id
        h = hashlib.sha256()
        with self._window(m) as f:
            while piece := f.read(1 << 20):
                h.update(piece)
        return "sha256:" + h.hexdigest()

    def root(self) -> tuple[bytes, str | None]:
        return json.dumps(self._manifest).encode(), OCI_MANIFEST

    def manifest(self, digest: str) -> bytes:
        raise BadInput(f"{self.location}: a docker archive holds no manifest {digest}")

    def _blob_file(self, digest: str) -> tuple[Path, int, int]:
        m = self._blobs.get(digest)
        if m is None:
            raise BadInput(f"{self.location}: no blob {digest} in the archive")
        return self.path, m.offset_data, m.size

class RegistrySource(Source):
    """A repository in an OCI distribution registry, through registry.client.RegistryClient."""

    def __init__(self, location: Location, client: Any):
        self.location = location
        self.client = client
        self.repo = location.repo

    def root(self) -> tuple[bytes, str | None]:
        m = self.client.get_manifest(self.repo, self.location.ref)
        return m.data, m.media_type

    def manifest(self, digest: str) -> bytes:
        return self.client.get_manifest(self.repo, check_digest(digest, str(self.location))).data

    def open_blob(self, digest: str) -> BinaryIO:
        return self.client.open_blob(self.repo, check_digest(digest, str(self.location)))

    def read_range(self, digest: str, start: int, end: int) -> bytes:
        return self.client.get_range(self.repo, digest, start, end)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close:
            close()


def _media_type_for(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


def _read_small(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON + 1)
    except FileNotFoundError:
        raise BadInput(f"{path} is missing") from None
    except OSError as e:
        raise IOFailure(f"{path}: {e}") from None
    if len(data) > MAX_JSON:
        raise BadInput(f"{path} is larger than {MAX_JSON} bytes")
    return data


def registry_client(host: str, plain_http: bool = False, insecure: bool = False, **kw: Any) -> Any:
    """A RegistryClient for `host` (imported here so local-only commands never need registry/)."""
    from registry.client import RegistryClient
    return RegistryClient(registry=host, plain_http=plain_http, insecure=insecure, **kw)


def open_source(location: Location, plain_http: bool = False, insecure: bool = False,
                **registry_opts: Any) -> Source:
    """The Source for a parsed location."""
    if location.kind == "oci":
        return OCILayoutSource(location)
    if location.kind == "docker-archive":
        return DockerArchiveSource(location)
    return RegistrySource(location, registry_client(location.host, plain_http, insecure, **registry_opts))
