"""Build small test images (blobs + manifests) and push them with the client under test."""
from __future__ import annotations

import hashlib
import json

from registry.client import RegistryClient
from registry.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST

CONFIG_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
                DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json"}
LAYER_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar+gzip",
               DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip"}
INDEX_FOR = {OCI_MANIFEST: OCI_INDEX, DOCKER_MANIFEST: DOCKER_MANIFEST_LIST}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pattern(size: int, seed: int) -> bytes:
    """Deterministic non-repeating bytes (sha256 counter stream), so any misplaced slice shows."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:size])


def push_image(c: RegistryClient, repo: str, media_type: str, arch: str, layer: bytes,
               tag: str | None = None) -> tuple[str, bytes]:
    """Push config + one layer + manifest; returns (manifest digest, manifest bytes)."""
    config = json.dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
    for blob in (config, layer):
        c.push_blob(repo, digest(blob), blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": CONFIG_TYPES[media_type], "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPES[media_type], "digest": digest(layer), "size": len(layer)}],
    }, indent=1).encode()
    d = c.push_manifest(repo, tag or digest(manifest), manifest, media_type)
    return d, manifest


def index_doc(media_type: str, entries: list[tuple[str, bytes, dict]]) -> bytes:
    """An index / manifest list of (digest, manifest bytes, platform) entries."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": INDEX_FOR[media_type],
        "manifests": [{"mediaType": media_type, "digest": d, "size": len(m), "platform": p}
                      for d, m, p in entries],
    }).encode()
