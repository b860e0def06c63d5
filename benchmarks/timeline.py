"""A run's timeline: when each registry request ran, when each file was first read.

Why: the totals of a run (bytes, requests, ready time) cannot say why a prefetch run is
slow: whether the prefetch started late, whether the workload's reads ran ahead of it
and went on demand, whether the link idled. The timeline lines up, on the run's wall
clock (seconds since the pull started):

- every request the shaping proxy forwarded: start (after the emulated round trip), end
  (last body byte handed to the client), blob (short digest), Range header, bytes;
- every file the workload read: its first read (the access log's clock starts at the
  daemon's `ready`, see benchmarks/breakdown.py) and the bytes read.

The request times are the shaping proxy's own (``benchmarks.proxy.Record.start/end``).
"""
from __future__ import annotations

from benchmarks.proxy import Record


def _blob(path: str) -> str:
    tail = path.rsplit("/", 1)[-1]
    return tail.split(":", 1)[-1][:12] if "/blobs/" in path else tail


def timeline(requests: list[Record], wall_start: float, daemon_ready: float | None,
             records: list[dict]) -> dict:
    """Compact, JSON-ready timeline of one run (times in seconds since ``wall_start``):
    ``requests`` as the shaping proxy recorded them, ``records`` the access log's."""
    reqs = [[round(r.start - wall_start, 3), None if r.end is None else round(r.end - wall_start, 3),
             r.method, _blob(r.path), r.range, r.bytes]
            for r in sorted(requests, key=lambda r: r.start)]
    files = []
    if daemon_ready is not None:
        origin = daemon_ready - wall_start
        for rec in records:
            if rec.get("first_read") is None or not rec.get("ranges"):
                continue
            files.append([round(origin + rec["first_read"], 3), rec["path"],
                          sum(e - s for s, e in rec["ranges"])])
        files.sort()
    return {"columns": {"requests": ["start", "end", "method", "blob", "range", "bytes"],
                        "files": ["first_read", "path", "bytes_read"]},
            "daemon_ready": None if daemon_ready is None else round(daemon_ready - wall_start, 3),
            "requests": reqs, "files": files}
