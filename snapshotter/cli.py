"""`imgfs-snapshotter --config FILE`: runs the containerd proxy snapshotter until SIGTERM/SIGINT.

Exit codes: 0 stopped by a signal, 2 usage or config error, 4 cannot start (socket,
root dir). On start it re-adopts the fusefs daemons and mounts a previous run left
(see snapshotter.remote), so a crash or restart loses no running container.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from snapshotter import config as cfgmod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="imgfs-snapshotter", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, help="TOML config file (docs/snapshotter.md)")
    ap.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                    help="overrides log_level of the config")
    args = ap.parse_args(argv)
    try:
        cfg = cfgmod.load(args.config)
    except cfgmod.ConfigError as e:
        print(f"imgfs-snapshotter: {e}", file=sys.stderr)
        return 2
    level = (args.log_level or cfg.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    log = logging.getLogger("imgfs.snapshotter")

    from snapshotter.remote import RemoteLayers
    from snapshotter.service import serve
    from snapshotter.snapshots import Snapshotter
    from snapshotter.store import Store

    try:
        cfg.root.mkdir(parents=True, exist_ok=True)
        store = Store(cfg.root / "metadata.db")
        remote = RemoteLayers(cfg, store)
        snap = Snapshotter(cfg.root, store, remote)
        remote.recover()
        snap.release()           # a crash between a Remove and its daemon's stop leaves one running
        cri = None
        if cfg.cri.listen:      # before the snapshot server: it binds under a umask of 0177
            from snapshotter import criproxy

            cri = criproxy.serve(remote.keychain, Path(cfg.cri.listen), cfg.cri.backend)
        server = serve(snap, cfg.socket)
    except OSError as e:
        print(f"imgfs-snapshotter: cannot start: {e}", file=sys.stderr)
        return 4
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = threading.Thread(target=remote.supervise, args=(stop,), name="supervise", daemon=True)
    supervisor.start()
    log.info("serving containerd.services.snapshots.v1 on %s (root %s)", cfg.socket, cfg.root)
    stop.wait()
    log.info("stopping: fusefs mounts stay up for the next start to adopt")
    server.stop(grace=5).wait()
    if cri is not None:
        cri.stop(grace=5)
    remote.wake()
    supervisor.join(timeout=30)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
