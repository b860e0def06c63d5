"""File reads: map (inode, offset, size) to chunks, bring missing ones in, assemble bytes.

Policy (what to fetch when a read misses):

- a *small* file (<= ``small_file`` bytes, default 1 MiB: one chunk's worth) is fetched
  whole on its first read: programs read small files to the end, and its chunks are
  usually one range anyway;
- a large file gets read-ahead: a read that misses, or continues sequentially, also
  starts fetching the chunks of ``[end, end + window)`` in the background; the read
  itself waits only for its own chunks. The window starts at ``readahead`` (8 MiB) and
  doubles with every refill while the reader stays sequential, up to
  ``readahead_max`` (64 MiB), like the kernel's own read-ahead: a random reader of a
  large file pays one small window per miss, a long sequential reader keeps several
  large requests in flight ahead of it (pipelining: while it consumes range k, ranges
  k+1..k+n are on the wire). Read-ahead requests may be up to ``readahead_request``
  (16 MiB): docker-registry's CPU and latency are paid per request (139 requests per
  GiB instead of 261 with 8 MiB); the read's own chunks still go in small requests of
  their own;
- a read whose chunks are all cached costs no fetcher work at all; a sequential reader
  of cached chunks gets the next ones loaded into memory ahead of it (``LOAD_AHEAD``).

The store keeps chunks decompressed, so a hit is one ``pread`` per chunk touched.
Chunks are pinned in the store while a read assembles them (never evicted under it);
a chunk that disappears anyway (another daemon evicted it, or it was found corrupted
on its first use after a restart) is refetched once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from fusefs.fetcher import ChunkRef, Fetcher, FetchError
from fusefs.push import KernelPush
from fusefs.spans import SpanCache
from fusefs.store import ChunkStore

log = logging.getLogger(__name__)

DEFAULT_SMALL_FILE = 1 << 20
DEFAULT_READAHEAD = 8 << 20
DEFAULT_READAHEAD_MAX = 64 << 20
DEFAULT_READAHEAD_REQUEST = 16 << 20
#: How far behind the furthest byte read a read still counts as sequential: the kernel
#: keeps several read-ahead requests in flight, and the daemon may see them reordered.
SEQUENTIAL_SLACK = 8 << 20
#: A sequential reader of cached chunks gets the chunks of the next this many bytes loaded
#: into memory ahead of it (``ChunkStore.load``: O_DIRECT, trailer checked, in worker
#: threads, LOAD_BATCH bytes per job, several jobs in parallel) and handed over like
#: fetched ones (``fusefs.fresh``): the kernel's read-ahead works within one file, and
#: every 1 MiB chunk is a file of its own, so without this each chunk file would be a cold
#: synchronous read. (It replaced posix_fadvise WILLNEED + ``pread`` on the event loop:
#: the copy out of just-read page-cache pages cost 0.4-0.7 CPU-s/GiB on the benchmark VM,
#: and the main thread is the daemon's serial part.)
LOAD_AHEAD = 32 << 20
LOAD_BATCH = 2 << 20
LOAD_JOBS = 8
#: With a kernel push (``fusefs.push``, set up by the FUSE edge) a sequential reader of
#: cached chunks instead gets the next PUSH_AHEAD bytes pushed into the kernel's page
#: cache, dealt round robin to at most PUSH_JOBS jobs of >= PUSH_BATCH bytes (``_lanes``):
#: the kernel then sends no READ for them. Measured on the benchmark VM (1 GiB, warm from
#: disk, alternated with loading ahead): 915-1,385 MB/s (median 1,140) at 0.75-0.85 daemon
#: CPU-s/GiB against 790-1,230 (median 1,020) at 0.9-1.3. Dealing round robin instead of
#: contiguous batches and 128 MiB ahead instead of 64 (alternated, 4 rounds, each also
#: reading the chunk files raw with 8 threads): median 1,347 MB/s = 0.87x the raw read,
#: against 0.73x; 16 jobs or 1 MiB jobs were no better.
PUSH_AHEAD = 128 << 20
PUSH_BATCH = 4 << 20
PUSH_JOBS = 8
#: Reads at least this big copy from the store in a worker thread: the kernel keeps
#: several 1 MiB reads in flight, and chunk files not in the page cache then come off the
#: disk in parallel (measured on a loaded 2-core box: ~2x warm-from-disk throughput,
#: page-cached reads the same within noise); small reads stay inline,
#: where a thread hop would cost more than the copy.
#: Reads whose chunks are all in memory (just fetched, or loaded ahead of a sequential
#: reader) are served inline: the thread hop would cost more than it saves.
THREADED_READ = 256 << 10


def _lanes(parts: list[tuple[ChunkRef, Any]], jobs: int) -> list[list[tuple[ChunkRef, Any]]]:
    """Deal a run of segments to ``jobs`` push jobs chunk by chunk, round robin (the
    segments of one chunk stay together): the jobs then load chunks 0..jobs-1 at once,
    then the next ones, so the pushed part of the file grows from its start at the rate
    of all jobs together. In contiguous batches it grew at one job's rate: the reader
    caught up with the first batch while the others were far ahead, and the READs it
    then sent asked for chunks no push had started loading (read from disk twice)."""
    lanes: list[list[tuple[ChunkRef, Any]]] = [[] for _ in range(jobs)]
    k, last = -1, None
    for ref, seg in parts:
        if ref.info.digest != last:
            k, last = (k + 1) % jobs, ref.info.digest
        lanes[k].append((ref, seg))
    return [lane for lane in lanes if lane]


@dataclass(frozen=True)
class ReaderConfig:
    small_file: int = DEFAULT_SMALL_FILE
    readahead: int = DEFAULT_READAHEAD
    readahead_max: int = DEFAULT_READAHEAD_MAX
    readahead_request: int = DEFAULT_READAHEAD_REQUEST


#: glibc malloc thresholds for the daemon (see ``tune_allocator``).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 32 << 20
ARENA_MAX = 2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8      # mallopt parameters, <malloc.h>
_allocator_tuned = False


def tune_allocator() -> None:
    """Keep the daemon's big short-lived buffers (range bodies, 1 MiB chunks) off mmap.

    Every read serves and every fetch moves 1-16 MiB buffers. glibc hands out blocks
    from 128 KiB up with a fresh mmap and returns them with munmap on free, so each one
    is paid again in page faults: on the 2-vCPU VM the benchmarks run on, allocating a
    1 MiB buffer cost ~0.9 ms (~1 GB/s), a copy into a reused one ~0.2 ms. Serving
    those sizes from the heap, and trimming the heap only above 32 MiB of free space,
    cut the daemon's CPU per GiB read cold from the registry by a third (6.5 -> 4.2
    CPU-seconds, measured). Each malloc arena keeps up to TRIM_THRESHOLD, so the
    arenas are capped at ARENA_MAX (the fetch threads share them; their buffers are big,
    lock contention is negligible): RSS after a cold 512 MiB read ~105 MB instead of
    ~230 MB. No-op where glibc's ``mallopt`` is not available.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):
        log.debug("mallopt not available; default allocator thresholds")


