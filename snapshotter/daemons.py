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
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("imgfs.snapshotter")


class MountError(Exception):
    """`imgfs mount` did not come up; the message carries the tail of its log."""


def mounted(path: str | Path) -> bool:
    """True when `path` is a mountpoint in this mount namespace (any fs type)."""
    # realpath of the parent only: resolving the mountpoint itself would ask a hung daemon.
    p = Path(path)
    target = os.path.join(os.path.realpath(p.parent), p.name).encode()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ")[4].replace(b"\\040", b" ")
            if field == target:
                return True
    return False


def healthy(path: str | Path, timeout: float = 10.0, control: str | Path | None = None) -> bool:
    """Mounted and answering within `timeout` (a dead FUSE daemon leaves a mount that says
    ENOTCONN; a hung one never answers, so the stat runs in a thread we stop waiting for)."""
    if not mounted(path):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            os.stat(path)
            result.append(True)
        except OSError as e:
            result.append(e.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO))

    t = threading.Thread(target=probe, name="mount-probe", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.warning("mount %s did not answer a stat in %.0f s: the daemon hangs", path, timeout)
        return False
    if not (result and result[0]):
        return False
    if control is not None and not responsive(control, timeout):
        log.warning("fusefs daemon of %s did not answer on %s in %.0f s: it hangs", path, control, timeout)
        return False
    return True


def responsive(control: str | Path, timeout: float = 10.0) -> bool:
    """The daemon answers `GET /state` on its control socket (HTTP/1.0 over a unix socket).

    Why not only a stat of the mount: the kernel answers that from its attribute cache (the
    image is read-only, so fusefs asks for long timeouts) even when the daemon is frozen.
    A daemon started without a control socket counts as responsive.
    """
    if not os.path.exists(control):
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(control))
            s.sendall(b"GET /state HTTP/1.0\r\nHost: imgfs\r\n\r\n")
            head = s.recv(64)
        except OSError:
            return False
    return head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]


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
    # --no-canonicalize: umount must not stat the path, which a hung FUSE daemon never answers.
    for _ in range(3):
        if not mounted(path):
            return
        try:
            r = subprocess.run(["umount", "--no-canonicalize", str(path)], capture_output=True,
                               text=True, check=False, timeout=30)
            ok = r.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok:
            subprocess.run(["umount", "--no-canonicalize", "-l", str(path)], capture_output=True,
                           text=True, check=False, timeout=30)


def kill(pid: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """SIGKILL for a daemon that is dead or hung (nothing graceful is left to do); waits for it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(timeout)
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def imgfs_command(name: str) -> list[str]:
    """The fusefs CLI: the one next to this interpreter (the venv) before PATH's."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return [str(local)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-m", "fusefs.cli"]


def start(argv: list[str], mountpoint: Path, logfile: Path, timeout: float,
          env: dict[str, str] | None = None, control: Path | None = None,
          keep_mount: bool = False) -> subprocess.Popen:
    """Runs `argv` (an `imgfs mount ...` without --daemon) and waits until the mount is ready.

    With `control`, ready also means the daemon answers on that socket (it binds it only
    once it serves the mount): a takeover's mountpoint is mounted, and may even answer a
    stat from the kernel's cache, before the new daemon serves it. `keep_mount`: a daemon
    that does not come up is killed without unmounting (a takeover's connection stays
    alive in the fd store for the next attempt)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    if control is not None:
        try:
            control.unlink()         # a dead daemon's socket must not count as an answer
        except FileNotFoundError:
            pass
    with open(logfile, "ab") as lf:
        lf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        lf.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MountError(f"imgfs mount exited with {proc.returncode}: {_tail(logfile)}")
        if (control is None or (control.exists() and responsive(control))) and healthy(mountpoint):
            return proc
        time.sleep(0.01)
    if keep_mount:
        kill(proc.pid, proc)
    else:
        stop(proc.pid, mountpoint, proc)
    raise MountError(f"imgfs mount not ready after {timeout:.0f} s: {_tail(logfile)}")


def stop(pid: int, mountpoint: Path, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """Unmounts and ends daemon `pid` (TERM, then KILL); reaps it when it is our child."""
    unmount(mountpoint)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)     # a stopped (hung) daemon must run to see the TERM
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
