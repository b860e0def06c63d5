"""Streamed prefetch: one big prefetch range read as it arrives, each chunk used at once.

A prefetch range of at least ``STREAM_MIN`` bytes is one request of up to
``DEFAULT_STREAM_REQUEST`` bytes whose body is read in ``STREAM_PIECE`` steps (the
source's ``open_range``); each chunk is verified, stored and its waiters woken as soon
as its own compressed bytes are in, so a read of the range's first chunk waits for that
chunk, not for the whole range (a 16 MB range at 100 Mbit/s is 1.3 s).

``Stream.position`` is what on-demand reads compare their chunk's offset to: further
than a round trip's bytes (``gap_bytes``) ahead of it, a read fetches the chunk itself
("steals" it, ``fusefs.fetcher``). The stream then skips decoding a chunk already
served; when the next run of such chunks is longer than ``gap_bytes`` the body is
dropped and the range reopened after them instead of receiving them twice, and when
only such chunks are left the stream stops. A stream that breaks releases its
unreceived chunks with the host's ``StreamCut`` error, and the on-demand reads waiting
for them fetch them themselves.

The chunks' flights (singleflight entries), verification, the store and the counters
belong to the fetcher; this module reaches them only through ``StreamHost``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

#: Prefetch ranges at least this big are streamed (chunks usable as they arrive).
STREAM_MIN = 1 << 20
#: Upper bound of one streamed prefetch range. Streaming removes the reason for the 4 MiB
#: cap (no read waits for a whole body), so a contiguous working set is one request.
DEFAULT_STREAM_REQUEST = 32 << 20
#: Bytes read from a streamed body per step: the granularity at which the stream's
#: position (what on-demand reads compare their chunk's offset to) advances.
STREAM_PIECE = 64 << 10


class RangeBodyLike(Protocol):
    """An open range response (``registry.rangefetch.RangeBody``): exact reads or raise."""

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


def range_opener(source: Any) -> Callable[[str, int, int], RangeBodyLike] | None:
    """The source's ``open_range(blob, start, end)`` if it can stream a range, else None
    (local sources such as an OCI layout dir have no round trips to hide: read whole)."""
    own = getattr(source, "open_range", None)
    return own if callable(own) else None


@dataclass
class Stream:
    """A streamed prefetch range; ``position`` (absolute blob offset of the bytes received
    so far) is advanced by the worker thread and read by the event loop."""

    blob: str
    start: int
    end: int
    position: int

    def far_behind(self, offset: int, gap_bytes: int) -> bool:
        """Is the stream more than ``gap_bytes`` (a round trip's worth) before ``offset``?"""
        return offset - self.position > gap_bytes


class FlightLike(Protocol):
    """The fetcher's singleflight entry of one chunk, as a stream uses it."""

    done: trio.Event
    error: Exception | None
    waiters: int
    stream: Stream | None


class StreamHost(Protocol):
    """What a stream needs from the fetcher that owns its chunks (``fusefs.fetcher``)."""

    gap_bytes: int

    def stream_open(self, blob: str, start: int, end: int) -> RangeBodyLike:
        """Worker thread: open (or reopen) a streamed range; one more prefetch request."""
        ...

    def stream_received(self, n: int) -> None:
        """Worker thread: ``n`` more body bytes arrived."""
        ...

    def stream_deliver(self, blob: str, ref: Any, frame: memoryview, flight: FlightLike) -> Exception | None:
        """Worker thread: verify and store one chunk; the error for its flight, or None."""
        ...

    def settle(self, digest: bytes, flight: Any, error: Exception | None) -> None:
        """Event loop: resolve one flight and wake its waiters."""
        ...

    def stream_broke(self, st: Stream, exc: Exception | None) -> Exception:
        """Event loop: the error for the chunks a stream did not bring (``exc`` None:
        cancelled)."""
        ...

    def stream_finished(self, blob: str, got: int) -> None:
        """Worker thread: the stream is over after ``got`` body bytes."""
        ...


def served(fl: FlightLike) -> bool:
    """Taken over by a read and already served: the stream need not bring it."""
    return fl.done.is_set() and fl.error is None


async def run_stream(host: StreamHost, plan: Any, flights: dict[bytes, Any]) -> None:
    """Stream one prefetch range (a ``fetcher.RangeRequest``); each chunk's flight is
    resolved as it arrives (by the worker thread, through the event loop); never raises
    except on cancellation."""
    st = Stream(plan.blob, plan.start, plan.end, plan.start)
    mine = {ref.digest: flights[ref.digest] for ref in plan.chunks}
    for fl in mine.values():
        fl.stream = st
    error: Exception | None = None
    try:
        await trio.to_thread.run_sync(_stream_sync, host, plan, st, mine)
    except trio.Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken stream: the rest is fetched on demand
        error = host.stream_broke(st, exc)
    finally:
        for ref in plan.chunks:
            fl = mine[ref.digest]
            if not fl.done.is_set():
                if error is None:
                    error = host.stream_broke(st, None)
                host.settle(ref.digest, fl, error)


class StreamEnded(Exception):
    """The body ended before the range did."""


def _stream_sync(host: StreamHost, plan: Any, st: Stream, flights: dict[bytes, FlightLike]) -> None:
    """Worker thread: read the range piece by piece; verify, store and announce each chunk
    as soon as its compressed bytes are complete; reopen past long runs of served chunks."""
    refs = sorted(plan.chunks, key=lambda r: r.info.comp_offset)
    got = 0
    body: RangeBodyLike | None = None

    def take(n: int) -> bytes:
        nonlocal got
        assert body is not None
        parts = []
        while n > 0:
            trio.from_thread.check_cancelled()      # unmount: stop reading
            piece = body.read(min(STREAM_PIECE, n))
            if not piece:
                raise StreamEnded(f"stream of {plan.blob} ended at {st.position}")
            parts.append(piece)
            n -= len(piece)
            got += len(piece)
            host.stream_received(len(piece))
            st.position += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    try:
        i = 0
        while i < len(refs):
            j = i
            while j < len(refs) and served(flights[refs[j].digest]):
                j += 1
            if j == len(refs):
                break           # the rest is served already
            skip_to = refs[j].info.comp_offset
            # reopen past more than a round trip's worth of bytes we need not receive:
            # chunks reads took over, or a hole of the prefetch table (fusefs.plan.plan_prefetch)
            if body is None or skip_to - st.position > host.gap_bytes:
                if body is not None:
                    body.close()
                body = host.stream_open(plan.blob, skip_to, plan.end)
                st.position = skip_to
                i = j
            ref = refs[i]
            i += 1
            if ref.info.comp_offset > st.position:
                take(ref.info.comp_offset - st.position)        # a bridged gap
            frame = take(ref.info.comp_size)
            fl = flights[ref.digest]
            if served(fl):
                continue        # taken over by a read and already served
            err = host.stream_deliver(plan.blob, ref, memoryview(frame), fl)
            trio.from_thread.run_sync(host.settle, ref.digest, fl, err)
    finally:
        if body is not None:
            body.close()
        host.stream_finished(plan.blob, got)
