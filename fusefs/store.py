"""Node-local store of decompressed chunks, keyed by their sha256 content digest.

Why decompressed and content-keyed: a read of 4 KiB from a 1 MiB chunk then costs one
``pread`` and no zstd work, and two images (two mounts, two daemons) that share a chunk
share one file under the same cache dir.

Layout::

    CACHE_DIR/chunks/ab/abcdef...   one file per chunk, name = hex sha256 of its bytes;
                                    content = the bytes + 16-byte xxh3-128 of them
    CACHE_DIR/tmp/                  writes in progress (renamed into place: atomic)

The index is a directory scan into an in-memory dict (digest -> size), ordered by
mtime for LRU: a cache of ~100k chunks loads in well under a second and cannot
disagree with the files, which are the truth (no separate index to corrupt). Entries
found on disk are *unverified*: the first use after a (re)start checks the file's
trailer, and a corrupted one is deleted and reported as a miss so the caller refetches
it. We do not fsync per chunk: a torn file after a crash is exactly such a corrupted
entry. The trailer is xxh3-128, not sha256: the bytes were verified against their sha256
when fetched, and this check is about local rot and torn writes, not adversaries
(DESIGN.md: xxhash for local cache entry checksums); at >10 GB/s it keeps the first read
after a restart at disk speed, where sha256 would cap it at ~0.5 GB/s per core.
``imgfs cache verify`` does the full sha256 check.

Several daemons may share one cache dir. Each keeps its own index; a file another
daemon evicted is a miss here (``FileNotFoundError`` -> drop from index), and a file
another daemon wrote is adopted on first lookup (``os.stat`` on index miss).

Thread-safety: ``put`` runs in fetch worker threads and ``read`` in the trio thread,
so the index is guarded by one lock. Files are never modified in place.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import xxhash

from fusefs.chunkio import ChunkLoader, ChunkWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

TRAILER = 16   # xxh3-128 of the chunk bytes, appended to each cache file


def _trailer(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def _split(raw: bytes) -> bytes | None:
    """The chunk bytes of a cache file, or None if the trailer does not match (rot, torn)."""
    if len(raw) < TRAILER:
        return None
    body = memoryview(raw)[:-TRAILER]
    return bytes(body) if _trailer(body) == raw[-TRAILER:] else None


def _checked_body(raw: bytes) -> memoryview | None:
    """``_split`` without the copy: a view of the chunk bytes of a cache file, or None."""
    if len(raw) < TRAILER:
        return None
    body = memoryview(raw)[:-TRAILER]
    return body if _trailer(body) == raw[-TRAILER:] else None


@dataclass(frozen=True)
class StoreStats:
    """A cheap snapshot of the store's counters (see ``ChunkStore.statistics``)."""

    entries: int
    bytes: int
    capacity: int | None
    hits: int
    misses: int
    evictions: int
    corrupt: int


