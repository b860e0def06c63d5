"""Streamed prefetch: chunks of a big prefetch range are used as they arrive.

Real parts: a blob of zstd chunk frames pushed to the real test registry, read by the
real ``RegistryClient`` through ``benchmarks.proxy`` (a slow link, a flipped byte, a
reset mid-body). Assertions are by order of events and by the proxy's byte counter at
the moment a read returns, never by wall clock: the link is slow enough that the range
takes seconds, and the link is opened up once the assertion is made.
"""
from __future__ import annotations

import functools
import uuid
from pathlib import Path

import pytest
import trio

from benchmarks.proxy import ShapingProxy
from fusefs.fetcher import ChunkCorrupted, ChunkRef, Fetcher, FetchError, StreamCut
from fusefs.prefetch import Prefetcher
from fusefs.source import RegistrySource
from fusefs.store import ChunkStore
from imgformat.chunk import decode_chunk
from registry.client import RegistryClient
from registry.reference import parse_reference
from tests.fusefs import imagekit
from tests.fusefs.imagekit import Tar

N_CHUNKS = 32
RAW = 256 << 10                 # incompressible: each frame is ~256 KiB, the blob ~8 MiB
SLOW = 10e6 / 8                 # 10 Mbit/s: the whole range takes ~7 s, one chunk ~0.2 s
NEVER_STEAL = 1 << 40           # gap_bytes so large that a read always waits for the stream
CRAWL = 20e3                    # bytes/s: the stream cannot reach a fault before the readers wait


@pytest.fixture(scope="module")
def blob(registry, tmp_path_factory) -> tuple[str, str, list[ChunkRef], list[bytes], int]:
    repo = f"streamprefetch/{uuid.uuid4().hex[:8]}"
    digest, refs, raws, total = imagekit.push_frames_blob(registry.host, repo, N_CHUNKS, RAW, 11,
                                                          tmp_path_factory.mktemp("stream"))
    return repo, digest, refs, raws, total


@pytest.fixture
def link(registry, tmp_path):
    """(proxy at 10 Mbit/s in front of the registry, a client through it)."""
    with ShapingProxy(registry.host, bandwidth=SLOW) as proxy:
        client = RegistryClient(proxy.host, plain_http=True, docker_config=tmp_path / "none.json",
                                retries=1, backoff=0.01)
        try:
            yield proxy, client
        finally:
            client.close()


def make_fetcher(tmp_path, client, repo, **kw) -> tuple[Fetcher, ChunkStore]:
    store = ChunkStore(tmp_path / "cache")
    return Fetcher(RegistrySource(client, repo), store, decode_chunk, **kw), store


async def until(cond, what: str) -> None:
    with trio.fail_after(60):
        while not cond():
            await trio.sleep(0.005)


async def start_readers(proxy: ShapingProxy) -> None:
    """Let the reader tasks just started reach their wait (they block at their first
    await, on the stream's flights), then open the link so the stream reaches the fault."""
    await trio.sleep(0.05)
    proxy.set_link(bandwidth=SLOW * 4)


def stream_bytes(proxy: ShapingProxy, digest: str) -> int:
    """Body bytes the proxy has sent for the first (the prefetch's) request of the blob."""
    return proxy.blob_gets(digest)[0].bytes


def test_first_chunk_is_served_long_before_the_range_completes(blob, link, tmp_path):
    repo, digest, refs, raws, total = blob
    proxy, client = link
    fetcher, store = make_fetcher(tmp_path, client, repo)
    seen = {}

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(functools.partial(fetcher.ensure, refs, prefetch=True))
            await until(lambda: fetcher.pending(refs[0].digest), "the stream to start")
            await fetcher.ensure([refs[0]])           # waits for chunk 0 of the stream only
            seen["bytes"] = stream_bytes(proxy, digest)
            seen["last_stored"] = store.contains(refs[-1].digest)
            seen["gets"] = len(proxy.blob_gets(digest))
            proxy.set_link(bandwidth=0)               # let the rest come at loopback speed

    trio.run(main)
    assert seen["bytes"] < total // 2, seen
    assert not seen["last_stored"]
    assert seen["gets"] == 1                          # the read did not duplicate the chunk
    assert store.read(refs[0].digest) == raws[0]
    assert all(store.read(r.digest) == raw for r, raw in zip(refs, raws))
    st = fetcher.statistics()
    assert (st.prefetch_streams, st.prefetch_requests, st.requests) == (1, 1, 1)
    assert st.prefetch_chunks == N_CHUNKS and st.prefetch_bytes == total
    assert len(proxy.blob_gets(digest)) == 1