class FileReader:
    """Reads file bytes of a (merged) bootstrap view through the fetcher and store."""

    def __init__(self, view: Any, fetcher: Fetcher, store: ChunkStore,
                 config: ReaderConfig = ReaderConfig()) -> None:
        tune_allocator()
        self._spans = SpanCache(view)
        self.fetcher = fetcher
        self.store = store
        self.config = config
        self._io_limiter = trio.CapacityLimiter(4)
        self._load_limiter = trio.CapacityLimiter(LOAD_JOBS)
        # pushes have slots of their own: a push may wait for a READ's page lock, and a
        # READ may wait for a load (fusefs.push, "Deadlock to avoid")
        self._push_limiter = trio.CapacityLimiter(PUSH_JOBS)
        # ino -> (furthest end read, current read-ahead window): sequential detection
        self._stream: dict[int, tuple[int, int]] = {}
        self._loaded: dict[int, int] = {}       # ino -> file offset chunks are loaded ahead up to
        self._loading: dict[bytes, trio.Event] = {}     # chunk digest -> set once its load ended
        self._pushed: dict[int, int] = {}       # ino -> file offset pushes are scheduled up to
        #: pushes cached chunks into the kernel page cache (set by the FUSE edge; None: off)
        self.push: KernelPush | None = None
        #: nursery.start_soon of the daemon, for background read-ahead (None: synchronous)
        self.spawn: Callable[..., None] | None = None

    @property
    def view(self) -> Any:
        return self._spans.view

    @view.setter
    def view(self, view: Any) -> None:
        """A new view (the takeover's kernel-numbered one) starts a new span cache: spans
        are keyed by the view's inode numbers."""
        self._spans = SpanCache(view)

    def _refs(self, ino: int, offset: int, length: int, file_size: int) -> list[tuple[ChunkRef, Any]]:
        return self._spans.refs(ino, offset, length, file_size)

    async def read(self, ino: int, offset: int, size: int, file_size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of inode ``ino`` (short at EOF).

        Raises ``FetchError`` (or ``ChunkCorrupted``) when a needed chunk cannot be
        fetched or verified: the caller answers EIO, and never gets wrong bytes.
        """
        if offset >= file_size or size <= 0:
            return b""
        size = min(size, file_size - offset)
        parts = self._refs(ino, offset, size, file_size)
        store, fresh = self.store, self.fetcher.fresh
        # pinned before fetching: a chunk a read waits for is never evicted under it
        with store.pinned([ref.info.digest for ref, _ in parts]):
            missing = [ref for ref, _ in parts if not store.contains(ref.info.digest)]
            if file_size <= self.config.small_file:
                if missing:
                    await self.fetcher.ensure([ref for ref, _ in self._refs(ino, 0, file_size, file_size)])
            else:
                sequential, window = self._track(ino, offset, size)
                if missing or sequential:
                    front = max(offset + size, self._stream[ino][0])
                    missing += self._read_ahead(ino, front, file_size, window, background=bool(missing),
                                               grow=sequential)
                if missing:
                    await self.fetcher.ensure(missing)
                elif sequential and self.spawn is not None:
                    if self.push is not None and self.push.enabled:
                        self._push_ahead(ino, self._stream[ino][0], file_size)
                    else:
                        self._load_ahead(ino, self._stream[ino][0], file_size)
            if self._loading:       # being loaded into memory: wait rather than read it twice
                for ref, _ in parts:
                    ev = self._loading.get(ref.info.digest)
                    if ev is not None:
                        await ev.wait()
            for attempt in (0, 1):
                # chunks in memory (just fetched or loaded) are copied inline; others may
                # need the disk: read off the event loop, in parallel
                inline = size < THREADED_READ or all(fresh.has(ref.info.digest) for ref, _ in parts)
                if inline:
                    out = self._assemble(parts, offset, size)
                else:
                    out = await trio.to_thread.run_sync(self._assemble, parts, offset, size, True,
                                                        limiter=self._io_limiter)
                if out is not None:
                    # prefetch hit accounting, once the read is served (a read that waited
                    # for a prefetch request in flight counts too)
                    self.fetcher.note_read(ref.info.digest for ref, _ in parts)
                    return out
                if attempt == 0:
                    await self.fetcher.ensure([ref for ref, _ in parts])
        raise FetchError(f"inode {ino}: chunks vanished from the cache twice while reading")

    def _track(self, ino: int, offset: int, size: int) -> tuple[bool, int]:
        """Sequential detection: (is this read sequential, the inode's read-ahead window)."""
        front, window = self._stream.get(ino, (None, self.config.readahead))
        # pushed pages cause no READ: the next one comes where the pushes ended
        sequential = front is not None and front - SEQUENTIAL_SLACK <= offset <= max(front, self._pushed.get(ino, 0))
        if sequential:
            self._stream[ino] = (max(front, offset + size), window)
        else:
            window = self.config.readahead
            self._stream[ino] = (offset + size, window)
            # a new run (a re-read after the kernel dropped its pages, a seek): load and
            # push again from where it reads now
            self._pushed.pop(ino, None)
            self._loaded.pop(ino, None)
        return sequential, window

    def _grow(self, ino: int) -> None:
        front, window = self._stream[ino]
        self._stream[ino] = (front, min(window * 2, max(self.config.readahead_max, self.config.readahead)))

    def _read_ahead(self, ino: int, start: int, file_size: int, window: int,
                    background: bool, grow: bool = False) -> list[ChunkRef]:
        """Chunks of ``[start, start + window)`` not stored or being fetched yet.

        With a spawner (a running daemon) they are fetched in the background, so the
        current read waits only for its own chunks and a sequential reader finds the
        next window in flight; without one they are returned for the caller to fetch.
        """
        if start >= file_size:
            return []
        end = min(start + window, file_size)
        # Refill only when less than half a window is covered ahead of the reader, so the
        # window is fetched in big requests (not one chunk per read as it slides); probing
        # one chunk keeps the common case (window covered) cheap.
        probe = self._refs(ino, min(start + window // 2, end - 1), 1, file_size)[0][0]
        # (pending first: a store miss costs a stat, to adopt other daemons' files)
        if self.fetcher.pending(probe.digest) or self.store.contains(probe.digest):
            return []
        ahead = [ref for ref, _ in self._refs(ino, start, end - start, file_size)
                 if not self.fetcher.pending(ref.digest) and not self.store.contains(ref.digest)]
        if not ahead:
            return []
        if self.spawn is None:
            return ahead if background else []
        if grow:        # a sequential reader's next refill asks for twice as much
            self._grow(ino)
        self.spawn(self._fetch_quietly, ahead)
        return []

    def _load_ahead(self, ino: int, front: int, file_size: int) -> None:
        """Load the next cached chunks of a sequential reader into memory (warm reads):
        their disk reads then overlap with serving the current ones."""
        start = max(self._loaded.get(ino, 0), front)
        end = min(front + LOAD_AHEAD, file_size)
        fresh = self.fetcher.fresh
        end = min(end, start + fresh.capacity - fresh.nbytes)     # what the hand-over can hold
        if end - start < min(LOAD_BATCH, file_size - start):
            return
        self._loaded[ino] = end
        batch: list[ChunkRef] = []
        size = 0
        for ref, _ in self._refs(ino, start, end - start, file_size):
            d = ref.info.digest
            if d in self._loading or fresh.has(d) or self.fetcher.pending(d):
                continue
            self._loading[d] = trio.Event()
            batch.append(ref)
            size += ref.info.uncomp_size
            if size >= LOAD_BATCH:
                self.spawn(self._load_quietly, batch)
                batch, size = [], 0
        if batch:
            self.spawn(self._load_quietly, batch)

    def _push_ahead(self, ino: int, front: int, file_size: int) -> None:
        """Push the next cached chunks of a sequential reader into the kernel page cache
        (``fusefs.push``): the kernel then reads them without asking us."""
        start = max(self._pushed.get(ino, 0), front)
        end = min(front + PUSH_AHEAD, file_size)
        if end - start < min(PUSH_AHEAD // 2, file_size - start):
            return
        todo: list[tuple[ChunkRef, Any]] = []
        stop = end
        fresh = self.fetcher.fresh
        for ref, seg in self._refs(ino, start, end - start, file_size):
            d = ref.info.digest
            # not cached: reads fetch it; just fetched (a cold read): the read waiting for
            # it takes it from memory, and a push would leave it there unread
            if self.fetcher.pending(d) or fresh.has(d) or not self.store.contains(d):
                stop = seg.file_offset
                break
            todo.append((ref, seg))
        jobs = max(1, min(PUSH_JOBS, sum(seg.length for _, seg in todo) // PUSH_BATCH))
        for lane in _lanes(todo, jobs):
            self.spawn(self._push_quietly, ino, lane, file_size)
        self._pushed[ino] = stop

    async def _push_quietly(self, ino: int, parts: list[tuple[ChunkRef, Any]], file_size: int) -> None:
        try:
            await trio.to_thread.run_sync(self.push.push, ino, parts, file_size, limiter=self._push_limiter)
        except Exception:  # read-ahead only: the kernel sends READs for what was not pushed
            log.debug("pushing chunks into the kernel failed", exc_info=True)

    async def _load_quietly(self, refs: list[ChunkRef]) -> None:
        try:
            await trio.to_thread.run_sync(self._load_sync, refs, limiter=self._load_limiter)
        except Exception:  # read-ahead only: the read itself will go to the store and report
            log.debug("loading chunks ahead failed", exc_info=True)
        finally:
            for ref in refs:
                ev = self._loading.pop(ref.info.digest, None)
                if ev is not None:
                    ev.set()

    def _load_sync(self, refs: list[ChunkRef]) -> None:
        """Worker thread: whole chunks from the store (trailer-checked) into the hand-over."""
        for ref in refs:
            data = self.store.load(ref.info.digest)
            if data is not None and len(data) == ref.info.uncomp_size:
                self.fetcher.fresh.add(ref.info.digest, data)

    async def _fetch_quietly(self, refs: list[ChunkRef]) -> None:
        try:
            # a few large requests in flight rather than one huge one: the chunks of a
            # request are stored only once its whole body is in
            total = sum(ref.info.comp_size for ref in refs)
            cap = max(self.fetcher.max_request, min(self.config.readahead_request, total // 4))
            await self.fetcher.ensure(refs, max_request=cap)
        except FetchError:
            pass    # logged by the fetcher; a read of these chunks will retry and report
        except Exception:  # a background task must not take the mount down
            log.exception("background read-ahead failed")

    def _chunk_bytes(self, ref: ChunkRef, seg: Any, in_thread: bool) -> bytes | None:
        """A segment's bytes: from a chunk just fetched (in memory), from one a push is
        loading (``KernelPush.borrow``; waited for only off the event loop), or from the store."""
        data = self.fetcher.fresh.take(ref.digest, seg.offset_in_chunk, seg.length)
        if data is None and self.push is not None:
            data = self.push.borrow(ref.digest, seg.offset_in_chunk, seg.length, wait=in_thread)
        if data is None:
            data = self.store.read(ref.digest, seg.offset_in_chunk, seg.length)
        return data

    def _assemble(self, parts: list[tuple[ChunkRef, Any]], offset: int, size: int,
                  in_thread: bool = False) -> bytes | None:
        """Copy each segment out of the store; None if a chunk is (no longer) there.

        Bytes of the range not covered by any segment (holes) read as zeros.
        """
        if len(parts) == 1:
            ref, seg = parts[0]
            if seg.file_offset == offset and seg.length == size:
                data = self._chunk_bytes(ref, seg, in_thread)
                return data if data is not None and len(data) == size else None
        buf = bytearray(size)
        for ref, seg in parts:
            data = self._chunk_bytes(ref, seg, in_thread)
            if data is None or len(data) != seg.length:
                return None
            pos = seg.file_offset - offset
            buf[pos:pos + seg.length] = data
        return bytes(buf)
