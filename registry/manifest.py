"""Manifests: OCI image manifest/index and Docker schema2 manifest/manifest list.

A manifest is kept as the exact bytes the registry served (its digest is over
those bytes), plus the media type and the parsed JSON. Platform choice follows
containerd's matcher in spirit: os and architecture must match; a requested
variant must match (arm64 without variant counts as v8); without a requested
variant, the entry without a variant is preferred, then the first listed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT = ", ".join(IMAGE_MANIFEST_TYPES + INDEX_TYPES)

# distribution refuses manifests over 4 MiB; so do we, to bound memory on hostile input.
MAX_MANIFEST_SIZE = 4 << 20

DEFAULT_PLATFORM = "linux/amd64"


class ManifestError(ValueError):
    """Manifest bytes that are not a usable manifest (bad JSON, unknown type, no such platform)."""


@dataclass(frozen=True)
class Manifest:
    """One manifest exactly as served: ``data`` bytes, ``media_type``, ``digest`` (of data), ``json``."""

    data: bytes = field(repr=False)
    media_type: str
    digest: str
    json: dict = field(repr=False, compare=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def config(self) -> dict | None:
        return self.json.get("config")

    @property
    def layers(self) -> list[dict]:
        return list(self.json.get("layers") or [])

    @property
    def manifests(self) -> list[dict]:
        return list(self.json.get("manifests") or [])


def parse_manifest(data: bytes, content_type: str | None, digest: str) -> Manifest:
    """Build a Manifest, deciding its media type from the body's ``mediaType`` or the Content-Type.

    The body's own ``mediaType`` wins (it is covered by the digest; a proxy's
    header is not); OCI documents without it are classified by shape.

    Raises:
        ManifestError: not JSON, not an object, or of an unsupported media type.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {digest} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {digest} is not a JSON object")
    mt = doc.get("mediaType")
    if not isinstance(mt, str) or not mt:
        ct = (content_type or "").split(";", 1)[0].strip()
        if ct in IMAGE_MANIFEST_TYPES + INDEX_TYPES:
            mt = ct
        elif "manifests" in doc:
            mt = OCI_INDEX
        elif "layers" in doc:
            mt = OCI_MANIFEST
        else:
            raise ManifestError(f"manifest {digest} has no media type and an unknown shape")
    if mt not in IMAGE_MANIFEST_TYPES + INDEX_TYPES:
        raise ManifestError(f"manifest {digest} has unsupported media type {mt!r} "
                            "(schema1 and artifacts are not images)")
    key = "manifests" if mt in INDEX_TYPES else "layers"
    if not isinstance(doc.get(key, []), list):
        raise ManifestError(f"manifest {digest}: {key!r} is not a list")
    return Manifest(data=data, media_type=mt, digest=digest, json=doc)


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` -> (os, arch, variant or None)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ManifestError(f"invalid platform {text!r}: expected os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _variant(arch: str, variant: Any) -> str | None:
    if isinstance(variant, str) and variant:
        return variant
    return "v8" if arch == "arm64" else None


def select_platform(index: Manifest, platform: str = DEFAULT_PLATFORM) -> dict:
    """The descriptor in ``index`` for ``platform`` (see module doc for the matching rule).

    Raises:
        ManifestError: no entry matches; the message lists the platforms available.
    """
    want_os, want_arch, want_variant = parse_platform(platform)
    candidates = []
    seen = []
    for desc in index.manifests:
        p = desc.get("platform") or {}
        os_, arch = p.get("os"), p.get("architecture")
        seen.append("/".join(x for x in (os_, arch, p.get("variant")) if x) or "?")
        if os_ != want_os or arch != want_arch:
            continue
        if desc.get("mediaType") not in (None, *IMAGE_MANIFEST_TYPES):
            continue
        have = _variant(arch, p.get("variant"))
        if want_variant is not None and have != _variant(want_arch, want_variant):
            continue
        candidates.append((p.get("variant") is not None, desc))
    if not candidates:
        raise ManifestError(f"no manifest for platform {platform} in index {index.digest} "
                            f"(available: {', '.join(seen) or 'none'})")
    candidates.sort(key=lambda c: c[0])  # stable: no-variant first, then listing order
    return candidates[0][1]
