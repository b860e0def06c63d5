"""Dedup ratios: what chunk-level dedup saves over plain OCI layer sharing, on real images.

Run: `python -m benchmarks.dedup [--out benchmarks/results/dedup.json]` (method and reading:
docs/dedup.md, section "Measurements").

Inputs: the Debian test image v1 and its rebuilt v2 (+ nano; tests/dedup/images.py), and the
imgbench harness images (benchmarks/images.py: python, node, gcc, jvm, server, all on one shared
Debian base layer). Each is converted with default options to an OCI layout; sharing is computed
from the bootstraps (dedup.report). For v1 -> v2, v2 is also converted with v1 as chunk dictionary
and the bytes it adds to a store that holds v1 are counted, next to what plain layer sharing adds.
Content-defined chunking (CDC) is judged by an upper bound and a gear-hash measurement on the files
that changed between versions (see cdc_estimate).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "dedup.json"
BENCH_CACHE = Path(os.environ.get("IMGBENCH_CACHE", ROOT / ".cache" / "benchimages"))
TEST_CACHE = ROOT / ".cache" / "testimages"
HARNESS = ("python", "node", "gcc", "jvm", "server")


def _imgconv(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "converter.cli", *args, "--json"], cwd=ROOT,
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"imgconv {' '.join(args)}: {p.stderr}")
    return json.loads(p.stdout)


def _source_layers(layout: Path) -> dict[str, int]:
    """digest -> size of the source (gzip) layers: what plain OCI layer sharing works with."""
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return {d["digest"]: d["size"] for d in man["layers"]}


def _harness_layouts() -> dict[str, Path]:
    out = {}
    for name in HARNESS:
        found = sorted(BENCH_CACHE.glob(f"{name}-*/oci"))
        if found:
            out[name] = found[-1]
    return out


def _layer_share(a: dict[str, int], b: dict[str, int]) -> int:
    return sum(size for d, size in b.items() if d in a)


def cdc_estimate(v1_rootfs: Path, v2_rootfs: Path, small: int = 256 << 10) -> dict:
    """What CDC could add for v1 -> v2: large files (>= small, i.e. chunked on their own) at the
    same path whose bytes changed. Their whole size is the upper bound of CDC's gain; a gear-hash
    CDC (avg 64 KiB) of old and new measures how much of the new file it would find in the old."""
    changed = []
    for dp, _dn, fn in os.walk(v2_rootfs):
        for f in fn:
            p2 = os.path.join(dp, f)
            rel = os.path.relpath(p2, v2_rootfs)
            p1 = os.path.join(v1_rootfs, rel)
            if os.path.islink(p2) or not os.path.isfile(p2) or os.path.getsize(p2) < small:
                continue
            if os.path.isfile(p1) and not os.path.islink(p1):
                a, b = Path(p1).read_bytes(), Path(p2).read_bytes()
                if a != b:
                    changed.append((rel, a, b))
    found = total = 0
    for _rel, a, b in changed:
        old = {hashlib.sha256(c).digest() for c in gear_chunks(a)}
        for c in gear_chunks(b):
            total += len(c)
            found += len(c) if hashlib.sha256(c).digest() in old else 0
    return {"changed_large_files": [rel for rel, _a, _b in changed],
            "changed_large_file_bytes": sum(len(b) for _r, _a, b in changed),
            "cdc_found_bytes": found, "cdc_total_bytes": total}


def _gear_table() -> list[int]:
    return [int.from_bytes(hashlib.sha256(bytes([i])).digest()[:8], "little") for i in range(256)]


def gear_chunks(data: bytes, avg_bits: int = 16, lo: int = 16 << 10, hi: int = 256 << 10) -> list[bytes]:
    """FastCDC-style gear-hash cut points, average ~2^avg_bits past ``lo`` (a measurement aid here,
    not a format feature): a cut where the top avg_bits of the rolling hash are zero."""
    table, out, start, n = _gear_table(), [], 0, len(data)
    mask = ((1 << avg_bits) - 1) << (64 - avg_bits)
    while start < n:
        end, i, h = min(start + hi, n), min(start + lo, n), 0
        while i < end:
            h = ((h << 1) + table[data[i]]) & 0xFFFFFFFFFFFFFFFF
            i += 1
            if not h & mask:
                break
        out.append(data[start:i])
        start = i
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    from converter.dedupcli import image_summary
    from dedup.report import pair
    from tests.dedup.images import debian_v2_image, debian_v2_rootfs, new_content
    from tests.support.images import debian_image, debian_rootfs

    t0 = time.monotonic()
    sources = {"debian-v1": debian_image(TEST_CACHE), "debian-v2": debian_v2_image(TEST_CACHE),
               **_harness_layouts()}
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        work = Path(tmp)
        converted, summaries = {}, {}
        for name, layout in sources.items():
            converted[name] = _imgconv("convert", f"oci:{layout}:latest", f"oci:{work / name}")
            summaries[name] = image_summary(f"oci:{work / name}", None, {})
            summaries[name].name = name
        v2d = _imgconv("convert", f"oci:{sources['debian-v2']}:latest", f"oci:{work / 'v2-dict'}",
                       "--chunk-dict", f"oci:{work / 'debian-v1'}")
        v1_blobs = {layer["target_digest"] for layer in converted["debian-v1"]["images"][0]["layers"]}
        v2_plain_new = sum(layer["target_size"] for layer in converted["debian-v2"]["images"][0]["layers"]
                           if layer["target_digest"] not in v1_blobs)
        v2_dict_new = sum(layer["target_size"] for layer in v2d["images"][0]["layers"]
                          if layer["target_digest"] not in v1_blobs)
        src_layers = {n: _source_layers(p) for n, p in sources.items()}
        oci_v2_new = sum(s for d, s in src_layers["debian-v2"].items() if d not in src_layers["debian-v1"])
        files, raw, new = new_content(debian_rootfs(TEST_CACHE), debian_v2_rootfs(TEST_CACHE))
        cdc = cdc_estimate(debian_rootfs(TEST_CACHE), debian_v2_rootfs(TEST_CACHE))

    names = list(sources)
    pairs = []
    for a in names:
        for b in names:
            if a == b:
                continue
            p = pair(summaries[a], summaries[b])
            p["oci_source_shared_layer_bytes"] = _layer_share(src_layers[a], src_layers[b])
            p["oci_source_layer_bytes_b"] = sum(src_layers[b].values())
            pairs.append(p)
    harness = [n for n in names if n in HARNESS]
    union: dict[bytes, int] = {}
    for n in harness:
        union.update({d: c for d, (c, _u) in summaries[n].chunks.items()})
    all_src = {}
    for n in harness:
        all_src.update(src_layers[n])
    result = {
        "command": "python -m benchmarks.dedup --out " + str(args.out.relative_to(ROOT)
                                                             if args.out.is_absolute() else args.out),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "seconds": round(time.monotonic() - t0, 1),
        "images": {n: summaries[n].totals() for n in names},
        "pairs": pairs,
        "v1_to_v2": {
            "truly_new_files": files, "truly_new_raw_bytes": raw, "truly_new_zstd_bytes": new,
            "oci_gzip_layers_added": oci_v2_new,
            "imgfs_plain_layer_sharing_added": v2_plain_new,
            "imgfs_chunk_dict_added": v2_dict_new,
            "chunk_dict_vs_truly_new": round(v2_dict_new / new, 3),
            "cdc": cdc,
        },
        "harness_all": {
            "images": harness,
            "oci_gzip_bytes_separately": sum(sum(src_layers[n].values()) for n in harness),
            "oci_gzip_bytes_with_layer_sharing": sum(all_src.values()),
            "imgfs_chunk_bytes_separately": sum(summaries[n].totals()["chunk_bytes_compressed"] for n in harness),
            "imgfs_chunk_bytes_each_chunk_once": sum(union.values()),
            "imgfs_blob_bytes_separately": sum(converted[n]["target_bytes"] for n in harness),
            "imgfs_blob_bytes_with_layer_sharing": _imgfs_layer_shared(converted, harness),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["v1_to_v2"], indent=1))
    print(json.dumps(result["harness_all"], indent=1))
    return 0


def _imgfs_layer_shared(converted: dict, names: list[str]) -> int:
    """Blob bytes of the converted harness images with identical layers stored once."""
    seen: dict[str, int] = {}
    for n in names:
        for layer in converted[n]["images"][0]["layers"]:
            seen[layer["target_digest"]] = layer["target_size"]
    return sum(seen.values())


if __name__ == "__main__":
    sys.exit(main())
