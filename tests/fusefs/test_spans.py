"""SpanCache answers exactly what the view answers, and the reader serves right bytes
through it under concurrent reads of several files and cache churn.

No mount: a view of files made of real zstd chunk frames (tests/fusefs/test_reader.py's
helpers); spans are scaled down so that reads straddle span boundaries and the LRU of
spans evicts while reads run.
"""
from __future__ import annotations

import random

import trio

from fusefs.fetcher import Fetcher
from fusefs.reader import FileReader, ReaderConfig
from fusefs.spans import SpanCache
from fusefs.store import ChunkStore
from imgformat.chunk import decode_chunk
from imgformat.records import Segment
from tests.fusefs.test_fetcher import BLOB, MemoryBlob
from tests.fusefs.test_reader import CHUNK, make_random_blob


class ManyFilesView:
    """Files of uneven sizes cut from one chunk sequence; file k starts mid-chunk."""

    def __init__(self, refs, sizes: list[int]) -> None:
        self.refs = refs
        self.files: dict[int, tuple[int, int]] = {}     # ino -> (start byte in the stream, size)
        pos = 0
        for k, size in enumerate(sizes):
            self.files[k + 1] = (pos, size)
            pos += size + 1000
        assert pos <= CHUNK * len(refs)
        self.calls = 0

    def segments(self, ino: int, offset: int, length: int):
        self.calls += 1
        base, size = self.files[ino]
        end = min(offset + length, size)
        out, pos = [], offset
        while pos < end:
            i, within = divmod(base + pos, CHUNK)
            n = min(CHUNK - within, end - pos)
            out.append((BLOB, Segment(i, within, n, pos), self.refs[i].info))
            pos += n
        return out


def _flat(parts) -> list[tuple[int, int, int]]:
    """(chunk, offset in chunk, file offset) runs, merged: pieces split at span edges compare equal."""
    out: list[list[int]] = []
    for ref_or_blob, seg, *_ in parts:
        if out and out[-1][0] == seg.chunk_index and out[-1][1] + out[-1][3] == seg.offset_in_chunk \
                and out[-1][2] + out[-1][3] == seg.file_offset:
            out[-1][3] += seg.length
        else:
            out.append([seg.chunk_index, seg.offset_in_chunk, seg.file_offset, seg.length])
    return [tuple(x) for x in out]


def test_refs_equal_the_views_segments_across_span_edges_and_evictions():
    _, refs, _ = make_random_blob(200)
    sizes = [90 * CHUNK + 123, 3 * CHUNK, 5000, 60 * CHUNK]
    view = ManyFilesView(refs, sizes)
    cache = SpanCache(view, span=5 * CHUNK + 17, max_spans=3)
    rnd = random.Random(5)
    for _ in range(3000):
        ino = rnd.randint(1, len(sizes))
        size = view.files[ino][1]
        off = rnd.randrange(size)
        length = rnd.choice([1, 100, CHUNK, 3 * CHUNK + 5, 40 * CHUNK])
        got = cache.refs(ino, off, length, size)
        want = view.segments(ino, off, length)
        assert _flat([(r, s) for r, s in got]) == _flat([(b, s) for b, s, _ in want]), (ino, off, length)
        assert all(r.info == refs[s.chunk_index].info for r, s in got)
        assert sum(s.length for _, s in got) == min(length, size - off)


