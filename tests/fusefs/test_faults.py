"""Faults: 5xx then success, a corrupted chunk in the registry, the registry going away and
coming back, a corrupted cache entry. Each ends with the right bytes or EIO, never wrong bytes.
"""
from __future__ import annotations

import errno
import os
import uuid

import pytest

from tests.fusefs import imagekit
from tests.fusefs.conftest import small_files, stop_daemon, unmount
from tests.fusefs.faultproxy import FaultProxy
from tests.support.registry import start_registry

pytestmark = pytest.mark.e2e


def _repo(name: str) -> str:
    return f"fusefs/{name}-{uuid.uuid4().hex[:8]}"


def _registry_blob_file(reg, digest: str):
    hexd = digest.split(":", 1)[1]
    return reg.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def _read_errno(path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


def test_5xx_is_retried_and_gives_the_right_bytes(mount_image, registry, synthetic_layouts):
    repo = _repo("flaky")
    imagekit.push(synthetic_layouts["a"], registry.host, repo)
    proxy = FaultProxy(registry.host)
    try:
        m = mount_image(f"docker://{proxy.host}/{repo}:latest", "--no-prefetch")
        proxy.fail_blob_gets = 2
        assert (m.mountpoint / "small/f033").read_bytes() == small_files()["small/f033"]
        statuses = [s for _, rng, s in proxy.blob_gets if rng]
        assert statuses[-3:] == [503, 503, 206], proxy.blob_gets
        assert m.state()["fetcher"]["errors"] == 0
    finally:
        proxy.close()


def test_corrupted_chunk_is_eio_logged_never_cached_then_recovers(mount_image, fresh_registry,
                                                                  synthetic_layouts):
    repo = _repo("rot")
    image = imagekit.push(synthetic_layouts["a"], fresh_registry.host, repo)
    m = mount_image(image, "--no-prefetch")
    path = "small/f010"
    blob, infos = imagekit.file_chunks(synthetic_layouts["a"], path)
    data_file = _registry_blob_file(fresh_registry, blob)
    original = data_file.read_bytes()
    pos = infos[0].comp_offset + infos[0].comp_size // 2
    rotten = bytearray(original)
    rotten[pos] ^= 0x5A
    data_file.write_bytes(bytes(rotten))
    try:
        assert _read_errno(m.mountpoint / path) == errno.EIO
        log = m.log.read_text()
        assert "chunk verification failed" in log and blob in log and infos[0].digest.hex() in log
        assert not list((m.cache_dir / "chunks").rglob(infos[0].digest.hex()))
        assert m.metrics()['imgfs_fetch_errors_total{kind="verify"}'] >= 1
        assert (m.mountpoint / "small/f100").read_bytes() == small_files()["small/f100"]  # others fine
    finally:
        data_file.write_bytes(original)
    assert (m.mountpoint / path).read_bytes() == small_files()[path]


def test_registry_down_mid_read_is_eio_then_recovers(mount_image, fresh_registry, synthetic_layouts,
                                                     tmp_path):
    repo = _repo("down")
    image = imagekit.push(synthetic_layouts["a"], fresh_registry.host, repo)
    m = mount_image(image, "--no-prefetch")
    assert (m.mountpoint / "small/f000").read_bytes() == small_files()["small/f000"]
    fresh_registry.stop()
    assert _read_errno(m.mountpoint / "small/f110") == errno.EIO
    assert (m.mountpoint / "small/f000").read_bytes() == small_files()["small/f000"]  # cached: fine
    port = int(fresh_registry.host.rsplit(":", 1)[1])
    again = start_registry(fresh_registry.root.parent, port=port)
    try:
        assert (m.mountpoint / "small/f110").read_bytes() == small_files()["small/f110"]
        assert m.state()["fetcher"]["errors"] >= 1
    finally:
        again.stop()


def test_corrupted_cache_entry_is_detected_and_refetched(mount_image, registry, synthetic_layouts,
                                                         tmp_path):
    repo = _repo("cache")
    image = imagekit.push(synthetic_layouts["a"], registry.host, repo)
    cache = tmp_path / "cache"
    path = "small/f077"
    first = mount_image(image, "--no-prefetch", cache_dir=cache, name="first")
    assert (first.mountpoint / path).read_bytes() == small_files()[path]
    unmount(first.mountpoint)
    stop_daemon(first.pid)
    _, infos = imagekit.file_chunks(synthetic_layouts["a"], path)
    entry = next((cache / "chunks").rglob(infos[0].digest.hex()))
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    second = mount_image(image, "--no-prefetch", cache_dir=cache, name="second")
    assert (second.mountpoint / path).read_bytes() == small_files()[path]
    metrics = second.metrics()
    assert metrics["imgfs_cache_corrupt_total"] == 1
    assert metrics['imgfs_registry_requests_total{kind="ondemand"}'] == 1
    assert "corrupted" in second.log.read_text()
    assert os.path.exists(entry)                                         # refetched good copy
