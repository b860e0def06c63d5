"""A cold node for one benchmark run: fresh containerd, fresh imgfs snapshotter, no caches.

Why a whole new containerd and snapshotter per run (instead of `ctr images rm` and
a content GC): it is the only way to be sure nothing survives from the previous run:
no content blobs, no snapshots, no chunk cache, no fusefs daemon, no warm Python
imports in a long-lived daemon. Starting them is not timed. The page cache is
dropped (`echo 3 > /proc/sys/vm/drop_caches`) after they are up; the registry's
blobs are then read back into the page cache, because the registry stands for a
remote server whose disk is not part of the client's cold start.

The snapshotter runs with `access_log = true` (each fusefs daemon writes its access log
next to its control socket, so the workload's file accesses can be read after
readiness) and, unless told otherwise, `mount_on_pull = true` (see docs/imgbench.md).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import benchmarks.images  # noqa: F401  (puts the repo root on sys.path for tests.support)
from snapshotter.leftovers import stop_leftover_daemons
from tests.support.containerd import Containerd, SnapshotterProc, start_containerd, start_snapshotter

CLK_TCK = os.sysconf("SC_CLK_TCK")

def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(paths: list[Path]) -> None:
    """Read files into the page cache (the registry's side of the link stays warm)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


@dataclass(frozen=True)
class ProcStats:
    pid: int
    name: str
    peak_rss: int           # bytes, VmHWM
    cpu_seconds: float      # utime + stime


def proc_stats(pid: int, name: str) -> ProcStats | None:
    """Peak RSS and CPU time of a live process from /proc; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    hwm = next((int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmHWM:")), 0)
    fields = stat.rpartition(")")[2].split()      # comm may contain spaces: cut after it
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return ProcStats(pid, name, hwm, cpu)


def pids_with(arg: str) -> list[int]:
    """PIDs whose command line has an argument containing `arg` (e.g. our private root)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.encode() in c for c in cmd):
            out.append(int(d))
    return out


@dataclass
class ColdNode:
    """containerd (+ the imgfs snapshotter when `snapshotter`) in a private temp dir."""
    registry_hosts: list[str]
    snapshotter: bool = True
    prefetch: bool = False
    mount_on_pull: bool = True
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="imgbench-", dir="/tmp")))
    ctd: Containerd | None = None
    snap: SnapshotterProc | None = None

    @property
    def snap_root(self) -> Path:
        return self.dir / "snap"

    def start(self) -> ColdNode:
        try:
            plugins = {}
            if self.snapshotter:
                self.snap_root.mkdir()
                sock = self.dir / "imgfs.sock"
                cfg = self._config(sock)
                self.snap = start_snapshotter(cfg, self.snap_root, sock, self.dir / "snapshotter.log")
                plugins["imgfs"] = str(sock)
            self.ctd = start_containerd(self.dir / "ctd", proxy_plugins=plugins)
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self, sock: Path) -> Path:
        hosts = ", ".join(f'"{h}"' for h in self.registry_hosts)
        cfg = self.dir / "snapshotter.toml"
        cfg.write_text(f'root = "{self.snap_root}"\nsocket = "{sock}"\nlog_level = "info"\n'
                       f"mount_timeout = 120.0\naccess_log = true\n"
                       f"mount_on_pull = {'true' if self.mount_on_pull else 'false'}\n"
                       f"[registry]\nplain_http = [{hosts}]\n"
                       f"[fetch]\nprefetch = {'true' if self.prefetch else 'false'}\n")
        return cfg

    def ctr_argv(self, tool: str, *args: str) -> list[str]:
        assert self.ctd is not None
        return [tool, "-a", self.ctd.address, "-n", self.ctd.namespace, *args]

    def daemon_dirs(self) -> list[Path]:
        """Per-fusefs-daemon dirs (control.sock, access.jsonl, imgfs.log) of the snapshotter."""
        d = self.snap_root / "daemons"
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def imgfs_processes(self) -> list[ProcStats]:
        """The snapshotter and its fusefs daemons, with peak RSS and CPU so far."""
        if self.snap is None:
            return []
        out = [proc_stats(self.snap.proc.pid, "imgfs-snapshotter")]
        out += [proc_stats(pid, "imgfs mount") for pid in pids_with(str(self.snap_root / "mounts"))
                if pid != self.snap.proc.pid]
        return [s for s in out if s is not None]

    def containerd_stats(self) -> ProcStats | None:
        return proc_stats(self.ctd.proc.pid, "containerd") if self.ctd else None

    def stop(self) -> None:
        """Stops everything it started (by PID), unmounts, removes its dir. Safe to call twice."""
        try:
            if self.ctd is not None:
                self.ctd.stop()
        finally:
            try:
                if self.snap is not None:
                    self.snap.stop()
                    stop_leftover_daemons(self.snap_root)
            finally:
                _unmount_under(self.dir)
                shutil.rmtree(self.dir, ignore_errors=True)


def _unmount_under(path: Path) -> None:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        targets = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
    for t in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True, check=False)

