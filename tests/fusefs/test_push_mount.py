"""Warm reads pushed into the kernel page cache (fusefs.push), through a real FUSE mount.

A one-layer image of two files whose sizes are not chunk multiples, in the real
docker-registry; a first mount reads them into a cache dir, a second mount on the same
cache (a fresh kernel page cache) reads them warm: the reader's chunks are then pushed
with FUSE_NOTIFY_STORE, and the bytes, sizes and EOF must be exactly the file's.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from tests.fusefs import imagekit
from tests.fusefs.conftest import stop_daemon, unmount
from tests.fusefs.imagekit import Tar, blob_data

MIB = 1 << 20
FILES = {"big.bin": (11, 24 * MIB + 12345), "other.bin": (12, 12 * MIB + 777)}


@pytest.fixture(scope="module")
def push_image(registry, tmp_path_factory) -> tuple[str, dict[str, bytes]]:
    files = {name: blob_data(seed, size) for name, (seed, size) in FILES.items()}
    t = Tar()
    for name, data in files.items():
        t.file(name, data)
    layout = tmp_path_factory.mktemp("push-image") / "layout"
    imagekit.write_imgfs_layout(layout, [t.bytes()])
    return imagekit.push(layout, registry.host, f"fusefs/push-{uuid.uuid4().hex[:8]}"), files


def _read(path: Path, step: int = MIB) -> bytes:
    out = bytearray()
    buf = bytearray(step)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            out += buf[:n]
    return bytes(out)


def _fill_cache(mount_image, image: str, cache: Path, *extra: str) -> None:
    m = mount_image(image, "--no-prefetch", *extra, cache_dir=cache, name="fill")
    for name in FILES:
        _read(m.mountpoint / name)
    unmount(m.mountpoint)
    stop_daemon(m.pid)


def test_warm_sequential_read_is_pushed_exactly(mount_image, push_image, tmp_path):
    image, files = push_image
    cache = tmp_path / "cache"
    _fill_cache(mount_image, image, cache)
    m = mount_image(image, "--no-prefetch", cache_dir=cache, name="warm")
    path = m.mountpoint / "big.bin"
    size = len(files["big.bin"])
    assert os.stat(path).st_size == size
    assert _read(path) == files["big.bin"]
    metrics = m.metrics()
    assert metrics["imgfs_kernel_push_bytes_total"] > size // 2, metrics
    assert metrics["imgfs_kernel_push_failures_total"] == 0
    # nothing stored past EOF: the kernel's size is unchanged, reads at and past EOF are empty
    assert os.stat(path).st_size == size
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, size) == b""
        assert os.pread(fd, MIB, size - 100) == files["big.bin"][-100:]
    finally:
        os.close(fd)
    # the pushed pages are the file's bytes (read again, from the kernel page cache)
    assert _read(path, 256 << 10) == files["big.bin"]


def test_concurrent_warm_readers_with_eviction(mount_image, push_image, tmp_path):
    image, files = push_image
    cache = tmp_path / "cache"
    _fill_cache(mount_image, image, cache, "--cache-size", "16M")
    m = mount_image(image, "--no-prefetch", "--cache-size", "16M", cache_dir=cache, name="warm")
    jobs = [("big.bin", MIB), ("big.bin", 128 << 10), ("other.bin", MIB), ("other.bin", 512 << 10)]
    results: dict[int, bytes | BaseException] = {}

    def reader(i: int, name: str, step: int) -> None:
        try:
            results[i] = _read(m.mountpoint / name, step)
        except OSError as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=reader, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    for i, (name, _) in enumerate(jobs):
        assert results[i] == files[name], f"reader {i} of {name}: {results[i]!r:.200}"
    st = m.state()["store"]
    assert st["evictions"] > 0
    for name, data in files.items():
        assert os.stat(m.mountpoint / name).st_size == len(data)
