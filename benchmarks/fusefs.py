"""fusefs benchmark: mount time and RSS, cold/warm sequential reads, metadata rate.

Run: ``python -m benchmarks.fusefs`` (in ``make bench``; needs root for FUSE). Writes
benchmarks/results/fusefs.json. Method (also in docs/fusefs.md):

- A private docker-registry on 127.0.0.1 (loopback, no link emulation).
- Image "many": one layer of 100,000 small files (1000 dirs x 100 files, 64-512 bytes),
  converted with imgformat.layer.convert_layer. Mount time is measured twice: wall
  time of ``imgfs mount --daemon`` until it returns (process start, manifest, one
  bootstrap range request, merge, FUSE init, ready handshake) and the daemon's own
  ``mount_seconds`` from /state. RSS is the daemon's VmRSS after mount and after a
  full ``find -type f | xargs stat`` walk, whose rate (files/s) is the metadata number.
- Image "big": one 1 GiB file of random bytes (incompressible: the worst case for
  bytes moved). Sequential reads with 1 MiB buffers. Cold: fresh cache dir, every chunk
  fetched from the registry. Warm: unmount, remount on the same cache dir (the mount's
  page cache is gone; chunks come from the node cache), once after evicting the cache
  files with posix_fadvise(DONTNEED) ("from disk") and once with them in the host page
  cache ("page cached"). Local: the same bytes from a plain file on the same disk,
  evicted the same way ("disk") and then read again ("page cache"). Ratios compare like
  with like: cold and warm-from-disk vs local disk, warm page cached vs local page
  cache. The big-file measurements run ROUNDS (5) times, each round cold, warm from
  disk, local disk, warm page cached, local page cache back to back (so that a round's
  ratios see the same machine load); the results are the medians, with every round and
  its load average kept. The daemon's CPU time per GiB read (utime + stime from
  /proc/PID/stat, also split into the two) is recorded as well, and for cold reads the
  registry's: unlike MB/s it barely depends on how busy the shared machine is, so it
  shows what a change costs.
- Yardstick for the warm read: the same chunk files read by the daemon's own loader
  (``ChunkLoader``, O_DIRECT, 8 threads, in the order the cold read wrote them) with
  nothing done with the bytes ("raw chunk files"): what the disk gives for the node
  cache's layout, so that warm / raw is the cost of serving the bytes through FUSE.
- Free page reporting held (benchmarks/hostmem.py): the benchmark VM hands freed pages
  back to its host at once, which made page-cache fills (both sides of every ratio)
  swing 3x between minutes; freed pages are held for a minute while the benchmark runs,
  and the JSON says whether that was done.
- Prefetch is off (--no-prefetch) so that the numbers are the on-demand path.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fusefs.json"
IMGFS = [sys.executable, "-m", "fusefs.cli"]
GIB = 1 << 30
ROUNDS = 5


def _tar_many(path: Path, dirs: int = 1000, per_dir: int = 100) -> int:
    rnd = random.Random(1)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(dirs):
            ti = tarfile.TarInfo(f"d{d:04d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(ti)
            for f in range(per_dir):
                data = rnd.randbytes(rnd.randint(64, 512))
                ti = tarfile.TarInfo(f"d{d:04d}/f{f:03d}")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
                tar.addfile(ti, io.BytesIO(data))
    return dirs * per_dir


def _tar_big(path: Path, payload: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(payload, arcname="big.bin")


def _write_payload(path: Path, size: int) -> None:
    block = 16 << 20
    with open(path, "wb") as f:
        f.writelines(os.urandom(block) for _ in range(size // block))


def _convert(tar_path: Path, layout: Path) -> None:
    from tests.fusefs.imagekit import write_imgfs_layout

    with open(tar_path, "rb") as f:
        write_imgfs_layout(layout, [f])


def _push(layout: Path, host: str, repo: str) -> str:
    from tests.fusefs.imagekit import push

    return push(layout, host, repo)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Mount:
    def __init__(self, image: str, mp: Path, cache: Path, work: Path) -> None:
        self.mp, self.work = mp, work
        mp.mkdir(parents=True, exist_ok=True)
        self.ctl = work / f"ctl-{mp.name}.sock"
        t0 = time.perf_counter()
        r = subprocess.run([*IMGFS, "mount", image, str(mp), "--daemon", "--plain-http", "--no-prefetch",
                            "--cache-dir", str(cache), "--control-socket", str(self.ctl),
                            "--log-file", str(work / f"{mp.name}.log")],
                           capture_output=True, text=True, cwd=ROOT, check=False)
        self.wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"mount failed: {r.stderr}")
        self.pid = int(r.stdout.strip())

    def state(self) -> dict:
        from fusefs.control import query

        return json.loads(query(str(self.ctl), "/state")[1])

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mp)], capture_output=True, check=False)
        if os.path.ismount(self.mp):
            subprocess.run(["umount", "-l", str(self.mp)], capture_output=True, check=False)
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
            try:
                if Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)


def _drop_page_cache(paths) -> None:
    """Evict files' clean pages (posix_fadvise DONTNEED): the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _mount_read(image: str, mp: Path, cache: Path, work: Path, mounts: list,
                registry_pid: int) -> tuple[float, float, dict]:
    """Mount, read big.bin sequentially; (MB/s, daemon CPU seconds per GiB, fetcher stats
    plus the CPU split: daemon user/system and the registry's, per GiB)."""
    m = Mount(image, mp, cache, work)
    mounts.append(m)
    try:
        (u0, s0), (ru0, rs0) = _cpu_seconds(m.pid), _cpu_seconds(registry_pid)
        mb_s, n = _read_throughput(m.mp / "big.bin")
        (u1, s1), (ru1, rs1) = _cpu_seconds(m.pid), _cpu_seconds(registry_pid)
        per = GIB / n
        split = {"user_s_per_gib": round((u1 - u0) * per, 2), "sys_s_per_gib": round((s1 - s0) * per, 2),
                 "registry_s_per_gib": round((ru1 - ru0 + rs1 - rs0) * per, 2)}
        return mb_s, (u1 - u0 + s1 - s0) * per, {**m.state()["fetcher"], **split,
                                                 "rss_mb": round(_rss_kib(m.pid) / 1024, 1)}
    finally:
        m.close()
        mounts.remove(m)


