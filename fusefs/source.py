"""Where an image comes from: resolve IMAGE to its imgfs layers and a thread-safe blob source.

``docker://HOST/REPO:TAG[@digest]`` goes through ``registry.client.RegistryClient``;
``oci:DIR[:TAG]`` reads an OCI image layout on local disk (handy for debugging and for
benchmarks that want no network at all). Only the manifest is read here; the
bootstraps are fetched by ``fusefs.mount`` with one range request per layer, located
by the layer descriptor annotations (a footer read is the fallback for layers that lack
them, costing one extra round trip).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgformat import constants as C


class ImageError(Exception):
    """IMAGE is malformed, missing, or not an imgfs image (exit code 3)."""


class SourceError(Exception):
    """The image source (registry, directory) failed (exit code 4)."""


@dataclass(frozen=True)
class LayerRef:
    """One imgfs layer of the image, from its manifest descriptor."""

    digest: str
    size: int
    bootstrap_offset: int | None
    bootstrap_size: int | None
    bootstrap_digest: str | None


class RegistrySource:
    """Blobs of one repository, fetched by range through the thread-safe client."""

    def __init__(self, client: Any, repository: str) -> None:
        self.client = client
        self.repository = repository

    def get_range(self, blob: str, start: int, end: int) -> bytes:
        return self.client.get_range(self.repository, blob, start, end)

    def get_ranges(self, blob: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        return self.client.get_ranges(self.repository, blob, ranges)

    def open_range(self, blob: str, start: int, end: int) -> Any:
        """Bytes ``[start, end)`` as they arrive (a ``registry.rangefetch.RangeBody``: exact
        ``read(n)`` or raise; close it). Streamed prefetch uses each chunk as soon as its
        bytes are in (``fusefs.stream``) instead of waiting for the whole range."""
        return self.client.open_range(self.repository, blob, start, end)

    def describe(self) -> str:
        return f"{self.client.registry}/{self.repository}"


class OciDirSource:
    """Blobs of an OCI layout dir, read with ``pread`` (no network).

    No ``open_range``: a local read has no round trips to hide, so prefetch reads its
    ranges whole (``fusefs.stream.range_opener`` gives None for it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, blob: str) -> int:
        with self._lock:
            fd = self._fds.get(blob)
            if fd is None:
                algo, _, hexd = blob.partition(":")
                try:
                    fd = os.open(self.root / "blobs" / algo / hexd, os.O_RDONLY)
                except FileNotFoundError as exc:
                    raise SourceError(f"blob {blob} missing from {self.root}") from exc
                self._fds[blob] = fd
            return fd

    def get_range(self, blob: str, start: int, end: int) -> bytes:
        data = os.pread(self._fd(blob), end - start, start)
        if len(data) != end - start:
            raise SourceError(f"blob {blob} in {self.root} is shorter than {end}")
        return data

    def get_ranges(self, blob: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        return [self.get_range(blob, s, e) for s, e in ranges]

    def size(self, blob: str) -> int:
        return os.fstat(self._fd(blob)).st_size

    def describe(self) -> str:
        return f"oci:{self.root}"


def layers_from_manifest(manifest: dict, count: int | None = None) -> list[LayerRef]:
    """The imgfs layers of an image manifest, bottom first; ImageError if there are none.

    ``count``: only the bottom ``count`` layers (an image whose upper layers are plain, e.g.
    built FROM an imgfs image: the snapshotter stacks those above this mount).
    """
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ImageError("manifest has no layers")
    if count is not None:
        if not 0 < count <= len(layers):
            raise ImageError(f"--layer-count {count}: the image has {len(layers)} layers")
        layers = layers[:count]
    out = []
    for i, desc in enumerate(layers):
        ann = desc.get("annotations") or {}
        if C.ANNOTATION_BOOTSTRAP_DIGEST not in ann and C.ANNOTATION_VERSION not in ann:
            raise ImageError(f"layer {i} ({desc.get('digest')}) is not an imgfs layer "
                             f"(no {C.ANNOTATION_BOOTSTRAP_DIGEST} annotation): convert it with imgconv")
        try:
            off = int(ann[C.ANNOTATION_BOOTSTRAP_OFFSET]) if C.ANNOTATION_BOOTSTRAP_OFFSET in ann else None
            size = int(ann[C.ANNOTATION_BOOTSTRAP_SIZE]) if C.ANNOTATION_BOOTSTRAP_SIZE in ann else None
            out.append(LayerRef(digest=str(desc["digest"]), size=int(desc["size"]),
                                bootstrap_offset=off, bootstrap_size=size,
                                bootstrap_digest=ann.get(C.ANNOTATION_BOOTSTRAP_DIGEST)))
        except (KeyError, ValueError, TypeError) as exc:
            raise ImageError(f"layer {i}: malformed descriptor: {exc}") from exc
    return out


def open_image(image: str, *, plain_http: bool = False, insecure: bool = False,
               auth_file: str | None = None, retries: int = 4, timeout: float = 30.0,
               layer_count: int | None = None) -> tuple[list[LayerRef], Any, str]:
    """Resolve IMAGE; return (imgfs layers bottom first, blob source, manifest digest).
    ``layer_count``: only the bottom layers (``layers_from_manifest``); ``auth_file``: a
    docker config.json with the registry's credentials (else $DOCKER_CONFIG's)."""
    if image.startswith("docker://"):
        return _open_registry(image[len("docker://"):], plain_http, insecure, retries, timeout, layer_count,
                              auth_file)
    if image.startswith("oci:"):
        return _open_oci(image[len("oci:"):], layer_count)
    raise ImageError(f"unknown image location {image!r}: use docker://HOST/REPO:TAG or oci:DIR[:TAG]")


def _open_registry(ref_text: str, plain_http: bool, insecure: bool, retries: int, timeout: float,
                   layer_count: int | None = None,
                   auth_file: str | None = None) -> tuple[list[LayerRef], Any, str]:
    from registry.client import RegistryClient, RegistryError
    from registry.reference import InvalidReference, parse_reference

    try:
        ref = parse_reference(ref_text)
    except InvalidReference as exc:
        raise ImageError(str(exc)) from exc
    try:
        client = RegistryClient(registry=ref.registry, plain_http=plain_http, insecure=insecure,
                                auth_file=auth_file, timeout=timeout, retries=retries)
        manifest = client.resolve(ref)
    except RegistryError as exc:
        raise SourceError(str(exc)) from exc
    return (layers_from_manifest(manifest.json, layer_count), RegistrySource(client, ref.repository),
            manifest.digest)


def _open_oci(rest: str, layer_count: int | None = None) -> tuple[list[LayerRef], Any, str]:
    path, tag = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head and "/" not in tail:
        path, tag = head, tail
    root = Path(path)
    try:
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"oci:{root}: cannot read index.json: {exc}") from exc
    manifests = index.get("manifests") or []
    if tag is not None:
        manifests = [m for m in manifests
                     if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if len(manifests) != 1:
        raise ImageError(f"oci:{rest}: expected exactly one manifest"
                         f"{' tagged ' + tag if tag else ''}, found {len(manifests)}")
    src = OciDirSource(root)
    digest = manifests[0]["digest"]
    data = src.get_range(digest, 0, src.size(digest))
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:  # a layout is content-addressed: a manifest that lies about itself is bad input
        raise ImageError(f"oci:{rest}: manifest {digest} does not match its content ({got})")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ImageError(f"oci:{rest}: manifest {digest} does not parse: {exc}") from exc
    return layers_from_manifest(manifest, layer_count), src, digest
