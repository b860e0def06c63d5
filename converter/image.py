"""Source images: manifest + config + layer streams, for any location.

`open_image(location)` is the entry point other packages use (fusefs and the
snapshotter open `oci:` and `docker://` images through it). Manifests and
configs are parsed and checked here, once, so everything above can trust the
shape of what it gets: a malformed document is a BadInput naming the field.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from converter.errors import BadInput, UsageError
from converter.location import Location, parse_location
from converter.sources import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Source,
    check_digest,
    open_source,
    parse_json,
    sha256_digest,
)
from converter.streams import DecompressReader, DigestReader, open_tar_stream

DEFAULT_PLATFORM = "linux/amd64"
MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}


@dataclass(frozen=True)
class Layer:
    """One layer descriptor of a manifest."""

    digest: str
    size: int
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceImage:
    """One platform's image: parsed manifest and config, and access to its blobs."""

    source: Source
    manifest: dict
    manifest_bytes: bytes
    manifest_digest: str
    config: dict
    config_bytes: bytes
    config_digest: str
    layers: list[Layer]
    platform: dict | None = None

    @property
    def location(self) -> Location:
        return self.source.location

    @property
    def diff_ids(self) -> list[str | None]:
        ids = (self.config.get("rootfs") or {}).get("diff_ids") or []
        return [ids[i] if i < len(ids) else None for i in range(len(self.layers))]

    def open_layer(self, index: int, cancel: threading.Event | None = None, diff_id: bool = True
                   ) -> tuple[DigestReader, DecompressReader]:
        """(compressed-digest checker, uncompressed tar reader) for layer `index`.

        Read the tar from the second; then `finish()` both to verify the
        compressed digest and the size. The diff_id (sha256 of the tar, one
        more pass over every byte) is computed unless `diff_id=False`; the
        caller compares it with the config when that matters.
        """
        layer = self.layers[index]
        what = f"layer {index} ({layer.digest})"
        return open_tar_stream(self.source.open_blob(layer.digest), layer.digest, what, layer.size, cancel,
                               diff_id)

    def open_blob(self, digest: str) -> BinaryIO:
        return self.source.open_blob(digest)

    def read_range(self, digest: str, start: int, end: int) -> bytes:
        return self.source.read_range(digest, start, end)

    def close(self) -> None:
        self.source.close()


@dataclass
class ImageSet:
    """What a location names: one image, or several platforms of an index."""

    source: Source
    images: list[SourceImage]
    index: dict | None          # the (innermost) index the images were picked from, if any

    def close(self) -> None:
        self.source.close()


def parse_platform(text: str) -> dict[str, str]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"bad platform {text!r}: expected OS/ARCH[/VARIANT]")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        plat["variant"] = parts[2]
    return plat


def _platform_matches(entry: dict, want: dict[str, str]) -> bool:
    plat = entry.get("platform") or {}
    return all(plat.get(k) == v for k, v in want.items())


def _is_image_entry(entry: dict) -> bool:
    plat = entry.get("platform") or {}
    return plat.get("os") != "unknown"       # skip buildkit attestation manifests


def open_images(location: Location | str, platform: str | None = None, all_platforms: bool = False,
                **registry_opts: Any) -> ImageSet:
    """Open the image(s) a location names, following (nested) indexes.

    One platform (`platform`, default linux/amd64, or the only image if the
    index has exactly one) unless `all_platforms`.
    """
    loc = parse_location(location) if isinstance(location, str) else location
    source = open_source(loc, **registry_opts)
    try:
        data, media_type = source.root()
        want = parse_platform(platform or DEFAULT_PLATFORM)
        images: list[SourceImage] = []
        index: dict | None = None
        for _ in range(8):                      # nested indexes, bounded
            doc = parse_json(data, f"{loc}: manifest")
            media = doc.get("mediaType") or media_type
            if media in INDEX_TYPES or (media is None and "manifests" in doc):
                index = doc
                entries = _index_entries(doc, loc)
                if all_platforms:
                    chosen = [e for e in entries if _is_image_entry(e)]
                else:
                    chosen = [e for e in entries if _platform_matches(e, want)]
                    if not chosen and platform is None and len(entries) == 1:
                        chosen = entries
                    chosen = chosen[:1]
                if not chosen:
                    raise BadInput(f"{loc}: no manifest for platform {platform or DEFAULT_PLATFORM} "
                                   f"in the index")
                if len(chosen) == 1 and not all_platforms:
                    desc = chosen[0]
                    data, media_type = source.manifest(desc["digest"]), desc.get("mediaType")
                    continue
                for desc in chosen:
                    sub = source.manifest(desc["digest"])
                    images.append(_load_image(source, sub, desc.get("mediaType"), loc, desc.get("platform")))
                return ImageSet(source, images, index)
            images.append(_load_image(source, data, media_type, loc, None))
            return ImageSet(source, images, index)
        raise BadInput(f"{loc}: indexes nested too deeply")
    except BaseException:
        source.close()
        raise


def open_image(location: Location | str, platform: str | None = None, **registry_opts: Any) -> SourceImage:
    """One image (one platform) at `location`; see open_images."""
    return open_images(location, platform, False, **registry_opts).images[0]


def _index_entries(doc: dict, loc: Location) -> list[dict]:
    entries = doc.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{loc}: index has no manifests")
    for e in entries:
        if not isinstance(e, dict):
            raise BadInput(f"{loc}: index entry {e!r} is not a descriptor")
        check_digest(e.get("digest"), f"{loc}: index entry")
    return entries


def _load_image(source: Source, data: bytes, media_type: str | None, loc: Location,
                platform: dict | None) -> SourceImage:
    doc = parse_json(data, f"{loc}: manifest")
    media = doc.get("mediaType") or media_type or OCI_MANIFEST
    if doc.get("schemaVersion") != 2:
        raise BadInput(f"{loc}: unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    if media not in MANIFEST_TYPES:
        raise BadInput(f"{loc}: unsupported manifest media type {media!r}")
    cfg = doc.get("config")
    if not isinstance(cfg, dict):
        raise BadInput(f"{loc}: manifest has no config descriptor")
    cfg_digest = check_digest(cfg.get("digest"), f"{loc}: config")
    cfg_bytes = source.read_blob(cfg_digest, f"{loc}: config")
    config = parse_json(cfg_bytes, f"{loc}: config {cfg_digest}")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise BadInput(f"{loc}: manifest has no layers list")
    layers = []
    for i, d in enumerate(layers_doc):
        if not isinstance(d, dict):
            raise BadInput(f"{loc}: layer {i} is not a descriptor")
        size = d.get("size")
        if not isinstance(size, int) or size < 0:
            raise BadInput(f"{loc}: layer {i} has a bad size {size!r}")
        ann = d.get("annotations") or {}
        if not isinstance(ann, dict):
            raise BadInput(f"{loc}: layer {i} annotations are not an object")
        layers.append(Layer(check_digest(d.get("digest"), f"{loc}: layer {i}"), size,
                            str(d.get("mediaType", "")), {str(k): str(v) for k, v in ann.items()}))
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise BadInput(f"{loc}: config has no rootfs.diff_ids")
    if len(rootfs["diff_ids"]) != len(layers):
        raise BadInput(f"{loc}: config lists {len(rootfs['diff_ids'])} diff_ids for {len(layers)} layers")
    return SourceImage(source, doc, data, sha256_digest(data), config, cfg_bytes, cfg_digest, layers,
                       platform)


def canonical_json(doc: Any) -> bytes:
    """Deterministic serialisation for documents we write (key order kept as given)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
