"""Conversion benchmark: imgconv vs `ctr-remote image convert --estargz` on the Debian test image.

Run: `python -m benchmarks.convert [--runs N] [--out benchmarks/results/convert.json]`
(method: benchmarks/README.md, section "convert").

Each measured command runs as the only child of a fresh intermediate Python
process, which reports its wall time and `getrusage(RUSAGE_CHILDREN)`:
ru_maxrss of the children it waited for is the command's own peak RSS, not
ours (this process holds the image index and would pollute RUSAGE_SELF).
Throughput is uncompressed source bytes (the sum of the source layers' tar
sizes, the same numerator for both tools) / wall seconds of the command.
Sizes compare the converted layer blobs with the gzip source layers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache" / "testimages"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "convert.json"

# Runs argv as its only child; prints wall seconds and the child's rusage as JSON on the last line.
_MEASURE = r"""
import json, resource, subprocess, sys, time
argv = json.loads(sys.argv[1])
t0 = time.perf_counter()
p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(json.dumps({"rc": p.returncode, "wall_s": wall, "maxrss_kb": ru.ru_maxrss,
                             "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                             "stdout": p.stdout.decode(errors="replace")[-20000:],
                             "stderr": p.stderr.decode(errors="replace")[-4000:]}) + "\n")
"""


def measure(argv: list[str], timeout: float = 3600) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(argv)], capture_output=True, text=True,
                         timeout=timeout, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res['rc']}: {res['stderr']}")
    return res


def layout_image(layout: Path, tag: str = "latest") -> tuple[dict, list[dict]]:
    """(manifest, layer descriptors) of the tagged image of an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(e for e in index["manifests"]
                 if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") in (tag, None))
    manifest = json.loads((layout / "blobs/sha256" / entry["digest"].split(":", 1)[1]).read_bytes())
    return manifest, manifest["layers"]


def uncompressed_size(path: Path) -> int:
    """Bytes of the tar inside a gzip layer (streamed, never held whole)."""
    d = zlib.decompressobj(31)
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                n += len(d.decompress(chunk, 1 << 24))
                chunk = d.unconsumed_tail
                if d.eof:
                    rest, d = d.unused_data, zlib.decompressobj(31)
                    chunk = rest + chunk
    return n


def summarize(runs: list[dict], src_uncompressed: int, src_gzip: int, out_bytes: int) -> dict:
    wall = statistics.median(r["wall_s"] for r in runs)
    return {
        "runs": len(runs), "wall_s_median": round(wall, 3), "wall_s_all": [round(r["wall_s"], 3) for r in runs],
        "cpu_s_median": round(statistics.median(r["user_s"] + r["sys_s"] for r in runs), 3),
        "throughput_mb_s": round(src_uncompressed / wall / 1e6, 2),
        # per CPU-second (user+sys of the command): what a machine shared with other jobs still shows
        "throughput_mb_per_cpu_s": round(src_uncompressed / statistics.median(
            r["user_s"] + r["sys_s"] for r in runs) / 1e6, 2),
        "peak_rss_mb": round(max(r["maxrss_kb"] for r in runs) / 1024, 1),
        "output_layer_bytes": out_bytes, "output_vs_gzip": round(out_bytes / src_gzip, 4),
    }


def bench_imgconv(layout: Path, work: Path, runs: int, src_unc: int, src_gz: int) -> dict:
    results = []
    out_bytes = 0
    for i in range(runs):
        out = work / f"imgconv-{i}"
        res = measure([sys.executable, "-m", "converter.cli", "convert", f"oci:{layout}:latest",
                       f"oci:{out}:bench", "--json", "--workdir", str(work / "spool")])
        summary = json.loads(res["stdout"])
        out_bytes = summary["target_bytes"]
        results.append(res)
        shutil.rmtree(out, ignore_errors=True)
    return {"tool": "imgconv convert (zstd level 3, 1 MiB chunks)", **summarize(results, src_unc, src_gz, out_bytes)}


def bench_estargz(layout: Path, work: Path, runs: int, src_unc: int, src_gz: int) -> dict:
    """ctr-remote converts inside a containerd content store: import the layout, convert, read sizes."""
    if not shutil.which("ctr-remote"):
        return {"tool": "ctr-remote image convert --estargz", "skipped":
                "ctr-remote not on PATH (Debian package stargz-snapshotter)"}
    sys.path.insert(0, str(ROOT))
    from tests.support.containerd import start_containerd

    archive = work / "image.tar"
    with tarfile.open(archive, "w") as t:
        for p in sorted(layout.rglob("*")):
            t.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    ctd = start_containerd(Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp")))
    try:
        ctd.ctr("images", "import", "--no-unpack", "--base-name", "bench/debian", str(archive))
        src_ref = "bench/debian:latest"
        results = []
        out_bytes = 0
        for i in range(runs):
            dst = f"bench/debian:esgz{i}"
            res = measure(["ctr-remote", "-a", ctd.address, "-n", ctd.namespace, "image", "convert",
                           "--estargz", "--oci", src_ref, dst])
            results.append(res)
            out_bytes = _ctr_layer_bytes(ctd, dst)
        level = "9 (its default)"
        return {"tool": f"ctr-remote image convert --estargz --oci (gzip level {level})",
                **summarize(results, src_unc, src_gz, out_bytes)}
    finally:
        ctd.stop()


def _ctr_layer_bytes(ctd, ref: str) -> int:
    line = next(ln for ln in ctd.ctr("images", "ls").stdout.splitlines() if ln.split()[:1] == [ref])
    digest = next(w for w in line.split() if w.startswith("sha256:"))
    manifest = json.loads(ctd.ctr("content", "get", digest).stdout)
    if "manifests" in manifest:          # an index: take the first (only) platform
        manifest = json.loads(ctd.ctr("content", "get", manifest["manifests"][0]["digest"]).stdout)
    return sum(layer["size"] for layer in manifest["layers"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.convert", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        from tests.support.images import debian_image
    except ImportError as e:
        print(f"benchmarks.convert: tests/support/images.py (debian_image) is missing: {e}", file=sys.stderr)
        return 2
    layout = debian_image(args.cache_dir)
    _, layers = layout_image(layout)
    blobs = [layout / "blobs/sha256" / la["digest"].split(":", 1)[1] for la in layers]
    src_gz = sum(la["size"] for la in layers)
    src_unc = sum(uncompressed_size(b) for b in blobs)
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        tools = [bench_imgconv(layout, work, args.runs, src_unc, src_gz),
                 bench_estargz(layout, work, args.runs, src_unc, src_gz)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "convert", "image": "debian bookworm, 2 layers (tests/support/images.py)",
        "source_layers": len(layers), "source_gzip_bytes": src_gz, "source_uncompressed_bytes": src_unc,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                    "loadavg_1m_at_start": round(load_start, 2),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tools": tools,
    }
    ok = [t for t in tools if "skipped" not in t]
    if len(ok) == 2:
        result["imgconv_speedup_vs_estargz"] = round(ok[0]["throughput_mb_s"] / ok[1]["throughput_mb_s"], 2)
        result["imgconv_cpu_speedup_vs_estargz"] = round(
            ok[0]["throughput_mb_per_cpu_s"] / ok[1]["throughput_mb_per_cpu_s"], 2)
        result["goals"] = {"speedup_at_least_5x": result["imgconv_speedup_vs_estargz"] >= 5,
                           "output_at_most_1.05x_gzip": ok[0]["output_vs_gzip"] <= 1.05}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
