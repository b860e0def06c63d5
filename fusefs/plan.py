"""Planning range requests: which bytes of a blob to GET so that few, large requests
carry the wanted chunks (merge neighbours, bridge a gap cheaper than a round trip, cap one
request's size, group many ranges into multi-range requests). Pure functions; the
fetcher (fusefs.fetcher) runs what they plan."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fusefs.stream import STREAM_MIN

#: 100 Mbit/s * 20 ms = 250 KB: below this a gap is cheaper to download than to skip.
DEFAULT_GAP_BYTES = 256 * 1024
#: Upper bound of one range request (keeps several requests in flight on big reads).
DEFAULT_MAX_REQUEST = 4 * 1024 * 1024


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of one blob: ``info`` is an imgformat ``ChunkInfo`` (comp_offset,
    comp_size, uncomp_size, digest)."""

    blob: str
    info: Any

    @property
    def digest(self) -> bytes:
        return self.info.digest


@dataclass
class RangeRequest:
    """One planned GET: bytes ``[start, end)`` of ``blob`` holding ``chunks``."""

    blob: str
    start: int
    end: int
    chunks: list[ChunkRef] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_requests(chunks: Iterable[ChunkRef], *, gap_bytes: int = DEFAULT_GAP_BYTES,
                  max_request: int = DEFAULT_MAX_REQUEST) -> list[RangeRequest]:
    """Merge chunks into range requests (see module doc). Pure; order: blob, offset."""
    by_blob: dict[str, list[ChunkRef]] = {}
    for ref in chunks:
        by_blob.setdefault(ref.blob, []).append(ref)
    plans: list[RangeRequest] = []
    for blob in sorted(by_blob):
        refs = sorted(by_blob[blob], key=lambda r: (r.info.comp_offset, r.info.comp_size))
        cur: RangeRequest | None = None
        for ref in refs:
            start = ref.info.comp_offset
            end = start + ref.info.comp_size
            if (cur is not None and start - cur.end <= gap_bytes
                    and max(end, cur.end) - cur.start <= max_request):
                cur.end = max(cur.end, end)
                cur.chunks.append(ref)
                continue
            cur = RangeRequest(blob, start, end, [ref])
            plans.append(cur)
    return plans


#: Spans per multi-range request (the registry client's own cap is 64).
MAX_SPANS = 32


def batch_requests(plans: list[RangeRequest], slots: int, max_spans: int = MAX_SPANS) -> list[list[RangeRequest]]:
    """Group planned ranges into requests: one range per request while they fit in
    ``slots``; beyond that, consecutive ranges of a blob share a multi-range request."""
    if len(plans) <= slots:
        return [[p] for p in plans]
    per = min(max_spans, -(-len(plans) // slots))
    out: list[list[RangeRequest]] = []
    for p in plans:
        if out and out[-1][0].blob == p.blob and len(out[-1]) < per:
            out[-1].append(p)
        else:
            out.append([p])
    return out


#: Holes a streamed prefetch range may span. A stream skips a run of bytes it does not
#: need that is longer than a round trip's worth by reopening the range after it
#: (``fusefs.stream``), so bridging costs one request per hole, not the hole's bytes;
#: the prefetch region of a layer then stays one range even where its table leaves out
#: the unread parts of a big, partly read file laid out in the middle of it.
STREAM_BRIDGE = 64 << 20


def plan_prefetch(chunks: Iterable[ChunkRef], *, gap_bytes: int = DEFAULT_GAP_BYTES,
                  max_request: int = DEFAULT_MAX_REQUEST, streaming: bool = True) -> list[RangeRequest]:
    """Ranges for prefetch requests. ``streaming`` (the source can stream a range): holes
    up to ``STREAM_BRIDGE`` are bridged into one range, to be streamed (and the holes
    skipped); a bridged range too small to be streamed (under ``STREAM_MIN``) is planned
    again as ``plan_requests`` would, since it would be fetched whole, holes included.
    Without streaming: ``plan_requests``."""
    if not streaming:
        return plan_requests(chunks, gap_bytes=gap_bytes, max_request=max_request)
    out: list[RangeRequest] = []
    for plan in plan_requests(chunks, gap_bytes=max(gap_bytes, STREAM_BRIDGE), max_request=max_request):
        if plan.size >= STREAM_MIN:
            out.append(plan)
        else:
            out += plan_requests(plan.chunks, gap_bytes=gap_bytes, max_request=max_request)
    return out
