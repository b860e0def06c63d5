"""A fusefs daemon killed under a running container is replaced by takeover, not remount.

The container execs /usr/bin/sleep from the image in a loop and writes one line per try
to a bind-mounted dir. After the daemon's kill -9 the snapshotter starts a new daemon on
the same live FUSE connection (the fd store held it): the mount is the same mount (same
mount id), and every try of the loop succeeded; with the old remount the container's
overlay would point at a dead FUSE mount and every exec would fail with ENOTCONN.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from snapshotter import daemons
from tests.support.stack import make_stack
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

LOOP = ('i=0; while [ ! -e /out/stop ]; do i=$((i+1)); '
        'if /usr/bin/sleep 0.05; then echo "ok $i" >> /out/log; else echo "FAIL $i" >> /out/log; fi; '
        'done; echo done >> /out/log')


def mount_id(mp: str) -> str:
    with open("/proc/self/mountinfo") as f:
        return next(ln.split()[0] for ln in f if ln.split()[4] == mp)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def tstack(registry):
    s = make_stack(registry.host, "health_timeout = 3")
    try:
        yield s
    finally:
        pidfile = s.snap.root / "fdstore" / "pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else 0   # Stack.stop removes the dir
        try:
            s.stop()
        finally:
            if pid and daemons.alive(pid) and daemons.cmdline_has(pid, "fd-store"):
                os.kill(pid, signal.SIGKILL)


def test_kill9_of_the_daemon_under_a_running_container_is_a_pause(tstack, tiny_refs, tmp_path):
    ref = tiny_refs["imgfs"]
    out = tmp_path / "out"
    out.mkdir()
    log = out / "log"
    tstack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    tstack.ctd.ctr("run", "-d", "--snapshotter", "imgfs",
                   "--mount", f"type=bind,src={out},dst=/out,options=rbind:rw",
                   ref, "tk-loop", "/bin/sh", "-c", LOOP)
    try:
        wait_for(lambda: len(lines(log)) >= 5, "the container's loop to run")
        (mp,) = tstack.fuse_mounts()
        before = mount_id(mp)
        (pid,) = tstack.daemon_pids()
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: [p for p in tstack.daemon_pids() if p != pid], "a new fusefs daemon")
        wait_for(lambda: daemons.responsive(Path(tstack.snap.root, "daemons", Path(mp).name, "control.sock"))
                 and os.path.exists(Path(tstack.snap.root, "daemons", Path(mp).name, "control.sock")),
                 "the new daemon to serve")
        seen = len(lines(log))
        wait_for(lambda: len(lines(log)) >= seen + 10, "the loop to go on after the restart")
        (out / "stop").touch()
        wait_for(lambda: lines(log)[-1:] == ["done"], "the loop to end")
        got = lines(log)
        assert [ln for ln in got if not ln.startswith("ok ")] == ["done"], got[-20:]
        assert len(new) == 1 and tstack.fuse_mounts() == [mp] and mount_id(mp) == before
        assert "took over the live mount" in tstack.snap.log_text()
        assert "remounting" not in tstack.snap.log_text()
    finally:
        tstack.ctd.ctr("tasks", "kill", "-s", "SIGKILL", "tk-loop", check=False)
        wait_for(lambda: "RUNNING" not in tstack.ctd.ctr("tasks", "ls").stdout, "tk-loop to stop")
        tstack.ctd.ctr("tasks", "rm", "-f", "tk-loop", check=False)
        tstack.ctd.ctr("containers", "rm", "tk-loop", check=False)
