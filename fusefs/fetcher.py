"""Fetch missing chunks from the registry in as few, as large requests as the link allows.

Algorithm (after stargz-snapshotter's blob fetcher and nydus's merging cache):

1. ``plan_requests`` sorts the wanted chunks of one blob by compressed offset and merges
   neighbours into one range request. A gap between two wanted chunks is bridged when
   downloading the gap costs less than another round trip: ``gap <= bandwidth * rtt``.
   The default assumes the edge link the project is built for (100 Mbit/s, 20 ms ->
   250 KB, rounded to 256 KiB). One request never grows beyond ``max_request`` (4 MiB)
   so that one slow request does not hold many reads hostage.
2. ``Fetcher.ensure`` runs the planned requests concurrently, each in a worker thread
   with the thread-safe ``RegistryClient`` (it owns retries with backoff on 5xx,
   timeouts and resets). A CapacityLimiter caps requests in flight: 8 for on-demand
   reads, a separate 2 for prefetch, and prefetch does not start a new request while
   an on-demand read is waiting (on-demand first, always).
3. Singleflight: a chunk being fetched has an entry in ``_inflight``; a second reader
   waits on it instead of fetching again.
4. When one call needs more separate ranges of a blob than there are request slots
   (scattered small files, a prefetch list with cached holes), consecutive ranges are
   sent together as one multi-range request (``get_ranges``; the registry client falls
   back to a covering range where a server cannot do multi-range), so the round trips
   stay bounded by the slots instead of growing with the number of ranges.
5. Every chunk is decoded and verified (sha256) in the worker thread before it reaches
   the store. A mismatch fails that chunk only (``ChunkCorrupted`` -> EIO at the FUSE
   edge), is logged with blob and chunk, and nothing is stored; the next read tries
   again.
6. Streamed prefetch (issue 6, ``fusefs.stream``): a prefetch range of at least
   ``STREAM_MIN`` bytes is one request whose body is read as it arrives (the source's
   ``open_range``), each chunk verified, stored and its waiters woken as soon as its
   own bytes are in. An on-demand read of a chunk the stream has not reached waits for
   the stream only when the stream is at most ``gap_bytes`` before it; further behind,
   the read takes the chunk over ("steals" it). A stream that breaks releases its
   unreceived chunks with ``StreamCut``, and the reads waiting for them fetch them
   themselves (once) instead of failing. Small ranges keep sharing multi-range
   requests: for them round trips matter more than arrival order.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from fusefs.flight import (
    BlobSource,
    ChunkCorrupted,
    ChunkStoreLike,
    FetchError,
    FetcherStats,
    StreamCut,
    _Flight,
    _raise_first,
    _unique,
    _wait_all,
)
from fusefs.fresh import FreshChunks
from fusefs.plan import (
    DEFAULT_GAP_BYTES,
    DEFAULT_MAX_REQUEST,
    ChunkRef,
    RangeRequest,
    batch_requests,
    plan_prefetch,
    plan_requests,
)
from fusefs.stream import DEFAULT_STREAM_REQUEST, STREAM_MIN, RangeBodyLike, Stream, range_opener, run_stream

log = logging.getLogger(__name__)

#: Concurrent on-demand requests (HTTP connections) per daemon.
DEFAULT_MAX_INFLIGHT = 8
#: Concurrent prefetch requests; prefetch never takes the on-demand slots.
DEFAULT_PREFETCH_SLOTS = 2


class Fetcher:
    """Brings chunks into the store: merged, concurrent, deduplicated, verified."""

    def __init__(self, source: BlobSource, store: ChunkStoreLike,
                 decode: Callable[[bytes | memoryview, Any], bytes], *,
                 gap_bytes: int = DEFAULT_GAP_BYTES, max_request: int = DEFAULT_MAX_REQUEST,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, prefetch_slots: int = DEFAULT_PREFETCH_SLOTS,
                 stream_request: int = DEFAULT_STREAM_REQUEST,
                 on_request: Callable[[str, int, bool], None] | None = None) -> None:
        self.source = source
        self.store = store
        self.decode = decode
        self.gap_bytes = gap_bytes
        self.max_request = max_request
        self._limiter = trio.CapacityLimiter(max_inflight)
        self._prefetch_limiter = trio.CapacityLimiter(prefetch_slots)
        self._slots = {False: max_inflight, True: prefetch_slots}
        self._on_request = on_request
        self.stream_request = max(stream_request, max_request)
        self._open_range = range_opener(source)
        self._streams = self._steals = self._cuts = 0
        self._inflight: dict[bytes, _Flight] = {}
        self._busy = 0                  # on-demand ensure() calls in progress
        self._idle = trio.Event()       # set while _busy == 0
        self._idle.set()
        self._requests = self._bytes = self._chunks = 0
        self._pf_requests = self._pf_bytes = 0
        self._pf_chunks = self._pf_hits = self._pf_hit_bytes = 0
        self._pf_unread: dict[bytes, int] = {}     # prefetched, not read yet: digest -> compressed size
        self._errors = self._corrupt = 0
        #: verified chunks just stored, handed to the reads waiting for them (fusefs.fresh)
        self.fresh = FreshChunks()

    async def ensure(self, refs: Iterable[ChunkRef], *, prefetch: bool = False,
                     max_request: int | None = None) -> None:
        """Return once every chunk in ``refs`` is in the store.

        Raises ``ChunkCorrupted`` or ``FetchError`` if any of them could not be brought
        in; the others that succeeded stay stored. Safe to cancel: waiters of chunks this
        call was fetching are released with an error and may retry.

        ``prefetch=True``: background priority (see ``_ensure_prefetch``).
        ``max_request``: this call's cap on one request (the reader's sequential
        read-ahead asks for larger ones than a random read's default).
        """
        if prefetch:
            await self._ensure_prefetch(refs)
            return
        self._enter_busy()
        try:
            todo = _unique(refs)
            for attempt in (0, 1):
                waits = await self._fetch_or_wait(todo, max_request)
                failed = [(ref, fl) for ref, fl in waits if fl.error is not None]
                # a prefetch that failed under us (a stream cut, a request that gave up):
                # fetch those chunks ourselves, once; corruption stays an error (EIO)
                retry = [ref for ref, fl in failed
                         if fl.prefetch and not isinstance(fl.error, ChunkCorrupted)]
                if not failed or attempt == 1 or len(retry) < len(failed):
                    _raise_first([fl.error for _, fl in failed])
                    return
                log.info("%d chunks of a failed prefetch: fetching them on demand", len(retry))
                todo = retry
        finally:
            self._leave_busy()

    async def _fetch_or_wait(self, refs: list[ChunkRef], max_request: int | None) -> list[tuple[ChunkRef, _Flight]]:
        """Fetch the chunks nobody is fetching, wait for the others; return every flight."""
        mine: list[ChunkRef] = []
        waits: list[tuple[ChunkRef, _Flight]] = []
        for ref in refs:
            fl = self._inflight.get(ref.digest)
            if fl is not None and self._too_far(fl, ref):
                # the stream is far behind: our own request brings it sooner
                del self._inflight[ref.digest]
                new = self._claim(ref)
                new.replaces = fl
                self._steals += 1
                waits.append((ref, new))
                mine.append(ref)
            elif fl is not None:
                waits.append((ref, fl))
            elif not self.store.contains(ref.digest):
                waits.append((ref, self._claim(ref)))
                mine.append(ref)
        if mine:
            plans = plan_requests(mine, gap_bytes=self.gap_bytes,
                                  max_request=max_request or self.max_request)
            async with trio.open_nursery() as nursery:
                for batch in batch_requests(plans, self._slots[False]):
                    nursery.start_soon(self._run, batch, False)
        for _, fl in waits:
            await fl.wait()
        return waits

    def _too_far(self, fl: _Flight, ref: ChunkRef) -> bool:
        """Is this chunk's stream more than a round trip's worth of bytes before it?"""
        return fl.stream is not None and fl.stream.far_behind(ref.info.comp_offset, self.gap_bytes)

    async def _ensure_prefetch(self, refs: Iterable[ChunkRef]) -> None:
        """Fetch at background priority: each request starts only while no on-demand read
        is waiting, and claims its chunks only then. Claiming late matters: a read that
        needs a chunk must never wait for a prefetch request that itself waits for reads
        to finish (priority inversion); until a prefetch request starts, a read simply
        fetches the chunk itself, and the prefetch request then skips it."""
        wanted = [r for r in _unique(refs) if not self.store.contains(r.digest)]
        cap = self.stream_request if self._open_range is not None else self.max_request
        streaming = self._open_range is not None      # streams skip the table's holes (fusefs.plan)
        plans = plan_prefetch(wanted, gap_bytes=self.gap_bytes, max_request=cap, streaming=streaming)
        flights: list[_Flight] = []

        async def one(batch: list[RangeRequest]) -> None:
            async with self._prefetch_limiter:
                while self._busy:
                    await self._idle.wait()
                todo = [ref for plan in batch for ref in plan.chunks
                        if ref.digest not in self._inflight and not self.store.contains(ref.digest)]
                if not todo:
                    return
                claimed = {ref.digest: self._claim(ref, prefetch=True) for ref in todo}
                flights.extend(claimed.values())
                replanned = plan_prefetch(todo, gap_bytes=self.gap_bytes, max_request=cap,
                                          streaming=streaming)
                for group in self._jobs(replanned, 1):
                    if self._streamable(group):
                        self._streams += 1
                        await run_stream(self, group[0], claimed)
                    else:
                        await self._run(group, True)

        async with trio.open_nursery() as nursery:
            for batch in self._jobs(plans, self._slots[True]):
                nursery.start_soon(one, batch)
        await _wait_all(flights)

    def _streamable(self, group: list[RangeRequest]) -> bool:
        return self._open_range is not None and len(group) == 1 and group[0].size >= STREAM_MIN

    def _jobs(self, plans: list[RangeRequest], slots: int) -> list[list[RangeRequest]]:
        """Requests for prefetch ranges, in blob order: each big range streamed alone, the
        small ones between them sharing multi-range requests (``batch_requests``)."""
        if self._open_range is None:
            return batch_requests(plans, slots)
        jobs: list[list[RangeRequest]] = []
        small: list[RangeRequest] = []
        for plan in plans:
            if plan.size >= STREAM_MIN:
                jobs += batch_requests(small, slots) if small else []
                small = []
                jobs.append([plan])
            else:
                small.append(plan)
        return jobs + (batch_requests(small, slots) if small else [])

    def _claim(self, ref: ChunkRef, prefetch: bool = False) -> _Flight:
        fl = _Flight(prefetch=prefetch)
        self._inflight[ref.digest] = fl
        return fl

    def settle(self, digest: bytes, fl: _Flight, error: FetchError | None) -> None:
        """Resolve one flight (event loop only): wake its waiters, forget it if current.
        Also called by ``fusefs.stream`` for each chunk of a streamed range."""
        if self._inflight.get(digest) is fl:
            del self._inflight[digest]
        if not fl.done.is_set():
            fl.error = error
            fl.done.set()
        old = fl.replaces
        if error is None and old is not None and not old.done.is_set():
            old.done.set()      # taken over from a stream and fetched: its waiters can go on

    def pending(self, digest: bytes) -> bool:
        """True while a fetch of this chunk is in flight."""
        return digest in self._inflight

    def _enter_busy(self) -> None:
        if self._busy == 0:
            self._idle = trio.Event()
        self._busy += 1

    def _leave_busy(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    async def _run(self, batch: list[RangeRequest], prefetch: bool) -> None:
        """Fetch one request (one or more ranges of a blob); resolves every flight of it,
        never raises."""
        results: dict[bytes, FetchError | None] = {}
        chunks = [ref for plan in batch for ref in plan.chunks]
        try:
            # prefetch requests already hold a prefetch slot (see _ensure_prefetch)
            limiter = None if prefetch else self._limiter
            results = await trio.to_thread.run_sync(self._fetch_sync, batch, prefetch, limiter=limiter)
        except Exception as exc:  # noqa: BLE001 - any source failure (after its retries) is EIO
            self._errors += 1
            where = ", ".join(f"[{p.start}, {p.end})" for p in batch)
            log.error("fetch of %s %s failed: %s", batch[0].blob, where, exc)
            err = FetchError(f"fetch of {batch[0].blob} {where} failed: {exc}")
            results = {ref.digest: err for ref in chunks}
        finally:
            for ref in chunks:
                fl = self._inflight.get(ref.digest)
                if fl is not None:
                    self.settle(ref.digest, fl, results[ref.digest] if ref.digest in results
                                else FetchError("fetch cancelled"))

    # --- fusefs.stream.StreamHost: what a streamed prefetch range uses of the fetcher ---

    def stream_open(self, blob: str, start: int, end: int) -> RangeBodyLike:
        assert self._open_range is not None
        body = self._open_range(blob, start, end)
        self._requests += 1
        self._pf_requests += 1
        return body

    def stream_received(self, n: int) -> None:
        self._bytes += n
        self._pf_bytes += n

    def stream_deliver(self, blob: str, ref: ChunkRef, frame: memoryview, flight: _Flight) -> FetchError | None:
        err = self._accept(blob, ref, frame, hand_over=flight.waiters > 0)
        if err is None:
            self._pf_unread[ref.digest] = ref.info.comp_size
            self._pf_chunks += 1
        return err

    def stream_broke(self, st: Stream, exc: Exception | None) -> FetchError:
        if exc is None:
            return FetchError("fetch cancelled")
        self._errors += 1
        self._cuts += 1
        log.warning("prefetch stream of %s [%d, %d) broke at %d: %s (its other chunks are fetched "
                    "on demand)", st.blob, st.start, st.end, st.position, exc)
        return StreamCut(f"prefetch stream of {st.blob} [{st.start}, {st.end}) broke at "
                         f"{st.position}: {exc}")

    def stream_finished(self, blob: str, got: int) -> None:
        if self._on_request is not None:
            self._on_request(blob, got, True)

    def _fetch_sync(self, batch: list[RangeRequest], prefetch: bool) -> dict[bytes, FetchError | None]:
        """Worker thread: one GET, then decode + verify + store each chunk of it."""
        blob = batch[0].blob
        if len(batch) == 1:
            datas = [self.source.get_range(blob, batch[0].start, batch[0].end)]
        else:
            datas = self.source.get_ranges(blob, [(p.start, p.end) for p in batch])
        size = 0
        for plan, data in zip(batch, datas, strict=True):
            if len(data) != plan.size:
                raise FetchError(f"short read: {len(data)} of {plan.size} bytes")
            size += len(data)
        self._requests += 1
        self._bytes += size
        if prefetch:
            self._pf_requests += 1
            self._pf_bytes += size
        if self._on_request is not None:
            self._on_request(blob, size, prefetch)
        out: dict[bytes, FetchError | None] = {}
        for plan, data in zip(batch, datas):
            view = memoryview(data)
            for ref in plan.chunks:
                out[ref.digest] = err = self._accept(blob, ref, view[ref.info.comp_offset - plan.start:],
                                                     hand_over=not prefetch)
                if prefetch and err is None:
                    self._pf_unread[ref.digest] = ref.info.comp_size
                    self._pf_chunks += 1
        return out

    def note_read(self, digests: Iterable[bytes]) -> None:
        """A read used these chunks: prefetched ones count as hits (once). Cheap when
        nothing prefetched is waiting to be read."""
        if not self._pf_unread:
            return
        for digest in digests:
            size = self._pf_unread.pop(digest, None)
            if size is not None:
                self._pf_hits += 1
                self._pf_hit_bytes += size

    def _accept(self, blob: str, ref: ChunkRef, frame_view: memoryview,
                hand_over: bool = True) -> FetchError | None:
        """Verify one fetched chunk and store it; never stores a chunk that fails."""
        frame = frame_view[:ref.info.comp_size]      # no copy: zstd and hashlib take buffers
        try:
            raw = self.decode(frame, ref.info)
        except Exception as exc:  # noqa: BLE001 - ChunkError, zstd errors: never serve it
            self._corrupt += 1
            log.error("chunk verification failed: blob %s chunk %s (compressed offset %d, "
                      "size %d): %s", blob, ref.digest.hex(), ref.info.comp_offset,
                      ref.info.comp_size, exc)
            return ChunkCorrupted(f"chunk {ref.digest.hex()} of blob {blob} failed verification")
        self.store.put(ref.digest, raw)
        if hand_over:       # on-demand: a read is about to want it (prefetch: maybe much later)
            self.fresh.add(ref.digest, raw)
        self._chunks += 1
        return None

    def statistics(self) -> FetcherStats:
        return FetcherStats(requests=self._requests, bytes=self._bytes, chunks=self._chunks,
                            prefetch_requests=self._pf_requests, prefetch_bytes=self._pf_bytes,
                            errors=self._errors, corrupt=self._corrupt, inflight=len(self._inflight),
                            prefetch_chunks=self._pf_chunks, prefetch_hits=self._pf_hits,
                            prefetch_hit_bytes=self._pf_hit_bytes, prefetch_streams=self._streams,
                            stream_steals=self._steals, stream_cuts=self._cuts)

