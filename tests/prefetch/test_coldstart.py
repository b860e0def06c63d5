"""A cold start of a prefetch-ordered image: the prefetch fetches each layer's working set
in one or two range requests, and the workload then finds its data local (requests counted
at benchmarks.proxy in front of the real registry); the hit-rate metrics add up."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.proxy import ShapingProxy
from imgformat import constants as C
from prefetch import sandbox
from tests.fusefs import imagekit
from tests.fusefs.conftest import Mounted, pids_serving, run_imgfs, stop_daemon, unmount
from tests.prefetch.conftest import READY, WORKLOAD

pytestmark = pytest.mark.e2e


def layers(layout: Path) -> dict[str, int]:
    """blob digest -> bootstrap offset (requests at or past it are bootstrap fetches)."""
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return {d["digest"]: int(d["annotations"][C.ANNOTATION_BOOTSTRAP_OFFSET]) for d in man["layers"]}


@pytest.fixture(scope="module")
def pushed(registry, prefetched_layout) -> str:
    return imagekit.push(prefetched_layout, registry.host, f"prefetch/debian-{uuid.uuid4().hex[:8]}")


@contextmanager
def mounted(image: str, base: Path):
    """imgfs mount --daemon with prefetch (the default); always unmounted and stopped."""
    mp = base / "mnt"
    mp.mkdir(parents=True)
    ctl = base / "control.sock"
    pid = None
    try:
        r = run_imgfs("mount", image, str(mp), "--daemon", "--plain-http", "--cache-dir", str(base / "cache"),
                      "--control-socket", str(ctl), "--log-file", str(base / "imgfs.log"))
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.strip())
        yield Mounted(image, mp, pid, base / "cache", ctl, base / "imgfs.log")
    finally:
        unmount(mp)
        for p in {*([pid] if pid else []), *pids_serving(mp)}:
            stop_daemon(p)


def run_workload(mp: Path, base: Path) -> str:
    upper, work, root = base / "upper", base / "work", base / "root"
    for d in (upper, work, root):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={mp},upperdir={upper},workdir={work}", str(root)],
                   check=True, capture_output=True, timeout=60)
    proc = None
    try:
        proc = sandbox.start(root, WORKLOAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return out.decode()
    finally:
        if proc is not None:
            sandbox.stop(proc)
        subprocess.run(["umount", str(root)], capture_output=True, check=False, timeout=60)


def data_gets(proxy: ShapingProxy, boot: dict[str, int]) -> dict[str, int]:
    """Blob GETs per layer that are not bootstrap fetches."""
    out = {d: 0 for d in boot}
    for r in proxy.blob_gets():
        digest = r.path.rsplit("/", 1)[1]
        start = int(r.range.split("=")[1].split("-")[0]) if r.range else 0
        if digest in out and start < boot[digest]:
            out[digest] += 1
    return out


def wait_prefetch_done(m: Mounted) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pf = m.state()["prefetch"]
        if pf["phase"] == "done":
            return pf
        time.sleep(0.05)
    raise AssertionError(f"prefetch not done after 120 s: {m.state()['prefetch']}")


def test_cold_start_after_prefetch_needs_no_other_request(registry, pushed, prefetched_layout, tmp_path):
    boot = layers(prefetched_layout)
    with ShapingProxy(registry.host) as proxy:
        image = pushed.replace(registry.host, proxy.host)
        with mounted(image, tmp_path) as m:
            pf = wait_prefetch_done(m)
            assert pf["failed"] == 0 and pf["done"] > 0
            gets = data_gets(proxy, boot)
            assert all(n <= 2 for n in gets.values()), gets       # one or two ranges per layer
            assert run_workload(m.mountpoint, tmp_path).strip() == READY
            assert data_gets(proxy, boot) == gets, "the workload needed data the prefetch did not bring"
            metrics = m.metrics()
            assert metrics['imgfs_registry_requests_total{kind="ondemand"}'] == 0
            fetched = metrics["imgfs_prefetch_fetched_chunks_total"]
            hits = metrics["imgfs_prefetch_hit_chunks_total"]
            assert fetched == pf["done"] and 0 < hits <= fetched
            assert metrics["imgfs_prefetch_hit_ratio"] == pytest.approx(hits / fetched)
            wasted = metrics["imgfs_prefetch_wasted_bytes"]
            assert 0 <= wasted < metrics['imgfs_registry_bytes_total{kind="prefetch"}']


def test_cold_start_with_the_workload_racing_the_prefetch(registry, pushed, prefetched_layout, tmp_path):
    """The realistic order: the container starts as soon as the mount is ready, while the
    prefetch runs; on-demand reads preempt it, and the request count stays small."""
    boot = layers(prefetched_layout)
    with ShapingProxy(registry.host, bandwidth=50e6, rtt=0.005) as proxy:
        image = pushed.replace(registry.host, proxy.host)
        with mounted(image, tmp_path) as m:
            assert run_workload(m.mountpoint, tmp_path).strip() == READY
            gets = data_gets(proxy, boot)
            # measured: one per layer; the bound leaves room for a loaded machine where the
            # first reads start before the prefetch claims its chunks (lazy alone: dozens)
            assert all(n <= 6 for n in gets.values()), gets
            wait_prefetch_done(m)
