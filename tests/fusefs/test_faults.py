"""Faults: 5xx then success, a reset mid-body, a flipped byte in a chunk, the registry (or
the link to it) going away and coming back, a corrupted cache entry. Each ends with the
right bytes or EIO, never wrong bytes. Faults a real registry cannot produce on cue go
through benchmarks.proxy.ShapingProxy, in front of the real registry.
"""
from __future__ import annotations

import errno
import os
import uuid

import pytest

from benchmarks.proxy import ShapingProxy
from tests.fusefs import imagekit
from tests.fusefs.conftest import small_files, stop_daemon, unmount
from tests.support.registry import start_registry

pytestmark = pytest.mark.e2e


def _repo(name: str) -> str:
    return f"fusefs/{name}-{uuid.uuid4().hex[:8]}"


def _read_errno(path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


BLOB_GET = r"^GET /v2/.+/blobs/"


@pytest.fixture
def proxied(registry, synthetic_layouts):
    """Image 'a' behind benchmarks.proxy.ShapingProxy (counting, fault-injecting)."""
    repo = _repo("proxied")
    imagekit.push(synthetic_layouts["a"], registry.host, repo)
    with ShapingProxy(registry.host) as proxy:
        yield proxy, f"docker://{proxy.host}/{repo}:latest"


def test_5xx_is_retried_and_gives_the_right_bytes(mount_image, proxied):
    proxy, image = proxied
    m = mount_image(image, "--no-prefetch")
    proxy.inject("503", 2, match=BLOB_GET)
    assert (m.mountpoint / "small/f033").read_bytes() == small_files()["small/f033"]
    assert [r.status for r in proxy.blob_gets()][-3:] == [503, 503, 206]
    assert m.state()["fetcher"]["errors"] == 0


def test_connection_reset_mid_body_is_retried(mount_image, proxied):
    proxy, image = proxied
    m = mount_image(image, "--no-prefetch")
    proxy.inject("reset", 1, match=BLOB_GET)
    assert (m.mountpoint / "small/f044").read_bytes() == small_files()["small/f044"]
    assert any(r.fault == "reset" for r in proxy.blob_gets())


def test_flipped_byte_is_eio_logged_never_cached_then_recovers(mount_image, proxied, synthetic_layouts):
    proxy, image = proxied
    m = mount_image(image, "--no-prefetch")
    path = "small/f010"
    blob, infos = imagekit.file_chunks(synthetic_layouts["a"], path)
    # every fetch of it is corrupted while the fault lasts (the kernel itself retries a
    # failed readahead once with a synchronous read, which would heal a one-shot fault)
    proxy.inject("flip", 100, match=BLOB_GET)
    assert _read_errno(m.mountpoint / path) == errno.EIO
    proxy.clear_faults()
    log = m.log.read_text()
    assert "chunk verification failed" in log and blob in log
    assert any(info.digest.hex() in log for info in infos)
    assert not [p for info in infos for p in (m.cache_dir / "chunks").rglob(info.digest.hex())]
    assert m.metrics()['imgfs_fetch_errors_total{kind="verify"}'] >= 1
    assert (m.mountpoint / "small/f100").read_bytes() == small_files()["small/f100"]  # others fine
    assert (m.mountpoint / path).read_bytes() == small_files()[path]             # and it recovers


def test_proxy_down_mid_read_is_eio_then_recovers(mount_image, proxied, tmp_path):
    proxy, image = proxied
    cfg = tmp_path / "no-readahead.toml"          # nothing beyond what is read is fetched early
    cfg.write_text("readahead = 0\nkernel_readahead_kib = 128\nretries = 1\n")  # fail fast
    m = mount_image(image, "--no-prefetch", "--config", str(cfg))
    with open(m.mountpoint / "big/blob", "rb") as f:
        first = f.read(1 << 20)                                            # mid-read of a large file
        proxy.set_down(True)
        f.seek(4 << 20)
        with pytest.raises(OSError) as exc:
            f.read(1 << 20)
        assert exc.value.errno == errno.EIO
        proxy.set_down(False)
        f.seek(4 << 20)
        rest = f.read()
    want = imagekit.blob_data(10_000, 5 * (1 << 20) + 12345)
    assert first == want[:1 << 20] and rest == want[4 << 20:]


def test_registry_down_mid_read_is_eio_then_recovers(mount_image, fresh_registry, synthetic_layouts,
                                                     tmp_path):
    repo = _repo("down")
    image = imagekit.push(synthetic_layouts["a"], fresh_registry.host, repo)
    cfg = tmp_path / "fail-fast.toml"
    cfg.write_text("retries = 1\n")
    m = mount_image(image, "--no-prefetch", "--config", str(cfg))
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
