"""The planner: traces -> prefetch list (prefetch/order.py) and the trace format."""
from __future__ import annotations

import json

import pytest

from prefetch.order import align_ranges, merge_ranges, plan, prefetch_list_json
from prefetch.trace import FileAccess, Trace, TraceError, load_trace

MiB = 1 << 20


def run(*files: tuple) -> Trace:
    """files: (path, first_access, ranges[, size]); no ranges = stat only."""
    out = []
    for f in files:
        path, t, ranges = f[:3]
        out.append(FileAccess(path, t, tuple(ranges), not ranges, f[3] if len(f) > 3 else 4096))
    return Trace(out)


def paths(entries) -> list[str]:
    return [e.path for e in entries]


def test_one_run_is_first_access_order_without_stat_only_files():
    t = run(("bin/sh", 0.0, [(0, 100)]), ("etc", 0.1, []), ("lib/libc.so", 0.2, [(0, 4096)]),
            ("etc/hosts", 0.3, [(0, 10)]))
    entries = plan([t])
    assert paths(entries) == ["bin/sh", "lib/libc.so", "etc/hosts"]
    assert all(e.core and e.ranges is None for e in entries)


def test_files_of_every_run_first_then_by_frequency():
    a = run(("x", 0.0, [(0, 1)]), ("rare", 0.05, [(0, 1)]), ("y", 0.1, [(0, 1)]), ("often", 0.2, [(0, 1)]))
    b = run(("y", 0.0, [(0, 1)]), ("x", 0.1, [(0, 1)]), ("often", 0.3, [(0, 1)]))
    c = run(("x", 0.0, [(0, 1)]), ("y", 0.2, [(0, 1)]))
    entries = plan([a, b, c])
    # x: median 0.0, y: median 0.1 (core, 3/3); often: 2/3; rare: 1/3
    assert paths(entries) == ["x", "y", "often", "rare"]
    assert [e.core for e in entries] == [True, True, False, False]
    assert [e.runs for e in entries] == [3, 3, 2, 1]


def test_almost_every_run_counts_as_core():
    runs = [run(("a", 0.0, [(0, 1)]), ("b", 0.5, [(0, 1)])) for _ in range(4)]
    runs.append(run(("b", 0.0, [(0, 1)])))            # one odd run without "a"
    entries = plan(runs)
    assert paths(entries) == ["a", "b"] and all(e.core for e in entries)


def test_big_partly_read_file_keeps_aligned_ranges_in_its_place():
    big = 200 * MiB
    t = run(("bin/app", 0.0, [(0, 3 * MiB)], 3 * MiB),
            ("lib/big.so", 0.1, [(0, 4096), (100 * MiB + 10, 100 * MiB + 5000), (4096, 8192)], big),
            ("etc/conf", 0.2, [(0, 10)], 10))
    entries = plan([t], pad=0)
    # in first-read order: the prefetch stream skips the holes (fusefs.plan.plan_prefetch)
    assert paths(entries) == ["bin/app", "lib/big.so", "etc/conf"]
    assert entries[1].ranges == ((0, MiB), (100 * MiB, 101 * MiB))
    assert sum(e - s for s, e in entries[1].ranges) == 2 * MiB        # not 200 MB


def test_ranges_are_padded_by_the_runtime_readahead():
    """A page read 64 KiB before a chunk boundary: the 128 KiB kernel readahead of a
    prefetch mount reads into the next chunk, so that chunk is in the table too."""
    t = run(("lib/big.so", 0.0, [(2 * MiB - 65536, 2 * MiB - 61440)], 50 * MiB))
    (e,) = plan([t])
    assert e.ranges == ((MiB, 3 * MiB),)
    (e,) = plan([t], pad=0)
    assert e.ranges == ((MiB, 2 * MiB),)


def test_mostly_read_files_and_one_chunk_files_are_whole():
    t = run(("most", 0.0, [(0, 9 * MiB + MiB // 2)], 10 * MiB), ("tiny", 0.1, [(10, 20)], 900 * 1024),
            ("half", 0.2, [(0, 3 * MiB)], 5 * MiB), ("sparse", 0.3, [(0, 10)], 10 * MiB))
    entries = {e.path: e for e in plan([t], pad=0)}
    assert entries["most"].ranges is None and entries["tiny"].ranges is None
    assert entries["half"].ranges == ((0, 3 * MiB),)        # 2 MiB of holes is worth a round trip
    assert entries["sparse"].ranges == ((0, MiB),)


def test_ranges_of_several_runs_are_merged():
    a = run(("f", 0.0, [(0, 10)], 50 * MiB))
    b = run(("f", 0.0, [(MiB + 5, MiB + 6), (40 * MiB, 40 * MiB + 1)], 50 * MiB))
    (e,) = plan([a, b], pad=0)
    assert e.ranges == ((0, 2 * MiB), (40 * MiB, 41 * MiB))


def test_chunk_size_is_the_alignment_and_ranges_are_clipped_at_the_end():
    assert align_ranges([(5, 10), (4090, 4100)], 4096, 6000) == [(0, 6000)]
    assert align_ranges([(0, 1), (8192, 8193)], 4096, None) == [(0, 4096), (8192, 12288)]
    assert merge_ranges([(5, 6), (0, 5), (7, 7), (9, 12)]) == [(0, 6), (9, 12)]


def test_no_traces_is_an_error():
    with pytest.raises(ValueError):
        plan([])


def test_trace_round_trip_and_the_converter_reads_the_list(tmp_path):
    from converter.prefetchlist import load_prefetch_list

    t = run(("usr/bin/python3", 0.0, [(0, 10)], 10), ("lib/big", 0.1, [(0, 1)], 64 * MiB))
    t.save(tmp_path / "t.json")
    back = load_trace(tmp_path / "t.json")
    assert back.files == t.files
    doc = prefetch_list_json(plan([back]), 1)
    (tmp_path / "list.json").write_text(json.dumps(doc))
    entries = load_prefetch_list(tmp_path / "list.json")
    assert [(e.path, e.ranges) for e in entries] == [("usr/bin/python3", None), ("lib/big", ((0, MiB),))]


def test_a_bare_access_log_is_a_trace(tmp_path):
    log = tmp_path / "access.jsonl"
    log.write_text('{"path":"b","first_access":0.2,"ranges":[[0,5]],"stat_only":false}\n'
                   '{"path":"a","first_access":0.1,"ranges":[],"stat_only":true}\n')
    t = load_trace(log)
    assert [(f.path, f.stat_only) for f in t.files] == [("a", True), ("b", False)]


@pytest.mark.parametrize("text", ["", "not json", '{"files": 3}', '{"files": [{"nopath": 1}]}',
                                  '{"files": [{"path": "a", "ranges": [[5, 1]]}]}',
                                  '{"version": 9, "files": []}'])
def test_bad_traces_are_clear_errors(tmp_path, text):
    p = tmp_path / "t.json"
    p.write_text(text)
    with pytest.raises(TraceError):
        load_trace(p)
