"""Chunk files written with O_DIRECT (fusefs.chunkio) and read back through the store.

Real files in the test's temp dir. Sizes straddle the direct-write alignment (the head
goes direct, the short tail buffered), the small-chunk cut-over and the trailer; the
writer's per-thread aligned buffer is reused, so concurrent writers must never mix
their bytes.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import threading

import pytest

from fusefs import chunkio
from fusefs.chunkio import ALIGN, DIRECT_MIN, ChunkLoader, ChunkWriter
from fusefs.store import TRAILER, ChunkStore

SIZES = [1, ALIGN - TRAILER, ALIGN, DIRECT_MIN - TRAILER - 1, DIRECT_MIN - TRAILER, DIRECT_MIN,
         DIRECT_MIN + 1, (1 << 20) - TRAILER, 1 << 20, (1 << 20) + 5, 3 * (1 << 20) + ALIGN - 1]


def _data(i: int, size: int) -> bytes:
    return random.Random(i * 7919 + size).randbytes(size)


@pytest.mark.parametrize("direct", [True, False])
def test_files_hold_exactly_the_bytes_and_trailer(tmp_path, direct):
    w = ChunkWriter(direct=direct)
    for i, size in enumerate(SIZES):
        data = _data(i, size)
        trailer = hashlib.md5(data).digest()          # any 16 bytes
        path = tmp_path / f"c{i}"
        w.write(str(path), data, trailer)
        assert path.read_bytes() == data + trailer, size
        # rewriting a path (a temp file left by a crashed writer) replaces it whole
        w.write(str(path), data[: size // 2], trailer)
        assert path.read_bytes() == data[: size // 2] + trailer, size


def test_concurrent_writers_never_mix_bytes(tmp_path):
    w = ChunkWriter()
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for j in range(12):
                size = SIZES[(t + j) % len(SIZES)]
                data = _data(t * 100 + j, size)
                path = tmp_path / f"t{t}-{j}"
                w.write(str(path), data, b"T" * TRAILER)
                if path.read_bytes() != data + b"T" * TRAILER:
                    raise AssertionError(f"thread {t} chunk {j} ({size} bytes) differs")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors


def test_o_direct_refused_falls_back_to_buffered(tmp_path, monkeypatch):
    """tmpfs and some network filesystems refuse O_DIRECT with EINVAL: the writer then
    writes buffered (same bytes) and stops trying. Faked: the local disk accepts it."""
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(chunkio.os, "open", no_direct)
    w = ChunkWriter(direct=True)
    data = _data(1, 1 << 20)
    w.write(str(tmp_path / "a"), data, b"x" * TRAILER)
    assert not w.direct
    assert (tmp_path / "a").read_bytes() == data + b"x" * TRAILER
    w.write(str(tmp_path / "b"), data, b"y" * TRAILER)
    assert (tmp_path / "b").read_bytes() == data + b"y" * TRAILER


def test_store_round_trip_restart_and_corruption_of_direct_written_chunks(tmp_path):
    s = ChunkStore(tmp_path)
    chunks = []
    for i, size in enumerate([1 << 20, (1 << 20) + 5, 3 * ALIGN + 1, 100]):
        data = _data(i, size)
        d = hashlib.sha256(data).digest()
        s.put(d, data)
        chunks.append((d, data))
        assert s.read(d) == data and s.read(d, 7, min(1000, size - 7)) == data[7:1007]
    assert s._writer.direct or not hasattr(os, "O_DIRECT")
    s2 = ChunkStore(tmp_path)                        # restart: first use checks the trailer
    for d, data in chunks:
        assert s2.read(d, 3, len(data) - 3) == data[3:]
        assert s2.read(d) == data                     # then plain preads
    bad, bad_data = chunks[0]
    raw = bytearray(s2.path(bad).read_bytes())
    raw[12345] ^= 1
    s2.path(bad).write_bytes(bytes(raw))
    s3 = ChunkStore(tmp_path)
    assert s3.read(bad, 0, 10) is None and not s3.path(bad).exists()
    assert s3.statistics().corrupt == 1
    s3.put(bad, bad_data)
    assert ChunkStore(tmp_path).read(bad) == bad_data


@pytest.mark.parametrize("direct", [True, False])
def test_loader_returns_whole_files_and_reuses_nothing_visible(tmp_path, direct):
    w, loader = ChunkWriter(), ChunkLoader(direct=direct)
    files = []
    for i, size in enumerate(SIZES):
        data = _data(i, size) + b"Z" * TRAILER
        path = tmp_path / f"f{i}"
        w.write(str(path), data[:-TRAILER], data[-TRAILER:])
        files.append((path, data))
    # the loader's buffer is reused: what ``use`` copies out must stay right afterwards
    got = [loader.load(str(p), bytes) for p, _ in files]
    assert [len(g) for g in got] == [len(d) for _, d in files]
    assert all(g == d for g, (_, d) in zip(got, files))
    with pytest.raises(FileNotFoundError):
        loader.load(str(tmp_path / "missing"), bytes)


def test_loader_falls_back_when_o_direct_is_refused(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    data = _data(3, (1 << 20) + 7)
    (tmp_path / "a").write_bytes(data)
    monkeypatch.setattr(chunkio.os, "open", no_direct)
    loader = ChunkLoader(direct=True)
    assert loader.load(str(tmp_path / "a"), bytes) == data
    assert not loader.direct


def test_concurrent_loads_never_mix_bytes(tmp_path):
    loader = ChunkLoader()
    files = []
    for i in range(24):
        data = _data(i, SIZES[i % len(SIZES)])
        (tmp_path / f"c{i}").write_bytes(data)
        files.append((tmp_path / f"c{i}", data))
    errors: list[str] = []

    def worker(t: int) -> None:
        for j in range(40):
            path, data = files[(t * 7 + j) % len(files)]
            if loader.load(str(path), bytes) != data:
                errors.append(f"thread {t}: {path.name}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors[:5]


def test_store_load_checks_the_trailer(tmp_path):
    s = ChunkStore(tmp_path)
    data = _data(9, (1 << 20) + 3)
    d = hashlib.sha256(data).digest()
    s.put(d, data)
    assert ChunkStore(tmp_path).load(d) == data
    raw = bytearray(s.path(d).read_bytes())
    raw[777] ^= 0x40
    s.path(d).write_bytes(bytes(raw))
    s2 = ChunkStore(tmp_path)
    assert s2.load(d) is None and not s2.path(d).exists()
    assert s2.statistics().corrupt == 1
    assert s2.load(hashlib.sha256(b"never stored").digest()) is None
