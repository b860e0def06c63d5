"""imgbench bookkeeping end to end on a tiny image: real registry, proxy, containerd, snapshotter, FUSE.

One harness run (modes oci, imgfs and estargz, repeat 1, a fast link) on the shared
two-layer Debian test image with a trivial readiness check; the tests then check that
the JSON, the table and the plots are there and agree with each other and with what
the parts must have done (a full pull fetches every layer byte, a lazy one fetches
less, the bytes the workload read map onto the chunks fusefs fetched). No speed is
asserted. The page cache is not dropped here (shared CI machine); `imgbench run` does.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.bench import run_benchmark
from benchmarks.report import load, report, spread
from benchmarks.runner import physical_limit
from benchmarks.workingset import prefetch_list
from benchmarks.workloads import READY_MARKER, WORKLOADS, Workload, select
from tests.support.fixtures import CACHE_DIR
from tests.support.images import debian_image

pytestmark = pytest.mark.e2e

TINY = Workload("tiny", (), "python3 -c 'print(\"tiny says hi\")'", "python3-minimal prints a line")
BANDWIDTH, RTT = 1e9, 0.001


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    if shutil.which("containerd") is None or shutil.which("ctr-remote") is None:
        pytest.fail("containerd and ctr-remote are needed (make sysdeps)")
    out = tmp_path_factory.mktemp("imgbench") / "res"
    run_benchmark([TINY], {"tiny": debian_image(CACHE_DIR)}, ["oci", "imgfs", "estargz"], BANDWIDTH, RTT, 1,
                  out, drop=False, command=["imgbench", "run", "--images", "tiny"], log=lambda _m: None)
    return out


def _run(results: Path, mode: str) -> dict:
    return json.loads((results / f"tiny-{mode}-1.json").read_text())


def test_one_json_per_run_with_metadata(results: Path) -> None:
    names = sorted(p.name for p in results.glob("*.json"))
    assert names == ["run.json", "tiny-estargz-skipped.json", "tiny-imgfs-1.json", "tiny-oci-1.json"]
    for mode in ("oci", "imgfs"):
        r = _run(results, mode)
        assert r["ok"] is True, r.get("error")
        assert (r["image"], r["mode"], r["rep"]) == ("tiny", mode, 1)
        assert r["parameters"] == {"images": ["tiny"], "modes": ["oci", "imgfs", "estargz"],
                                   "bandwidth_bytes_per_s": BANDWIDTH, "rtt_s": RTT, "repeat": 1,
                                   "page_cache_dropped": False, "mount_on_pull": True}
        assert r["machine"]["cores"] >= 1 and r["machine"]["memory_bytes"] > 0
        assert r["versions"]["containerd"] and r["versions"]["imgfs_commit"]
        assert r["output"] == ["tiny says hi"] and READY_MARKER not in r["output"]
        assert len(r["loadavg_at_start"]) == 3
    meta = json.loads((results / "run.json").read_text())
    assert meta["command"] == ["imgbench", "run", "--images", "tiny"]
    assert any("estargz skipped" in n for n in meta["notes"])
    skipped = json.loads((results / "tiny-estargz-skipped.json").read_text())
    assert skipped["ok"] is False and skipped["skipped"]


def test_times_add_up(results: Path) -> None:
    for mode in ("oci", "imgfs"):
        r = _run(results, mode)
        assert r["pull_s"] > 0 and r["ready_s"] > 0
        assert r["total_s"] == pytest.approx(r["pull_s"] + r["ready_s"])


def test_full_pull_fetches_every_layer_byte(results: Path) -> None:
    r = _run(results, "oci")
    assert r["image_layers"] == 2
    assert r["pull_bytes"] >= r["image_bytes"] > 0
    assert r["bytes"] >= r["pull_bytes"] and r["requests"] >= r["pull_requests"] >= 4   # manifest, config, 2
    assert r["imgfs_processes"] == [] and r["imgfs_peak_rss_bytes"] is None and r["working_set"] is None


def test_lazy_run_fetches_its_working_set(results: Path) -> None:
    r = _run(results, "imgfs")
    ws = r["working_set"]
    assert 0 < ws["files_read"] <= ws["files_touched"] and ws["bytes_read"] > 0 and ws["chunks"] > 0
    assert r["fusefs_metrics"]["imgfs_read_bytes_total"] >= ws["bytes_read"]      # re-reads count twice
    ondemand = r["fusefs_metrics"]['imgfs_registry_bytes_total{kind="ondemand"}']
    assert r["fusefs_metrics"]['imgfs_registry_bytes_total{kind="prefetch"}'] == 0      # --no-prefetch
    assert ondemand >= ws["compressed_bytes"] > 0
    assert r["image_bytes"] > r["bytes_end"] >= ondemand + r["pull_bytes"]
    assert r["bytes_end"] >= r["bytes"] > r["pull_bytes"] and r["requests_end"] >= r["requests"]
    assert r["pull_bytes"] < r["image_bytes"] / 10                                      # skip-pull
    names = sorted(p["name"] for p in r["imgfs_processes"])
    assert names[0] == "imgfs mount" and names[-1] == "imgfs-snapshotter"
    assert r["imgfs_peak_rss_bytes"] == sum(p["peak_rss"] for p in r["imgfs_processes"]) > 0
    assert r["imgfs_cpu_seconds"] > 0
    assert r["conversion"]["uncompressed_bytes"] > r["image_bytes"]
    log = results / "access" / "tiny-imgfs.jsonl"
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    plist = prefetch_list(records)
    assert any(e["path"].startswith("usr/bin/python3") for e in plist)
    assert sum(end - start for e in plist for start, end in e["ranges"]) == ws["bytes_read"]


def test_lazy_breakdown_adds_up(results: Path) -> None:
    r = _run(results, "imgfs")
    b = r["breakdown"]
    assert r["mount_on_pull"] is True and b["daemon_started_at"] == "pull"    # the snapshotter's option
    assert b["rpull_s"] == pytest.approx(r["pull_s"], abs=0.01)
    assert 0 < b["daemon_mount_s"] < b["daemon_start_s"]
    assert b["daemon_interpreter_s"] == pytest.approx(b["daemon_start_s"] - b["daemon_mount_s"])
    assert 0 <= b["daemon_on_path_s"] <= b["daemon_start_s"]
    assert b["to_first_access_s"] >= 0 and b["workload_s"] > 0 and b["fetch_wait_s"] > 0
    # the parts after the pull cover run-to-ready (up to the 10 ms poll of the daemon's readiness)
    parts = b["daemon_on_path_s"] + b["to_first_access_s"] + b["workload_s"]
    assert parts == pytest.approx(r["ready_s"], abs=0.05)
    assert _run(results, "oci").get("breakdown") is None


def test_report_table_and_plots(results: Path) -> None:
    md, plots = report(results)
    assert (results / "results.md").read_text() == md
    main, _, parts = md.partition("Where the lazy time goes")
    rows = [ln for ln in main.splitlines() if ln.startswith("| tiny |")]
    assert [ln.split("|")[2].strip() for ln in rows] == ["oci", "imgfs"]
    assert [ln.split("|")[2].strip() for ln in parts.splitlines() if ln.startswith("| tiny |")] == ["imgfs"]
    oci, lazy = _run(results, "oci"), _run(results, "imgfs")
    assert f"| {oci['total_s']:.2f} |" in rows[0] and f"| {lazy['bytes'] / 1e6:.1f} |" in rows[1]
    limit = physical_limit(lazy["working_set"]["compressed_bytes"], BANDWIDTH, RTT, oci["ready_s"])
    assert f"physical limit {limit:.2f} s" in md
    assert "tiny: estargz skipped" in md and "Command: `imgbench run --images tiny`" in md
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    runs, _ = load(results)
    assert len(runs) == 3


def test_cli_report_and_usage_errors(results: Path, capsys) -> None:
    assert cli.main(["report", str(results)]) == 0
    assert "| tiny | imgfs |" in capsys.readouterr().out
    assert cli.main(["report", str(results / "nope")]) == 2
    assert cli.main(["run", "--images", "nosuch"]) == 2
    assert cli.main(["run", "--modes", "oci,teleport"]) == 2
    assert cli.main(["run", "--bandwidth", "fast"]) == 2
    assert "unknown mode" in capsys.readouterr().err


def test_workloads_and_helpers() -> None:
    assert [w.name for w in select(["node", "python"])] == ["node", "python"]
    assert set(WORKLOADS) >= {"python", "node", "gcc", "jvm", "server", "pydata"}
    with pytest.raises(ValueError, match="unknown image"):
        select(["python", "cobol"])
    argv = WORKLOADS["python"].command()
    assert argv[:2] == ["/bin/sh", "-c"] and READY_MARKER in argv[2]
    s = spread([3.0, 1.0, 2.0, None])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3) and s.fmt() == "2.00 (1.00–3.00)"
    assert spread([None]) is None
    assert physical_limit(12.5e6, 12.5e6, 0.02, 0.5) == pytest.approx(1.0 + 0.06 + 0.5)
