"""File reads: map (inode, offset, size) to chunks, bring missing ones in, assemble bytes.

Policy (what to fetch when a read misses):

- a *small* file (<= ``small_file`` bytes, default 1 MiB: one chunk's worth) is fetched
  whole on its first read: programs read small files to the end, and its chunks are
  usually one range anyway;
- a large file gets read-ahead: a read that misses, or continues sequentially, also
  starts fetching the chunks of ``[end, end + readahead)`` (default 8 MiB) in the
  background; the read itself waits only for its own chunks. A sequential reader thus
  keeps a window of requests in flight ahead of it (pipelining) while a random reader
  of a large file pays one window per miss, not the whole file;
- a read whose chunks are all cached costs no fetcher work at all.

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
from fusefs.store import ChunkStore

log = logging.getLogger(__name__)

DEFAULT_SMALL_FILE = 1 << 20
DEFAULT_READAHEAD = 8 << 20
#: Reads at least this big copy from the store in a worker thread: the kernel keeps
#: several 1 MiB reads in flight, and chunk files not in the page cache then come off the
#: disk in parallel (measured on a loaded 2-core box: ~2x warm-from-disk throughput,
#: page-cached reads the same within noise); small reads stay inline,
#: where a thread hop would cost more than the copy.
THREADED_READ = 256 << 10


@dataclass(frozen=True)
class ReaderConfig:
    small_file: int = DEFAULT_SMALL_FILE
    readahead: int = DEFAULT_READAHEAD


class FileReader:
    """Reads file bytes of a (merged) bootstrap view through the fetcher and store."""

    def __init__(self, view: Any, fetcher: Fetcher, store: ChunkStore,
                 config: ReaderConfig = ReaderConfig()) -> None:
        self.view = view
        self.fetcher = fetcher
        self.store = store
        self.config = config
        self._io_limiter = trio.CapacityLimiter(4)
        self._last_end: dict[int, int] = {}     # ino -> end of its last read (sequential detection)
        #: nursery.start_soon of the daemon, for background read-ahead (None: synchronous)
        self.spawn: Callable[..., None] | None = None

    def _refs(self, ino: int, offset: int, length: int) -> list[tuple[ChunkRef, Any]]:
        return [(ChunkRef(blob, info), seg) for blob, seg, info in self.view.segments(ino, offset, length)]

    async def read(self, ino: int, offset: int, size: int, file_size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of inode ``ino`` (short at EOF).

        Raises ``FetchError`` (or ``ChunkCorrupted``) when a needed chunk cannot be
        fetched or verified: the caller answers EIO, and never gets wrong bytes.
        """
        if offset >= file_size or size <= 0:
            return b""
        size = min(size, file_size - offset)
        parts = self._refs(ino, offset, size)
        # pinned before fetching: a chunk a read waits for is never evicted under it
        with self.store.pinned({ref.digest for ref, _ in parts}):
            missing = [ref for ref, _ in parts if not self.store.contains(ref.digest)]
            if file_size <= self.config.small_file:
                if missing:
                    await self.fetcher.ensure([ref for ref, _ in self._refs(ino, 0, file_size)])
            else:
                sequential = self._last_end.get(ino) == offset
                self._last_end[ino] = offset + size
                if missing or sequential:
                    missing += self._read_ahead(ino, offset + size, file_size, background=bool(missing))
                if missing:
                    await self.fetcher.ensure(missing)
            for attempt in (0, 1):
                if size >= THREADED_READ:     # disk reads in parallel, off the event loop
                    out = await trio.to_thread.run_sync(self._assemble, parts, offset, size,
                                                        limiter=self._io_limiter)
                else:
                    out = self._assemble(parts, offset, size)
                if out is not None:
                    # prefetch hit accounting, once the read is served (a read that waited
                    # for a prefetch request in flight counts too)
                    self.fetcher.note_read(ref.digest for ref, _ in parts)
                    return out
                if attempt == 0:
                    await self.fetcher.ensure([ref for ref, _ in parts])
        raise FetchError(f"inode {ino}: chunks vanished from the cache twice while reading")

    def _read_ahead(self, ino: int, start: int, file_size: int, background: bool) -> list[ChunkRef]:
        """Chunks of ``[start, start + readahead)`` not stored or being fetched yet.

        With a spawner (a running daemon) they are fetched in the background, so the
        current read waits only for its own chunks and a sequential reader finds the
        next window in flight; without one they are returned for the caller to fetch.
        """
        if start >= file_size:
            return []
        end = min(start + self.config.readahead, file_size)
        # Refill only when less than half a window is covered ahead of the reader, so the
        # window is fetched in big requests (not one chunk per read as it slides); probing
        # one chunk keeps the common case (window covered) cheap.
        probe = self._refs(ino, min(start + self.config.readahead // 2, end - 1), 1)[0][0]
        if self.store.contains(probe.digest) or self.fetcher.pending(probe.digest):
            return []
        ahead = [ref for ref, _ in self._refs(ino, start, end - start)
                 if not self.store.contains(ref.digest) and not self.fetcher.pending(ref.digest)]
        if not ahead:
            return []
        if self.spawn is None:
            return ahead if background else []
        self.spawn(self._fetch_quietly, ahead)
        return []

    async def _fetch_quietly(self, refs: list[ChunkRef]) -> None:
        try:
            await self.fetcher.ensure(refs)
        except FetchError:
            pass    # logged by the fetcher; a read of these chunks will retry and report
        except Exception:  # a background task must not take the mount down
            log.exception("background read-ahead failed")

    def _assemble(self, parts: list[tuple[ChunkRef, Any]], offset: int, size: int) -> bytes | None:
        """Copy each segment out of the store; None if a chunk is (no longer) there.

        Bytes of the range not covered by any segment (holes) read as zeros.
        """
        if len(parts) == 1:
            ref, seg = parts[0]
            if seg.file_offset == offset and seg.length == size:
                data = self.store.read(ref.digest, seg.offset_in_chunk, seg.length)
                return data if data is not None and len(data) == size else None
        buf = bytearray(size)
        for ref, seg in parts:
            data = self.store.read(ref.digest, seg.offset_in_chunk, seg.length)
            if data is None or len(data) != seg.length:
                return None
            pos = seg.file_offset - offset
            buf[pos:pos + seg.length] = data
        return bytes(buf)
