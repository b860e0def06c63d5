"""Chunks just fetched, kept in memory until the read that wanted them has copied them.

Why: a cold sequential read fetches chunks in read-ahead requests, verifies them in a
worker thread and writes them to the store; the FUSE read that needs one a moment later
would open the cache file and ``pread`` it back on the event loop thread, which is the
daemon's serial bottleneck on a fast link (measured: open + pread were ~20% of the main
thread's time in a cold 1 GiB read). Handing the verified bytes over directly skips
that.

Bounded and short-lived by design: a chunk is admitted only while the buffer holds less
than ``capacity`` bytes (entries older than ``max_age`` seconds make room first: a
random reader that never reaches a chunk's end must not pin memory), and it is dropped
as soon as a read has copied its last byte. The bytes are the verified chunk (sha256
checked before ``add``), immutable, so serving them is exactly as safe as serving the
cache file. Thread-safe: ``add`` runs in fetch worker threads, the rest on the event
loop.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

DEFAULT_CAPACITY = 64 << 20
DEFAULT_MAX_AGE = 2.0


class FreshChunks:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self.served = 0         # reads (parts) served from here: for tests and /state

    def add(self, digest: bytes, data: bytes) -> None:
        """Offer a verified chunk; kept only if there is room (see module doc)."""
        now = time.monotonic()
        with self._lock:
            while self._items and self._bytes + len(data) > self.capacity:
                old, (t, d) = next(iter(self._items.items()))
                if now - t < self.max_age:
                    return
                del self._items[old]
                self._bytes -= len(d)
            if digest not in self._items and self._bytes + len(data) <= self.capacity:
                self._items[digest] = (now, data)
                self._bytes += len(data)

    def has(self, digest: bytes) -> bool:
        """Is the chunk held here now (a read of it would need no disk)?"""
        return digest in self._items

    def take(self, digest: bytes, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of a fresh chunk, or None. The chunk is dropped
        when this read reaches its end (a sequential reader is done with it)."""
        with self._lock:
            item = self._items.get(digest)
            if item is None:
                return None
            data = item[1]
            if offset + length >= len(data):
                del self._items[digest]
                self._bytes -= len(data)
            self.served += 1
        if offset == 0 and length == len(data):
            return data
        return data[offset:offset + length]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
