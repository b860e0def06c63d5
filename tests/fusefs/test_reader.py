"""FileReader's sequential read-ahead and the in-memory hand-over of fresh chunks.

No mount: the reader runs over a one-file view of an in-memory blob of real zstd chunk
frames (tests/fusefs/test_fetcher.py's MemoryBlob), decoded and verified by imgformat.
Sizes are scaled down (4 KiB chunks of random bytes: compressed ~= raw, so request caps
in compressed bytes count chunks) so the window growth shows in a few hundred reads.
"""
from __future__ import annotations

import hashlib
import random
import time

import trio
import zstandard

from fusefs.fetcher import ChunkRef, Fetcher, FetchError
from fusefs.fresh import FreshChunks
from fusefs.reader import FileReader, ReaderConfig
from fusefs.store import ChunkStore
from imgformat.chunk import decode_chunk
from imgformat.records import ChunkInfo, Segment
from tests.fusefs.test_fetcher import BLOB, MemoryBlob

CHUNK = 4096
INO = 7


class OneFileView:
    """segments() of one file made of the given chunks, back to back."""

    def __init__(self, refs) -> None:
        self.refs = refs
        self.size = CHUNK * len(refs)

    def segments(self, ino: int, offset: int, length: int):
        assert ino == INO
        out = []
        end = min(offset + length, self.size)
        pos = offset
        while pos < end:
            i, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, end - pos)
            out.append((BLOB, Segment(i, within, n, pos), self.refs[i].info))
            pos += n
        return out


def make_random_blob(n: int) -> tuple[bytes, list[ChunkRef], list[bytes]]:
    rnd = random.Random(n)
    cctx = zstandard.ZstdCompressor(write_content_size=True)
    out, refs, raws = bytearray(), [], []
    for _ in range(n):
        raw = rnd.randbytes(CHUNK)
        frame = cctx.compress(raw)
        refs.append(ChunkRef(BLOB, ChunkInfo(0, len(out), len(frame), len(raw), hashlib.sha256(raw).digest())))
        raws.append(raw)
        out += frame
    return bytes(out), refs, raws


def _setup(tmp_path, n: int, **reader_kw):
    data, refs, raws = make_random_blob(n)
    blob = MemoryBlob(data)
    store = ChunkStore(tmp_path / "cache")
    fetcher = Fetcher(blob, store, decode_chunk, max_request=4 * CHUNK)
    cfg = ReaderConfig(small_file=CHUNK, readahead=8 * CHUNK, readahead_max=64 * CHUNK,
                       readahead_request=16 * CHUNK, **reader_kw)
    reader = FileReader(OneFileView(refs), fetcher, store, cfg)
    return blob, fetcher, reader, b"".join(raws)


async def _read_all(reader: FileReader, size: int, step: int) -> bytes:
    out = bytearray()
    async with trio.open_nursery() as nursery:
        reader.spawn = nursery.start_soon
        for off in range(0, size, step):
            out += await reader.read(INO, off, step, size)
        nursery.cancel_scope.cancel()
    return bytes(out)


def test_sequential_reader_gets_a_growing_window_of_large_requests(tmp_path):
    blob, fetcher, reader, expected = _setup(tmp_path, 400)
    got = trio.run(_read_all, reader, len(expected), CHUNK)
    assert got == expected
    sizes = [e - s for s, e in blob.requests]
    # read-ahead requests grew past the fetcher's own cap (4 chunks), never past the
    # read-ahead cap (16 chunks), and the whole file took far fewer requests than chunks
    assert max(sizes) > 4 * (CHUNK + 64)
    assert max(sizes) <= 16 * (CHUNK + 64)
    assert len(blob.requests) < 400 // 4
    assert reader._stream[INO][1] == 64 * CHUNK          # window grew to its cap
    assert fetcher.fresh.served > 0                        # fetched chunks handed over in memory
    assert fetcher.statistics().chunks == 400              # each chunk fetched once


def test_random_reads_keep_the_initial_window(tmp_path):
    blob, _, reader, expected = _setup(tmp_path, 400)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.spawn = nursery.start_soon
            for off in (300 * CHUNK, 10 * CHUNK, 200 * CHUNK):
                assert await reader.read(INO, off, 100, len(expected)) == expected[off:off + 100]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert reader._stream[INO][1] == 8 * CHUNK
    fetched = sum(e - s for s, e in blob.requests)
    assert fetched < 40 * (CHUNK + 64)                     # a window per miss, not the file


def test_corrupt_chunk_ahead_is_eio_never_wrong_bytes(tmp_path):
    blob, _, reader, expected = _setup(tmp_path, 64)
    bad = 40
    info = reader.view.refs[bad].info
    blob.data[info.comp_offset + info.comp_size // 2] ^= 0xFF
    out = bytearray()
    errors: list[Exception] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.spawn = nursery.start_soon
            try:
                for off in range(0, len(expected), CHUNK):
                    out.extend(await reader.read(INO, off, CHUNK, len(expected)))
            except FetchError as exc:
                errors.append(exc)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert errors, "the corrupted chunk was served"
    assert len(out) == bad * CHUNK and bytes(out) == expected[:len(out)]
    assert not reader.store.contains(info.digest)


def test_fresh_chunks_bounded_dropped_when_read_to_the_end():
    fresh = FreshChunks(capacity=3 * CHUNK, max_age=60)
    chunks = {bytes([i]) * 32: bytes([i]) * CHUNK for i in range(4)}
    for d, data in chunks.items():
        fresh.add(d, data)
    keys = list(chunks)
    assert len(fresh) == 3 and fresh.take(keys[3], 0, 10) is None     # no room: not admitted
    assert fresh.take(keys[0], 0, 100) == chunks[keys[0]][:100]        # partial: kept
    assert fresh.take(keys[0], 100, CHUNK - 100) == chunks[keys[0]][100:]
    assert fresh.take(keys[0], 0, 1) is None                           # read to the end: dropped
    assert fresh.take(keys[1], 0, CHUNK) is chunks[keys[1]]            # whole chunk: no copy
    assert fresh.nbytes == CHUNK


def test_fresh_chunks_stale_entries_make_room():
    fresh = FreshChunks(capacity=2 * CHUNK, max_age=0.05)
    fresh.add(b"a" * 32, b"a" * CHUNK)
    fresh.add(b"b" * 32, b"b" * CHUNK)
    time.sleep(0.1)
    fresh.add(b"c" * 32, b"c" * CHUNK)
    assert fresh.take(b"a" * 32, 0, 1) is None
    assert fresh.take(b"c" * 32, 0, CHUNK) == b"c" * CHUNK
