"""Manifest classification and platform choice."""
from __future__ import annotations

import json

import pytest

from registry.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestError,
    parse_manifest,
    select_platform,
)


def idx(*platforms, media_type=OCI_INDEX):
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1, "platform": p}
        for i, p in enumerate(platforms)]}
    return parse_manifest(json.dumps(doc).encode(), None, "sha256:" + "f" * 64)


def test_media_type_from_body_header_or_shape():
    body = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    assert parse_manifest(body, None, "d").media_type == OCI_MANIFEST
    assert parse_manifest(body, DOCKER_MANIFEST + "; charset=utf-8", "d").media_type == DOCKER_MANIFEST
    assert parse_manifest(json.dumps({"manifests": []}).encode(), "text/plain", "d").media_type == OCI_INDEX
    body = json.dumps({"mediaType": DOCKER_MANIFEST_LIST, "manifests": []}).encode()
    m = parse_manifest(body, OCI_MANIFEST, "d")   # the body's own mediaType wins over a header
    assert m.media_type == DOCKER_MANIFEST_LIST and m.is_index


SCHEMA1 = b'{"mediaType": "application/vnd.docker.distribution.manifest.v1+json"}'


@pytest.mark.parametrize("body", [b"not json", b"[]", SCHEMA1, b'{"config": {}}', b'{"layers": 3}'])
def test_bad_manifests(body):
    with pytest.raises(ManifestError):
        parse_manifest(body, None, "sha256:x")


def test_platform_choice():
    amd = {"os": "linux", "architecture": "amd64"}
    arm7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
    arm64 = {"os": "linux", "architecture": "arm64"}
    unknown = {"os": "unknown", "architecture": "unknown"}   # buildkit attestation entries
    i = idx(unknown, arm7, arm64, amd)
    assert select_platform(i)["platform"] == amd
    assert select_platform(i, "linux/arm/v7")["platform"] == arm7
    assert select_platform(i, "linux/arm64/v8")["platform"] == arm64   # arm64 without variant is v8
    with pytest.raises(ManifestError, match="linux/arm/v7"):
        select_platform(i, "linux/arm/v6")
    with pytest.raises(ManifestError):
        select_platform(i, "linux")
    amd_v3 = {"os": "linux", "architecture": "amd64", "variant": "v3"}
    assert select_platform(idx(amd_v3, amd))["platform"] == amd        # plain entry preferred
    assert select_platform(idx(amd_v3))["platform"] == amd_v3
