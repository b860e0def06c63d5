"""The fusefs daemons: start `imgfs mount`, check them, stop them, find them again.

One daemon per image, a child process in a session of its own, so that it outlives
a crashed or restarted snapshotter (a running container keeps its filesystem); the
next snapshotter adopts it by PID, checked against /proc/PID/cmdline. Readiness and
health are read from the kernel (/proc/self/mountinfo and a stat of the mountpoint,
which fails with ENOTCONN once the daemon is gone), not from the daemon's word.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("imgfs.snapshotter")


class MountError(Exception):
    """`imgfs mount` did not come up; the message carries the tail of its log."""


def mounted(path: str | Path) -> bool:
    """True when `path` is a mountpoint in this mount namespace (any fs type)."""
    target = os.path.realpath(path).encode()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ")[4].replace(b"\\040", b" ")
            if field == target:
                return True
    return False


def healthy(path: str | Path) -> bool:
    """Mounted and answering (a dead FUSE daemon leaves a mount that says ENOTCONN)."""
    if not mounted(path):
        return False
    try:
        os.stat(path)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return False
        raise


def alive(pid: int) -> bool:
    """Running (not a zombie) process `pid`."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def cmdline_has(pid: int, needle: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle.encode() in f.read().split(b"\0")
    except OSError:
        return False


def unmount(path: str | Path) -> None:
    """Detaches `path` if mounted: a clean unmount, else a lazy one (busy or dead daemon)."""
    for _ in range(3):
        if not mounted(path):
            return
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, check=False)


def imgfs_command(name: str) -> list[str]:
    """The fusefs CLI: the one next to this interpreter (the venv) before PATH's."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return [str(local)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-m", "fusefs.cli"]


def start(argv: list[str], mountpoint: Path, logfile: Path, timeout: float) -> subprocess.Popen:
    """Runs `argv` (an `imgfs mount ...` without --daemon) and waits until the mount is ready."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as lf:
        lf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        lf.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MountError(f"imgfs mount exited with {proc.returncode}: {_tail(logfile)}")
        if healthy(mountpoint):
            return proc
        time.sleep(0.05)
    stop(proc.pid, mountpoint, proc)
    raise MountError(f"imgfs mount not ready after {timeout:.0f} s: {_tail(logfile)}")


def stop(pid: int, mountpoint: Path, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """Unmounts and ends daemon `pid` (TERM, then KILL); reaps it when it is our child."""
    unmount(mountpoint)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not alive(pid):
            break
        time.sleep(0.05)
    else:
        log.warning("fusefs daemon %d ignored SIGTERM for %.0f s: SIGKILL", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc is not None:
            proc.wait()
    unmount(mountpoint)


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() or "(empty log)"
    except OSError:
        return "(no log)"
