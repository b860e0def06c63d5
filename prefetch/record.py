"""Record a trace: run a workload over a fresh imgfs mount with access logging.

Steps (one run): ``imgfs mount IMAGE --daemon --access-log`` on a private, cold cache with
prefetch off and a tiny kernel readahead (the access log records what the kernel asks the
daemon for, so a 4 MiB readahead window would inflate every range to 4 MiB); read
/etc/passwd and /etc/group the way runc and containerd do before starting a container
(they resolve the user there: a gap of earlier traces); an overlay (lowerdir = the mount,
upper/work dirs private) so the workload can write; the workload chrooted into it in
its own mount and PID namespaces (``prefetch.sandbox``); wait for readiness (a line on
stdout, a port that accepts, the process exiting, or the timeout); flush the access log
through the control socket at that moment (reads after readiness are not startup); stat
the read files through the mount (metadata only) for their sizes; tear everything down.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prefetch import sandbox
from prefetch.trace import FileAccess, Trace, load_trace

IMGFS = [sys.executable, "-m", "fusefs.cli"]
#: Files a container runtime reads from the image before the workload starts.
RUNTIME_FILES = ("etc/passwd", "etc/group")
#: KiB of kernel readahead on the recording mount (one page: ranges are what was read).
RECORD_READAHEAD_KIB = 4


class RecordError(RuntimeError):
    """The recording could not be made (mount failed, workload failed before ready)."""


@dataclass(frozen=True)
class Readiness:
    """When the startup is over. All None: when the workload exits."""

    line: str | None = None
    port: int | None = None
    timeout: float | None = None


def _control(sock: Path, target: str, method: str = "GET") -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(f"{method} {target} HTTP/1.0\r\nHost: imgfs\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        subprocess.run(["umount", str(path)], capture_output=True, check=False, timeout=60)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=60)


def _stop_daemon(mnt: Path, pid: int | None) -> None:
    subprocess.run([*IMGFS, "umount", str(mnt)], capture_output=True, check=False, timeout=60)
    if pid is None:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def record(image: str, command: list[str], ready: Readiness = Readiness(), *, plain_http: bool = False,
           insecure: bool = False, auth_file: str | None = None, workdir: Path | None = None,
           max_seconds: float = 600.0, echo=None) -> Trace:
    """Run ``command`` over a cold imgfs mount of ``image`` and return its trace.

    Raises RecordError when the mount fails, or the workload exits non-zero before it was
    ready. ``echo(line)`` receives the workload's stdout lines (None: dropped).
    """
    if not command:
        raise RecordError("no command to record")
    tmp = Path(tempfile.mkdtemp(prefix="imgconv-record-", dir=workdir))
    mnt, upper, work, root = tmp / "mnt", tmp / "upper", tmp / "work", tmp / "root"
    for d in (mnt, upper, work, root):
        d.mkdir()
    ctl, alog, pidf = tmp / "control.sock", tmp / "access.jsonl", tmp / "imgfs.pid"
    (tmp / "mount.toml").write_text(f"kernel_readahead_kib = {RECORD_READAHEAD_KIB}\n")
    pid: int | None = None
    proc: subprocess.Popen | None = None
    try:
        args = [*IMGFS, "mount", image, str(mnt), "--daemon", "--cache-dir", str(tmp / "cache"),
                "--control-socket", str(ctl), "--access-log", str(alog), "--no-prefetch",
                "--config", str(tmp / "mount.toml"), "--log-file", str(tmp / "imgfs.log"),
                "--pid-file", str(pidf), *(["--plain-http"] if plain_http else []),
                *(["--insecure"] if insecure else []),
                *(["--authfile", str(auth_file)] if auth_file else [])]
        r = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
        if pidf.exists():
            pid = int(pidf.read_text())
        if r.returncode != 0:
            raise RecordError(f"imgfs mount {image} failed ({r.returncode}): {r.stderr.strip()}")
        for rel in RUNTIME_FILES:          # what runc/containerd read before the workload
            try:
                (mnt / rel).read_bytes()
            except OSError:
                pass
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={mnt},upperdir={upper},workdir={work}", str(root)],
                       check=True, capture_output=True, timeout=60)
        t0 = time.monotonic()
        with open(tmp / "stderr", "wb") as errf:      # the child keeps its own descriptor
            proc = sandbox.start(root, command, stdout=subprocess.PIPE, stderr=errf)
        reason = _wait_ready(proc, ready, max_seconds, echo)
        seconds = round(time.monotonic() - t0, 3)
        status, body = _control(ctl, "/access-log/flush", "POST")
        if status != 200:
            raise RecordError(f"access log flush failed: {status} {body[:200]!r}")
        code = sandbox.stop(proc)
        if reason == "exit" and code not in (0, None):
            err = (tmp / "stderr").read_text(errors="replace")[-2000:]
            raise RecordError(f"the workload exited with code {code} before it was ready:\n{err}")
        raw = load_trace(alog)
        files = _with_sizes(raw.files, mnt)
        return Trace(files, image, list(command), {"reason": reason, "seconds": seconds})
    finally:
        if proc is not None:
            sandbox.stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        _umount(root)
        _stop_daemon(mnt, pid)
        if not os.path.ismount(mnt):
            shutil.rmtree(tmp, ignore_errors=True)


def _with_sizes(files: list[FileAccess], mnt: Path) -> list[FileAccess]:
    """Sizes (lstat through the mount: metadata only) and times rebased to the first access."""
    base = files[0].first_access if files else 0.0
    out = []
    for f in files:
        try:
            size = os.lstat(mnt / f.path).st_size
        except OSError:
            size = None
        read = None if f.first_read is None else round(f.first_read - base, 6)
        out.append(FileAccess(f.path, round(f.first_access - base, 6), f.ranges, f.stat_only, size, read))
    return out


def _wait_ready(proc: subprocess.Popen, ready: Readiness, max_seconds: float, echo) -> str:
    """Block until the workload is ready; returns why: line, port, exit or timeout."""
    seen = threading.Event()

    def pump() -> None:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if echo is not None:
                echo(line)
            if ready.line is not None and ready.line in line:
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    limit = ready.timeout if ready.timeout is not None else max_seconds
    deadline = time.monotonic() + limit
    while True:
        if seen.is_set():
            return "line"
        if ready.port is not None and _port_open(ready.port):
            return "port"
        if proc.poll() is not None:
            reader.join(5)           # a line printed right before exiting still counts
            return "line" if seen.is_set() else "exit"
        if time.monotonic() >= deadline:
            if ready.timeout is None:
                raise RecordError(f"the workload was not ready after {max_seconds} s")
            return "timeout"
        time.sleep(0.02)
