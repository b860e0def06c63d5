"""A real docker-registry (distribution 2.8) on 127.0.0.1, one per test session.

Started by PID, with a private storage dir and a free port, and stopped (and
waited for) at the end even when tests fail.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str          # "127.0.0.1:PORT"
    root: Path         # storage dir
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def blob_gets(self) -> list[str]:
        """Access-log lines of blob GETs the registry served (for counting requests).

        distribution writes one combined-log-format line per request, e.g.
        `127.0.0.1 - - [date] "GET /v2/REPO/blobs/sha256:... HTTP/1.1" 206 N "" "ua"`.
        """
        return [ln for ln in self.log.read_text(errors="replace").splitlines()
                if '"GET /v2/' in ln and "/blobs/" in ln]


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    """docker-registry's htpasswd auth takes bcrypt hashes only."""
    import bcrypt

    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                            for u, p in users.items()))


def start_registry(workdir: Path, port: int | None = None,
                   users: dict[str, str] | None = None) -> Registry:
    """A docker-registry on 127.0.0.1; with ``users`` (name -> password) it asks for basic
    auth (htpasswd) on every request."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    cfg = workdir / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if users:
        _htpasswd(workdir / "htpasswd", users)
        with open(cfg, "a") as f:
            f.write(f"auth:\n  htpasswd:\n    realm: imgfs-test\n    path: {workdir / 'htpasswd'}\n")
    log = workdir / "registry.log"
    with open(log, "ab") as lf:
        proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=lf, stderr=lf,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    reg = Registry(host=f"127.0.0.1:{port}", root=storage, proc=proc, log=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{reg.url}/v2/", timeout=1).status_code in (200, 401):
                return reg
        except requests.RequestException:
            pass
        time.sleep(0.05)
    reg.stop()
    raise RuntimeError("docker-registry did not come up in 30 s")


def garbage_collect(reg: Registry, workdir: Path) -> str:
    """Run `docker-registry garbage-collect` on the (stopped or running) registry's storage."""
    cfg = workdir / "config.yml"
    out = subprocess.run(["docker-registry", "garbage-collect", "--delete-untagged", str(cfg)],
                         capture_output=True, text=True, check=True, env={**os.environ})
    return out.stdout
