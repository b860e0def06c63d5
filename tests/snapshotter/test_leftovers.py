"""Tearing a snapshotter root down for good (the demo, the benchmark harness): what the
snapshotter leaves running on purpose is stopped by PID from its state, the fd store too."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from snapshotter import daemons
from snapshotter.leftovers import stop_leftover_daemons
from tests.support.wait import wait_for


def test_the_fd_store_is_stopped_with_the_root(tmp_path):
    fdstore = tmp_path / "root" / "fdstore"
    fdstore.mkdir(parents=True)
    sock = fdstore / "fd.sock"
    # a real fd store whose snapshotter (this process) is alive: it would stay up
    proc = subprocess.Popen([sys.executable, "-m", "snapshotter.fdkeeper", str(sock), str(os.getpid())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (fdstore / "pid").write_text(f"{proc.pid}\n")
        wait_for(sock.exists, "the fd store's socket")
        time.sleep(0.5)
        assert proc.poll() is None
        stop_leftover_daemons(tmp_path / "root")      # no metadata.db: only the fd store
        assert proc.wait(10) is not None and not daemons.alive(proc.pid)
        assert not sock.exists()                       # it closed its socket on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_pid_file_naming_another_process_is_left_alone(tmp_path):
    fdstore = tmp_path / "root" / "fdstore"
    fdstore.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "30"])
    try:
        (fdstore / "pid").write_text(f"{other.pid}\n")   # stale pid file, PID reused
        stop_leftover_daemons(tmp_path / "root")
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
