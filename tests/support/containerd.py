"""A private containerd 1.6 (+ runc) for tests and the demo: own root, state and socket.

Nothing is shared with a system containerd: root/state/sockets live in a short
private temp dir (unix socket paths must stay under 108 bytes), CRI is disabled
(it would want CNI), and proxy snapshotters are wired in by name. Started by PID,
stopped by PID (TERM, then KILL) in `stop()`, which also kills the shims it left.

    ctd = start_containerd(proxy_plugins={"imgfs": "/path/imgfs.sock"})
    try:
        ctd.ctr("images", "pull", "--plain-http", "--snapshotter", "imgfs", ref)
    finally:
        ctd.stop()
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Containerd:
    dir: Path
    address: str
    proc: subprocess.Popen
    log: Path
    namespace: str = "imgfs-test"
    _stopped: bool = field(default=False, repr=False)

    def _run(self, tool: str, args: tuple[str, ...], check: bool, timeout: float,
             env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [tool, "-a", self.address, "-n", self.namespace, *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                               f"{r.stderr[-3000:]}\ncontainerd log tail:\n{self.log_tail()}")
        return r

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Runs `ctr -a SOCK -n NS ARGS...`; raises with both outputs on failure when check."""
        return self._run("ctr", args, check, timeout)

    def ctr_remote(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Runs `ctr-remote` (Debian's stargz-snapshotter package) against this containerd."""
        return self._run("ctr-remote", args, check, timeout)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def shim_pids(self) -> list[int]:
        """containerd-shim processes started for this containerd (their cmdline names our address)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if cmd and b"containerd-shim" in cmd[0] and self.address.encode() in cmd:
                pids.append(int(d))
        return pids

    def stop(self) -> None:
        """Stops containerd by PID and the shims it started; removes its private dirs."""
        if self._stopped:
            return
        self._stopped = True
        shims = self.shim_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in shims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(f"/run/containerd/runc/{self.namespace}")   # runc's state dir of our namespace
        except OSError:
            pass


def _unmount_under(path: Path) -> None:
    """Detaches every mount below `path` (deepest first), e.g. container rootfs left by a crash."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        targets = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
    for t in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True, check=False)


def start_containerd(workdir: Path | None = None, proxy_plugins: dict[str, str] | None = None,
                     timeout: float = 60) -> Containerd:
    """Starts containerd with a private config; returns when its socket answers `ctr version`."""
    d = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
    d.mkdir(parents=True, exist_ok=True)
    address = str(d / "c.sock")
    lines = [
        "version = 2",
        f'root = "{d / "root"}"',
        f'state = "{d / "state"}"',
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        "[grpc]", f'  address = "{address}"',
        "[ttrpc]", f'  address = "{address}.ttrpc"',
        "[debug]", '  level = "info"',
        "[metrics]", '  address = ""',
        "[proxy_plugins]",
    ]
    for name, sock in (proxy_plugins or {}).items():
        lines += [f"  [proxy_plugins.{name}]", '    type = "snapshot"', f'    address = "{sock}"']
    ctd = launch_containerd(d, "\n".join(lines) + "\n", "imgfs-")

    def answers() -> bool:
        r = subprocess.run(["ctr", "-a", address, "version"], capture_output=True, text=True,
                           check=False, timeout=30)
        return r.returncode == 0

    wait_serving(ctd, answers, ctd.stop, "containerd", timeout)
    return ctd


def launch_containerd(d: Path, config: str, namespace_prefix: str) -> Containerd:
    """Writes ``config`` to d/config.toml and starts containerd with it in its own session,
    logging to d/containerd.log; its socket must be d/c.sock. Does not wait for it."""
    address = str(d / "c.sock")
    cfg = d / "config.toml"
    cfg.write_text(config)
    log = d / "containerd.log"
    with open(log, "ab") as lf:
        proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=lf, stderr=lf,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    # runc keeps container state in /run/containerd/runc/NAMESPACE whatever containerd's root:
    # a namespace of this instance's own keeps two private containerds' containers apart.
    ns = namespace_prefix + hashlib.sha256(address.encode()).hexdigest()[:8]
    return Containerd(dir=d, address=address, proc=proc, log=log, namespace=ns)


def wait_serving(ctd: Containerd, answers: Callable[[], bool], stop: Callable[[], None], what: str,
                 timeout: float) -> None:
    """Polls ``answers()`` until it is true once the socket exists; if containerd exits or
    ``timeout`` passes first, calls ``stop()`` and raises with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctd.proc.poll() is not None:
            text = ctd.log_tail()
            stop()
            raise RuntimeError(f"{what} exited with {ctd.proc.returncode}:\n{text}")
        if os.path.exists(ctd.address) and answers():
            return
        time.sleep(0.1)
    text = ctd.log_tail()
    stop()
    raise RuntimeError(f"{what} did not answer in {timeout:.0f} s:\n{text}")


@dataclass
class SnapshotterProc:
    """A running `imgfs-snapshotter` (by PID), its config, socket and log."""
    root: Path
    socket: Path
    config: Path
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill9(self) -> None:
        """Crash it (SIGKILL): the fusefs daemons it started live on, as after a real crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_snapshotter_config(root: Path, socket: Path, plain_http: list[str], extra: str = "",
                             registry_extra: str = "") -> Path:
    """A minimal TOML config for tests: private root/socket, plain-HTTP test registries, debug log;
    ``extra`` adds top-level keys, ``registry_extra`` keys of [registry] (credentials, ...)."""
    cfg = root.parent / f"{root.name}.toml"
    cfg.write_text(f'root = "{root}"\nsocket = "{socket}"\nlog_level = "debug"\n'
                   f"supervise_interval = 0.5\n{extra}\n"
                   f"[registry]\nplain_http = {json.dumps(plain_http)}\nretries = 1\ntimeout = 10\n"
                   f"{registry_extra}\n")
    return cfg


def _accepts(path: Path) -> bool:
    """True once a server listens on unix socket `path` (the file exists before listen())."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def start_snapshotter(config: Path, root: Path, socket: Path, log: Path,
                      timeout: float = 60) -> SnapshotterProc:
    """Runs `imgfs-snapshotter --config FILE` from this venv; returns once its socket exists."""
    if socket.exists():
        socket.unlink()
    with open(log, "ab") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "snapshotter.cli", "--config", str(config)],
                                stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[2]))
    sp = SnapshotterProc(root=root, socket=socket, config=config, proc=proc, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"imgfs-snapshotter exited with {proc.returncode}:\n{sp.log_text()[-3000:]}")
        if _accepts(socket):
            return sp
        time.sleep(0.05)
    sp.stop()
    raise RuntimeError(f"imgfs-snapshotter did not listen in {timeout:.0f} s:\n{sp.log_text()[-3000:]}")
