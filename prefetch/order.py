"""Traces -> prefetch list: which files (and which parts of them) to lay out first, in what order.

Algorithm (the reasons are in docs/prefetch.md):

1. Per path, over the runs (traces) that *read* it (stat-only accesses never count: a
   lookup costs no data): ``runs`` = how many runs read it, ``first`` = the median of its
   first-read times (when its data was first needed; a stat long before does not count),
   ``ranges`` = the union of the byte ranges read.
2. Ranges are widened by ``pad`` on both sides (the runtime's kernel readahead on a
   prefetch mount reads that much around a page the recording saw), then to
   ``chunk_size`` boundaries, and merged: the format fetches whole chunks anyway, and
   aligned ranges from different runs merge instead of fragmenting. A file is kept
   *whole* when it is at most one chunk, or when the aligned ranges cover at least
   ``whole_fraction`` of it (the holes would save little); otherwise it is *partial*:
   only its ranges are in the prefetch table.
3. Core files (read by at least ``common`` of the runs: all of them for one or two runs)
   come first, in order of first read; then the files some runs read, most runs first,
   ties by first read. Partial files keep their place in that order: the converter lays
   out a listed file's whole tar record in the prefetch region, the table holds only the
   chunks of its ranges, and the prefetch stream skips the holes by reopening its range
   after each (``fusefs.plan.plan_prefetch``): a hole costs a round trip, not its bytes,
   and the region stays one range per layer.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prefetch.trace import Trace

DEFAULT_CHUNK_SIZE = 1 << 20
#: "read by (almost) every run": 0.8 of 5 runs is 4, so one odd run does not demote a file.
DEFAULT_COMMON = 0.8
#: Aligned ranges covering at least this share of a file: prefetch it whole.
DEFAULT_WHOLE_FRACTION = 0.9
#: Bytes added before and after every range read: the kernel readahead of a mount with a
#: prefetch table (fusefs.prefetch.PREFETCH_KERNEL_READAHEAD_KIB) reads up to this much
#: around a faulted page, while `imgconv record` records with a one-page readahead.
DEFAULT_PAD = 128 << 10


@dataclass(frozen=True)
class PlanEntry:
    """One prefetch-list entry. ``ranges`` None: the whole file."""

    path: str
    ranges: tuple[tuple[int, int], ...] | None
    runs: int
    first_access: float
    core: bool

    def to_json(self) -> dict:
        return {"path": self.path, "ranges": None if self.ranges is None else [list(r) for r in self.ranges],
                "runs": self.runs, "first_access": self.first_access, "core": self.core}


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping or touching half-open ranges (empty ones dropped)."""
    out: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def align_ranges(ranges: Iterable[tuple[int, int]], chunk_size: int,
                 size: int | None) -> list[tuple[int, int]]:
    """Widen each range to ``chunk_size`` boundaries (clipped at ``size``) and merge."""
    out = []
    for s, e in ranges:
        s, e = s - s % chunk_size, -(-e // chunk_size) * chunk_size
        if size is not None:
            e = min(e, size)
        out.append((s, e))
    return merge_ranges(out)


def plan(traces: Sequence[Trace], *, chunk_size: int = DEFAULT_CHUNK_SIZE, common: float = DEFAULT_COMMON,
         whole_fraction: float = DEFAULT_WHOLE_FRACTION, pad: int = DEFAULT_PAD) -> list[PlanEntry]:
    """The prefetch list for ``traces`` (one per recorded run), in layout order."""
    if not traces:
        raise ValueError("no traces")
    if chunk_size <= 0 or not 0 < common <= 1 or not 0 <= whole_fraction <= 1 or pad < 0:
        raise ValueError("bad planner parameters")
    runs: dict[str, int] = {}
    times: dict[str, list[float]] = {}
    ranges: dict[str, list[tuple[int, int]]] = {}
    sizes: dict[str, int] = {}
    for trace in traces:
        seen: set[str] = set()
        for f in trace.files:
            if f.stat_only or not f.ranges:
                continue
            if f.size is not None:
                sizes[f.path] = max(sizes.get(f.path, 0), f.size)
            ranges.setdefault(f.path, []).extend((max(0, a - pad), b + pad) for a, b in f.ranges)
            if f.path not in seen:           # a path listed twice in one run counts once
                seen.add(f.path)
                runs[f.path] = runs.get(f.path, 0) + 1
                times.setdefault(f.path, []).append(f.needed_at)
    need = max(1, math.ceil(common * len(traces) - 1e-9))
    entries = []
    for path, n in runs.items():
        size = sizes.get(path)
        aligned = align_ranges(ranges[path], chunk_size, size)
        extent = size if size is not None else max(e for _, e in aligned)
        covered = sum(e - s for s, e in aligned)
        is_whole = extent <= chunk_size or covered >= whole_fraction * extent
        entry = PlanEntry(path, None if is_whole else tuple(aligned), n,
                          round(statistics.median(times[path]), 6), n >= need)
        entries.append(entry)

    def key(e: PlanEntry) -> tuple:
        return (0, 0, e.first_access, e.path) if e.core else (1, -e.runs, e.first_access, e.path)

    return sorted(entries, key=key)


def prefetch_list_json(entries: Sequence[PlanEntry], traces: int) -> dict:
    """The document `imgconv convert --prefetch-list` reads (converter/prefetchlist.py, JSON form)."""
    return {"traces": traces, "files": [e.to_json() for e in entries]}
