"""Container soak: real containerd + imgfs-snapshotter start and stop many containers of an
imgfs image while benchmarks.proxy injects faults between the snapshotter and the registry.

Each container hashes the image's /data files with its own sha256sum and writes the sums
to a bind-mounted dir (not ctr's stdout, which can lose output under load); every sum is
compared with the source. A container that fails to start, or a file it cannot read (EIO),
while faults are injected is counted; a wrong digest is always a failure. Each cycle pulls
the image (faults off), runs containers (faults on), removes the image and runs containerd's
GC (snapshot Remove + Cleanup): then no FUSE mount, fusefs daemon, task or snapshot may be
left. At the end the stack stops and the fd store must exit by itself. Containers start
``parallel`` at a time (default 3), as a node starts several pods of one image at once:
concurrent Prepare/Mounts/Remove on the snapshotter over one image's fusefs mount.

Short form: tests/soak/test_soak_containers.py; long form: ``make soak`` (scripts/soak.sh)
or ``python -m tests.soak.soak_containers --seconds N --out FILE.json``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from benchmarks.proxy import FAULTS, ShapingProxy
from snapshotter import daemons
from tests.soak.soak import BLOB_GET, _rss_fds
from tests.support.stack import Stack, imgconv, make_stack
from tests.support.tinyimage import put_blob

BINARIES = ("/usr/bin/dash", "/usr/bin/sha256sum", "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2")
FAULT_EVERY = 2
HASH_ALL = 'for f in /data/*; do /usr/bin/sha256sum "$f" >> /out/sums; done; echo done > /out/done'


def data_files(seed: int = 7) -> dict[str, bytes]:
    """Files of a few sizes (several chunks each, so faults hit mid-file)."""
    rng = random.Random(seed)
    sizes = {"a": 100, "b": 70_000, "c": 600_000, "d": 1_500_000, "e": 3 * (1 << 20) + 17}
    return {f"data/{k}": rng.randbytes(n) for k, n in sizes.items()}


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "usr", "usr/bin", "lib", "lib/x86_64-linux-gnu", "lib64", "tmp", "proc", "dev",
                  "sys", "out", "data"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(ti)
        content = {p.lstrip("/"): open(os.path.realpath(p), "rb").read() for p in BINARIES}  # noqa: SIM115
        for name, data in {**content, **files}.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 0
            tar.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("bin/sh")
        ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "/usr/bin/dash", 0
        tar.addfile(ti)
    return gzip.compress(raw.getvalue(), mtime=0), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def push_image(host: str, repo: str, files: dict[str, bytes]) -> None:
    """A plain one-layer image (dash, sha256sum, the data files) at host/repo:plain."""
    base = f"http://{host}"
    layer, diff_id = _layer(files)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(base, repo, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put_blob(base, repo, layer), "size": len(layer)}]}).encode()
    requests.put(f"{base}/v2/{repo}/manifests/plain", data=manifest, timeout=30,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).raise_for_status()


class ContainerSoak:
    def __init__(self, registry_host: str, workdir: Path, seed: int = 0, per_cycle: int = 6,
                 parallel: int = 3) -> None:
        self.host, self.work, self.rng, self.per_cycle = registry_host, workdir, random.Random(seed), per_cycle
        self.parallel = max(1, parallel)
        self._lock = threading.Lock()       # containers of a batch report from their own threads
        self.files = data_files()
        self.sums = {"/" + k: hashlib.sha256(v).hexdigest() for k, v in self.files.items()}
        self.stats: Counter = Counter()
        self.failures: list[str] = []
        self.max_rss = 0
        self.start_errors: list[str] = []

    def _leftovers(self, st: Stack) -> dict[str, list]:
        ctr = st.ctd.ctr
        return {"mounts": st.fuse_mounts(), "daemons": st.daemon_pids(),
                "tasks": ctr("tasks", "ls", "-q").stdout.split(),
                "containers": ctr("containers", "ls", "-q").stdout.split(),
                "snapshots": ctr("snapshots", "--snapshotter", "imgfs", "ls").stdout.splitlines()[1:]}

    def _drop_page_cache(self, st: Stack) -> None:
        """So the containers' reads reach the fusefs daemon instead of the page cache."""
        for mp in st.fuse_mounts():
            for name in self.files:
                try:
                    fd = os.open(Path(mp) / name, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    def run_container(self, st: Stack, ref: str, cid: str) -> None:
        out = self.work / "out" / cid
        out.mkdir(parents=True)
        r = st.ctd.ctr("run", "--snapshotter", "imgfs", "--rm",
                       "--mount", f"type=bind,src={out},dst=/out,options=rbind:rw",
                       ref, cid, "/bin/sh", "-c", HASH_ALL, check=False, timeout=600)
        if not (out / "done").exists():
            st.ctd.ctr("tasks", "rm", "-f", cid, check=False)
            st.ctd.ctr("containers", "rm", cid, check=False)
            with self._lock:
                self.stats["containers_run"] += 1
                self.stats["containers_failed"] += 1   # could not start (or exec) under faults: allowed
                self.start_errors.append(f"{cid}: {r.returncode} {r.stderr.strip()[-300:]}")
                if r.returncode == 0:
                    self.failures.append(f"{cid}: exit 0 but no done file")
            return
        lines = (out / "sums").read_text().splitlines() if (out / "sums").exists() else []
        with self._lock:
            self.stats["containers_run"] += 1
            self.stats["containers_ok"] += 1
            seen = set()
            for line in lines:
                digest, _, name = line.partition("  ")
                seen.add(name)
                if self.sums.get(name) == digest:
                    self.stats["digests_ok"] += 1
                    self.stats["bytes_verified"] += len(self.files[name.lstrip("/")])
                else:
                    self.stats["digests_wrong"] += 1
                    self.failures.append(f"{cid}: WRONG DIGEST {line}")
            self.stats["reads_failed"] += len(set(self.sums) - seen)   # sha256sum got EIO: allowed

    def run_batch(self, st: Stack, ref: str, cids: list[str]) -> None:
        """Run ``cids`` at the same time (each in its own thread) and wait for all of them."""
        threads = [threading.Thread(target=self._run_guarded, args=(st, ref, cid)) for cid in cids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _run_guarded(self, st: Stack, ref: str, cid: str) -> None:
        try:
            self.run_container(st, ref, cid)
        except (subprocess.SubprocessError, OSError) as exc:     # a ctr timeout: a soak failure
            with self._lock:
                self.failures.append(f"{cid}: {type(exc).__name__}: {exc}")

    def cycle(self, n: int, st: Stack, ref: str, proxy: ShapingProxy) -> None:
        for attempt in range(5):     # faults are off: a pull must work (retried: containerd is lazy)
            if st.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref,
                                 check=attempt == 4).returncode == 0:
                break
            time.sleep(1)
        stop = threading.Event()

        def faults() -> None:     # one fault per FAULT_EVERY blob GETs: a few get through
            armed_at = len(proxy.blob_gets())
            while not stop.is_set():
                if len(proxy.blob_gets()) >= armed_at + FAULT_EVERY:
                    kind = self.rng.choice(FAULTS)
                    proxy.inject(kind, 1, seconds=0.3 if kind == "delay" else 0.0, match=BLOB_GET)
                    armed_at = len(proxy.blob_gets())
                stop.wait(0.02)

        t = threading.Thread(target=faults, daemon=True)
        t.start()
        try:
            for first in range(0, self.per_cycle, self.parallel):
                self._drop_page_cache(st)
                last = min(first + self.parallel, self.per_cycle)
                self.run_batch(st, ref, [f"soak-{n}-{i}" for i in range(first, last)])
                for pid in st.daemon_pids():
                    self.max_rss = max(self.max_rss, _rss_fds(pid)[0])
        finally:
            stop.set()
            t.join(60)
            proxy.clear_faults()
        self._drop_page_cache(st)     # faults over: the next container must start and read it all
        before = self.stats["digests_ok"]
        self.run_batch(st, ref, [f"soak-{n}-after-{i}" for i in range(self.parallel)])
        if self.stats["digests_ok"] - before != self.parallel * len(self.sums):
            self.failures.append(f"cycle {n}: the container after the faults did not hash every file")
        else:
            self.stats["recovered_cycles"] += 1
        st.ctd.ctr("images", "rm", ref, check=False)
        st.sync_gc()                  # snapshot Remove + the snapshotter's Cleanup
        deadline = time.monotonic() + 60
        while (left := {k: v for k, v in self._leftovers(st).items() if v}) and time.monotonic() < deadline:
            time.sleep(0.5)
            st.sync_gc()
        if left:
            self.failures.append(f"cycle {n} left after removal + Cleanup: {left}")
        self.stats["cycles"] += 1

    def run(self, seconds: float, min_cycles: int = 1) -> dict:
        t0 = time.monotonic()
        repo = f"soak-ctr/img-{uuid.uuid4().hex[:8]}"
        push_image(self.host, repo, self.files)
        imgconv("convert", "--plain-http", f"docker://{self.host}/{repo}:plain",
                f"docker://{self.host}/{repo}:imgfs")
        with ShapingProxy(self.host) as proxy:
            st = make_stack(proxy.host, "cache_size = 2097152\nhealth_timeout = 3")
            store_pid = 0
            try:
                ref = f"{proxy.host}/{repo}:imgfs"
                n = 0
                while n < min_cycles or time.monotonic() - t0 < seconds:
                    n += 1
                    self.cycle(n, st, ref, proxy)
                faults = Counter(r.fault for r in proxy.records() if r.fault)
                pidfile = st.snap.root / "fdstore" / "pid"
                store_pid = int(pidfile.read_text()) if pidfile.exists() else 0
            finally:
                leftover_dir = st.dir
                st.stop()
            deadline = time.monotonic() + 60      # no mount left: the fd store exits by itself
            while store_pid and daemons.alive(store_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            store_leaked = bool(store_pid and daemons.alive(store_pid) and daemons.cmdline_has(store_pid, "fd"))
            if store_leaked:
                self.failures.append(f"fd store {store_pid} still alive 60 s after the snapshotter stopped")
                os.kill(store_pid, 9)
        with open("/proc/self/mountinfo") as f:
            leaked_mounts = [m for m in f if str(leftover_dir) in m]
        s = self.stats
        return {"seconds": round(time.monotonic() - t0, 1), "cycles": s["cycles"],
                "recovered_cycles": s["recovered_cycles"],
                "parallel": self.parallel,
                "containers_run": s["containers_run"], "containers_ok": s["containers_ok"],
                "containers_failed_under_faults": s["containers_failed"], "digests_ok": s["digests_ok"],
                "digests_wrong": s["digests_wrong"], "reads_failed_under_faults": s["reads_failed"],
                "bytes_verified": s["bytes_verified"], "faults_injected": dict(sorted(faults.items())),
                "max_daemon_rss": self.max_rss, "leaked_mounts": len(leaked_mounts),
                "fd_store_leaked": store_leaked, "failures": self.failures[:50],
                "start_errors": self.start_errors[:10]}


def main(argv: list[str] | None = None) -> int:
    from tests.soak.soak import run_cli

    return run_cli(argv, ContainerSoak, "tests.soak.soak_containers", lambda r: (
        not r["failures"] and r["digests_wrong"] == 0 and not r["leaked_mounts"]), __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
