"""Background prefetch: the bootstraps' prefetch tables first, then (optionally) everything.

The converter lays the prefetch list's files first in each blob, in access order, so
the startup working set is one contiguous range per layer: we fetch it in blob order in
batches of ``batch_bytes`` (each batch is planned into ``max_request``-sized merged
requests by the fetcher). Prefetch goes through the same fetcher as on-demand reads
(singleflight: a read of a chunk being prefetched waits for that fetch instead of
starting another) but with its own two request slots, and it starts no new request
while an on-demand read is waiting (``Fetcher`` enforces both).

A failed batch is logged and skipped: prefetch is an optimisation, on-demand reads
will fetch (and report) what is missing. After the last batch, the chunks of failed
batches that are still missing (a stream cut mid-body, a registry hiccup) are tried once
more, so a cut costs the working set one more request rather than many on-demand ones.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from fusefs.fetcher import ChunkRef, Fetcher, FetchError
from fusefs.plan import plan_prefetch
from fusefs.stream import range_opener

log = logging.getLogger(__name__)

#: Bytes of compressed chunks handed to the fetcher at once (a few max-size requests).
DEFAULT_BATCH_BYTES = 32 << 20
#: Kernel readahead (KiB) of a mount whose image has a prefetch table: the kernel's
#: default. See ``kernel_readahead_kib``.
PREFETCH_KERNEL_READAHEAD_KIB = 128


#: The reader's first read-ahead window (bytes) on a mount with a prefetch table, see
#: ``reader_readahead``.
PREFETCH_READER_READAHEAD = 128 << 10


def has_table(bootstraps: list[Any]) -> bool:
    return any(len(bs.prefetch) for bs in bootstraps)


def reader_readahead(bootstraps: list[Any], configured: int) -> int:
    """The reader's first read-ahead window: ``configured``, but at most
    ``PREFETCH_READER_READAHEAD`` when some layer has a prefetch table.

    Why: the reader (fusefs.reader) takes a read that misses, or that looks sequential
    (within 8 MiB behind the furthest byte read), as a reason to fetch the next 8 MiB of
    the file. A program faulting pages of a mapped file at scattered offsets looks
    sequential most of the time, and the window then lands in the parts the prefetch
    leaves out on purpose: on node's start 5.9 MB of ICU data no read needed, fetched
    on demand next to the prefetch (measured, imgbench timeline). With a table the
    working set is on its way already; a small first window still doubles while a
    reader stays sequential (up to 32 MiB), so a long sequential read of a file outside
    the table still gets large requests after a few round trips.
    """
    return min(configured, PREFETCH_READER_READAHEAD) if has_table(bootstraps) and configured > 0 else configured


def kernel_readahead_kib(bootstraps: list[Any], configured: int) -> int:
    """The kernel readahead for a mount: ``configured``, but at most
    ``PREFETCH_KERNEL_READAHEAD_KIB`` when some layer has a prefetch table.

    Why: the kernel reads around every page fault of an mmap'ed file by its readahead
    (a 4 MiB window with the mount's usual setting). A program that maps big libraries
    and data files (node: libnode 47 MB, ICU data 31 MB) faults pages all over them, and
    each fault then asks the daemon for 4 MiB: on node's start that is 29 MB of
    compressed chunks instead of the 22 MB its pages need (measured with `imgconv record`,
    4 KiB readahead). Without a prefetch table the big window pays off (few round
    trips for sequential readers); with one, the working set is already on its way in
    a few large requests, and every byte the window adds goes on demand next to it.
    """
    return (min(configured, PREFETCH_KERNEL_READAHEAD_KIB) if has_table(bootstraps) and configured > 0
            else configured)


@dataclass(frozen=True)
class PrefetchStats:
    total: int
    done: int
    failed: int
    running: bool
    phase: str


def _chunk_ref(bs: Any, blob: str, index: int) -> ChunkRef:
    info = bs.chunk(index)
    blobs = bs.blobs
    owner = blobs[info.blob_index] if 0 <= info.blob_index < len(blobs) else blob
    return ChunkRef(owner, info)


def prefetch_list(bootstraps: list[Any], blobs: list[str]) -> list[ChunkRef]:
    """Chunks of every layer's prefetch table, in blob order, each chunk once."""
    refs = [_chunk_ref(bs, blob, i) for bs, blob in zip(bootstraps, blobs) for i in bs.prefetch]
    return _blob_order(refs)


def all_chunks(bootstraps: list[Any], blobs: list[str]) -> list[ChunkRef]:
    """Every chunk of every layer, in blob order, each chunk once."""
    refs = [_chunk_ref(bs, blob, i) for bs, blob in zip(bootstraps, blobs) for i in range(bs.chunk_count)]
    return _blob_order(refs)


def _blob_order(refs: Iterable[ChunkRef]) -> list[ChunkRef]:
    seen: set[bytes] = set()
    out = []
    for ref in sorted(refs, key=lambda r: (r.blob, r.info.comp_offset)):
        if ref.digest not in seen:
            seen.add(ref.digest)
            out.append(ref)
    return out


def front_regions(refs: list[ChunkRef], gap_bytes: int, max_request: int,
                  streaming: bool = True) -> tuple[list[ChunkRef], list[ChunkRef]]:
    """Split a prefetch list (blob order) into the first planned range of every blob
    (the front of its prefetch region: the files needed first) and the rest.

    Why: the fetcher starts a prefetch request only while no on-demand read waits, and
    its two prefetch slots take the requests of one call in no fixed order. Handing it
    the front ranges first, alone, gets one request per layer (the usual case: one or
    two layers have a table) going at once, at mount, before the container's first read;
    the rest (the ranges of partly read big files, laid out last) follows. Measured on
    node: when a later range won a slot first, the front range of the app layer waited
    behind the workload's reads for 0.9 s, and the reads fetched it on demand meanwhile.
    """
    by_blob: dict[str, list[ChunkRef]] = {}
    for ref in refs:
        by_blob.setdefault(ref.blob, []).append(ref)
    front: list[ChunkRef] = []
    for blob_refs in by_blob.values():
        plans = plan_prefetch(blob_refs, gap_bytes=gap_bytes, max_request=max_request, streaming=streaming)
        front += plans[0].chunks
    chosen = {ref.digest for ref in front}
    return front, [ref for ref in refs if ref.digest not in chosen]


def _batches(refs: list[ChunkRef], batch_bytes: int) -> Iterator[list[ChunkRef]]:
    batch: list[ChunkRef] = []
    size = 0
    for ref in refs:
        batch.append(ref)
        size += ref.info.comp_size
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class Prefetcher:
    """Runs the prefetch phases; ``statistics()`` feeds /metrics and /state."""

    def __init__(self, fetcher: Fetcher, bootstraps: list[Any], blobs: list[str], *,
                 all_after: bool = False, batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        self.fetcher = fetcher
        self.bootstraps = bootstraps
        self.blobs = blobs
        self.all_after = all_after
        self.batch_bytes = batch_bytes
        self.total = self.done = self.failed = 0
        self.running = False
        self.phase = "idle"
        self.finished = trio.Event()

    async def run(self) -> None:
        """Prefetch until done (or cancelled); never raises on fetch failures."""
        self.running = True
        try:
            await self._phase("prefetch-table", prefetch_list(self.bootstraps, self.blobs))
            if self.all_after:
                await self._phase("all", all_chunks(self.bootstraps, self.blobs))
            self.phase = "done"
        finally:
            self.running = False
            self.finished.set()

    async def _phase(self, name: str, refs: list[ChunkRef]) -> None:
        self.phase = name
        todo = [r for r in refs if not self.fetcher.store.contains(r.digest)]
        self.total += len(todo)
        log.info("prefetch %s: %d chunks (%d already cached)", name, len(todo), len(refs) - len(todo))
        failed: list[ChunkRef] = []
        if name == "prefetch-table" and todo:
            cap = max(getattr(self.fetcher, "stream_request", 0), self.fetcher.max_request)
            streaming = range_opener(self.fetcher.source) is not None
            front, todo = front_regions(todo, self.fetcher.gap_bytes, cap, streaming)
            failed += await self._fetch(front, one_batch=True)
        failed += await self._fetch(todo)
        if failed:      # counted again below: what arrived before the failure is done
            again = [r for r in failed if not self.fetcher.store.contains(r.digest)]
            self.failed -= len(failed)
            self.done += len(failed) - len(again)
            log.info("prefetch %s: retrying %d chunks of failed batches", name, len(again))
            await self._fetch(again)

    async def _fetch(self, refs: list[ChunkRef], one_batch: bool = False) -> list[ChunkRef]:
        """Fetch in batches (``one_batch``: all at once); return the chunks of the batches
        that failed."""
        failed: list[ChunkRef] = []
        for batch in ([refs] if one_batch and refs else _batches(refs, self.batch_bytes)):
            try:
                await self.fetcher.ensure(batch, prefetch=True)
                self.done += len(batch)
            except FetchError as exc:
                self.failed += len(batch)
                failed += batch
                log.warning("prefetch batch of %d chunks failed (reads will fetch on demand): %s",
                            len(batch), exc)
            except Exception:  # prefetch is optional, the mount must stay up
                self.failed += len(batch)
                failed += batch
                log.exception("prefetch batch of %d chunks failed", len(batch))
        return failed

    def statistics(self) -> PrefetchStats:
        return PrefetchStats(total=self.total, done=self.done, failed=self.failed,
                             running=self.running, phase=self.phase)
