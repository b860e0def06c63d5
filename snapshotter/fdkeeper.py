"""The snapshotter's `imgfs fd-store`: one per snapshotter, so fusefs daemons can be replaced
without breaking running containers.

Why: a dead fusefs daemon's FUSE connection is aborted (ENOTCONN for every open file of
the container) unless another process holds its /dev/fuse fd. `imgfs fd-store` holds it;
a new daemon started on the same mountpoint with the same `--fd-store` takes the live
connection over (docs/reliability.md). Like the daemons it runs in a session of its own
and outlives a restarted snapshotter, which adopts it by the PID in ROOT/fdstore/pid
(checked against /proc/PID/cmdline and an answer on its socket).

It is fusefs's fd store server (`fusefs.fdstore.serve`, what `imgfs fd-store` runs) plus
a watchdog (`python -m snapshotter.fdkeeper SOCK PID`), so that it never outlives its use:
it exits when its socket is removed (the snapshotter's root is gone), or when the
snapshotter PID that started it is gone and none of the fds it holds belongs to a live
mount (a restarted snapshotter starts a new one when it next needs one).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fusefs import fdstore
from snapshotter import daemons

log = logging.getLogger("imgfs.snapshotter")


class FdKeeper:
    """Starts, adopts and restarts the fd store under `root`/fdstore."""

    def __init__(self, root: Path, imgfs_bin: str) -> None:
        self.dir = root / "fdstore"
        self.socket = self.dir / "fd.sock"
        self.pidfile = self.dir / "pid"
        self.imgfs_bin = imgfs_bin
        self.proc: subprocess.Popen | None = None
        self._ensure_lock = threading.Lock()

    def pid(self) -> int:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return 0

    def answers(self) -> bool:
        try:
            reply, _ = fdstore.request(str(self.socket), {"op": "list"}, timeout=5)
        except (OSError, ValueError):
            return False
        return bool(reply.get("ok"))

    def holds(self, mountpoint: str | Path) -> bool:
        """The store holds the fd of `mountpoint` (a takeover can work)."""
        try:
            reply, _ = fdstore.request(str(self.socket), {"op": "list"}, timeout=5)
        except (OSError, ValueError):
            return False
        return os.path.abspath(mountpoint) in reply.get("mountpoints", [])

    def alive(self) -> bool:
        pid = self.pid()
        return daemons.alive(pid) and daemons.cmdline_has(pid, str(self.socket)) and self.answers()

    def _ours_or_needed(self, pid: int) -> bool:
        """A store started by us, or one that holds live mounts. One of a previous snapshotter
        that holds none is about to exit by itself (its watchdog): replace it now."""
        if daemons.cmdline_has(pid, str(os.getpid())):
            return True
        try:
            reply, _ = fdstore.request(str(self.socket), {"op": "list"}, timeout=5)
        except (OSError, ValueError):
            return False
        return any(fdstore.fuse_mounted(mp) for mp in reply.get("mountpoints", []))

    def ensure(self, timeout: float = 30.0) -> str:
        """The socket of a running fd store: the one alive (adopted), else a new one. Daemons of
        different images start at once: one thread at a time checks and starts the store."""
        with self._ensure_lock:
            return self._ensure(timeout)

    def _ensure(self, timeout: float) -> str:
        if self.proc is not None:
            self.proc.poll()       # reap a dead child
        old = self.pid()
        if self.alive():
            if self._ours_or_needed(old):
                return str(self.socket)
            log.info("fd store %d of a previous snapshotter holds no live mount: replacing it", old)
            daemons.kill(old, self.proc)
        elif old and daemons.alive(old) and daemons.cmdline_has(old, str(self.socket)):
            log.warning("fd store %d does not answer: killing it", old)
            daemons.kill(old, self.proc)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [sys.executable, "-m", "snapshotter.fdkeeper", str(self.socket), str(os.getpid())]
        with open(self.dir / "fdstore.log", "ab") as lf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                         start_new_session=True,
                                         cwd=str(Path(__file__).resolve().parents[1]))
        self.pidfile.write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OSError(f"imgfs fd-store exited with {self.proc.returncode}")
            if self.answers():
                log.info("fd store %d serves %s", self.proc.pid, self.socket)
                return str(self.socket)
            time.sleep(0.02)
        raise OSError(f"imgfs fd-store not ready after {timeout:.0f} s")

    def drop(self, mountpoint: str | Path) -> None:
        """Forget `mountpoint`'s fd (its mount was removed by us, not by its daemon)."""
        try:
            fdstore.request(str(self.socket), {"op": "drop", "mountpoint": os.path.abspath(mountpoint)},
                            timeout=5)
        except (OSError, ValueError):
            pass


WATCH_INTERVAL = 2.0


def _unused(sock: str, parent: int) -> bool:
    if not os.path.exists(sock):
        return True
    if daemons.alive(parent):
        return False
    try:
        reply, _ = fdstore.request(sock, {"op": "list"}, timeout=5)
    except (OSError, ValueError):
        return False
    return not any(fdstore.fuse_mounted(mp) for mp in reply.get("mountpoints", []))


def _watch(sock: str, parent: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        if _unused(sock, parent):
            log.info("fd store %s is not needed any more: exiting", sock)
            os.kill(os.getpid(), signal.SIGTERM)     # serve() closes the fds and the socket
            return


def main(argv: list[str] | None = None) -> int:
    """`python -m snapshotter.fdkeeper SOCK SNAPSHOTTER_PID`: the fd store with its watchdog."""
    sock, parent = (argv if argv is not None else sys.argv[1:])[:2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_watch, args=(sock, int(parent)), name="fdstore-watch", daemon=True).start()
    fdstore.serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