def _big_round(image: str, payload: Path, big_size: int, work: Path, i: int, mounts: list,
               registry_pid: int) -> dict:
    """One round of cold, warm and local reads of the 1 GiB file (see the module doc)."""
    row: dict = {"loadavg_1m": round(os.getloadavg()[0], 2)}
    cache = work / f"cache-big{i}"
    row["cold_mb_s"], row["cold_daemon_cpu_s_per_gib"], fetched = _mount_read(
        image, work / f"big-cold{i}", cache, work, mounts, registry_pid)
    row["cold_requests"], row["cold_registry_mb"] = fetched["requests"], round(fetched["bytes"] / 1e6, 1)
    row["cold_daemon_user_s_per_gib"] = fetched["user_s_per_gib"]
    row["cold_daemon_sys_s_per_gib"] = fetched["sys_s_per_gib"]
    row["cold_registry_cpu_s_per_gib"] = fetched["registry_s_per_gib"]
    row["rss_after_cold_read_mb"] = fetched["rss_mb"]
    chunk_files = sorted((p for p in (cache / "chunks").rglob("*") if p.is_file()),
                         key=lambda p: p.stat().st_mtime_ns)
    _drop_page_cache(chunk_files)
    row["raw_chunk_files_mb_s"] = _raw_chunk_read(chunk_files)
    _drop_page_cache(chunk_files)
    row["warm_from_disk_mb_s"], row["warm_from_disk_daemon_cpu_s_per_gib"], warm = _mount_read(
        image, work / f"big-warmd{i}", cache, work, mounts, registry_pid)
    row["warm_from_disk_daemon_user_s_per_gib"] = warm["user_s_per_gib"]
    row["warm_from_disk_daemon_sys_s_per_gib"] = warm["sys_s_per_gib"]
    _drop_page_cache([payload])
    row["local_disk_mb_s"] = _read_throughput(payload)[0]
    row["warm_page_cached_mb_s"], row["warm_page_cached_daemon_cpu_s_per_gib"], _ = _mount_read(
        image, work / f"big-warmc{i}", cache, work, mounts, registry_pid)
    row["local_page_cache_mb_s"] = max(_read_throughput(payload)[0] for _ in range(2))
    shutil.rmtree(cache, ignore_errors=True)
    row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
    print(f"round {i}: {row}", file=sys.stderr, flush=True)
    return row


def _raw_chunk_read(paths: list[Path], threads: int = 8) -> float:
    """MB/s of the daemon's own chunk loader reading ``paths`` in parallel, bytes unused."""
    from fusefs.chunkio import ChunkLoader

    loader = ChunkLoader()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        n = sum(pool.map(lambda p: loader.load(str(p), len), paths))
    return n / (time.perf_counter() - t0) / 1e6


def _read_throughput(path: Path) -> tuple[float, int]:
    buf = bytearray(1 << 20)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n / (time.perf_counter() - t0) / 1e6, n


