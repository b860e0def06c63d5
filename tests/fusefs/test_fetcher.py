"""Range planning and the fetcher: merging, singleflight, verification, recovery.

The blob here is a real sequence of zstd chunk frames decoded by imgformat's
decode_chunk; the source is an in-memory blob that counts requests and can be told to
fail (the faults a real registry cannot be made to produce on cue; the e2e tests do the
same through a real registry).
"""
from __future__ import annotations

import functools
import hashlib
import threading

import pytest
import trio
import zstandard

from fusefs.fetcher import ChunkCorrupted, ChunkRef, Fetcher, FetchError
from fusefs.plan import batch_requests, plan_requests
from fusefs.store import ChunkStore
from imgformat.chunk import decode_chunk
from imgformat.records import ChunkInfo

BLOB = "sha256:" + "ab" * 32


class MemoryBlob:
    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.requests: list[tuple[int, int]] = []
        self.fail = 0
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.multi: list[list[tuple[int, int]]] = []

    def get_range(self, blob: str, start: int, end: int) -> bytes:
        if self.gate is not None:
            self.gate.wait(30)
        with self.lock:
            self.requests.append((start, end))
            if self.fail:
                self.fail -= 1
                raise ConnectionError("registry down")
        return bytes(self.data[start:end])

    def get_ranges(self, blob: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        with self.lock:
            self.multi.append(list(ranges))
        return [bytes(self.data[s:e]) for s, e in ranges]


def make_blob(n: int, size: int = 4096, gap: int = 0) -> tuple[bytes, list[ChunkRef], list[bytes]]:
    cctx = zstandard.ZstdCompressor(write_content_size=True)
    out, refs, raws = bytearray(), [], []
    for i in range(n):
        raw = (b"%06d" % i) * (size // 6)
        frame = cctx.compress(raw)
        refs.append(ChunkRef(BLOB, ChunkInfo(0, len(out), len(frame), len(raw), hashlib.sha256(raw).digest())))
        raws.append(raw)
        out += frame + b"\0" * gap
    return bytes(out), refs, raws


def test_plan_merges_adjacent_bridges_small_gaps_and_caps_size():
    _, refs, _ = make_blob(10, gap=100)
    plans = plan_requests(refs, gap_bytes=200, max_request=1 << 20)
    assert len(plans) == 1 and len(plans[0].chunks) == 10
    assert len(plan_requests(refs, gap_bytes=50)) == 10          # gaps too big to bridge
    capped = plan_requests(refs, gap_bytes=200, max_request=refs[2].info.comp_offset)
    assert len(capped) > 1 and sum(len(p.chunks) for p in capped) == 10
    # unordered, duplicated input of two blobs: sorted, one plan per blob
    other = [ChunkRef("sha256:" + "cd" * 32, r.info) for r in refs[:2]]
    plans = plan_requests(list(reversed(refs)) + other, gap_bytes=200)
    assert [p.blob for p in plans] == sorted({BLOB, other[0].blob})


def _fetcher(tmp_path, blob: MemoryBlob) -> tuple[Fetcher, ChunkStore]:
    store = ChunkStore(tmp_path / "cache")
    return Fetcher(blob, store, decode_chunk), store


def test_concurrent_readers_share_one_fetch(tmp_path):
    data, refs, raws = make_blob(4)
    blob = MemoryBlob(data)
    blob.gate = threading.Event()
    fetcher, store = _fetcher(tmp_path, blob)

    async def main():
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(fetcher.ensure, refs)
            await trio.sleep(0.2)
            blob.gate.set()

    trio.run(main)
    assert len(blob.requests) == 1
    assert all(store.read(r.digest) == raw for r, raw in zip(refs, raws))


def test_corrupted_chunk_is_eio_and_not_stored_then_recovers(tmp_path, caplog):
    data, refs, raws = make_blob(3)
    blob = MemoryBlob(data)
    pos = refs[1].info.comp_offset + refs[1].info.comp_size // 2
    blob.data[pos] ^= 0xFF
    fetcher, store = _fetcher(tmp_path, blob)
    with pytest.raises(ChunkCorrupted):
        trio.run(fetcher.ensure, refs)
    assert not store.contains(refs[1].digest)
    assert store.contains(refs[0].digest) and store.contains(refs[2].digest)
    assert refs[1].digest.hex() in caplog.text and BLOB in caplog.text
    blob.data[pos] ^= 0xFF                                        # the registry serves good bytes again
    trio.run(fetcher.ensure, refs)
    assert store.read(refs[1].digest) == raws[1]


def test_source_failure_is_fetch_error_and_next_read_works(tmp_path):
    data, refs, raws = make_blob(2)
    blob = MemoryBlob(data)
    blob.fail = 1
    fetcher, store = _fetcher(tmp_path, blob)
    with pytest.raises(FetchError):
        trio.run(fetcher.ensure, refs)
    trio.run(fetcher.ensure, refs)
    assert store.read(refs[0].digest) == raws[0]
    assert fetcher.statistics().errors == 1


def test_prefetch_waits_for_on_demand(tmp_path):
    data, refs, _ = make_blob(6, gap=1 << 20)                    # every chunk its own request
    blob = MemoryBlob(data)
    fetcher, _store = _fetcher(tmp_path, blob)
    order: list[str] = []

    async def main():
        fetcher._enter_busy()                                    # an on-demand read is in progress
        async with trio.open_nursery() as n:
            n.start_soon(functools.partial(fetcher.ensure, refs[:3], prefetch=True))
            await trio.sleep(0.3)
            order.append(f"prefetch requests while busy: {len(blob.requests) + len(blob.multi)}")
            await fetcher.ensure(refs[3:])
            order.append(f"after on-demand: {len(blob.requests) + len(blob.multi)}")
            fetcher._leave_busy()
    trio.run(main)
    assert order == ["prefetch requests while busy: 0", "after on-demand: 3"]
    assert len(blob.requests) + sum(len(m) for m in blob.multi) == 6


def test_scattered_ranges_beyond_the_slots_share_multi_range_requests(tmp_path):
    data, refs, raws = make_blob(40, gap=1 << 20)                   # 40 ranges, no gap bridgeable
    blob = MemoryBlob(data)
    fetcher, store = _fetcher(tmp_path, blob)
    trio.run(fetcher.ensure, refs)
    assert len(blob.requests) + len(blob.multi) <= 8
    assert sum(len(m) for m in blob.multi) + len(blob.requests) == 40
    assert fetcher.statistics().requests == len(blob.requests) + len(blob.multi)
    assert all(store.read(r.digest) == raw for r, raw in zip(refs, raws))
    plans = plan_requests(refs[:5], gap_bytes=0)
    assert batch_requests(plans, slots=8) == [[p] for p in plans]   # few ranges: one each, in parallel


def test_read_of_a_queued_prefetch_chunk_does_not_wait_for_the_prefetch(tmp_path):
    """No priority inversion: prefetch claims chunks only when its request starts."""
    data, refs, raws = make_blob(4, gap=1 << 20)
    blob = MemoryBlob(data)
    fetcher, store = _fetcher(tmp_path, blob)

    async def main():
        fetcher._enter_busy()                                    # reads keep the link busy
        async with trio.open_nursery() as n:
            n.start_soon(functools.partial(fetcher.ensure, refs, prefetch=True))
            await trio.sleep(0.1)
            with trio.fail_after(30):
                await fetcher.ensure(refs[:2])                   # needs chunks the prefetch wants
            fetcher._leave_busy()
    trio.run(main)
    assert all(store.read(r.digest) == raw for r, raw in zip(refs, raws))
    spans = len(blob.requests) + sum(len(m) for m in blob.multi)
    assert spans == 4                                            # every chunk fetched exactly once
