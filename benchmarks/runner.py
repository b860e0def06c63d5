"""One benchmark run: a cold node pulls an image through the shaped link and runs it to ready.

Timeline of a run (only the two middle steps are timed):
1. cold node: fresh containerd (+ imgfs snapshotter for the lazy modes), page cache
   dropped, registry blobs warm (see node.py); proxy counters reset.
2. pull: `ctr images pull --snapshotter overlayfs` (oci: download + unpack every
   layer) or `ctr-remote image rpull --snapshotter imgfs` (lazy: manifest, config,
   one bootstrap range per layer).
3. run-to-ready: `ctr run` of the workload's command until it prints the marker.
4. bookkeeping at the marker: proxy counters, /proc of the imgfs processes; then,
   once the workload has exited (its snapshot keeps the fusefs daemon alive), the
   fusefs access log and metrics; then the node is torn down.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.breakdown import breakdown, daemon_timing
from benchmarks.node import ColdNode, drop_caches, warm
from benchmarks.proxy import ShapingProxy
from benchmarks.timeline import timeline
from benchmarks.workingset import merged_view, read_access_log, working_set
from benchmarks.workloads import READY_MARKER, Workload
from registry.client import RegistryClient

LAZY_MODES = ("imgfs", "imgfs-prefetch")
ALL_MODES = ("oci", "imgfs", "imgfs-prefetch", "estargz")
TAGS = {"oci": "plain", "imgfs": "imgfs", "imgfs-prefetch": "imgfs-prefetch"}
READY_TIMEOUT = 900.0      # seconds: a 1 GB image over a slow link still fits
LIMIT_RTTS = 3             # manifest, then config + bootstraps (parallel), then the data


class RunError(RuntimeError):
    """A run could not complete (pull failed, workload exited before ready, ...)."""


@dataclass
class Target:
    """An image as pushed to the harness's registry: repository, tags, layer sizes by tag."""
    workload: Workload
    repo: str
    layers: dict[str, list[dict]]          # tag -> [{"digest", "size"}] (manifest order)
    blob_files: dict[str, list[Path]]      # tag -> the registry's files of its blobs (warmed)

    def size(self, mode: str) -> int:
        return sum(layer["size"] for layer in self.layers[TAGS[mode]])


def run_cmd(argv: list[str], what: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RunError(f"{what} failed ({r.returncode}): {r.stdout[-1500:]} {r.stderr[-2500:]}")
    return r


def _wait_marker(proc: subprocess.Popen, timeout: float) -> tuple[float | None, list[str]]:
    """Reads the workload's stdout until the marker; returns (monotonic time seen, lines)."""
    lines: list[str] = []
    seen: queue.Queue = queue.Queue()

    def reader() -> None:
        for line in proc.stdout:                    # type: ignore[union-attr]
            now = time.monotonic()
            if line.strip() == READY_MARKER:
                seen.put(now)
            elif len(lines) < 50:
                lines.append(line.rstrip("\n"))
        seen.put(None)

    threading.Thread(target=reader, daemon=True).start()
    try:
        return seen.get(timeout=timeout), lines
    except queue.Empty:
        return None, lines


def _metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} for the imgfs_* samples."""
    out = {}
    for ln in text.splitlines():
        if ln.startswith("imgfs_") and " " in ln and "_bucket{" not in ln and "_created" not in ln:
            name, _, value = ln.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


#: /state counters kept in a run's JSON (summed over the node's daemons): the fetcher's
#: prefetch and stream counters (stream_steals: chunks of a prefetch stream that reads took
#: over because the stream was too far behind) and the prefetcher's progress.
STATE_FETCHER = ("requests", "bytes", "chunks", "prefetch_requests", "prefetch_bytes", "prefetch_chunks",
                 "prefetch_hits", "prefetch_hit_bytes", "prefetch_streams", "stream_steals", "stream_cuts")
STATE_PREFETCH = ("total", "done", "failed")


def _fusefs_observations(node: ColdNode) -> tuple[list[dict], dict[str, float], float | None, dict]:
    """Access-log records, metrics, mount_seconds and prefetch counters (/state) of the
    node's fusefs daemons."""
    from fusefs.control import query

    records: list[dict] = []
    metrics: dict[str, float] = {}
    state: dict[str, float] = {}
    mount_seconds = None
    for d in node.daemon_dirs():
        sock = d / "control.sock"
        if not sock.exists():
            continue
        query(str(sock), "/access-log/flush", method="POST", timeout=30)
        status, body = query(str(sock), "/metrics", timeout=30)
        if status == 200:
            for k, v in _metrics(body.decode(errors="replace")).items():
                metrics[k] = metrics.get(k, 0.0) + v
        status, body = query(str(sock), "/state", timeout=30)
        if status == 200:
            doc = json.loads(body)
            mount_seconds = doc.get("mount_seconds")
            for group, keys in (("fetcher", STATE_FETCHER), ("prefetch", STATE_PREFETCH)):
                for k in keys:
                    v = (doc.get(group) or {}).get(k)
                    if isinstance(v, (int, float)):
                        state[f"{group}.{k}"] = state.get(f"{group}.{k}", 0) + v
        log = d / "access.jsonl"
        if log.exists():
            records += read_access_log(log)
    return records, metrics, mount_seconds, state


