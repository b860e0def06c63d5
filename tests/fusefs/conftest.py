"""fusefs fixtures: real FUSE mounts of real images from the real test registry.

``mount_image`` starts ``imgfs mount ... --daemon`` (which returns only once the mount
answers requests) and, in ``finally``, ALWAYS unmounts (fusermount3 -u, then umount -l)
and kills the daemon by its PID, even when the test failed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fusefs import imagekit
from tests.fusefs.imagekit import Tar, blob_data

IMGFS = [sys.executable, "-m", "fusefs.cli"]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Mounted:
    image: str
    mountpoint: Path
    pid: int
    cache_dir: Path
    control: Path
    log: Path
    access_log: Path | None = None
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Parsed /metrics samples: {'name{labels}': value}."""
        from fusefs.control import query

        status, body = query(str(self.control), "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def state(self) -> dict:
        import json

        from fusefs.control import query

        status, body = query(str(self.control), "/state")
        assert status == 200
        return json.loads(body)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie is gone for us
    except (FileNotFoundError, ProcessLookupError):
        return False


def unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-q", str(path)], capture_output=True, check=False)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def pids_serving(mountpoint: Path) -> list[int]:
    """PIDs of imgfs processes whose command line names this (unique, per-test) mountpoint:
    finds a daemon that never reported its PID (hung before ready, parent timed out)."""
    needle = os.fsencode(str(mountpoint))
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if needle in args and any(b"fusefs" in a or b"imgfs" in a for a in args):
            out.append(int(entry))
    return out


def stop_daemon(pid: int, timeout: float = 20) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if not _alive(pid):
            return


def run_imgfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*IMGFS, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


@pytest.fixture
def mount_image(tmp_path):
    """Factory: mount_image(IMAGE, *extra_args, cache_dir=None, name="m") -> Mounted."""
    mounts: list[Mounted] = []
    pids: list[int] = []
    mountpoints: list[Path] = []

    def mount(image: str, *extra: str, cache_dir: Path | None = None, name: str = "m",
              access_log: bool = False) -> Mounted:
        base = tmp_path / name
        mp = base / "mnt"
        mp.mkdir(parents=True)
        mountpoints.append(mp)
        cache = cache_dir or base / "cache"
        ctl = base / "control.sock"
        log = base / "imgfs.log"
        alog = base / "access.jsonl" if access_log else None
        args = ["mount", image, str(mp), "--daemon", "--cache-dir", str(cache), "--plain-http",
                "--control-socket", str(ctl), "--log-file", str(log), "--pid-file", str(base / "pid"),
                *(["--access-log", str(alog)] if alog else []), *extra]
        try:
            r = run_imgfs(*args)
        finally:
            # a daemon that got as far as writing its pid file is ours to stop, whatever happened
            if (base / "pid").exists():
                pids.append(int((base / "pid").read_text()))
        if r.returncode != 0:
            unmount(mp)
            raise AssertionError(f"imgfs mount failed ({r.returncode}): {r.stderr}\n"
                                 f"log: {log.read_text() if log.exists() else ''}")
        m = Mounted(image, mp, int(r.stdout.strip()), cache, ctl, log, alog)
        if m.pid not in pids:
            pids.append(m.pid)
        mounts.append(m)
        assert os.path.ismount(mp)
        return m

    try:
        yield mount
    finally:
        for mp in reversed(mountpoints):
            unmount(mp)
        for mp in mountpoints:
            pids.extend(p for p in pids_serving(mp) if p not in pids)
        for pid in pids:
            stop_daemon(pid)


# --- a small synthetic two-layer image, and one sharing its bottom layer -------------------

SMALL_COUNT = 120


def small_files() -> dict[str, bytes]:
    return {f"small/f{i:03d}": blob_data(i, 3000 + 37 * i) for i in range(SMALL_COUNT)}


def base_tar() -> bytes:
    t = Tar().dir("etc").dir("small").dir("big").dir("bin")
    t.file("etc/hostname", b"imgfs-test\n")
    t.file("etc/secret", b"s3cr3t\n", mode=0o600, uid=1000, gid=1000, xattrs={"user.note": "hello"})
    t.file("etc/gone", b"removed in layer 2\n")
    t.file("etc/empty", b"")
    for name, data in small_files().items():
        t.file(name, data)
    t.file("big/blob", blob_data(10_000, 5 * (1 << 20) + 12345))
    t.symlink("bin/link", "../etc/hostname")
    t.hardlink("etc/hostname-again", "etc/hostname")
    return t.bytes()


def top_tar(tag: bytes = b"top") -> bytes:
    t = Tar().dir("etc").whiteout("etc/gone")
    t.file("etc/top", tag + b"\n")
    t.file("etc/hostname", b"imgfs-test-2\n")
    return t.bytes()


@pytest.fixture(scope="session")
def synthetic_layouts(tmp_path_factory) -> dict[str, Path]:
    """Two OCI layouts: 'a' (base + top) and 'b' (the same base + another top)."""
    root = tmp_path_factory.mktemp("fusefs-images")
    base = base_tar()
    out = {}
    for name, tag in (("a", b"top-a"), ("b", b"top-b")):
        imagekit.write_imgfs_layout(root / name, [base, top_tar(tag)], chunk_size=64 * 1024)
        out[name] = root / name
    return out