def run(work: Path, big_size: int = GIB) -> dict:
    from tests.support.registry import start_registry

    reg = start_registry(work / "registry")
    mounts: list[Mount] = []
    try:
        out: dict = {"method": __doc__.split("Method (also in docs/fusefs.md):", 1)[1].strip(),
                     "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}}
        # -- 100k files: mount time, RSS, metadata rate
        t0 = time.perf_counter()
        files = _tar_many(work / "many.tar")
        _convert(work / "many.tar", work / "many")
        image = _push(work / "many", reg.host, "bench/many")
        out["many_files"] = {"files": files, "prepare_seconds": round(time.perf_counter() - t0, 2)}
        walls = []
        for i in range(3):
            m = Mount(image, work / f"many-mnt{i}", work / f"cache-many{i}", work)
            mounts.append(m)
            walls.append(m.wall)
            if i < 2:
                m.close()
                mounts.remove(m)
        m = mounts[-1]
        st = m.state()
        rss_mount = _rss_kib(m.pid)
        t0 = time.perf_counter()
        walk = subprocess.run(f"find {m.mp} -type f | xargs stat --format=%s | wc -l", shell=True,
                              capture_output=True, text=True, check=True)
        walk_s = time.perf_counter() - t0
        out["many_files"].update({
            "mount_wall_seconds": [round(w, 3) for w in walls],
            "mount_daemon_seconds": st["mount_seconds"],
            "rss_after_mount_mb": round(rss_mount / 1024, 1),
            "find_stat_files": int(walk.stdout.strip()),
            "find_stat_seconds": round(walk_s, 2),
            "find_stat_files_per_second": round(int(walk.stdout.strip()) / walk_s),
            "rss_after_walk_mb": round(_rss_kib(m.pid) / 1024, 1),
        })
        m.close()
        mounts.remove(m)
        # -- 1 GiB file: cold, warm, local
        t0 = time.perf_counter()
        payload = work / "big.bin"
        _write_payload(payload, big_size)
        _tar_big(work / "big.tar", payload)
        _convert(work / "big.tar", work / "big")
        os.unlink(work / "big.tar")
        image = _push(work / "big", reg.host, "bench/big")
        prep = round(time.perf_counter() - t0, 2)
        rounds = [_big_round(image, payload, big_size, work, i, mounts, reg.proc.pid) for i in range(ROUNDS)]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        cold, warm_disk, warm_cached = med["cold_mb_s"], med["warm_from_disk_mb_s"], med["warm_page_cached_mb_s"]
        local_disk, local_cached = med["local_disk_mb_s"], med["local_page_cache_mb_s"]
        raw = med["raw_chunk_files_mb_s"]
        out["big_file"] = {
            "bytes": big_size, "prepare_seconds": prep, "rounds": len(rounds), "median": {
                "local_disk_mb_s": round(local_disk), "local_page_cache_mb_s": round(local_cached),
                "cold_mb_s": round(cold), "raw_chunk_files_mb_s": round(raw),
                "warm_from_disk_mb_s": round(warm_disk), "warm_page_cached_mb_s": round(warm_cached),
                "cold_ratio_to_local_disk": round(statistics.median(
                    r["cold_mb_s"] / r["local_disk_mb_s"] for r in rounds), 3),
                "warm_ratio_to_local_disk": round(statistics.median(
                    r["warm_from_disk_mb_s"] / r["local_disk_mb_s"] for r in rounds), 3),
                "raw_chunk_files_ratio_to_local_disk": round(statistics.median(
                    r["raw_chunk_files_mb_s"] / r["local_disk_mb_s"] for r in rounds), 3),
                "warm_ratio_to_raw_chunk_files": round(statistics.median(
                    r["warm_from_disk_mb_s"] / r["raw_chunk_files_mb_s"] for r in rounds), 3),
                "warm_cached_ratio_to_local_page_cache": round(statistics.median(
                    r["warm_page_cached_mb_s"] / r["local_page_cache_mb_s"] for r in rounds), 3),
                "cold_daemon_cpu_s_per_gib": med["cold_daemon_cpu_s_per_gib"],
                "cold_daemon_user_s_per_gib": med["cold_daemon_user_s_per_gib"],
                "cold_daemon_sys_s_per_gib": med["cold_daemon_sys_s_per_gib"],
                "cold_registry_cpu_s_per_gib": med["cold_registry_cpu_s_per_gib"],
                "warm_from_disk_daemon_cpu_s_per_gib": med["warm_from_disk_daemon_cpu_s_per_gib"],
                "warm_page_cached_daemon_cpu_s_per_gib": med["warm_page_cached_daemon_cpu_s_per_gib"],
                "cold_requests": med["cold_requests"], "loadavg_1m": med["loadavg_1m"],
                "rss_after_cold_read_mb": med["rss_after_cold_read_mb"],
            },
            "each_round": rounds,
        }
        out["machine"]["loadavg_at_end"] = os.getloadavg()
        out["goals"] = {
            "mount_under_0.5s": st["mount_seconds"] < 0.5,
            "rss_under_100mb": rss_mount / 1024 < 100,
            "warm_at_least_0.8x_local_disk": out["big_file"]["median"]["warm_ratio_to_local_disk"] >= 0.8,
            "cold_at_least_300mb_s": cold >= 300,
        }
        return out
    finally:
        for m in mounts:
            m.close()
        reg.stop()


def main() -> int:
    size = int(os.environ.get("IMGFS_BENCH_BIG_BYTES", GIB))
    from benchmarks.benchlock import exclusive
    from benchmarks.hostmem import held_free_pages

    work = Path(tempfile.mkdtemp(prefix="imgfs-bench-"))
    try:
        with exclusive(), held_free_pages() as held:
            result = run(work, size)
        result["machine"].update(held)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
