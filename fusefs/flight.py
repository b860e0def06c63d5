"""The fetcher's vocabulary: its errors, the protocols it runs on, a chunk in flight.

Split from ``fusefs.fetcher`` (which re-exports the public names) to keep that module
about the fetching itself. ``_Flight`` is the singleflight entry: the chunk's waiters
block on ``done``; ``fusefs.stream`` resolves the flights of a streamed range.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from fusefs.plan import ChunkRef
from fusefs.stream import Stream


class FetchError(Exception):
    """A chunk could not be fetched (registry failure after retries). EIO for that read."""


class ChunkCorrupted(FetchError):
    """A fetched chunk failed verification. EIO; never stored, never served."""


class StreamCut(FetchError):
    """A prefetch stream broke before this chunk arrived; a reader fetches it on demand."""


class BlobSource(Protocol):
    """Where blobs come from (a registry repository or an OCI layout dir). Thread-safe."""

    def get_range(self, blob: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the blob; raises on failure after retries."""
        ...

    def get_ranges(self, blob: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each ``[start, end)``, in one request where the source can."""
        ...


class ChunkStoreLike(Protocol):
    def contains(self, digest: bytes) -> bool: ...
    def put(self, digest: bytes, data: bytes) -> None: ...


def _unique(refs: Iterable[ChunkRef]) -> list[ChunkRef]:
    seen: set[bytes] = set()
    out = []
    for ref in refs:
        if ref.digest not in seen:
            seen.add(ref.digest)
            out.append(ref)
    return out


def _raise_first(errors: list[FetchError]) -> None:
    """Raise the first error (a verification failure first), if any."""
    if errors:
        corrupt = [e for e in errors if isinstance(e, ChunkCorrupted)]
        raise (corrupt or errors)[0]


async def _wait_all(flights: list[_Flight]) -> None:
    """Wait for the flights; raise the first error (a verification failure first)."""
    for fl in flights:
        await fl.wait()
    _raise_first([fl.error for fl in flights if fl.error is not None])


@dataclass
class _Flight:
    """A chunk being fetched; waiters block on ``done``; ``error`` is set on failure.

    ``stream``: the streamed prefetch range bringing it (None: a whole-body request).
    ``replaces``: the stream flight an on-demand read took this chunk over from; it is
    released too when this one succeeds (its waiters need not wait for the stream).
    """

    done: trio.Event = field(default_factory=trio.Event)
    error: FetchError | None = None
    prefetch: bool = False
    stream: Stream | None = None
    replaces: _Flight | None = None
    waiters: int = 0

    async def wait(self) -> None:
        self.waiters += 1
        try:
            await self.done.wait()
        finally:
            self.waiters -= 1


@dataclass(frozen=True)
class FetcherStats:
    requests: int
    bytes: int
    chunks: int
    prefetch_requests: int
    prefetch_bytes: int
    errors: int
    corrupt: int
    inflight: int
    prefetch_chunks: int = 0       # chunks stored by prefetch requests
    prefetch_hits: int = 0         # ... of which a read asked for later
    prefetch_hit_bytes: int = 0    # compressed bytes of those hits
    prefetch_streams: int = 0      # prefetch requests streamed (chunks used as they arrived)
    stream_steals: int = 0         # chunks of a stream fetched on demand (stream too far behind)
    stream_cuts: int = 0           # streams that broke mid-body

    @property
    def prefetch_wasted_bytes(self) -> int:
        """Prefetched bytes no read has needed (yet): gaps bridged included."""
        return self.prefetch_bytes - self.prefetch_hit_bytes
