"""Where a lazy start's time goes: one run's timeline cut into the parts that cost it.

Why: "ready after 2.7 s, the bytes need 1.4 s" says there is a gap, not what makes
it. The parts, in order on the critical path of `rpull` + `ctr run`:

    rpull_s                  manifest, config, one bootstrap range per layer (skip-pull)
    daemon_start_s           the fusefs daemon: spawn -> mount answers (snapshotter's timing.json)
      daemon_interpreter_s     of it: Python start + imports (daemon_start_s - daemon_mount_s)
      daemon_mount_s           of it: resolve, bootstrap fetches, merge, FUSE init (fusefs /state)
    daemon_on_path_s         the part of daemon_start_s after rpull returned (what the run waited
                             for; ~all of it when the daemon starts at the container's Prepare,
                             less with the snapshotter's mount_on_pull)
    to_first_access_s        rpull end -> the first file access in the image, minus daemon_on_path_s:
                             ctr start, container create, snapshot Prepare/Mounts, runc create/start
    workload_s               first file access -> ready marker: the workload runs, reading lazily
    fetch_wait_s             sum of the reads' time inside fusefs (imgfs_read_latency_seconds_sum):
                             an upper bound of the workload's waiting for data (reads overlap)

The wall-clock times of different processes are lined up with time.time(). The access
log's clock starts when the daemon builds it, just before its FUSE mount; the harness
takes the daemon's `ready` time (the snapshotter saw the mount answer) as that origin,
so the first access can be late by the snapshotter's 10 ms poll, not more.
"""
from __future__ import annotations

import json
from pathlib import Path


def daemon_timing(daemon_dirs: list[Path]) -> dict | None:
    """The snapshotter's timing.json of the run's (first-started) daemon, or None."""
    found = []
    for d in daemon_dirs:
        p = d / "timing.json"
        if p.exists():
            try:
                found.append(json.loads(p.read_text()))
            except ValueError:
                continue
    return min(found, key=lambda t: t["spawned"]) if found else None


def breakdown(*, wall_start: float, wall_pulled: float, wall_ready: float, timing: dict | None,
              mount_seconds: float | None, first_access: float | None,
              read_latency_sum: float | None) -> dict:
    """The parts (seconds, None when unknown) of one lazy run; see the module doc."""
    out: dict[str, float | str | None] = {
        "rpull_s": wall_pulled - wall_start, "daemon_start_s": None, "daemon_interpreter_s": None,
        "daemon_mount_s": mount_seconds, "daemon_on_path_s": None, "daemon_started_at": None,
        "to_first_access_s": None, "workload_s": None, "fetch_wait_s": read_latency_sum}
    if timing is None:
        return out
    start = timing["ready"] - timing["spawned"]
    out["daemon_start_s"] = start
    out["daemon_started_at"] = timing.get("why")
    if mount_seconds is not None:
        out["daemon_interpreter_s"] = max(0.0, start - mount_seconds)
    on_path = max(0.0, timing["ready"] - max(timing["spawned"], wall_pulled))
    out["daemon_on_path_s"] = on_path
    if first_access is not None:
        first = timing["ready"] + first_access
        out["to_first_access_s"] = max(0.0, first - wall_pulled - on_path)
        out["workload_s"] = wall_ready - first
    return out


PARTS = ("rpull_s", "daemon_start_s", "daemon_interpreter_s", "daemon_mount_s", "daemon_on_path_s",
         "to_first_access_s", "workload_s", "fetch_wait_s")


def breakdown_table(runs: list[dict]) -> str:
    """Markdown: the median of every part per (image, lazy mode); empty when no run has one."""
    import statistics

    groups: dict[tuple[str, str], list[dict]] = {}
    order = next((r["parameters"].get("images") for r in runs if r.get("parameters")), None) or []
    runs = sorted(runs, key=lambda r: (order.index(r["image"]) if r["image"] in order else len(order),
                                       r["image"], r["mode"]))
    for r in runs:
        if r.get("ok") and r.get("breakdown"):
            groups.setdefault((r["image"], r["mode"]), []).append(r)
    if not groups:
        return ""
    rows = [("| image | mode | rpull | daemon start | of it: interpreter+imports | of it: bootstraps+mount "
            "| daemon on the critical path | ctr+runc to first access | workload | fetch wait (sum) "
            "| run-to-ready |"),
            "|---|---|" + "---:|" * 9]
    for (image, mode), rs in groups.items():
        def med(key: str, rs: list[dict] = rs) -> str:
            vals = [r["breakdown"].get(key) for r in rs if r["breakdown"].get(key) is not None]
            return f"{statistics.median(vals):.2f}" if vals else "–"
        ready = statistics.median(r["ready_s"] for r in rs)
        rows.append(f"| {image} | {mode} | " + " | ".join(med(k) for k in PARTS) + f" | {ready:.2f} |")
    return ("Where the lazy time goes (seconds, medians; benchmarks/breakdown.py says how each part is "
            "measured):\n\n" + "\n".join(rows) + "\n")
