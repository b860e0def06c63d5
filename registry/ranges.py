"""Byte ranges: Range headers, Content-Range checks, multipart/byteranges parsing, slicing.

Ranges are half-open ``(start, end)`` everywhere in this package; HTTP's are
inclusive, converted only here. Servers may answer a multi-range request with
multipart/byteranges (RFC 9110 §14.6, docker-registry's Go ServeContent does),
with one 206 part covering everything (coalesced), or with 200 and the whole
body (ignoring Range, as Go does when the ranges add up to more than the blob,
and as many blob stores and CDNs do). Every answer is checked against
Content-Range before a byte is handed out: a wrong range is an error, never
wrong bytes.
"""
from __future__ import annotations

import re

from registry.errors import RangeError

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)

Span = tuple[int, int]


def check_ranges(ranges: list[Span]) -> None:
    for r in ranges:
        if (not isinstance(r, tuple | list) or len(r) != 2 or not all(isinstance(x, int) for x in r)
                or r[0] < 0 or r[1] <= r[0]):
            raise RangeError(f"invalid range {r!r}: need 0 <= start < end")


def coalesce(ranges: list[Span], gap: int = 0) -> list[Span]:
    """Sorted, merged spans covering ``ranges`` (spans closer than ``gap`` bytes are bridged)."""
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def range_header(spans: list[Span]) -> str:
    return "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``bytes a-b/size`` -> (a, b + 1, size or None)."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if not m:
        raise RangeError(f"missing or malformed Content-Range {value!r}")
    start, last = int(m.group(1)), int(m.group(2))
    if last < start:
        raise RangeError(f"malformed Content-Range {value!r}")
    size = None if m.group(3) == "*" else int(m.group(3))
    return start, last + 1, size


def multipart_boundary(content_type: str | None) -> str | None:
    """The boundary of a multipart/byteranges Content-Type, or None if it is not one."""
    ct = content_type or ""
    if not ct.lower().startswith("multipart/byteranges"):
        return None
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', ct, re.IGNORECASE)
    if not m:
        raise RangeError("multipart/byteranges answer without a boundary")
    return m.group(1) or m.group(2)


def parse_multipart(body: bytes, boundary: str) -> list[tuple[int, int, bytes]]:
    """Parts of a multipart/byteranges body as (start, end, data).

    Each part's length comes from its Content-Range, not from searching for the
    boundary, so blob bytes that happen to contain the boundary cannot cut a part.
    """
    delim = b"--" + boundary.encode("latin-1")
    parts = []
    pos = body.find(delim)
    if pos < 0:
        raise RangeError("multipart body has no boundary")
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            return parts
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise RangeError("truncated multipart part headers")
        headers = {}
        for line in body[pos:head_end].split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        start, end, _ = parse_content_range(headers.get("content-range"))
        data_start = head_end + 4
        data = body[data_start:data_start + (end - start)]
        if len(data) != end - start:
            raise RangeError(f"truncated multipart part {start}-{end}")
        parts.append((start, end, data))
        pos = body.find(delim, data_start + len(data))
        if pos < 0:
            raise RangeError("multipart body lacks its closing boundary")


def slice_from(parts: list[tuple[int, int, bytes]], want: Span) -> bytes:
    """Bytes ``want`` cut from the one part that covers it entirely."""
    s, e = want
    for ps, pe, data in parts:
        if ps <= s and e <= pe:
            return data[s - ps:e - ps]
    raise RangeError(f"answer does not cover requested range {s}-{e}")
