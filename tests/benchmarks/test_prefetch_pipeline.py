"""imgbench's imgfs-prefetch mode end to end on a tiny image: the prefetch image comes from
the real pipeline (`imgconv record` twice -> `imgconv convert --prefetch-from-trace`), and
the run's JSON carries the daemon's prefetch counters and the request/file timeline.

Real parts (registry, proxy, containerd, snapshotter, FUSE, the recorder's sandbox); no
speed is asserted. The page cache is not dropped (shared CI machine).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench import RECORD_RUNS, run_benchmark
from benchmarks.workloads import Workload
from prefetch.trace import load_trace
from tests.support.fixtures import CACHE_DIR
from tests.support.images import debian_image

pytestmark = pytest.mark.e2e

TINY = Workload("tinypf", (), "python3 -c 'import os; print(\"tiny prefetch says hi\")'",
                "python3-minimal prints a line")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    if shutil.which("containerd") is None or shutil.which("ctr-remote") is None:
        pytest.fail("containerd and ctr-remote are needed (make sysdeps)")
    out = tmp_path_factory.mktemp("imgbench-pf") / "res"
    run_benchmark([TINY], {"tinypf": debian_image(CACHE_DIR)}, ["imgfs-prefetch"], 1e9, 0.001, 1, out,
                  drop=False, command=["imgbench", "run"], log=lambda _m: None)
    return out


def test_prefetch_image_is_made_from_recorded_traces(results: Path) -> None:
    traces = sorted((results / "access").glob("tinypf-trace-*.json"))
    assert len(traces) == RECORD_RUNS
    for p in traces:
        t = load_trace(p)
        read = [f.path for f in t.files if f.ranges]
        assert any(path.startswith("usr/bin/python3") for path in read)
        assert any(path.startswith("usr/lib/python3") for path in read)       # the stdlib it imports
        assert t.ready["reason"] == "line" and all(f.size is not None for f in t.files if f.ranges)
    notes = json.loads((results / "run.json").read_text())["notes"]
    assert any("imgconv record" in n and "--prefetch-from-trace" in n for n in notes)
    r = json.loads((results / "tinypf-imgfs-prefetch-1.json").read_text())
    assert r["ok"] is True, r.get("error")
    assert r["conversion"]["uncompressed_bytes"] > 0


def test_run_keeps_prefetch_counters_and_timeline(results: Path) -> None:
    r = json.loads((results / "tinypf-imgfs-prefetch-1.json").read_text())
    st = r["fusefs_state"]
    assert st["prefetch.total"] > 0 and st["prefetch.done"] + st["prefetch.failed"] == st["prefetch.total"]
    assert st["fetcher.prefetch_requests"] >= 1 and st["fetcher.prefetch_chunks"] > 0
    assert {"fetcher.stream_steals", "fetcher.stream_cuts", "fetcher.prefetch_hits"} <= set(st)
    assert st["fetcher.prefetch_bytes"] <= st["fetcher.bytes"]
    t = r["timeline"]
    reqs = [dict(zip(t["columns"]["requests"], row)) for row in t["requests"]]
    ranged = [q for q in reqs if q["method"] == "GET" and q["range"]]
    assert ranged and all(q["end"] >= q["start"] >= 0 for q in reqs)
    assert sum(q["bytes"] for q in reqs) == r["bytes_end"]          # every request the proxy forwarded
    assert t["daemon_ready"] is not None and 0 < t["daemon_ready"] < r["total_s"]
    files = [dict(zip(t["columns"]["files"], row)) for row in t["files"]]
    assert any(f["path"].startswith("usr/bin/python3") for f in files)
    assert all(f["first_read"] >= t["daemon_ready"] - 0.05 and f["bytes_read"] > 0 for f in files)
    assert [f["first_read"] for f in files] == sorted(f["first_read"] for f in files)
