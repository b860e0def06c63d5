"""Which chunks hold a byte range of a file: the view's answer, remembered per inode.

Why: every FUSE read asks for the segments of its range, and the reader asks again for
its read-ahead window. The bootstrap answers with a binary search over packed records
(~65 us for a 1 GiB file of 1 MiB chunks: ~10 record decodes plus the chunk records),
which was ~15% of a warm read's daemon CPU per 1 MiB request. Here one view call
resolves a whole span (up to ``SPAN`` bytes from the first miss) and the reads inside it
are a bisect over plain tuples.

Safe to remember: an inode's bytes never change (read-only image, inode numbers never
reused within a daemon). Bounded: at most ``MAX_SPANS`` inodes (LRU), each one span.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from typing import Any

from fusefs.plan import ChunkRef
from imgformat.records import Segment

#: Bytes resolved per view call (64 chunks of 1 MiB; at most 1024 of the smallest size).
SPAN = 64 << 20
MAX_SPANS = 64

Part = tuple[ChunkRef, Any]


class _Span:
    __slots__ = ("end", "offsets", "parts", "start")

    def __init__(self, start: int, end: int, parts: list[Part]) -> None:
        self.start, self.end, self.parts = start, end, parts
        self.offsets = [seg.file_offset for _, seg in parts]


class SpanCache:
    """``refs(ino, offset, length, file_size)``: (chunk, segment) pairs covering the range.

    Spans are aligned (``[k * span, (k+1) * span)``), so a reader and its read-ahead
    window a few MiB further share them instead of evicting each other's; a segment
    crossing a span boundary comes back as two pieces of the same chunk (the reader
    assembles parts, and fetches a chunk once however often it is named).
    """

    def __init__(self, view: Any, span: int = SPAN, max_spans: int = MAX_SPANS) -> None:
        self.view = view
        self.span = span
        self.max_spans = max_spans
        self._spans: OrderedDict[tuple[int, int], _Span] = OrderedDict()

    def refs(self, ino: int, offset: int, length: int, file_size: int) -> list[Part]:
        """Segments of ``[offset, offset+length)`` clipped to it (and to the file), in file
        order, each with its chunk."""
        end = min(offset + length, file_size)
        out: list[Part] = []
        k = offset // self.span
        while offset < end:
            sp = self._get(ino, k, file_size)
            _collect(sp, offset, min(end, sp.end), out)
            offset = sp.end
            k += 1
        return out

    def _get(self, ino: int, k: int, file_size: int) -> _Span:
        key = (ino, k)
        sp = self._spans.get(key)
        if sp is not None:
            self._spans.move_to_end(key)
            return sp
        start = k * self.span
        stop = min(start + self.span, file_size)
        parts = [(ChunkRef(blob, info), seg) for blob, seg, info in self.view.segments(ino, start, stop - start)]
        sp = self._spans[key] = _Span(start, stop, parts)
        while len(self._spans) > self.max_spans:
            self._spans.popitem(last=False)
        return sp


def _collect(sp: _Span, offset: int, end: int, out: list[Part]) -> None:
    """Append the parts of ``sp`` overlapping ``[offset, end)``, clipped to it."""
    parts = sp.parts
    i = max(bisect_right(sp.offsets, offset) - 1, 0)
    n = len(parts)
    while i < n:
        ref, seg = parts[i]
        fo = seg.file_offset
        if fo >= end:
            break
        se = fo + seg.length
        if se > offset:
            if fo < offset or se > end:
                a, b = max(fo, offset), min(se, end)
                seg = Segment(seg.chunk_index, seg.offset_in_chunk + a - fo, b - a, a)
            out.append((ref, seg))
        i += 1
