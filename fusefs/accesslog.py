"""Access log: which files a workload touched, when first, and which byte ranges it read.

One JSON object per line and per path::

    {"path": "usr/bin/python3.11", "first_access": 0.123, "first_read": 0.125,
     "ranges": [[0, 131072]], "stat_only": false}

``first_access`` is seconds since the mount (monotonic) of the first lookup or read the
daemon saw; ``first_read`` that of the first read (null if none). The two differ because
the kernel caches dentries, also those readdir returned: a file listed before it was
opened is never looked up, so its first access is its first read, while another file
stat'ed long before it is opened shows the stat. The order in which data is needed is
``first_read``'s (what the prefetch planner uses); ``ranges`` are merged half-open
byte ranges of the file; a path only looked up or stat'ed has ``stat_only: true``. The
prefetch planner (issue 6) turns these logs into a prefetch list. Records are kept in
memory (bounded by the files touched, not the bytes read) and written on unmount or on
``POST /access-log/flush``; the file is rewritten whole each time (temp + rename).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


class _Record:
    __slots__ = ("first", "first_read", "ranges")

    def __init__(self, first: float) -> None:
        self.first = first
        self.first_read: float | None = None
        self.ranges: list[list[int]] = []


def merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    """Sort and merge overlapping or touching half-open ranges."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


class AccessLog:
    """Collects accesses by path; cheap enough to call on every lookup and read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._t0 = time.monotonic()
        self._records: dict[str, _Record] = {}

    def _get(self, path: str) -> _Record:
        rec = self._records.get(path)
        if rec is None:
            rec = self._records[path] = _Record(round(time.monotonic() - self._t0, 6))
        return rec

    def touch(self, path: str) -> None:
        """A lookup or stat of ``path`` (relative to the image root)."""
        self._get(path)

    def read(self, path: str, offset: int, length: int) -> None:
        if length <= 0:
            self._get(path)
            return
        rec = self._get(path)
        if rec.first_read is None:
            rec.first_read = round(time.monotonic() - self._t0, 6)
        if rec.ranges and rec.ranges[-1][1] == offset:
            rec.ranges[-1][1] = offset + length   # sequential reads: O(1), no growth
        else:
            rec.ranges.append([offset, offset + length])
            if len(rec.ranges) > 64:
                rec.ranges = merge_ranges(rec.ranges)

    def records(self) -> list[dict]:
        out = []
        for path, rec in sorted(self._records.items(), key=lambda kv: kv[1].first):  # stable: ties keep order
            ranges = merge_ranges(rec.ranges)
            out.append({"path": path, "first_access": rec.first, "first_read": rec.first_read, "ranges": ranges,
                        "stat_only": not ranges})
        return out

    def flush(self) -> int:
        """Write all records (atomically); returns how many."""
        recs = self.records()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in recs)
        os.replace(tmp, self.path)
        return len(recs)
