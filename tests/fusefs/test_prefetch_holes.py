"""A prefetch table with holes (the unread parts of a partly read big file laid out in
place): one planned range per layer, streamed, the holes skipped by reopening the range
after each; and the prefetch-table tuning of a mount (readaheads, front ranges first).

Real parts: a blob of zstd chunk frames in the real test registry, read through
``benchmarks.proxy`` by the real ``RegistryClient``; the assertions are on the proxy's
requests and byte counts, never on wall-clock time.
"""
from __future__ import annotations

import hashlib
import uuid
from types import SimpleNamespace

import pytest
import trio

from benchmarks.proxy import ShapingProxy
from fusefs.fetcher import ChunkRef, Fetcher
from fusefs.plan import STREAM_BRIDGE, plan_prefetch, plan_requests
from fusefs.prefetch import (
    PREFETCH_KERNEL_READAHEAD_KIB,
    PREFETCH_READER_READAHEAD,
    front_regions,
    kernel_readahead_kib,
    reader_readahead,
)
from fusefs.source import RegistrySource
from fusefs.store import ChunkStore
from fusefs.stream import STREAM_MIN
from imgformat.chunk import decode_chunk
from imgformat.records import ChunkInfo
from registry.client import RegistryClient
from tests.fusefs import imagekit

N_CHUNKS = 24
RAW = 256 << 10                 # incompressible: each frame is ~256 KiB, the blob ~6 MiB
GAP = 64 << 10                  # the fetcher's gap_bytes here: a hole of a chunk is skipped
#: the table: chunks 0-7, 10-15 and 20-23 (holes of 2 and 4 chunks)
WANTED = [*range(8), *range(10, 16), *range(20, 24)]


def refs_at(*spans: tuple[int, int], blob: str = "b") -> list[ChunkRef]:
    """ChunkRefs at (offset, size) spans of one blob."""
    return [ChunkRef(blob, ChunkInfo(0, off, size, size, hashlib.sha256(b"%d" % off).digest()))
            for off, size in spans]


def test_plan_prefetch_bridges_holes_for_a_stream_only():
    refs = refs_at((0, 1 << 20), (1 << 20, 1 << 20), (10 << 20, 1 << 20), (12 << 20, 1 << 20))
    (one,) = plan_prefetch(refs, gap_bytes=GAP, max_request=32 << 20)
    assert (one.start, one.end, len(one.chunks)) == (0, 13 << 20, 4)
    # without streaming, holes would be downloaded: planned as for on-demand reads
    assert ([(p.start, p.end) for p in plan_prefetch(refs, gap_bytes=GAP, max_request=32 << 20,
                                                      streaming=False)]
            == [(p.start, p.end) for p in plan_requests(refs, gap_bytes=GAP, max_request=32 << 20)]
            == [(0, 2 << 20), (10 << 20, 11 << 20), (12 << 20, 13 << 20)])
    # a bridged range too small to stream is fetched whole: planned again, holes left out
    small = refs_at((0, 1000), (STREAM_MIN // 2, 1000))
    assert [(p.start, p.end) for p in plan_prefetch(small, gap_bytes=GAP)] == [(0, 1000),
                                                                              (STREAM_MIN // 2,
                                                                               STREAM_MIN // 2 + 1000)]
    # holes beyond the bridge, and the request cap, still split
    far = refs_at((0, 1 << 20), (STREAM_BRIDGE + (2 << 20), 1 << 20))
    assert len(plan_prefetch(far, gap_bytes=GAP, max_request=1 << 40)) == 2
    assert len(plan_prefetch(refs, gap_bytes=GAP, max_request=2 << 20)) == 3


def test_front_regions_take_the_first_range_of_every_blob():
    a = refs_at((0, 1 << 20), (1 << 20, 1 << 20), (STREAM_BRIDGE * 2, 1 << 20), blob="a")
    b = refs_at((0, 2 << 20), blob="b")
    front, rest = front_regions(a + b, GAP, 32 << 20)
    assert front == a[:2] + b and rest == a[2:]


def test_prefetch_table_lowers_both_readaheads():
    table = [SimpleNamespace(prefetch=[]), SimpleNamespace(prefetch=[3, 4])]
    none = [SimpleNamespace(prefetch=[])]
    assert kernel_readahead_kib(table, 4096) == PREFETCH_KERNEL_READAHEAD_KIB
    assert kernel_readahead_kib(none, 4096) == 4096
    assert kernel_readahead_kib(table, 4) == 4              # never raised (the recorder's 4 KiB)
    assert kernel_readahead_kib(table, 0) == 0              # 0: left to the kernel
    assert reader_readahead(table, 8 << 20) == PREFETCH_READER_READAHEAD
    assert reader_readahead(none, 8 << 20) == 8 << 20


@pytest.fixture(scope="module")
def blob(registry, tmp_path_factory) -> tuple[str, str, list[ChunkRef], list[bytes], int]:
    repo = f"prefetchholes/{uuid.uuid4().hex[:8]}"
    digest, refs, raws, total = imagekit.push_frames_blob(registry.host, repo, N_CHUNKS, RAW, 7,
                                                          tmp_path_factory.mktemp("holes"))
    return repo, digest, refs, raws, total


def test_stream_skips_the_holes_of_the_table(blob, registry, tmp_path):
    repo, digest, refs, raws, total = blob
    wanted = [refs[i] for i in WANTED]
    with ShapingProxy(registry.host) as proxy:
        client = RegistryClient(proxy.host, plain_http=True, docker_config=tmp_path / "none.json",
                                retries=1, backoff=0.01)
        try:
            store = ChunkStore(tmp_path / "cache")
            fetcher = Fetcher(RegistrySource(client, repo), store, decode_chunk, gap_bytes=GAP)
            trio.run(lambda: fetcher.ensure(wanted, prefetch=True))
            gets = [r.range for r in proxy.blob_gets(digest)]
            got = sum(r.bytes for r in proxy.blob_gets(digest))
        finally:
            client.close()

    # one stream: opened at chunk 0, reopened after each hole; each request runs to the
    # range's end but is dropped at the hole, so no hole byte beyond what was in flight
    assert gets[0] == f"bytes=0-{total - 1}"
    assert gets[1:] == [f"bytes={refs[10].info.comp_offset}-{total - 1}",
                        f"bytes={refs[20].info.comp_offset}-{total - 1}"]
    assert got >= sum(r.info.comp_size for r in wanted)
    st = fetcher.statistics()
    assert (st.prefetch_streams, st.prefetch_requests, st.prefetch_chunks) == (1, 3, len(wanted))
    assert all(store.read(refs[i].digest) == raws[i] for i in WANTED)
    assert not any(store.contains(refs[i].digest) for i in range(N_CHUNKS) if i not in WANTED)
