"""`imgbench report DIR`: medians and spread per (image, mode), a Markdown table and two plots.

Reads the per-run JSON files that `imgbench run` wrote (run.json and skipped modes
are listed as notes). Writes DIR/results.md, DIR/ready.png (time to ready per image
and mode: pull + run-to-ready stacked, median, whiskers min..max of the total, the
physical limit as a black tick) and DIR/bytes.png (bytes fetched until ready vs the
image's compressed size, log-log). Plots use matplotlib's Agg backend (no display).

Physical limit per image = the compressed working set (median per lazy mode from
the runs' access logs mapped onto that mode's chunks; the smallest, i.e. the densest
layout, counts) / bandwidth + runner.LIMIT_RTTS x RTT + the median run-to-ready of
`oci` (a fully local start: every byte on the local disk).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.breakdown import breakdown_table
from benchmarks.runner import ALL_MODES, physical_limit

MB = 1e6


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 2) -> str:
        if self.n == 1 or self.low == self.high:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


def spread(values: list[float]) -> Spread | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def load(results: Path) -> tuple[list[dict], dict]:
    """(runs, run.json) of a results dir; runs include failed and skipped entries."""
    runs = []
    for p in sorted(results.glob("*.json")):
        if p.name == "run.json":
            continue
        doc = json.loads(p.read_text())
        if "image" in doc and "mode" in doc:
            runs.append(doc)
    meta = json.loads((results / "run.json").read_text()) if (results / "run.json").exists() else {}
    return runs, meta


def _mode_order(mode: str) -> int:
    return ALL_MODES.index(mode) if mode in ALL_MODES else len(ALL_MODES)


def summarize(runs: list[dict]) -> dict:
    """Per image: image sizes, working set, limit, and per mode the spreads of every measure."""
    out: dict[str, dict] = {}
    order = next((r["parameters"].get("images") for r in runs if r.get("parameters")), None) or []
    for image in sorted({r["image"] for r in runs}, key=lambda i: (order.index(i) if i in order else len(order), i)):
        mine = [r for r in runs if r["image"] == image and r.get("ok")]
        params = next((r.get("parameters") for r in runs if r["image"] == image and r.get("parameters")), {})
        ws = [r["working_set"] for r in mine if r.get("working_set")]
        modes: dict[str, dict] = {}
        for mode in sorted({r["mode"] for r in mine}, key=_mode_order):
            rs = [r for r in mine if r["mode"] == mode]
            modes[mode] = {k: spread([r.get(k) for r in rs]) for k in (
                "pull_s", "ready_s", "total_s", "bytes", "requests", "imgfs_peak_rss_bytes",
                "imgfs_cpu_seconds", "containerd_cpu_seconds", "image_bytes")}
        # The tightest chunk layout seen: a prefetch-ordered image packs the read ranges densely.
        per_mode = [spread([r["working_set"]["compressed_bytes"] for r in mine
                            if r["mode"] == mode and r.get("working_set")]) for mode in modes]
        ws_comp = min((s for s in per_mode if s), key=lambda s: s.median, default=None)
        ws_read = spread([w["bytes_read"] for w in ws])
        local = modes.get("oci", {}).get("ready_s")
        limit = None
        if ws_comp and local and params.get("bandwidth_bytes_per_s"):
            limit = physical_limit(ws_comp.median, params["bandwidth_bytes_per_s"], params.get("rtt_s", 0.0),
                                   local.median)
        out[image] = {"modes": modes, "ws_compressed": ws_comp, "ws_read": ws_read, "limit": limit,
                      "failed": [r for r in runs if r["image"] == image and not r.get("ok")]}
    return out


def _mb(s: Spread | None) -> str:
    return "–" if s is None else f"{s.median / MB:.1f}"


def table(summary: dict) -> str:
    """The Markdown results table (one row per image and mode) and a per-image line."""
    rows = [("| image | mode | pull s | run-to-ready s | total s (min–max) | MB fetched | requests "
             "| imgfs peak RSS MB | imgfs CPU s | image MB | total / limit | oci / total |"),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for image, s in summary.items():
        oci = s["modes"].get("oci", {}).get("total_s")
        for mode, m in s["modes"].items():
            ratio = f"{m['total_s'].median / s['limit']:.2f}x" if s["limit"] else "–"
            faster = f"{oci.median / m['total_s'].median:.1f}x" if oci else "–"
            rows.append(f"| {image} | {mode} | {m['pull_s'].fmt()} | {m['ready_s'].fmt()} | {m['total_s'].fmt()} "
                        f"| {_mb(m['bytes'])} | {m['requests'].median:.0f} "
                        f"| {_mb(m['imgfs_peak_rss_bytes'])} "
                        f"| {'–' if m['imgfs_cpu_seconds'] is None else m['imgfs_cpu_seconds'].fmt()} "
                        f"| {_mb(m['image_bytes'])} | {ratio} | {faster} |")
    lines = ["\n".join(rows), ""]
    for image, s in summary.items():
        parts = [f"- **{image}**:"]
        if s["ws_read"]:
            parts.append(f"working set {s['ws_read'].median / MB:.1f} MB read, "
                         f"{s['ws_compressed'].median / MB:.1f} MB compressed in chunks;")
        if s["limit"]:
            parts.append(f"physical limit {s['limit']:.2f} s;")
        for r in s["failed"]:
            if not r.get("skipped"):          # skipped modes are in the notes
                parts.append(f"{r['mode']} run {r.get('rep')} failed: {str(r.get('error', ''))[:200]};")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def plots(summary: dict, outdir: Path) -> list[Path]:
    """ready.png and bytes.png (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({m for s in summary.values() for m in s["modes"]}, key=_mode_order)
    images = list(summary)
    colors = dict(zip(ALL_MODES, ("#8c8c8c", "#1f77b4", "#2ca02c", "#ff7f0e")))
    width = 0.8 / max(len(modes), 1)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(images)), 4.5))
    for j, mode in enumerate(modes):
        for i, image in enumerate(images):
            m = summary[image]["modes"].get(mode)
            if m is None:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            pull, ready, total = m["pull_s"].median, m["ready_s"].median, m["total_s"]
            ax.bar(x, pull, width, color=colors.get(mode), alpha=0.55, edgecolor="black", linewidth=0.5)
            ax.bar(x, ready, width, bottom=pull, color=colors.get(mode), edgecolor="black", linewidth=0.5,
                   label=mode if i == 0 else None)
            ax.errorbar(x, pull + ready, yerr=[[max(0.0, pull + ready - total.low)],
                                               [max(0.0, total.high - pull - ready)]],
                        fmt="none", ecolor="black", capsize=3, linewidth=0.8)
        if j == 0:
            for i, image in enumerate(images):
                if summary[image]["limit"]:
                    ax.hlines(summary[image]["limit"], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                              label="physical limit" if i == 0 else None)
    ax.set_xticks(range(len(images)), images)
    ax.set_ylabel("seconds to ready (light: pull, dark: run to ready)")
    ax.set_title("Cold start: time to ready (median, whiskers min–max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ready = outdir / "ready.png"
    fig.savefig(ready, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    lo, hi = float("inf"), 0.0
    for mode in modes:
        xs, ys, names = [], [], []
        for image in images:
            m = summary[image]["modes"].get(mode)
            if m is None:
                continue
            xs.append(m["image_bytes"].median / MB)
            ys.append(max(m["bytes"].median, 1) / MB)
            names.append(image)
        ax.scatter(xs, ys, color=colors.get(mode), label=mode, zorder=3)
        for x, y, n in zip(xs, ys, names):
            ax.annotate(n, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo, hi = min([lo, *xs, *ys]), max([hi, *xs, *ys])
    if hi > 0:
        ax.plot([lo / 2, hi * 2], [lo / 2, hi * 2], color="gray", linestyle=":", label="fetched = image size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("image size, compressed (MB)")
    ax.set_ylabel("MB fetched from the registry until ready")
    ax.set_title("Bytes fetched vs image size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    nbytes = outdir / "bytes.png"
    fig.savefig(nbytes, dpi=110)
    plt.close(fig)
    return [ready, nbytes]


def report(results: Path) -> tuple[str, list[Path]]:
    """Writes results.md and the plots into `results`; returns (markdown, plot paths)."""
    runs, meta = load(results)
    if not any(r.get("ok") for r in runs):
        raise ValueError(f"{results}: no successful runs to report")
    summary = summarize(runs)
    p = meta.get("parameters") or next((r.get("parameters") for r in runs if r.get("parameters")), {})
    head = [f"# imgbench results: {results.name}", ""]
    if meta.get("command_line"):
        head.append(f"Command: `{meta['command_line']}`  ")
    if p:
        head.append(f"Link: {p['bandwidth_bytes_per_s'] * 8 / 1e6:g} Mbit/s, RTT {p['rtt_s'] * 1e3:g} ms; "
                    f"{p['repeat']} run(s) per image and mode; median (min–max).  ")
    mach = meta.get("machine") or next((r.get("machine") for r in runs if r.get("machine")), {})
    if mach:
        head.append(f"Machine: {mach.get('cpu')}, {mach.get('cores')} cores, "
                    f"{mach.get('memory_bytes', 0) / 2**30:.0f} GiB, Linux {mach.get('kernel')}.")
    loads = spread([r["loadavg_at_start"][0] for r in runs if r.get("loadavg_at_start")])
    if loads:
        head.append(f"  \n1-min load average when a run started: {loads.fmt(1)} (other work on the machine "
                    "shows up as spread).")
    md = "\n".join(head) + "\n\n" + table(summary)
    parts = breakdown_table(runs)
    if parts:
        md += "\n" + parts
    if meta.get("notes"):
        md += "\nNotes:\n" + "".join(f"- {n}\n" for n in meta["notes"])
    md += "\n![time to ready](ready.png)\n![bytes fetched](bytes.png)\n"
    (results / "results.md").write_text(md)
    return md, plots(summary, results)
