"""ChunkStore on a real directory: atomic put, LRU cap with pins, restart + corruption."""
from __future__ import annotations

import hashlib
import os

from fusefs.store import TRAILER, ChunkStore


def _chunk(i: int, size: int = 1000) -> tuple[bytes, bytes]:
    data = bytes([i % 256]) * size
    return hashlib.sha256(data).digest(), data


def test_put_read_slices_and_survives_restart(tmp_path):
    s = ChunkStore(tmp_path)
    d, data = _chunk(1)
    assert s.read(d) is None
    s.put(d, data)
    assert s.read(d, 10, 20) == data[10:30]
    assert s.contains(d)
    s2 = ChunkStore(tmp_path)          # a restarted daemon
    assert s2.statistics().entries == 1
    assert s2.read(d, 0, 5) == data[:5]
    assert not list((tmp_path / "tmp").iterdir())


def test_lru_eviction_respects_pins(tmp_path):
    cap = 3 * (1000 + TRAILER)
    s = ChunkStore(tmp_path, capacity=cap)
    chunks = [_chunk(i) for i in range(3)]
    for d, data in chunks:
        s.put(d, data)
    s.read(chunks[0][0])                # 0 is now the most recently used
    with s.pinned([chunks[1][0]]):
        d3, data3 = _chunk(3)
        s.put(d3, data3)                # over cap: 1 is pinned, so 2 goes
        assert s.contains(chunks[1][0])
        assert not (s.path(chunks[2][0])).exists()
    st = s.statistics()
    assert st.evictions == 1 and st.bytes <= cap


def test_corrupted_entry_detected_after_restart(tmp_path):
    s = ChunkStore(tmp_path)
    d, data = _chunk(7)
    s.put(d, data)
    p = s.path(d)
    raw = bytearray(p.read_bytes())
    raw[100] ^= 1
    p.write_bytes(bytes(raw))
    torn, torn_data = _chunk(8)
    s.put(torn, torn_data)
    s.path(torn).write_bytes(s.path(torn).read_bytes()[:500])   # a write cut short by a crash
    s2 = ChunkStore(tmp_path)
    assert s2.read(d, 0, 10) is None     # detected on first use, deleted
    assert not p.exists()
    assert s2.read(torn) is None
    assert s2.statistics().corrupt == 2
    s2.put(d, data)                      # refetched
    assert s2.read(d, 0, 10) == data[:10]


def test_adopts_chunks_written_by_another_daemon(tmp_path):
    a, b = ChunkStore(tmp_path), ChunkStore(tmp_path)
    d, data = _chunk(9)
    a.put(d, data)
    assert b.contains(d) and b.read(d, 0, 3) == data[:3]
    os.unlink(a.path(d))                 # evicted by the other daemon
    assert b.read(d, 0, 3) is None


def test_verify_all_removes_corrupted(tmp_path):
    s = ChunkStore(tmp_path)
    good, bad = _chunk(1), _chunk(2)
    s.put(*good)
    s.put(*bad)
    s.path(bad[0]).write_bytes(b"garbage")
    total, removed = ChunkStore(tmp_path).verify_all()
    assert total == 2 and removed == [bad[0].hex()]


def test_entry_truncated_while_in_use_is_a_miss(tmp_path):
    s = ChunkStore(tmp_path)
    d, data = _chunk(5)
    s.put(d, data)
    assert s.read(d, 900, 100) == data[900:]
    os.truncate(s.path(d), 950)
    assert s.read(d, 900, 100) is None and not s.path(d).exists()
    assert s.statistics().corrupt == 1
