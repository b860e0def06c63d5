"""A containerd + imgfs-snapshotter stack for tests and soaks: one snapshotter and one private
containerd using it as proxy plugin `imgfs`, stopped by PID with every daemon and mount left
under its private dir (also when the caller failed)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from snapshotter import daemons
from tests.support.containerd import (
    Containerd,
    SnapshotterProc,
    start_containerd,
    start_snapshotter,
    write_snapshotter_config,
)

ROOT = Path(__file__).resolve().parents[2]


def imgconv(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "converter.cli", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"imgconv {' '.join(args)} failed ({r.returncode}): {r.stderr[-3000:]}")


@dataclass
class Stack:
    """One imgfs-snapshotter and one containerd using it as proxy plugin `imgfs`."""
    dir: Path
    snap: SnapshotterProc
    ctd: Containerd
    registry_host: str

    def restart_snapshotter(self) -> None:
        self.snap.stop()
        self.snap = start_snapshotter(self.snap.config, self.snap.root, self.snap.socket, self.snap.log)

    def mounts_dir(self) -> Path:
        return self.snap.root / "mounts"

    def daemon_pids(self) -> list[int]:
        """Live `imgfs mount` processes serving mountpoints of this snapshotter."""
        prefix = str(self.mounts_dir()) + "/"
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "mount" in cmd and any(a.startswith(prefix) for a in cmd) and daemons.alive(int(d)):
                out.append(int(d))
        return out

    def fuse_mounts(self) -> list[str]:
        prefix = str(self.mounts_dir()) + "/"
        with open("/proc/self/mountinfo") as f:
            return [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]

    def run(self, image: str, cid: str, *cmd: str, timeout: float = 300) -> str:
        """`ctr run --rm --snapshotter imgfs IMAGE CID CMD...`, returning its output."""
        out = self.ctd.ctr("run", "--snapshotter", "imgfs", "--rm", image, cid, *cmd, timeout=timeout).stdout
        if not out:
            # ctr can lose the output of a task that exits right after printing (a known race of
            # its fifo copy under load, containerd#770): the task succeeded, so run it once more.
            out = self.ctd.ctr("run", "--snapshotter", "imgfs", "--rm", image, cid + "-again", *cmd,
                               timeout=timeout).stdout
        return out

    def sync_gc(self) -> None:
        """Runs containerd's garbage collection now and waits for it (a `--sync` lease delete):
        its own schedule backs off after a slow run, for a minute or more on a loaded machine."""
        lease = self.ctd.ctr("leases", "create").stdout.split()[0]
        self.ctd.ctr("leases", "delete", "--sync", lease)

    def retry(self, fn, timeout: float = 60):
        """Calls fn until it does not raise (containerd reconnects to a restarted plugin lazily)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        """Stops containerd, the snapshotter and every daemon/mount left under its root."""
        try:
            self.ctd.stop()
        finally:
            self.snap.stop()
            for pid in self.daemon_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for mp in sorted(self.fuse_mounts(), key=len, reverse=True):
                subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
            _unmount_below(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        targets = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
    for t in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True, check=False)


def make_stack(registry_host: str, extra_config: str = "", registry_extra: str = "") -> Stack:
    d = Path(tempfile.mkdtemp(prefix="snap-", dir="/tmp"))
    root, sock = d / "root", d / "imgfs.sock"
    cfg = write_snapshotter_config(root, sock, [registry_host], extra_config, registry_extra)
    snap = start_snapshotter(cfg, root, sock, d / "snapshotter.log")
    try:
        ctd = start_containerd(d / "ctd", proxy_plugins={"imgfs": str(sock)})
    except BaseException:
        snap.stop()
        raise
    return Stack(dir=d, snap=snap, ctd=ctd, registry_host=registry_host)
