"""Read a `--prefetch-list` file into imgformat PrefetchEntry records.

Two forms, so both hand-written lists and tool output work:
- text: one path per line, optionally followed by a TAB and byte ranges
  `START-END[,START-END...]` (half-open); `#` starts a comment line;
- JSON: a list of `{"path": P, "ranges": [[START, END], ...] | null}`, or an
  object with such a list under "files" (what prefetch/ tools emit).
"""
from __future__ import annotations

import json
from pathlib import Path

from converter.errors import BadInput, IOFailure


def load_prefetch_list(path: Path) -> list:
    from imgformat.layer import PrefetchEntry

    try:
        text = path.read_text()
    except OSError as e:
        raise IOFailure(f"prefetch list {path}: {e}") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return [PrefetchEntry(p, r) for p, r in _parse_json(stripped, path)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, ranges = line.partition("\t")
        out.append(PrefetchEntry(name.strip(), _parse_ranges(ranges, path, n) if ranges.strip() else None))
    return out


def _parse_ranges(text: str, path: Path, line: int) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in text.split(","):
        start, sep, end = part.strip().partition("-")
        if not sep or not start.isdigit() or not end.isdigit() or int(start) > int(end):
            raise BadInput(f"prefetch list {path}:{line}: bad range {part.strip()!r} (want START-END)")
        ranges.append((int(start), int(end)))
    return tuple(ranges)


def _parse_json(text: str, path: Path) -> list[tuple[str, tuple[tuple[int, int], ...] | None]]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise BadInput(f"prefetch list {path} does not parse as JSON: {e}") from None
    items = doc.get("files") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise BadInput(f"prefetch list {path}: expected a list of files")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, None))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise BadInput(f"prefetch list {path}: entry {item!r} has no path")
        ranges = item.get("ranges")
        if ranges is not None:
            try:
                ranges = tuple((int(s), int(e)) for s, e in ranges)
            except (TypeError, ValueError):
                raise BadInput(f"prefetch list {path}: bad ranges in {item!r}") from None
        out.append((item["path"], ranges))
    return out
