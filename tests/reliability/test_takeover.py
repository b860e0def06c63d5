"""Daemon restart without breaking readers (fusefs.takeover, fusefs.fdstore, fusefs.inodes).

A reader process reads the mount in a loop (page cache dropped before each read) while the
daemon is killed with SIGKILL and a new one is started with the same --fd-store: the
reader must see a pause, never ENOTCONN/EIO, and only right bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fusefs import fdstore
from imgformat.merge import MergedView
from tests.fusefs import imagekit
from tests.fusefs.conftest import _alive, blob_data, small_files
from tests.reliability.conftest import ROOT, fuse_mounts, wait_for

pytestmark = pytest.mark.e2e


def expected_files() -> dict[str, str]:
    files = {"etc/hostname": b"imgfs-test-2\n", "etc/top": b"top-a\n",
             "big/blob": blob_data(10_000, 5 * (1 << 20) + 12345)}
    files.update({k: v for k, v in small_files().items() if int(k[-3:]) % 9 == 0})
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


class Reader:
    def __init__(self, tmp_path, mp):
        self.stop = tmp_path / "stop"
        self.out = tmp_path / "reader.json"
        exp = tmp_path / "expected.json"
        exp.write_text(json.dumps(expected_files()))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.reader", str(mp), str(exp),
                                      str(self.stop), str(self.out)], cwd=ROOT)

    def finish(self) -> dict:
        self.stop.touch()
        self.proc.wait(120)
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _mount_args(tmp_path, store):
    return ("--cache-dir", str(tmp_path / "cache"), "--fd-store", str(store), "--no-prefetch")


def test_kill9_and_restart_is_a_pause_not_an_error(tmp_path, layout, fd_store, daemons):
    mp = tmp_path / "mnt"
    image = f"oci:{layout}"
    pid = daemons(image, mp, *_mount_args(tmp_path, fd_store), name="d0")
    reader = Reader(tmp_path, mp)
    try:
        for i in (1, 2):   # twice: the second daemon was itself an adopter
            wait_for(lambda: reader.proc.poll() is None and (mp / "etc/hostname").exists(), what="reader")
            time.sleep(1.0)            # reads are flowing
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda p=pid: not _alive(p), what="daemon death")
            time.sleep(2.0)            # readers now wait on the kernel's queue
            assert str(mp) in fuse_mounts()
            pid = daemons(image, mp, *_mount_args(tmp_path, fd_store), name=f"d{i}")
            time.sleep(1.0)
        result = reader.finish()
    finally:
        reader.kill()
    assert result["error_count"] == 0, result["errors"]
    assert result["wrong"] == 0
    assert result["ok"] > 20
    assert result["max_gap"] >= 1.0   # the reader really waited through a dead daemon
    log = (tmp_path / "d2.log").read_text()
    assert "taking over the FUSE connection" in log and "adopted FUSE connection attached" in log


def test_sigusr1_hands_over_and_sigterm_unmounts(tmp_path, layout, fd_store, daemons):
    mp = tmp_path / "mnt"
    image = f"oci:{layout}"
    pid = daemons(image, mp, *_mount_args(tmp_path, fd_store), name="a")
    assert (mp / "etc/top").read_bytes() == b"top-a\n"
    os.kill(pid, signal.SIGUSR1)                       # upgrade: leave the mount to the next one
    wait_for(lambda: not _alive(pid), what="handover exit")
    assert str(mp) in fuse_mounts()
    assert fdstore.request(str(fd_store), {"op": "list"})[0]["mountpoints"] == [str(mp)]
    pid = daemons(image, mp, *_mount_args(tmp_path, fd_store), name="b")
    assert (mp / "small/f005").read_bytes() == small_files()["small/f005"]
    assert (mp / "etc/top").read_bytes() == b"top-a\n"   # a name the old daemon had numbered
    os.kill(pid, signal.SIGTERM)                       # a real stop: unmount, forget the fd
    wait_for(lambda: not _alive(pid), what="exit")
    assert str(mp) not in fuse_mounts()
    assert fdstore.request(str(fd_store), {"op": "list"})[0]["mountpoints"] == []
    assert not list(tmp_path.glob("fdstore.sock.*.inodes"))


def test_a_foreign_mount_is_not_taken_over(tmp_path, layout, fd_store, daemons):
    mp = tmp_path / "mnt"
    daemons(f"oci:{layout}", mp, "--cache-dir", str(tmp_path / "cache"), name="plain")
    r = subprocess.run([sys.executable, "-m", "fusefs.cli", "mount", f"oci:{layout}", str(mp), "--daemon",
                        "--cache-dir", str(tmp_path / "cache"), "--fd-store", str(fd_store)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and "holds no fd" in r.stderr
    assert (mp / "etc/top").read_bytes() == b"top-a\n"   # the existing mount is untouched


def test_fd_store_socket_is_private(fd_store):
    assert os.stat(fd_store).st_mode & 0o777 == 0o600


def _paths(view, ino=1, prefix=b""):
    for _, name, child in view.readdir(ino):
        path = prefix + name
        yield path, child
        if view.getattr(child).mode & 0o170000 == 0o040000:
            yield from _paths(view, child, path + b"/")


def test_stable_inodes_survive_a_new_view_with_another_discovery_order(tmp_path, layout):
    """The kernel's numbers, journaled by one daemon, mean the same files in the next one
    although its merged view numbers the tree in a different order."""
    from fusefs.inodes import StableView

    def view():
        pairs = imagekit.layer_bootstraps(layout)
        return MergedView([bs for _, bs in pairs], blob_digests=[d for d, _ in pairs])

    journal = str(tmp_path / "journal")
    first = StableView(view(), journal, adopt=False)
    seen = dict(_paths(first))                              # path -> kernel number
    attrs = {p: first.getattr(k) for p, k in seen.items()}
    fresh = view()                                          # discover in reverse order
    renumbered = {}
    for path in sorted(seen, reverse=True):
        ino = fresh.root
        for part in path.split(b"/"):
            ino = fresh.lookup(ino, part)
        renumbered[path] = ino
    assert renumbered != seen                               # the view alone would answer wrongly
    second = StableView(fresh, journal, adopt=True)
    for path, k in seen.items():
        a = second.getattr(k)
        assert a == attrs[path], path
        if a.mode & 0o170000 == 0o100000:
            assert [s[1] for s in second.segments(k, 0, a.size)] == \
                   [s[1] for s in first.segments(k, 0, a.size)]
    # names looked up again get the kernel's numbers, and a brand-new number never collides
    assert second.lookup(1, b"etc") == seen[b"etc"]
    with pytest.raises(KeyError):
        second.getattr(max(seen.values()) + 1000)
