"""AccessLog: ranges merged, stat-only paths, first-access order, atomic JSON-lines file."""
from __future__ import annotations

import json

from fusefs.accesslog import AccessLog, merge_ranges


def test_merge_ranges():
    assert merge_ranges([[10, 20], [0, 5], [5, 8], [15, 30], [40, 41]]) == [[0, 8], [10, 30], [40, 41]]
    assert merge_ranges([]) == []


def test_records_and_flush(tmp_path):
    log = AccessLog(tmp_path / "a.jsonl")
    log.touch("etc/passwd")
    for off in range(0, 1 << 20, 4096):            # sequential: stays one range
        log.read("usr/bin/python3", off, 4096)
    log.read("usr/lib/x.so", 8192, 100)
    log.read("usr/lib/x.so", 0, 100)
    log.read("etc/passwd", 0, 0)                    # EOF read: still stat-only
    for i in range(200):                            # scattered: bounded and merged
        log.read("big", (199 - i) * 10, 10)
    assert log.flush() == 4
    recs = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["path"] for r in recs] == ["etc/passwd", "usr/bin/python3", "usr/lib/x.so", "big"]
    by = {r["path"]: r for r in recs}
    assert by["etc/passwd"]["stat_only"] and by["etc/passwd"]["ranges"] == []
    assert by["usr/bin/python3"]["ranges"] == [[0, 1 << 20]]
    assert by["usr/lib/x.so"]["ranges"] == [[0, 100], [8192, 8292]]
    assert by["big"]["ranges"] == [[0, 2000]]
    assert not list(tmp_path.glob("*.tmp"))
