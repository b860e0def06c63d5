"""`imgbench run`: the harness's own registry behind the shaping proxy, the images on it, the runs.

Per invocation: a private docker-registry (temp dir) is started, each image's OCI layout
is pushed as `bench/NAME:plain` (gzip, what `oci` pulls) and converted with `imgconv
convert` to `:imgfs`. Pushing and converting go straight to the registry; every pull
goes through benchmarks.proxy.ShapingProxy with the requested bandwidth and RTT.

Order: for each image, repeat r = 1..N, for each mode. imgfs-prefetch needs traces: before
its first run, its image `:imgfs-prefetch` is made by the prefetch pipeline of issue 6:
`imgconv record` runs the workload RECORD_RUNS times over `:imgfs` (straight from the
registry, untimed; traces in `access/`), then `imgconv convert --prefetch-from-trace`
plans the list from them (prefetch/order.py) and lays the image out.

Output in DIR: one JSON per run (`IMAGE-MODE-REP.json`, with machine, versions and
parameters), `IMAGE-estargz-skipped.json` when that mode cannot run, `run.json` (the
command line, parameters, notes), `access/` (the traces the prefetch list was planned from,
and the access log of the first imgfs run).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.images import ROOT
from benchmarks.proxy import ShapingProxy
from benchmarks.runner import ALL_MODES, TAGS, RunError, Target, run_cmd, run_once
from benchmarks.workloads import READY_MARKER, Workload
from registry.client import RegistryClient
from tests.support.images import push_oci
from tests.support.registry import Registry, start_registry


def _version(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else None


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal:"))
    return {"hostname": platform.node(), "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_bytes": mem}


def versions() -> dict:
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip() != ""
    return {"imgfs_commit": commit, "imgfs_tree_dirty": dirty, "python": platform.python_version(),
            "containerd": _version(["containerd", "--version"]), "runc": _version(["runc", "--version"]),
            "ctr-remote": _version(["ctr-remote", "--version"]),
            "docker-registry": _version(["docker-registry", "--version"])}


def _blob_file(reg: Registry, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return reg.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def _manifest_layers(client: RegistryClient, repo: str, tag: str) -> list[dict]:
    m = client.get_manifest(repo, tag).json
    return [{"digest": d["digest"], "size": d["size"]} for d in m["layers"]]


def _convert(reg: Registry, repo: str, src_tag: str, dst_tag: str, extra: list[str] = ()) -> dict:
    # extra options last: --prefetch-from-trace takes one or more values
    r = run_cmd([sys.executable, "-m", "converter.cli", "convert", "--plain-http", "--json",
                 f"docker://{reg.host}/{repo}:{src_tag}", f"docker://{reg.host}/{repo}:{dst_tag}", *extra],
                f"imgconv convert {repo}:{dst_tag}")
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"output": r.stdout[-2000:]}


#: `imgconv record` runs per image for its prefetch list (the planner's "core" files are
#: those read by every run; one odd run does not add its files to the front).
RECORD_RUNS = 2


def record_traces(reg: Registry, repo: str, w: Workload, dest: Path,
                  log: Callable[[str], None]) -> list[Path]:
    """Record the workload's startup over the `:imgfs` image with `imgconv record`
    (straight from the registry: the recording is not timed). Returns the traces."""
    dest.mkdir(parents=True, exist_ok=True)
    traces = []
    for i in range(1, RECORD_RUNS + 1):
        log(f"{w.name}: imgconv record run {i}/{RECORD_RUNS} (for the prefetch list, not a result)")
        trace = dest / f"{w.name}-trace-{i}.json"
        run_cmd([sys.executable, "-m", "converter.cli", "record", f"docker://{reg.host}/{repo}:imgfs",
                 "-o", str(trace), "--plain-http", "--ready-line", READY_MARKER, "--", *w.command()],
                f"imgconv record {repo}:imgfs", timeout=900)
        traces.append(trace)
    return traces


def _add_tag(target: Target, reg: Registry, client: RegistryClient, tag: str) -> None:
    target.layers[tag] = _manifest_layers(client, target.repo, tag)
    target.blob_files[tag] = [_blob_file(reg, d["digest"]) for d in target.layers[tag]]


def run_benchmark(workloads: list[Workload], layouts: dict[str, Path], modes: list[str], bandwidth: float,
                  rtt: float, repeat: int, out: Path, *, drop: bool = True, command: list[str] | None = None,
                  log: Callable[[str], None] = print, mount_on_pull: bool = True) -> list[Path]:
    """Runs every (image, mode, repeat); writes the JSON files to `out`; returns their paths."""
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(ALL_MODES)}")
    out.mkdir(parents=True, exist_ok=True)
    params = {"images": [w.name for w in workloads], "modes": modes, "bandwidth_bytes_per_s": bandwidth,
              "rtt_s": rtt, "repeat": repeat, "page_cache_dropped": drop, "mount_on_pull": mount_on_pull}
    meta = {"machine": machine(), "versions": versions(), "parameters": params}
    notes: list[str] = []
    written: list[Path] = []
    regdir = Path(tempfile.mkdtemp(prefix="imgbench-registry-", dir="/tmp"))
    reg = start_registry(regdir)
    try:
        client = RegistryClient(registry=reg.host, plain_http=True)
        with ShapingProxy(reg.host, bandwidth=bandwidth, rtt=rtt) as proxy:
            for w in workloads:
                written += _bench_image(w, layouts[w.name], modes, repeat, out, reg, client, proxy, drop,
                                        meta, notes, log, mount_on_pull)
    finally:
        reg.stop()
        shutil.rmtree(regdir, ignore_errors=True)
    (out / "run.json").write_text(json.dumps({
        "command": command or [], "command_line": shlex.join(command or []), **meta, "notes": notes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
    return written


def _bench_image(w: Workload, layout: Path, modes: list[str], repeat: int, out: Path, reg: Registry,
                 client: RegistryClient, proxy: ShapingProxy, drop: bool, meta: dict, notes: list[str],
                 log: Callable[[str], None], mount_on_pull: bool = True) -> list[Path]:
    repo = f"bench/{w.name}"
    push_oci(layout, reg.host, repo, TAGS["oci"])
    target = Target(w, repo, {}, {})
    _add_tag(target, reg, client, TAGS["oci"])
    conversions = {}
    if any(m in ("imgfs", "imgfs-prefetch") for m in modes):
        t0 = time.monotonic()
        summary = _convert(reg, repo, "plain", "imgfs")
        conversions["imgfs"] = {"seconds": time.monotonic() - t0, **summary}
        _add_tag(target, reg, client, "imgfs")
    written: list[Path] = []
    if "estargz" in modes:
        reason = ("containerd-stargz-grpc is not on PATH" if shutil.which("containerd-stargz-grpc") is None
                  else "the estargz mode is not implemented by this harness yet")
        notes.append(f"{w.name}: estargz skipped: {reason}")
        p = out / f"{w.name}-estargz-skipped.json"
        p.write_text(json.dumps({"image": w.name, "mode": "estargz", "ok": False, "skipped": reason, **meta},
                                indent=1) + "\n")
        written.append(p)
    access = out / "access" / f"{w.name}-imgfs.jsonl"
    for rep in range(1, repeat + 1):
        for mode in modes:
            if mode == "estargz":
                continue
            if mode == "imgfs-prefetch" and "imgfs-prefetch" not in target.layers:
                t0 = time.monotonic()
                traces = record_traces(reg, repo, w, out / "access", log)
                summary = _convert(reg, repo, "plain", "imgfs-prefetch",
                                   ["--prefetch-from-trace", *map(str, traces)])
                conversions["imgfs-prefetch"] = {"seconds": time.monotonic() - t0, **summary}
                _add_tag(target, reg, client, "imgfs-prefetch")
                notes.append(f"{w.name}: imgfs-prefetch image made by the prefetch pipeline: {RECORD_RUNS} "
                             f"runs of `imgconv record` of the workload over :imgfs "
                             f"({', '.join(str(t.relative_to(out)) for t in traces)}), then "
                             "`imgconv convert --prefetch-from-trace` (planner: prefetch/order.py)")
            log(f"{w.name} {mode} run {rep}/{repeat} ...")
            keep = access if mode == "imgfs" and not access.exists() else None
            try:
                res = run_once(target, mode, rep, proxy, client, drop=drop, access_log_out=keep,
                               mount_on_pull=mount_on_pull)
                log(f"  pull {res['pull_s']:.2f} s + ready {res['ready_s']:.2f} s = {res['total_s']:.2f} s, "
                    f"{res['bytes'] / 1e6:.1f} MB in {res['requests']} requests")
            except RunError as e:
                res = {"image": w.name, "mode": mode, "rep": rep, "ok": False, "error": str(e)}
                log(f"  FAILED: {e}")
            res["conversion"] = conversions.get(mode)
            p = out / f"{w.name}-{mode}-{rep}.json"
            p.write_text(json.dumps({**res, **meta}, indent=1) + "\n")
            written.append(p)
    return written