def test_concurrent_reads_of_several_files_return_right_bytes(tmp_path):
    data, refs, raws = make_random_blob(300)
    stream = b"".join(raws)
    sizes = [120 * CHUNK + 77, 2 * CHUNK + 1, 700, 100 * CHUNK]
    view = ManyFilesView(refs, sizes)
    store = ChunkStore(tmp_path / "cache", capacity=40 * (CHUNK + 16))   # evicts while reading
    fetcher = Fetcher(MemoryBlob(data), store, decode_chunk, max_request=4 * CHUNK)
    reader = FileReader(view, fetcher, store, ReaderConfig(small_file=CHUNK, readahead=8 * CHUNK,
                                                           readahead_max=32 * CHUNK,
                                                           readahead_request=8 * CHUNK))
    reader._spans = SpanCache(view, span=7 * CHUNK + 3, max_spans=4)
    bad: list[str] = []

    async def reader_task(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(60):
            ino = rnd.randint(1, len(sizes))
            base, size = view.files[ino]
            if rnd.random() < 0.5:          # sequential stretch
                off = rnd.randrange(size)
                for _ in range(8):
                    n = rnd.choice([CHUNK, 2 * CHUNK, 300])
                    got = await reader.read(ino, off, n, size)
                    if bytes(got) != stream[base + off:base + min(off + n, size)]:
                        bad.append(f"ino {ino} [{off}, +{n})")
                    off += n
                    if off >= size:
                        break
            else:
                off, n = rnd.randrange(size), rnd.randint(1, 5 * CHUNK)
                got = await reader.read(ino, off, n, size)
                if bytes(got) != stream[base + off:base + min(off + n, size)]:
                    bad.append(f"ino {ino} [{off}, +{n})")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.spawn = nursery.start_soon
            async with trio.open_nursery() as readers:
                for seed in range(8):
                    readers.start_soon(reader_task, seed)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert not bad, bad[:5]
    assert store.statistics().evictions > 0


def test_a_new_view_is_asked_not_the_spans_of_the_old_one(tmp_path):
    """The daemon swaps in the takeover's kernel-numbered view after building the reader:
    the same inode number then names another file, and the reader must follow."""
    data, refs, raws = make_random_blob(40)
    stream = b"".join(raws)
    first = ManyFilesView(refs, [10 * CHUNK, 10 * CHUNK])
    second = ManyFilesView(refs, [10 * CHUNK + 5000, 10 * CHUNK])     # file 2 starts elsewhere
    store = ChunkStore(tmp_path / "cache")
    fetcher = Fetcher(MemoryBlob(data), store, decode_chunk)
    reader = FileReader(first, fetcher, store, ReaderConfig())

    async def read(ino: int) -> bytes:
        return bytes(await reader.read(ino, 0, 3 * CHUNK, 10 * CHUNK))

    base1 = first.files[2][0]
    assert trio.run(read, 2) == stream[base1:base1 + 3 * CHUNK]
    reader.view = second
    base2 = second.files[2][0]
    assert base2 != base1 and trio.run(read, 2) == stream[base2:base2 + 3 * CHUNK]
    assert reader.view is second


def test_warm_sequential_reads_load_ahead_right_bytes_and_catch_a_rotten_file(tmp_path):
    """After a restart (a new store on the same dir), a sequential reader gets its chunks
    loaded ahead into memory (``ChunkStore.load``); every byte is right, and a cache file
    rotten on disk is found by its trailer and fetched again, never served."""
    data, refs, raws = make_random_blob(160)
    stream = b"".join(raws)
    size = 150 * CHUNK
    view = ManyFilesView(refs, [size])
    cfg = ReaderConfig(small_file=CHUNK, readahead=8 * CHUNK, readahead_max=32 * CHUNK,
                       readahead_request=8 * CHUNK)

    def reader_on(store: ChunkStore, blob: MemoryBlob) -> FileReader:
        return FileReader(view, Fetcher(blob, store, decode_chunk, max_request=4 * CHUNK), store, cfg)

    async def read_all(reader: FileReader, step: int) -> bytes:
        out = bytearray()
        async with trio.open_nursery() as nursery:
            reader.spawn = nursery.start_soon
            for off in range(0, size, step):
                out += await reader.read(1, off, step, size)
            nursery.cancel_scope.cancel()
        return bytes(out)

    first = MemoryBlob(data)
    assert trio.run(read_all, reader_on(ChunkStore(tmp_path / "c"), first), CHUNK) == stream[:size]
    # rot one cache file in the middle (its trailer no longer matches)
    store = ChunkStore(tmp_path / "c")
    bad = refs[90].info.digest
    raw = bytearray(store.path(bad).read_bytes())
    raw[100] ^= 1
    store.path(bad).write_bytes(bytes(raw))
    again = MemoryBlob(data)
    warm = reader_on(store, again)
    assert trio.run(read_all, warm, 2 * CHUNK) == stream[:size]
    assert store.statistics().corrupt == 1
    assert warm.fetcher.fresh.served > 100            # served from chunks loaded ahead
    assert any(s <= refs[90].info.comp_offset < e for s, e in again.requests)   # refetched
    assert sum(e - s for s, e in again.requests) < 10 * (CHUNK + 64)   # only around the bad one
