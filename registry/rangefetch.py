"""Reading byte ranges of blobs: multi-range requests with fallbacks, retried on broken bodies.

Strategy: coalesce the wanted ranges, ask for up to MAX_RANGES_PER_REQUEST spans
in one multi-range request, and accept whatever a server makes of it
(multipart/byteranges, one coalesced part, or 200 and the whole body). When a
server refuses multi-range (400/416/501) or answers only one span, fall back to
one covering range and remember not to ask that registry for multi-range again
(one round trip saved per read). A body that breaks mid-transfer is requested
again with backoff; the transport already retried the request itself.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

import requests

from registry import ranges as R
from registry.blobio import READ_ERRORS
from registry.errors import RangeError, RegistryError
from registry.transport import Transport

log = logging.getLogger(__name__)

MAX_RANGES_PER_REQUEST = 64        # keeps the Range header far below common 8 KiB header limits
READ_CHUNK = 4 << 20          # bodies of unknown length (multipart) are read in steps of this

Part = tuple[int, int, bytes]


class RangeReader:
    """Range reads for one client; thread-safe (the learnt multi-range flag is shared)."""

    def __init__(self, transport: Transport, get: Callable[..., requests.Response],
                 count_bytes: Callable[[int], None]):
        self._t = transport
        self._get = get                    # (repo, digest, headers) -> streaming blob response
        self._count_bytes = count_bytes
        self._lock = threading.Lock()
        self._multirange_ok = True
        self._range_requests = self._fallbacks = 0

    def counters(self) -> tuple[int, int]:
        """(range requests sent, multi-range reads served by a covering range instead)."""
        with self._lock:
            return self._range_requests, self._fallbacks

    def _ctx(self, repo: str, digest: str) -> dict:
        return {"registry": self._t.registry, "repository": repo, "digest": digest}

    def get_ranges(self, repo: str, digest: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        R.check_ranges(ranges)
        if not ranges:
            return []
        spans = R.coalesce([(s, e) for s, e in ranges])
        parts: list[Part] = []
        for i in range(0, len(spans), MAX_RANGES_PER_REQUEST):
            parts += self._fetch_spans(repo, digest, spans[i:i + MAX_RANGES_PER_REQUEST])
        return [R.slice_from(parts, (s, e)) for s, e in ranges]

    def _fetch_spans(self, repo: str, digest: str, spans: list[R.Span]) -> list[Part]:
        if len(spans) > 1 and self._multirange_ok:
            try:
                return self._request_ranges(repo, digest, spans)
            except _MultiRangeRefused as e:
                # the server cannot do multi-range: stop asking (saves a round trip per read)
                log.info("registry %s refused a multi-range request (HTTP %s); using covering ranges",
                         self._t.registry, e.status)
                with self._lock:
                    self._multirange_ok = False
            except RangeError as e:
                # a bad answer to this request (or a span past the end): retry it the simple way
                log.info("multi-range answer from %s unusable (%s); using a covering range", self._t.registry, e)
        if len(spans) > 1:
            with self._lock:
                self._fallbacks += 1
        cover = (spans[0][0], spans[-1][1])
        return self._request_ranges(repo, digest, [cover])

    def _request_ranges(self, repo: str, digest: str, spans: list[R.Span]) -> list[Part]:
        """One range request, repeated (with backoff) when its body breaks mid-transfer."""
        attempt = 0
        while True:
            try:
                return self._request_ranges_once(repo, digest, spans)
            except _BodyBroken as e:
                attempt += 1
                if attempt > self._t.retries:
                    raise RegistryError(f"range body broke {attempt} times, last after {e.got} bytes: "
                                        f"{e.reason}", **self._ctx(repo, digest)) from None
                log.info("range read of %s broke after %d bytes (%s), retrying", digest, e.got, e.reason)
                self._t.pause(attempt - 1)

    def _request_ranges_once(self, repo: str, digest: str, spans: list[R.Span]) -> list[Part]:
        ctx = self._ctx(repo, digest)
        with self._lock:
            self._range_requests += 1
        try:
            r = self._get(repo, digest, {"Range": R.range_header(spans)})
        except RegistryError as e:
            if len(spans) > 1 and e.status in (400, 501):
                raise _MultiRangeRefused(e.status) from None
            raise
        want_end = spans[-1][1]
        try:
            if r.status_code == 416:
                if len(spans) > 1:
                    raise _MultiRangeRefused(416)
                raise RangeError(f"range {spans[0][0]}-{want_end} not satisfiable (blob too short)",
                                 status=416, **ctx)
            if r.status_code == 200:
                # Range ignored: read the prefix we need, drop the connection for the rest.
                data = self._read(r, want_end)
                if len(data) < want_end:
                    raise RangeError(f"blob has {len(data)} bytes, range ends at {want_end}", status=200, **ctx)
                return [(0, want_end, data)]
            try:
                boundary = R.multipart_boundary(r.headers.get("Content-Type"))
                if boundary is not None:
                    parts = R.parse_multipart(self._read(r, None), boundary)
                    for span in spans:
                        R.slice_from(parts, span)
                    return parts
                start, end, total = R.parse_content_range(r.headers.get("Content-Range"))
            except RangeError as e:
                raise RangeError(e.detail, status=206, **ctx) from None
            if len(spans) > 1 and not (start <= spans[0][0] and spans[-1][1] <= end):
                if total is not None and spans[-1][1] > total:
                    raise RangeError(f"range ends at {spans[-1][1]}, blob has {total} bytes", status=206, **ctx)
                raise _MultiRangeRefused(206)   # answered one range only (first, or some other)
            data = self._read(r, end - start)
            if len(data) != end - start:
                raise _BodyBroken(len(data), "short body")
            if len(spans) == 1 and not (start <= spans[0][0] and spans[0][1] <= end):
                raise RangeError(f"asked {spans[0][0]}-{spans[0][1]}, got {start}-{end} "
                                 "(blob too short?)", status=206, **ctx)
            return [(start, end, data)]
        finally:
            r.close()

    def _read(self, r, limit: int | None) -> bytes:
        """Up to ``limit`` bytes (all if None) of a streamed body; _BodyBroken if the transfer breaks.

        Read in as few, as large calls as possible, undecoded (we asked for identity): each
        call is one ``http.client`` readinto of the whole remainder, so a range body costs
        one buffer and one copy instead of a Python round per 1 MiB plus a join (on
        loopback the per-chunk overhead capped a 4 MiB range read at ~130 MB/s, the large
        read moves ~3x that).
        """
        parts: list[bytes] = []
        got = 0
        try:
            while limit is None or got < limit:
                n = READ_CHUNK if limit is None else limit - got
                chunk = r.raw.read(n, decode_content=False)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except READ_ERRORS as e:
            raise _BodyBroken(got, type(e).__name__) from None
        finally:
            self._count_bytes(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)


    def open_range(self, repo: str, digest: str, start: int, end: int) -> RangeBody:
        """One range request whose body is handed out as it arrives (see ``RangeBody``).

        The request itself is retried by the transport (connection errors, 5xx); the body
        is not resumed: a break mid-body raises from ``RangeBody.read``, and the caller
        decides what to refetch (it has already used the bytes before the break).
        """
        R.check_ranges([(start, end)])
        ctx = self._ctx(repo, digest)
        with self._lock:
            self._range_requests += 1
        r = self._get(repo, digest, {"Range": R.range_header([(start, end)])})
        try:
            if r.status_code == 416:
                raise RangeError(f"range {start}-{end} not satisfiable (blob too short)", status=416, **ctx)
            if r.status_code == 200:
                # Range ignored: skip the prefix, hand out [start, end), drop the rest
                body = RangeBody(r, end - start, self._count_bytes, ctx)
                body.skip(start)
                return body
            try:
                got_start, got_end, _ = R.parse_content_range(r.headers.get("Content-Range"))
            except RangeError as e:
                raise RangeError(e.detail, status=206, **ctx) from None
            if not (got_start <= start and end <= got_end):
                raise RangeError(f"asked {start}-{end}, got {got_start}-{got_end} (blob too short?)",
                                 status=206, **ctx)
            body = RangeBody(r, end - start, self._count_bytes, ctx)
            body.skip(start - got_start)
            return body
        except BaseException:
            r.close()
            raise


class RangeBody:
    """The body of one range response, read incrementally (``open_range``).

    ``read(n)`` returns exactly ``n`` bytes (fewer only past the range's end) or raises
    ``RegistryError`` when the transfer breaks or ends early: never a short chunk that
    could be taken for data. Thread-confined; close it (or use ``with``) to release the
    connection.
    """

    def __init__(self, response: requests.Response, length: int, count_bytes: Callable[[int], None],
                 ctx: dict) -> None:
        self._r = response
        self.length = length
        self.position = 0              # bytes of the range handed out so far
        self._count = count_bytes
        self._ctx = ctx

    def _raw(self, n: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        try:
            while got < n:
                piece = self._r.raw.read(n - got, decode_content=False)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
        except READ_ERRORS as e:
            self._count(got)
            raise RegistryError(f"range body broke after {self.position + got} of {self.length} bytes: "
                                f"{type(e).__name__}", **self._ctx) from None
        self._count(got)
        if got < n:
            raise RegistryError(f"range body ended after {self.position + got} of {self.length} bytes",
                                **self._ctx)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> None:
        """Discard ``n`` bytes before the range (a server that ignored or widened it)."""
        while n > 0:
            step = min(n, READ_CHUNK)
            self._raw(step)
            n -= step

    def read(self, n: int) -> bytes:
        n = min(n, self.length - self.position)
        if n <= 0:
            return b""
        data = self._raw(n)
        self.position += n
        return data

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MultiRangeRefused(Exception):
    def __init__(self, status: int | None):
        super().__init__(f"HTTP {status}")
        self.status = status


class _BodyBroken(Exception):
    def __init__(self, got: int, reason: str):
        super().__init__(reason)
        self.got = got
        self.reason = reason
