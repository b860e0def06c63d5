"""Soak: many mounts and reads (and daemon kill -9 + takeover) while benchmarks.proxy injects
faults between imgfs and a real registry; afterwards every read was right bytes or EIO,
every cache verifies, and no mount, daemon or fd is left.

Short form in the suite (tests/soak/test_soak.py); long form ``make soak`` via
scripts/soak.sh: ``python -m tests.soak.soak --seconds N --out FILE.json`` (own registry).

One cycle: a fresh cache dir shared by MOUNTS daemons (one of them with --fd-store);
READERS threads read random files (page cache dropped first, so reads reach the daemon)
while a fault thread injects one random fault (503, reset, truncate, flip, delay) into
the next blob GET every few tens of ms; mid-cycle the fd-store daemon is killed with
SIGKILL and a new one takes over; then every daemon gets SIGTERM, its mount must be gone,
``imgfs cache verify`` must pass, and the cache dir is removed.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from benchmarks.proxy import FAULTS, ShapingProxy
from tests.fusefs import imagekit
from tests.fusefs.conftest import _alive, base_tar, blob_data, pids_serving, small_files, top_tar, unmount

ROOT = Path(__file__).resolve().parents[2]
IMGFS = [sys.executable, "-m", "fusefs.cli"]
BLOB_GET = r"^GET /v2/.+/blobs/"
MOUNTS, READERS, CYCLE_SECONDS = 2, 3, 8.0


def expected_files() -> dict[str, bytes]:
    files = {"etc/hostname": b"imgfs-test-2\n", "etc/top": b"top-soak\n", "etc/secret": b"s3cr3t\n",
             "big/blob": blob_data(10_000, 5 * (1 << 20) + 12345)}
    files.update(small_files())
    return files


def _rss_fds(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0


class Soak:
    def __init__(self, registry_host: str, workdir: Path, seed: int = 0) -> None:
        self.host, self.work, self.rng = registry_host, workdir, random.Random(seed)
        self.stats: Counter = Counter()
        self.max_rss = self.max_fds = 0
        self.pids: list[int] = []
        self.mps: list[Path] = []
        self.files = expected_files()
        self.names = sorted(self.files)
        self.failures: list[str] = []

    # -- processes ----------------------------------------------------------------------------
    def mount(self, image: str, mp: Path, cache: Path, *extra: str) -> int:
        mp.mkdir(parents=True, exist_ok=True)
        if mp not in self.mps:
            self.mps.append(mp)
        pidfile = mp.parent / (mp.name + ".pid")
        r = subprocess.run([*IMGFS, "mount", image, str(mp), "--daemon", "--plain-http", "--cache-dir",
                            str(cache), "--log-file", str(mp.parent / (mp.name + ".log")), "--pid-file",
                            str(pidfile), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           check=False)
        if pidfile.exists():
            self.pids.append(int(pidfile.read_text()))
        if r.returncode != 0:
            raise RuntimeError(f"mount {mp} failed: {r.stderr}")
        self.stats["mounts"] += 1
        return int(r.stdout)

    def stop(self, pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if not _alive(pid):
                return

    # -- one cycle ----------------------------------------------------------------------------
    def read_once(self, mps: list[Path]) -> None:
        name = self.rng.choice(self.names)
        mp = self.rng.choice(mps)
        try:
            fd = os.open(mp / name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                parts = []
                while data := os.read(fd, 1 << 20):
                    parts.append(data)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                self.stats["reads_eio"] += 1
            else:
                self.stats["reads_other_error"] += 1
                self.failures.append(f"{mp}/{name}: {exc}")
            return
        data = b"".join(parts)
        if data == self.files[name]:
            self.stats["reads_ok"] += 1
            self.stats["bytes_verified"] += len(data)
        else:
            self.stats["reads_wrong"] += 1
            self.failures.append(f"{mp}/{name}: WRONG BYTES")

    def cycle(self, n: int, image: str, proxy: ShapingProxy, store: Path, seconds: float) -> None:
        cache = self.work / f"cache{n}"
        mps = [self.work / f"c{n}" / f"m{j}" for j in range(MOUNTS)]
        conf = self.work / "fewer-retries.toml"          # the other daemon gives up sooner: more EIO paths
        conf.write_text("retries = 1\n")
        extra = [("--fd-store", str(store), "--no-prefetch"), ("--config", str(conf))]
        pids = [self.mount(image, mp, cache, *extra[j % len(extra)]) for j, mp in enumerate(mps)]
        stop = threading.Event()

        def faults() -> None:
            while not stop.is_set():
                kind = self.rng.choice(FAULTS)
                proxy.inject(kind, 1, seconds=0.3 if kind == "delay" else 0.0, match=BLOB_GET)
                stop.wait(0.03)

        def reader() -> None:
            while not stop.is_set():
                self.read_once(mps)

        threads = [threading.Thread(target=faults, daemon=True)] + [
            threading.Thread(target=reader, daemon=True) for _ in range(READERS)]
        for t in threads:
            t.start()
        try:
            time.sleep(seconds / 2)
            os.kill(pids[0], signal.SIGKILL)           # a crash mid-read: the next daemon takes over
            while _alive(pids[0]):
                time.sleep(0.02)
            time.sleep(0.3)
            for attempt in range(1, 4):   # as a supervisor would: a failed start is tried again
                try:
                    pids[0] = self.mount(image, mps[0], cache, *extra[0])
                    break
                except RuntimeError as exc:
                    self.stats["takeover_retries"] += 1
                    if attempt == 3:      # readers would wait forever on a mount nobody serves
                        self.failures.append(f"takeover failed: {exc}")
                        subprocess.run(["umount", "-f", "-l", str(mps[0])], check=False)
                        raise
            self.stats["takeovers"] += 1
            time.sleep(seconds / 2)
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            raise
        finally:
            stop.set()
            for t in threads:
                t.join(120)
                if t.is_alive():
                    self.failures.append("a reader hung for 120 s after the cycle ended")
            proxy.clear_faults()
        for pid in pids:
            rss, fds = _rss_fds(pid)
            self.max_rss, self.max_fds = max(self.max_rss, rss), max(self.max_fds, fds)
            self.stop(pid)
        for mp in mps:
            if os.path.ismount(mp):
                self.failures.append(f"{mp} still mounted after its daemon stopped")
        r = subprocess.run([*IMGFS, "cache", "verify", "--cache-dir", str(cache)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, check=False)
        checked = json.loads(r.stdout or "{}").get("checked", 0)
        self.stats["cache_chunks_verified"] += checked
        if r.returncode != 0:
            self.failures.append(f"cache verify of cycle {n}: {r.stdout} {r.stderr}")
        shutil.rmtree(cache, ignore_errors=True)
        self.stats["cycles"] += 1

    # -- the run ------------------------------------------------------------------------------
    def run(self, seconds: float) -> dict:
        t0 = time.monotonic()
        own_fds = len(os.listdir("/proc/self/fd"))
        layout = self.work / "img"
        imagekit.write_imgfs_layout(layout, [base_tar(), top_tar(b"top-soak")], chunk_size=64 * 1024)
        repo = f"soak/img-{uuid.uuid4().hex[:8]}"
        imagekit.push(layout, self.host, repo)
        store = self.work / "fdstore.sock"
        store_log = open(self.work / "fdstore.log", "wb")  # noqa: SIM115 - closed below
        store_proc = subprocess.Popen([*IMGFS, "-v", "fd-store", str(store)], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=store_log)
        try:
            assert store_proc.stdout.readline().strip() == b"ready"
            with ShapingProxy(self.host) as proxy:
                image = f"docker://{proxy.host}/{repo}:latest"
                n = 0
                while n == 0 or time.monotonic() - t0 < seconds:
                    n += 1
                    self.cycle(n, image, proxy, store, CYCLE_SECONDS)
                faults = Counter(r.fault for r in proxy.records() if r.fault)
        finally:
            for mp in self.mps:
                unmount(mp)
                self.pids.extend(p for p in pids_serving(mp) if p not in self.pids)
            for pid in self.pids:
                self.stop(pid)
            store_proc.terminate()
            store_proc.wait(30)
            store_proc.stdout.close()
            store_log.close()
        with open("/proc/self/mountinfo") as f:
            leaked_mounts = [m for m in f if str(self.work) in m]
        leaked_daemons = [p for mp in self.mps for p in pids_serving(mp)]
        return {"seconds": round(time.monotonic() - t0, 1), "cycles": self.stats["cycles"],
                "mounts": self.stats["mounts"], "takeovers": self.stats["takeovers"],
                "takeover_retries": self.stats["takeover_retries"],
                "reads_ok": self.stats["reads_ok"], "reads_eio": self.stats["reads_eio"],
                "reads_wrong": self.stats["reads_wrong"], "reads_other_error": self.stats["reads_other_error"],
                "bytes_verified": self.stats["bytes_verified"],
                "cache_chunks_verified": self.stats["cache_chunks_verified"],
                "faults_injected": dict(sorted(faults.items())), "max_daemon_rss": self.max_rss,
                "max_daemon_fds": self.max_fds, "leaked_mounts": len(leaked_mounts),
                "leaked_daemons": len(leaked_daemons),
                "leaked_fds": len(os.listdir("/proc/self/fd")) - own_fds, "failures": self.failures[:50]}


def run_cli(argv: list[str] | None, soak_cls, module: str, passed, description: str) -> int:
    """The long form's command line, shared by both soaks: a private registry, one run of
    ``soak_cls(host, workdir, seed).run(seconds)``, the result as JSON (``--out`` to keep it);
    exit 0 only when ``passed(result)``."""
    from tests.support.registry import start_registry

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgfs-soak-") as tmp:
        reg = start_registry(Path(tmp) / "registry")
        try:
            result = soak_cls(reg.host, Path(tmp) / "work", args.seed).run(args.seconds)
        finally:
            reg.stop()
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["command"] = f"python -m {module} --seconds {args.seconds:g} --seed {args.seed}"
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if passed(result) else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, Soak, "tests.soak.soak", lambda r: (
        not r["failures"] and r["reads_wrong"] == 0 and not r["leaked_mounts"] and not r["leaked_daemons"]),
        __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
