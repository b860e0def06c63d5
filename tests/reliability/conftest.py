"""Fixtures for the reliability tests: an fd store process and imgfs daemons started with it.

Every process is started by PID and stopped by PID in ``finally``; every mount is
unmounted (fusermount3 -u, then umount -l), also when a test fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fusefs import imagekit
from tests.fusefs.conftest import base_tar, pids_serving, stop_daemon, top_tar, unmount

ROOT = Path(__file__).resolve().parents[2]
IMGFS = [sys.executable, "-m", "fusefs.cli"]


def wait_for(cond, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def layout(tmp_path_factory) -> Path:
    """The fusefs tests' two-layer synthetic image as a local OCI layout (no registry needed)."""
    root = tmp_path_factory.mktemp("reliability-image") / "img"
    imagekit.write_imgfs_layout(root, [base_tar(), top_tar(b"top-a")], chunk_size=64 * 1024)
    return root


@pytest.fixture
def fd_store(tmp_path):
    """A running ``imgfs fd-store`` on a private socket; yields the socket path."""
    sock = tmp_path / "fdstore.sock"
    proc = subprocess.Popen([*IMGFS, "fd-store", str(sock)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "fdstore.log", "wb"))  # noqa: SIM115
    try:
        assert proc.stdout.readline().strip() == b"ready"
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def daemons(tmp_path):
    """Factory: start(IMAGE, MP, *args, name=...) -> pid of an ``imgfs mount --daemon``."""
    pids: list[int] = []
    mps: list[Path] = []

    def start(image: str, mp: Path, *args: str, name: str = "d") -> int:
        mp.mkdir(parents=True, exist_ok=True)
        if mp not in mps:
            mps.append(mp)
        pidfile = tmp_path / f"{name}.pid"
        r = subprocess.run([*IMGFS, "mount", image, str(mp), "--daemon", "--log-file",
                            str(tmp_path / f"{name}.log"), "--pid-file", str(pidfile), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        if pidfile.exists():
            pids.append(int(pidfile.read_text()))
        assert r.returncode == 0, f"{r.stderr}\n{(tmp_path / f'{name}.log').read_text()}"
        return int(r.stdout.strip())

    try:
        yield start
    finally:
        for mp in mps:
            unmount(mp)
            pids.extend(p for p in pids_serving(mp) if p not in pids)
        for pid in pids:
            stop_daemon(pid)


def fuse_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if " - fuse" in line]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