def test_read_far_ahead_of_the_stream_fetches_on_demand(blob, link, tmp_path):
    """Chunks 20-23 (~5 MiB ahead of the stream) are read: one request of their own, and
    the stream, once it reaches them, skips them by reopening the range after them."""
    repo, digest, refs, raws, total = blob
    proxy, client = link
    fetcher, store = make_fetcher(tmp_path, client, repo)
    ahead = refs[20:24]
    seen = {}

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(functools.partial(fetcher.ensure, refs, prefetch=True))
            await until(lambda: fetcher.pending(refs[-1].digest), "the stream to start")
            # its GET at the proxy first (claimed is not sent: under load the read's own
            # request could otherwise overtake it, and the order below would not hold)
            await until(lambda: len(proxy.blob_gets(digest)) == 1, "the stream's request")
            await fetcher.ensure(ahead)
            seen["bytes"] = stream_bytes(proxy, digest)
            seen["gets"] = [r.range for r in proxy.blob_gets(digest)]
            proxy.set_link(bandwidth=0)

    trio.run(main)
    first, last = ahead[0].info, ahead[-1].info
    assert seen["bytes"] < first.comp_offset, seen      # served before the stream got there
    assert seen["gets"][1] == f"bytes={first.comp_offset}-{last.comp_offset + last.comp_size - 1}"
    gets = proxy.blob_gets(digest)
    assert len(gets) == 3 and gets[2].range == f"bytes={refs[24].info.comp_offset}-{total - 1}"
    st = fetcher.statistics()
    # the first body was dropped at the skip: the taken-over chunks were not received twice
    assert st.prefetch_bytes == first.comp_offset + total - refs[24].info.comp_offset
    assert st.stream_steals == len(ahead) and st.prefetch_streams == 1 and st.prefetch_requests == 2
    assert all(store.read(r.digest) == raw for r, raw in zip(refs, raws))


