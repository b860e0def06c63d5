"""What a page-cache fill by the CPU costs a disk read on this machine (no FUSE involved).

Run: ``python -m benchmarks.pagefill`` (in ``make bench``). Writes
benchmarks/results/pagefill.json. Why it exists: imgfs's warm reads from the node cache
reach ~0.86x of a raw read of the same chunk files (benchmarks/fusefs.py), and this
isolates the part of the daemon's work that a plain file read does not do: copying each
chunk into new page-cache pages (the kernel's FUSE_NOTIFY_STORE or READ reply). A plain
file's page cache is filled by the disk instead.

Method: 1,024 chunk files of 1 MiB (+ trailer) written the way the node cache writes
them (``fusefs.chunkio.ChunkWriter``: O_DIRECT head, buffered tail), plus one contiguous
1 GiB file. Each round, with every file evicted first (posix_fadvise DONTNEED):
"read only" is the daemon's loader reading all chunk files (``ChunkLoader``, O_DIRECT,
8 threads) and doing nothing with the bytes; "read + fill" is the same with each thread
then writing its chunk into a memfd at the chunk's offset (new page-cache pages, filled
by a CPU copy, as a FUSE daemon fills the FUSE file's pages); "local file" reads the
contiguous file with 1 MiB buffers (kernel read-ahead, pages filled by the disk). One
unreported warm-up "read + fill" first (the memory it touches is then backed), then
ROUNDS rounds alternate the three, so they share the minute's disk speed; medians are
reported.
Free page reporting is held (benchmarks/hostmem.py).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pagefill.json"
CHUNKS = 1024
CHUNK = 1 << 20
ROUNDS = 7


def _write_files(work: Path) -> list[Path]:
    from fusefs.chunkio import ChunkWriter

    writer = ChunkWriter()
    paths = []
    for i in range(CHUNKS):
        p = work / "chunks" / f"{i:05d}"
        p.parent.mkdir(exist_ok=True)
        writer.write(str(p), os.urandom(CHUNK), os.urandom(16))
        paths.append(p)
    with open(work / "local.bin", "wb") as f:
        f.writelines(os.urandom(CHUNK) for _ in range(CHUNKS))
    os.sync()
    return paths


def _evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _chunk_read(paths: list[Path], fill: bool) -> float:
    """MB/s of 8 loader threads over ``paths``; with ``fill``, each chunk is then copied
    into a memfd at its offset."""
    from fusefs.chunkio import ChunkLoader

    _evict(paths)
    loader = ChunkLoader()
    memfd = os.memfd_create("pagefill") if fill else -1
    lock = threading.Lock()
    done = [0]

    def one(item: tuple[int, Path]) -> None:
        i, p = item

        def use(view: memoryview) -> None:
            if fill:
                os.pwrite(memfd, view[:CHUNK], i * CHUNK)
            with lock:
                done[0] += len(view)
        loader.load(str(p), use)

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, enumerate(paths)))
    finally:
        if fill:
            os.close(memfd)
    return done[0] / (time.perf_counter() - t0) / 1e6


def _local_read(path: Path) -> float:
    _evict([path])
    buf = bytearray(CHUNK)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n / (time.perf_counter() - t0) / 1e6


def run(work: Path, rounds: int = ROUNDS) -> dict:
    paths = _write_files(work)
    _chunk_read(paths, fill=True)       # warm-up: back the memory the fills use
    rows = []
    for i in range(rounds):
        row = {"loadavg_1m": round(os.getloadavg()[0], 2)}
        order = ["read_only", "read_fill", "local"] if i % 2 == 0 else ["local", "read_fill", "read_only"]
        for what in order:
            mb_s = (_local_read(work / "local.bin") if what == "local"
                    else _chunk_read(paths, fill=what == "read_fill"))
            row[f"{what}_mb_s"] = round(mb_s)
        print(f"round {i}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        "method": __doc__.split("Method:", 1)[1].strip(),
        "machine": {"cpus": os.cpu_count()},
        "median": {**med, "fill_ratio_to_read_only": round(statistics.median(
            r["read_fill_mb_s"] / r["read_only_mb_s"] for r in rows), 3)},
        "each_round": rows,
    }


def main() -> int:
    from benchmarks.benchlock import exclusive
    from benchmarks.hostmem import held_free_pages

    work = Path(tempfile.mkdtemp(prefix="imgfs-pagefill-"))
    try:
        with exclusive(), held_free_pages() as held:
            result = run(work)
        result["machine"].update(held)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["median"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
