"""A run's timeline: when each registry request ran, when each file was first read.

Why: the totals of a run (bytes, requests, ready time) cannot say why a prefetch run is
slow: whether the prefetch started late, whether the workload's reads ran ahead of it
and went on demand, whether the link idled. The timeline lines up, on the run's wall
clock (seconds since the pull started):

- every request the shaping proxy forwarded: start (after the emulated round trip), end
  (last body byte handed to the client), blob (short digest), Range header, bytes;
- every file the workload read: its first read (the access log's clock starts at the
  daemon's `ready`, see benchmarks/breakdown.py) and the bytes read.

``TimedProxy`` adds the request times to ``benchmarks.proxy.ShapingProxy`` from the
outside (that module is shared with other packages' tests): it wraps ``_forward``, the
proxy's per-request body pump, and keeps its own list next to the proxy's records.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.proxy import ShapingProxy


class TimedProxy(ShapingProxy):
    """A ShapingProxy that also keeps (start, end) wall times of each forwarded request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._times_lock = threading.Lock()
        self._times: list[dict] = []

    def _forward(self, sock, method, target, headers, body, keep, fault, record, box, cancel) -> bool:
        start = time.time()
        try:
            return super()._forward(sock, method, target, headers, body, keep, fault, record, box, cancel)
        finally:
            with self._times_lock:
                self._times.append({"start": start, "end": time.time(), "method": method,
                                    "path": record.get("path", ""), "range": record.get("range"),
                                    "bytes": record.get("bytes", 0)})

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._times_lock:
            self._times.clear()

    def request_times(self) -> list[dict]:
        with self._times_lock:
            return list(self._times)


def _blob(path: str) -> str:
    tail = path.rsplit("/", 1)[-1]
    return tail.split(":", 1)[-1][:12] if "/blobs/" in path else tail


def timeline(requests: list[dict], wall_start: float, daemon_ready: float | None,
             records: list[dict]) -> dict:
    """Compact, JSON-ready timeline of one run (times in seconds since ``wall_start``)."""
    reqs = [[round(r["start"] - wall_start, 3), round(r["end"] - wall_start, 3), r["method"],
             _blob(r["path"]), r["range"], r["bytes"]]
            for r in sorted(requests, key=lambda r: r["start"])]
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