def test_flipped_byte_mid_stream_is_eio_for_that_chunk_only(blob, link, tmp_path):
    repo, digest, refs, raws, total = blob
    proxy, client = link
    proxy.set_link(bandwidth=CRAWL)                 # until the readers wait (see start_readers)
    proxy.inject("flip", match=digest)              # the byte at the middle of the body
    bad = next(i for i, r in enumerate(refs)
               if r.info.comp_offset <= total // 2 < r.info.comp_offset + r.info.comp_size)
    fetcher, store = make_fetcher(tmp_path, client, repo, gap_bytes=NEVER_STEAL)
    results: dict[int, object] = {}

    async def reader(i: int) -> None:
        try:
            await fetcher.ensure([refs[i]])
            results[i] = "ok"
        except FetchError as exc:
            results[i] = exc

    async def prefetch() -> None:
        with pytest.raises(ChunkCorrupted):
            await fetcher.ensure(refs, prefetch=True)
        results["prefetch"] = "corrupt"

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(prefetch)
            await until(lambda: fetcher.pending(refs[0].digest), "the stream to start")
            for i in (bad - 1, bad, bad + 1):
                n.start_soon(reader, i)
            await start_readers(proxy)

    trio.run(main)
    assert results["prefetch"] == "corrupt"
    assert isinstance(results[bad], ChunkCorrupted)
    assert results[bad - 1] == results[bad + 1] == "ok"
    assert len(proxy.blob_gets(digest)) == 1          # the stream went on past the bad chunk
    assert not store.contains(refs[bad].digest)
    assert all(store.read(r.digest) == raw for i, (r, raw) in enumerate(zip(refs, raws)) if i != bad)
    assert fetcher.statistics().corrupt == 1
    trio.run(fetcher.ensure, [refs[bad]])             # the registry's bytes are fine: refetched
    assert store.read(refs[bad].digest) == raws[bad]


def test_reset_mid_stream_waiting_readers_fetch_on_demand(blob, link, tmp_path):
    repo, digest, refs, raws, _ = blob
    proxy, client = link
    proxy.set_link(bandwidth=CRAWL)                 # until the readers wait (see start_readers)
    proxy.inject("reset", match=digest)             # cut at the middle of the body
    fetcher, store = make_fetcher(tmp_path, client, repo, gap_bytes=NEVER_STEAL)
    late = [N_CHUNKS - 2, N_CHUNKS - 1]              # past the cut: waiting when it breaks
    results: dict[object, object] = {}

    async def reader() -> None:
        await fetcher.ensure([refs[i] for i in late])
        results["reader"] = "ok"

    async def prefetch() -> None:
        with pytest.raises(StreamCut):
            await fetcher.ensure(refs, prefetch=True)
        results["prefetch"] = "cut"

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(prefetch)
            await until(lambda: fetcher.pending(refs[0].digest), "the stream to start")
            n.start_soon(reader)
            await start_readers(proxy)

    trio.run(main)
    assert results == {"prefetch": "cut", "reader": "ok"}
    st = fetcher.statistics()
    assert st.stream_cuts == 1 and st.corrupt == 0
    gets = proxy.blob_gets(digest)
    assert gets[0].fault == "reset" and len(gets) == 2      # the reader's chunks: one request
    for i in late:
        assert store.read(refs[i].digest) == raws[i]
    # what arrived before the cut is stored (a prefix; an RST may drop unread bytes), the
    # chunks after it are not (nobody read them)
    stored = [i for i, r in enumerate(refs) if store.contains(r.digest)]
    assert stored[:len(stored) - 2] == list(range(len(stored) - 2))
    assert not store.contains(refs[N_CHUNKS - 3].digest)


# --- the Prefetcher and a real mount over a prefetch-ordered image -------------------------

PF_FILES = [f"app/part{i:02d}.bin" for i in range(12)]      # 12 x 1 MiB, incompressible


@pytest.fixture(scope="module")
def pf_image(registry, tmp_path_factory) -> tuple[str, Path, dict[str, bytes]]:
    layout = tmp_path_factory.mktemp("pfimage") / "layout"
    files = {p: imagekit.blob_data(100 + i, 1 << 20) for i, p in enumerate(PF_FILES)}
    tar = Tar().dir("app")
    for p, data in files.items():
        tar.file(p, data)
    tar.file("app/other.bin", imagekit.blob_data(99, 1 << 20))
    imagekit.write_imgfs_layout(layout, [tar.bytes()], prefetch=PF_FILES)
    image = imagekit.push(layout, registry.host, f"streamprefetch/img-{uuid.uuid4().hex[:8]}")
    return image, layout, files


def test_prefetcher_refetches_the_rest_of_a_truncated_stream(pf_image, link, tmp_path):
    image, layout, _ = pf_image
    proxy, client = link
    proxy.set_link(bandwidth=0)
    (digest, bs), = imagekit.layer_bootstraps(layout)
    fetcher, store = make_fetcher(tmp_path, client, parse_reference(image[len("docker://"):]).repository)
    proxy.inject("truncate", match=digest)           # FIN at the middle: the first half arrives
    pf = Prefetcher(fetcher, [bs], [digest])
    trio.run(pf.run)
    wanted = [bs.chunk(i) for i in bs.prefetch]
    assert len(wanted) == len(PF_FILES)
    assert all(store.contains(info.digest) for info in wanted)
    gets = proxy.blob_gets(digest)
    assert [g.fault for g in gets] == ["truncate", None]    # the rest in one more request
    start = int(gets[1].range.split("=")[1].split("-")[0])
    assert start > min(info.comp_offset for info in wanted)  # the received prefix is not fetched again
    st = pf.statistics()
    assert (st.failed, st.done, st.phase) == (0, len(PF_FILES), "done")
    assert fetcher.statistics().stream_cuts == 1


def test_mount_serves_the_first_prefetched_file_while_the_stream_runs(pf_image, registry, mount_image):
    """The real daemon: mounted through a 10 Mbit/s link, its prefetch streams ~12 MiB
    (~10 s); reading the first listed file returns once its chunk is in."""
    image, layout, files = pf_image
    (digest, bs), = imagekit.layer_bootstraps(layout)
    first = min(bs.chunk(i).comp_offset for i in bs.prefetch)
    with ShapingProxy(registry.host, bandwidth=SLOW) as proxy:
        m = mount_image(image.replace(registry.host, proxy.host))
        data = (m.mountpoint / PF_FILES[0]).read_bytes()
        gets = [g for g in proxy.blob_gets(digest)
                if int(g.range.split("=")[1].split("-")[0]) <= first]    # the prefetch's request
        sent = sum(g.bytes for g in gets)
        proxy.set_link(bandwidth=0)
        assert data == files[PF_FILES[0]]
        assert len(gets) == 1 and sent < 6 << 20, (gets, sent)
        assert (m.mountpoint / PF_FILES[-1]).read_bytes() == files[PF_FILES[-1]]
        st = m.state()["fetcher"]
        assert st["prefetch_streams"] >= 1 and st["corrupt"] == 0
