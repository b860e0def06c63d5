"""RegistryClient against the real docker-registry (distribution 2.8) on loopback."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from registry.client import DigestMismatch, NotFound, RegistryClient, RegistryError
from registry.errors import PlatformNotFound, RangeError
from registry.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from registry.reference import InvalidReference, parse_reference
from tests.registry.images import INDEX_FOR, digest, index_doc, pattern, push_image

BLOB = pattern(300_000, 1)


@pytest.fixture(scope="module")
def client(registry, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("dockercfg") / "config.json"   # absent: anonymous, never ~/.docker
    c = RegistryClient(registry.host, plain_http=True, docker_config=cfg, upload_chunk_size=64 << 10)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def blob_repo(client):
    """A repository holding BLOB (pushed once, chunked: it is larger than the 64 KiB chunk size)."""
    client.push_blob("reg/blobs", digest(BLOB), BLOB)
    return "reg/blobs"


def log_lines(registry, pattern_: str) -> list[str]:
    return [ln for ln in registry.log.read_text(errors="replace").splitlines() if re.search(pattern_, ln)]


def test_blob_roundtrip_streamed_and_verified(client, blob_repo):
    assert client.blob_exists(blob_repo, digest(BLOB)) == len(BLOB)
    assert client.get_blob(blob_repo, digest(BLOB)) == BLOB
    with client.open_blob(blob_repo, digest(BLOB)) as f:
        parts = []
        while chunk := f.read(7777):
            parts.append(chunk)
    assert b"".join(parts) == BLOB


def test_chunked_upload_uses_patch_chunks(registry, client, blob_repo):
    patches = log_lines(registry, r'"PATCH /v2/reg/blobs/blobs/uploads/')
    assert len(patches) == -(-len(BLOB) // (64 << 10))   # ceil(300000 / 65536) = 5 chunks


def test_monolithic_upload_and_skip_when_present(registry, client):
    data = pattern(1000, 2)
    client.push_blob("reg/mono", digest(data), data)
    assert not log_lines(registry, r'"PATCH /v2/reg/mono/')
    assert len(log_lines(registry, r'"PUT /v2/reg/mono/blobs/uploads/')) == 1
    client.push_blob("reg/mono", digest(data), data)   # present: HEAD only, no new upload
    assert len(log_lines(registry, r'"POST /v2/reg/mono/blobs/uploads/')) == 1
    assert client.get_blob("reg/mono", digest(data)) == data


def test_push_from_file(client, tmp_path):
    data = pattern(200_000, 3)
    p = tmp_path / "blob"
    p.write_bytes(data)
    client.push_blob("reg/file", digest(data), p, size=len(data))
    assert client.get_blob("reg/file", digest(data)) == data


def test_cross_repo_mount(registry, client, blob_repo):
    client.push_blob("reg/mounted", digest(BLOB), BLOB, mount_from=blob_repo)
    posts = log_lines(registry, r'"POST /v2/reg/mounted/blobs/uploads/\?')
    assert len(posts) == 1 and "mount=" in posts[0] and '" 201 ' in posts[0]
    assert not log_lines(registry, r'"(PATCH|PUT) /v2/reg/mounted/')
    assert client.get_blob("reg/mounted", digest(BLOB)) == BLOB


def test_mount_from_repo_without_blob_falls_back_to_upload(client):
    data = pattern(5000, 4)
    client.push_blob("reg/mount-miss", digest(data), data, mount_from="reg/nothing-here")
    assert client.get_blob("reg/mount-miss", digest(data)) == data


def test_single_range(client, blob_repo):
    d = digest(BLOB)
    assert client.get_range(blob_repo, d, 0, 1) == BLOB[:1]
    assert client.get_range(blob_repo, d, 12345, 67890) == BLOB[12345:67890]
    assert client.get_range(blob_repo, d, len(BLOB) - 10, len(BLOB)) == BLOB[-10:]


def test_multi_range_is_one_multipart_request(client, blob_repo):
    d = digest(BLOB)
    wanted = [(250_000, 250_100), (5, 10), (100_000, 100_001), (7, 20), (299_990, 300_000)]
    before = client.statistics()
    got = client.get_ranges(blob_repo, d, wanted)
    assert got == [BLOB[s:e] for s, e in wanted]
    after = client.statistics()
    assert after.range_requests - before.range_requests == 1
    assert after.multirange_fallbacks == before.multirange_fallbacks


def test_range_past_end_is_an_error_not_short_bytes(client, blob_repo):
    d = digest(BLOB)
    with pytest.raises(RangeError):
        client.get_range(blob_repo, d, len(BLOB) - 5, len(BLOB) + 5)
    with pytest.raises(RangeError):
        client.get_range(blob_repo, d, len(BLOB) + 1, len(BLOB) + 5)
    with pytest.raises(RangeError):
        client.get_range(blob_repo, d, 10, 10)


def test_missing_blob_and_manifest(client, blob_repo):
    missing = digest(b"not there")
    assert client.blob_exists(blob_repo, missing) is None
    with pytest.raises(NotFound) as ei:
        client.get_blob(blob_repo, missing)
    msg = str(ei.value)
    assert blob_repo in msg and missing in msg and "404" in msg and registry_host(client) in msg
    with pytest.raises(NotFound):
        client.get_manifest(blob_repo, "no-such-tag")


def registry_host(client: RegistryClient) -> str:
    return client.registry


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_manifest_roundtrip_and_platform_index(client, media_type):
    repo = "reg/idx-" + ("oci" if media_type == OCI_MANIFEST else "docker")
    amd, amd_m = push_image(client, repo, media_type, "amd64", pattern(3000, 10))
    arm, arm_m = push_image(client, repo, media_type, "arm64", pattern(3000, 11))
    idx = index_doc(media_type, [(arm, arm_m, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                                 (amd, amd_m, {"os": "linux", "architecture": "amd64"})])
    idx_digest = client.push_manifest(repo, "multi", idx, INDEX_FOR[media_type])
    assert idx_digest == digest(idx)

    m = client.get_manifest(repo, "multi")
    assert (m.data, m.digest, m.media_type, m.is_index) == (idx, idx_digest, INDEX_FOR[media_type], True)
    host = client.registry
    assert client.resolve(f"{host}/{repo}:multi").digest == amd
    got = client.resolve(parse_reference(f"{host}/{repo}:multi"), platform="linux/arm64/v8")
    assert (got.digest, got.data, got.media_type) == (arm, arm_m, media_type)
    assert client.resolve(f"{host}/{repo}:multi", platform="linux/arm64").digest == arm
    assert client.resolve(f"{host}/{repo}@{amd}").layers[0]["digest"] == digest(pattern(3000, 10))
    with pytest.raises(PlatformNotFound) as ei:
        client.resolve(f"{host}/{repo}:multi", platform="linux/s390x")
    assert "linux/amd64" in str(ei.value) and "linux/arm64/v8" in str(ei.value)


def test_manifest_by_digest_and_delete(client):
    repo = "reg/delete"
    d, data = push_image(client, repo, OCI_MANIFEST, "amd64", pattern(100, 20), tag="v1")
    m = client.get_manifest(repo, d)
    assert m.data == data and json.loads(data) == m.json
    client.delete_manifest(repo, d)
    with pytest.raises(NotFound):
        client.get_manifest(repo, d)


def test_corrupt_blob_in_storage_is_detected(registry, client):
    data = pattern(100_000, 30)
    client.push_blob("reg/corrupt", digest(data), data)
    hexd = digest(data).split(":")[1]
    stored = Path(registry.root) / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    raw = bytearray(stored.read_bytes())
    raw[50_000] ^= 0x01
    stored.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch) as ei:
        client.get_blob("reg/corrupt", digest(data))
    assert digest(data) in str(ei.value)
    f = client.open_blob("reg/corrupt", digest(data))
    with pytest.raises(DigestMismatch):
        while f.read(4096):
            pass
    f.close()


def test_push_with_wrong_digest_is_refused_and_nothing_lands(client, tmp_path):
    data = pattern(2000, 40)
    wrong = digest(b"something else")
    with pytest.raises(DigestMismatch):
        client.push_blob("reg/wrong", wrong, data)
    p = tmp_path / "blob"
    p.write_bytes(data)
    with pytest.raises(DigestMismatch):            # file: the registry checks it on the final PUT
        client.push_blob("reg/wrong", wrong, p)
    assert client.blob_exists("reg/wrong", wrong) is None
    assert client.blob_exists("reg/wrong", digest(data)) is None
    with pytest.raises(DigestMismatch):
        client.push_manifest("reg/wrong", wrong, b"{}", OCI_MANIFEST)


def test_corrupt_manifest_in_storage_is_detected(registry, client):
    repo = "reg/mdigest"
    d, data = push_image(client, repo, OCI_MANIFEST, "amd64", pattern(100, 50), tag="a")
    hexd = d.split(":")[1]
    stored = Path(registry.root) / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    stored.write_bytes(data.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(DigestMismatch):
        client.get_manifest(repo, d)
    with pytest.raises(DigestMismatch):          # by tag: Docker-Content-Digest disagrees with the bytes
        client.get_manifest(repo, "a")
    with pytest.raises(InvalidReference):
        client.get_manifest(repo, "sha256:nothex")


def test_concurrent_ranges_from_many_threads(client, blob_repo):
    d = digest(BLOB)
    errors: list[BaseException] = []
    results: dict[int, bool] = {}

    def work(i: int) -> None:
        try:
            for j in range(8):
                s = (i * 7919 + j * 104729) % (len(BLOB) - 5000)
                if client.get_range(blob_repo, d, s, s + 4000) != BLOB[s:s + 4000]:
                    raise AssertionError(f"wrong bytes at {s}")
            results[i] = True
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 24


def test_list_tags(client):
    repo = "reg/tags"
    for t in ("one", "two"):
        push_image(client, repo, OCI_MANIFEST, "amd64", pattern(10, 60), tag=t)
    assert sorted(client.list_tags(repo)) == ["one", "two"]


def test_multi_range_past_the_end_is_an_error_and_keeps_multirange(client, blob_repo):
    d = digest(BLOB)
    with pytest.raises(RangeError):
        client.get_ranges(blob_repo, d, [(0, 10), (len(BLOB) + 5, len(BLOB) + 10)])
    with pytest.raises(RangeError):
        client.get_ranges(blob_repo, d, [(0, 10), (len(BLOB) - 5, len(BLOB) + 10)])
    before = client.statistics()
    assert client.get_ranges(blob_repo, d, [(0, 2), (100, 102)]) == [BLOB[0:2], BLOB[100:102]]
    after = client.statistics()
    assert after.range_requests - before.range_requests == 1   # still one multipart request


def test_from_ref_and_head_digest(registry, client, tmp_path):
    d, _ = push_image(client, "reg/head", OCI_MANIFEST, "amd64", pattern(10, 70), tag="t")
    with RegistryClient.from_ref(f"{registry.host}/reg/head:t", plain_http=True,
                                 docker_config=tmp_path / "none.json") as c:
        assert c.registry == registry.host
        assert c.manifest_digest("reg/head", "t") == d
        assert c.resolve(f"{registry.host}/reg/head:t").digest == d
        with pytest.raises(ValueError):
            c.resolve("other.example:5000/reg/head:t")    # a client talks to one registry


def test_registry_refuses_malformed_manifest_push(client):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": 5}).encode()
    with pytest.raises(RegistryError) as ei:
        client.push_manifest("reg/bad", "t", body, OCI_MANIFEST)
    assert ei.value.status == 400 and ei.value.code == "MANIFEST_INVALID", str(ei.value)