def run_once(target: Target, mode: str, rep: int, proxy: ShapingProxy, client: RegistryClient,
             drop: bool = True, access_log_out: Path | None = None, mount_on_pull: bool = True) -> dict:
    """Runs `target` in `mode` from a cold node; returns the run's measurements (no metadata).

    access_log_out: where to keep the fusefs access log (JSON lines) of a lazy run, e.g.
    to make a prefetch list from it. mount_on_pull: the snapshotter's option of that name
    (start the fusefs daemon when the top layer is pulled, not at the container's Prepare).
    """
    w = target.workload
    ref = f"{proxy.host}/{target.repo}:{TAGS[mode]}"
    node = ColdNode([proxy.host], snapshotter=mode in LAZY_MODES, prefetch=mode == "imgfs-prefetch",
                    mount_on_pull=mount_on_pull)
    node.start()
    cid = f"imgbench-{w.name}-{rep}"
    proc = None
    try:
        if drop:
            drop_caches()
            warm(target.blob_files[TAGS[mode]])
        proxy.reset_counters()
        load = os.getloadavg()           # the machine may be shared: keep its load with the numbers
        t0, w0 = time.monotonic(), time.time()
        if mode == "oci":
            run_cmd(node.ctr_argv("ctr", "images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref),
                    "ctr images pull")
        else:
            run_cmd(node.ctr_argv("ctr-remote", "image", "rpull", "--plain-http", "--snapshotter", "imgfs",
                                  ref), "ctr-remote image rpull")
        t_pull, w_pull = time.monotonic(), time.time()
        pulled = proxy.statistics()
        snapshotter = "overlayfs" if mode == "oci" else "imgfs"
        proc = subprocess.Popen(node.ctr_argv("ctr", "run", "--snapshotter", snapshotter, ref, cid,
                                              *w.command()),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True)
        t_ready, output = _wait_marker(proc, READY_TIMEOUT)
        if t_ready is None:
            proc.kill()
            _, err = proc.communicate(timeout=60)
            raise RunError(f"{w.name} in mode {mode} was not ready (exit {proc.returncode}): "
                           f"{' | '.join(output[-10:])} {err[-2000:]}")
        at_ready = proxy.statistics()
        procs = node.imgfs_processes()
        ctd = node.containerd_stats()
        try:
            proc.wait(120)               # the workload exits after the marker
        except subprocess.TimeoutExpired:
            pass                         # killed below; its reads after the marker may count
        records, metrics, mount_s, state = (_fusefs_observations(node) if mode in LAZY_MODES
                                            else ([], {}, None, {}))
        timing = daemon_timing(node.daemon_dirs()) if mode in LAZY_MODES else None
        parts = None
        if mode in LAZY_MODES:
            w_ready = w_pull + (t_ready - t_pull)
            parts = breakdown(wall_start=w0, wall_pulled=w_pull, wall_ready=w_ready,
                              timing=timing, mount_seconds=mount_s,
                              first_access=min((r["first_access"] for r in records), default=None),
                              read_latency_sum=metrics.get("imgfs_read_latency_seconds_sum"))
        end = proxy.statistics()         # after the daemons' counters: covers every byte they got
        if access_log_out is not None and records:
            access_log_out.parent.mkdir(parents=True, exist_ok=True)
            access_log_out.write_text("".join(json.dumps(r) + "\n" for r in records))
        ws = working_set(records, merged_view(client, target.repo, TAGS[mode])) if records else None
        return {
            "image": w.name, "mode": mode, "rep": rep, "ok": True, "ref": ref,
            "pull_s": t_pull - t0, "ready_s": t_ready - t_pull, "total_s": t_ready - t0,
            "pull_requests": pulled.requests, "pull_bytes": pulled.bytes_down,
            "requests": at_ready.requests, "bytes": at_ready.bytes_down,
            "requests_end": end.requests, "bytes_end": end.bytes_down,
            "image_bytes": target.size(mode), "image_layers": len(target.layers[TAGS[mode]]),
            "imgfs_processes": [asdict(p) for p in procs],
            "imgfs_peak_rss_bytes": sum(p.peak_rss for p in procs) if procs else None,
            "imgfs_cpu_seconds": sum(p.cpu_seconds for p in procs) if procs else None,
            "containerd_cpu_seconds": ctd.cpu_seconds if ctd else None,
            "working_set": asdict(ws) if ws else None,
            "fusefs_metrics": metrics or None,
            "fusefs_state": state or None,
            "timeline": timeline(proxy.records(), w0, timing["ready"] if timing else None, records),
            "breakdown": parts, "mount_on_pull": mount_on_pull if mode in LAZY_MODES else None,
            "output": output,
            "page_cache_dropped": drop,
            "loadavg_at_start": list(load),
        }
    finally:
        if proc is not None and proc.poll() is None:
            subprocess.run(node.ctr_argv("ctr", "task", "kill", "-s", "SIGKILL", cid), capture_output=True,
                           check=False, timeout=60)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        node.stop()


def physical_limit(ws_compressed: float, bandwidth: float, rtt: float, local_ready: float) -> float:
    """Seconds: the compressed working set over the link + LIMIT_RTTS round trips + local start."""
    return ws_compressed / bandwidth + LIMIT_RTTS * rtt + local_ready