class ChunkStore:
    """Content-addressed, size-capped, LRU chunk cache on local disk.

    Invariants: ``self._index`` maps hex digest -> size for files believed present, in
    LRU order (oldest first); ``self._bytes`` is the sum of its sizes; a digest in
    ``self._pins`` is never evicted (a read is waiting on it).
    """

    def __init__(self, root: str | os.PathLike[str], capacity: int | None = None) -> None:
        self.root = Path(root)
        self.capacity = capacity
        self._chunks = self.root / "chunks"
        self._tmp = self.root / "tmp"
        self._chunks_str = str(self._chunks)
        self._subdirs: set[str] = set()
        self._chunks.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._writer = ChunkWriter()
        self._loader = ChunkLoader()
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()
        self._verified: set[str] = set()
        self._pins: dict[str, int] = {}
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._corrupt = 0
        self._load()
        self._clean_tmp()

    # -- loading -------------------------------------------------------------------------

    def _load(self) -> None:
        found: list[tuple[float, str, int]] = []
        for sub in os.scandir(self._chunks):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for ent in os.scandir(sub.path):
                if len(ent.name) != 64 or not ent.is_file(follow_symlinks=False):
                    continue
                try:
                    st = ent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((st.st_mtime, ent.name, st.st_size))
        found.sort()
        for _mtime, name, size in found:
            self._index[name] = size
            self._bytes += size

    def _clean_tmp(self) -> None:
        """Remove temp files of crashed writers; another live daemon may be writing right
        now, so only files older than an hour count as leftovers."""
        now = time.time()
        for ent in os.scandir(self._tmp):
            try:
                if now - ent.stat().st_mtime > 3600:
                    os.unlink(ent.path)
            except OSError:
                pass

    # -- paths ---------------------------------------------------------------------------

    def path(self, digest: bytes | str) -> Path:
        h = digest if isinstance(digest, str) else digest.hex()
        return self._chunks / h[:2] / h

    def _pathstr(self, h: str) -> str:
        """``path`` as a str, without pathlib (on the read path of every request)."""
        return f"{self._chunks_str}/{h[:2]}/{h}"

    # -- queries -------------------------------------------------------------------------

    def contains(self, digest: bytes) -> bool:
        """True when the chunk is (believed to be) on disk; adopts files other daemons wrote."""
        h = digest.hex()
        with self._lock:
            if h in self._index:
                return True
        try:
            size = os.stat(self._pathstr(h)).st_size
        except FileNotFoundError:
            return False
        with self._lock:
            if h not in self._index:
                self._index[h] = size
                self._bytes += size
        return True

    def read(self, digest: bytes, offset: int = 0,
             length: int | None = None) -> bytes | memoryview | None:
        """Bytes ``[offset, offset+length)`` of the chunk, or None on a miss.

        A miss is: not present, removed by another daemon, or corrupted (detected on the
        first use after a restart; the file is then deleted so a refetch replaces it).
        The first use reads the whole file once (one copy), checks its trailer and hands
        out a zero-copy view of it; later uses ``pread`` just the wanted bytes.
        """
        h = digest.hex()
        with self._lock:
            known = h in self._index
            verified = h in self._verified
        if not known and not self.contains(digest):
            self._count_miss()
            return None
        try:
            fd = os.open(self._pathstr(h), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return self._vanished(h)
        try:
            if verified:
                if length is None:
                    length = os.fstat(fd).st_size - TRAILER - offset
                data: bytes | memoryview | None = os.pread(fd, length, offset)
                ok = len(data) == length
            else:
                data = _checked_body(os.pread(fd, os.fstat(fd).st_size, 0))
                ok = data is not None
                if ok:
                    end = len(data) if length is None else offset + length
                    data = data[offset:end]
        finally:
            os.close(fd)
        if not ok:      # torn, rotten, or truncated under us: delete, refetch
            return self._corrupted(h)
        self._hit(h)
        return data

    def load(self, digest: bytes) -> bytes | None:
        """The whole chunk, read around the page cache, trailer checked; None on a miss."""
        return self.load_with(digest, bytes)

    def load_with(self, digest: bytes, use: Callable[[memoryview], T]) -> T | None:
        """``use(the whole chunk)``, read around the page cache (O_DIRECT) into the calling
        thread's buffer and trailer checked; None on a miss (absent, evicted by another
        daemon, or corrupted: deleted so a refetch replaces it). The view is valid only
        during ``use`` (the buffer is reused): pushing it to the kernel needs no copy."""
        h = digest.hex()
        with self._lock:
            known = h in self._index
        if not known and not self.contains(digest):
            self._count_miss()
            return None
        box: list[T] = []

        def checked(content: memoryview) -> bool:
            body = _checked_body(content)
            if body is None:
                return False
            with body:
                box.append(use(body))
            return True

        try:
            ok = self._loader.load(self._pathstr(h), checked)
        except FileNotFoundError:
            return self._vanished(h)
        if not ok:
            return self._corrupted(h)
        self._hit(h)
        return box[0]

    def _count_miss(self) -> None:
        with self._lock:
            self._misses += 1

    def _vanished(self, h: str) -> None:
        """A file the index had is gone (another daemon evicted it): a miss."""
        self._drop(h, unlink=False)
        self._count_miss()

    def _corrupted(self, h: str) -> None:
        """Torn, rotten or truncated: deleted so that a refetch replaces it; a miss."""
        log.error("cache entry %s is corrupted (checksum mismatch or truncated): deleted, "
                  "will refetch", h)
        self._drop(h, unlink=True, corrupt=True)
        self._count_miss()

    def _hit(self, h: str) -> None:
        """A use that found the entry whole: verified from now on, most recently used."""
        with self._lock:
            self._verified.add(h)
            if h in self._index:
                self._index.move_to_end(h)
            self._hits += 1

    # -- writing -------------------------------------------------------------------------

    def put(self, digest: bytes, data: bytes) -> None:
        """Store a chunk the caller has already verified (``sha256(data) == digest``).

        Atomic: written to a temp file and renamed, so readers (also in other daemons)
        see the whole chunk or nothing. Evicts least recently used entries beyond the cap.
        """
        h = digest.hex()
        p = self._pathstr(h)
        if h[:2] not in self._subdirs:      # 256 of them: one mkdir each per daemon, not per put
            os.makedirs(p[:-len(h) - 1], exist_ok=True)
            self._subdirs.add(h[:2])
        tmp = f"{self._tmp}/{h}.{os.getpid()}.{threading.get_ident()}"
        trailer = _trailer(data)
        try:
            self._writer.write(tmp, data, trailer)
            os.replace(tmp, p)
        except FileNotFoundError:      # a dir removed under us (cache cleared by hand): once more
            os.makedirs(self._tmp, exist_ok=True)
            os.makedirs(p[:-len(h) - 1], exist_ok=True)
            self._writer.write(tmp, data, trailer)
            os.replace(tmp, p)
        size = len(data) + TRAILER
        with self._lock:
            if h in self._index:
                self._bytes -= self._index[h]
            self._index[h] = size
            self._index.move_to_end(h)
            self._bytes += size
            self._verified.add(h)
        self._evict(keep=h)

    def _evict(self, keep: str) -> None:
        if self.capacity is None:
            return
        victims: list[str] = []
        with self._lock:
            if self._bytes <= self.capacity:
                return
            for h, size in self._index.items():
                if self._bytes <= self.capacity:
                    break
                if h == keep or self._pins.get(h):
                    continue
                victims.append(h)
                self._bytes -= size
            for h in victims:
                del self._index[h]
                self._verified.discard(h)
                self._evictions += 1
        for h in victims:
            try:
                os.unlink(self.path(h))
            except FileNotFoundError:
                pass

    def _drop(self, h: str, *, unlink: bool, corrupt: bool = False) -> None:
        with self._lock:
            size = self._index.pop(h, None)
            if size is not None:
                self._bytes -= size
            self._verified.discard(h)
            if corrupt:
                self._corrupt += 1
        if unlink:
            try:
                os.unlink(self.path(h))
            except FileNotFoundError:
                pass

    # -- pinning -------------------------------------------------------------------------

    @contextmanager
    def pinned(self, digests: Iterable[bytes]) -> Iterator[None]:
        """Protect chunks from eviction while a read assembles them."""
        hs = [d.hex() for d in digests]
        with self._lock:
            for h in hs:
                self._pins[h] = self._pins.get(h, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for h in hs:
                    n = self._pins[h] - 1
                    if n:
                        self._pins[h] = n
                    else:
                        del self._pins[h]

    # -- maintenance ---------------------------------------------------------------------

    def verify_all(self) -> tuple[int, list[str]]:
        """Re-hash every entry; delete and return the corrupted ones (``imgfs cache verify``)."""
        with self._lock:
            names = list(self._index)
        bad: list[str] = []
        for h in names:
            try:
                data = self.path(h).read_bytes()
            except FileNotFoundError:
                self._drop(h, unlink=False)
                continue
            body = _split(data)
            if body is None or hashlib.sha256(body).hexdigest() != h:
                bad.append(h)
                self._drop(h, unlink=True, corrupt=True)
            else:
                with self._lock:
                    self._verified.add(h)
        return len(names), bad

    def usage(self, images: dict[str, dict[bytes, int]]) -> dict:
        """Logical vs stored bytes of the chunks ``images`` (name -> chunk digest -> decoded size)
        have in this store: *logical* counts a chunk once per image holding it (what per-image
        caches would keep), *stored* counts each cached file once (what this content-addressed
        store keeps). Both in decoded chunk bytes (the 16-byte trailers not counted). Their
        difference is what sharing saved on this node."""
        per_image = {}
        union: dict[str, int] = {}
        with self._lock:
            index = dict(self._index)
        for name, chunks in images.items():
            present = [(d.hex(), size) for d, size in chunks.items() if d.hex() in index]
            per_image[name] = {"chunks": len(chunks), "cached_chunks": len(present),
                               "cached_bytes": sum(size for _, size in present)}
            for h, _ in present:
                union[h] = index[h] - TRAILER
        logical = sum(x["cached_bytes"] for x in per_image.values())
        stored = sum(union.values())
        return {"images": per_image, "logical_bytes": logical, "stored_bytes": stored,
                "stored_chunks": len(union), "saved_bytes": logical - stored}

    def statistics(self) -> StoreStats:
        with self._lock:
            return StoreStats(entries=len(self._index), bytes=self._bytes, capacity=self.capacity,
                              hits=self._hits, misses=self._misses, evictions=self._evictions,
                              corrupt=self._corrupt)
