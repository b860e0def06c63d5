"""Stopping what a snapshotter leaves running on purpose.

fusefs daemons outlive the snapshotter by design (a restarted snapshotter adopts them), so
whoever tears a whole snapshotter root down for good (the demo, the benchmark harness) stops
them from the snapshotter's own state, by PID, never by name.
"""
from __future__ import annotations

from pathlib import Path

from snapshotter import daemons
from snapshotter.store import Store


def stop_leftover_daemons(root: Path) -> None:
    """Stop every daemon recorded under `root` (or unmount its mountpoint if it is gone)."""
    db = root / "metadata.db"
    if not db.exists():
        return
    store = Store(db)
    try:
        for _key, mp, pid, _spec in store.daemons():
            if daemons.alive(pid) and daemons.cmdline_has(pid, mp):
                daemons.stop(pid, Path(mp))
            else:
                daemons.unmount(mp)
    finally:
        store.close()
