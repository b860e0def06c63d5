"""Stopping what a snapshotter leaves running on purpose.

fusefs daemons and the fd store outlive the snapshotter by design (a restarted snapshotter
adopts them), so whoever tears a whole snapshotter root down for good (the demo, the
benchmark harness) stops them from the snapshotter's own state, by PID, never by name. (The
fd store would exit by itself a few seconds after the snapshotter and the mounts are gone;
stopping it here makes "everything stopped" true when the caller says so.)
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from snapshotter import daemons
from snapshotter.store import Store


def stop_leftover_daemons(root: Path, timeout: float = 20.0) -> None:
    """Stop every daemon recorded under `root` (or unmount its mountpoint if it is gone),
    then the fd store recorded there."""
    db = root / "metadata.db"
    if db.exists():
        store = Store(db)
        try:
            for _key, mp, pid, _spec in store.daemons():
                if daemons.alive(pid) and daemons.cmdline_has(pid, mp):
                    daemons.stop(pid, Path(mp))
                else:
                    daemons.unmount(mp)
        finally:
            store.close()
    _stop_fd_store(root / "fdstore", timeout)


def _stop_fd_store(fdstore: Path, timeout: float) -> None:
    """SIGTERM (it closes its fds and socket), SIGKILL if it is still there after `timeout`."""
    try:
        pid = int((fdstore / "pid").read_text().strip())
    except (OSError, ValueError):
        return
    if not (daemons.alive(pid) and daemons.cmdline_has(pid, str(fdstore / "fd.sock"))):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while daemons.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if daemons.alive(pid):
        daemons.kill(pid)
