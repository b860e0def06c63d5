"""Access traces: what one recorded run of a workload read from its image.

A trace is one JSON document per run (written by ``imgconv record``)::

    {"version": 1, "image": "...", "command": ["python3", "-c", "..."],
     "ready": {"reason": "exit" | "line" | "port" | "timeout", "seconds": 1.23},
     "files": [{"path": "usr/bin/python3.11", "first_access": 0.012, "first_read": 0.013,
                "ranges": [[0, 131072]], "stat_only": false, "size": 6831736}, ...]}

``files`` are fusefs access-log records (docs/fusefs.md, "Access log") plus the file's
size (so the planner can tell a partly read big file from a small one), in first-access
order; ``first_access``/``first_read`` are seconds since the recording started. A bare fusefs access log
(JSON lines, no size) is accepted too: the planner then treats every read file as read
whole-or-ranges as logged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TRACE_VERSION = 1


class TraceError(ValueError):
    """A trace file that is not a trace (bad JSON, missing fields, bad ranges)."""


@dataclass(frozen=True)
class FileAccess:
    """One file of one run. ``ranges``: merged half-open byte ranges read (empty: stat only)."""

    path: str
    first_access: float
    ranges: tuple[tuple[int, int], ...] = ()
    stat_only: bool = False
    size: int | None = None
    first_read: float | None = None

    @property
    def needed_at(self) -> float:
        """When the data was first needed: the first read (older logs: the first access)."""
        return self.first_read if self.first_read is not None else self.first_access


@dataclass
class Trace:
    files: list[FileAccess]
    image: str | None = None
    command: list[str] = field(default_factory=list)
    ready: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"version": TRACE_VERSION, "image": self.image, "command": self.command, "ready": self.ready,
                "files": [{"path": f.path, "first_access": f.first_access,
                                      "first_read": f.first_read, "ranges": [list(r) for r in f.ranges],
                           "stat_only": f.stat_only, "size": f.size} for f in self.files]}

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)


def _file(obj: object, where: str) -> FileAccess:
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
        raise TraceError(f"{where}: record {obj!r} has no path")
    try:
        ranges = tuple((int(s), int(e)) for s, e in obj.get("ranges") or ())
        first = float(obj.get("first_access", 0.0))
        size = None if obj.get("size") is None else int(obj["size"])
        first_read = None if obj.get("first_read") is None else float(obj["first_read"])
    except (TypeError, ValueError):
        raise TraceError(f"{where}: bad ranges, time or size in {obj!r}") from None
    if any(s < 0 or e < s for s, e in ranges):
        raise TraceError(f"{where}: bad range in {obj!r}")
    return FileAccess(obj["path"].lstrip("/"), first, ranges, bool(obj.get("stat_only", not ranges)), size,
                      first_read)


def load_trace(path: Path) -> Trace:
    """Read a trace (JSON document) or a bare fusefs access log (JSON lines)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TraceError(f"trace {path}: {e}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "files" in doc:
        if doc.get("version", TRACE_VERSION) != TRACE_VERSION:
            raise TraceError(f"trace {path}: unsupported version {doc.get('version')!r}")
        if not isinstance(doc["files"], list):
            raise TraceError(f"trace {path}: files is not a list")
        files = [_file(o, str(path)) for o in doc["files"]]
        return Trace(sorted(files, key=lambda f: f.first_access), doc.get("image"),
                     list(doc.get("command") or []), dict(doc.get("ready") or {}))
    files = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise TraceError(f"trace {path}:{n}: neither a trace document nor JSON lines") from None
        files.append(_file(obj, f"{path}:{n}"))
    if not files:
        raise TraceError(f"trace {path}: no records")
    return Trace(sorted(files, key=lambda f: f.first_access))
