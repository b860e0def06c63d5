"""The fd store: a tiny process that keeps each mount's /dev/fuse fd while its daemon restarts.

Why: the kernel aborts a FUSE connection (every reader gets ENOTCONN, forever) when the
last fd of its /dev/fuse file is closed. A daemon that dies (upgrade, crash, kill -9)
closes its fd; if another process holds a duplicate, the connection stays alive, the
kernel just queues requests, and a new daemon that receives the fd serves them: readers
see a pause, not an error (see ``fusefs.takeover`` for the daemon's side).

Protocol: one request per connection on a unix socket created 0600 (umask around bind,
no window where another user could connect). The request is one JSON line, optionally
with one fd attached (SCM_RIGHTS); the reply is one JSON line, optionally with the fd:

    {"op": "put", "mountpoint": MP, "init": HEX}  + fd   -> {"ok": true}
    {"op": "get", "mountpoint": MP}                      -> {"ok": true, "init": HEX} + fd
                                                            or {"ok": false} (unknown / gone)
    {"op": "drop", "mountpoint": MP}                     -> {"ok": true}
    {"op": "list"}                                       -> {"ok": true, "mountpoints": [...]}

``init`` is the kernel's FUSE_INIT request of that connection: a new daemon replays it to
its own libfuse session so both agree on the negotiated protocol. An entry whose mount
is gone (unmounted while nobody served it) is closed on the next request that sees it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024


def fuse_mounted(mountpoint: str) -> bool:
    """Is ``mountpoint`` a FUSE mount right now? Read from /proc, never touching the mount
    itself (a stat of a mount whose daemon is dead would block)."""
    mp = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and _unescape(fields[4]) == mp and right.startswith("fuse"):
                return True
    return False


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def bind_private(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 from the moment it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


@dataclass
class Entry:
    fd: int
    init: bytes


def serve(path: str, ready: callable = lambda: None) -> None:
    """Serve the fd store on ``path`` until SIGTERM/SIGINT (sync, one request at a time:
    requests are tiny and rare, and a single thread cannot race with itself)."""
    import signal

    entries: dict[str, Entry] = {}
    sock = bind_private(path)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
        sock.close()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready()
    try:
        while not stop:
            try:
                conn, _ = sock.accept()
            except OSError:
                if stop:
                    break
                raise
            with conn:
                conn.settimeout(10)
                try:
                    _handle(conn, entries)
                except (OSError, ValueError) as exc:
                    log.warning("fd store request failed: %s", exc)
    finally:
        for e in entries.values():
            os.close(e.fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _handle(conn: socket.socket, entries: dict[str, Entry]) -> None:
    msg, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 1)
    try:
        req = json.loads(msg)
        op = req["op"]
    except (ValueError, KeyError, TypeError):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"bad request {msg[:80]!r}") from None
    mp = req.get("mountpoint")
    if op == "put":
        if len(fds) != 1 or not isinstance(mp, str):
            for fd in fds:
                os.close(fd)
            raise ValueError("put needs a mountpoint and one fd")
        old = entries.pop(mp, None)
        if old is not None:
            os.close(old.fd)
        entries[mp] = Entry(fds[0], bytes.fromhex(req["init"]))
        log.info("holding the FUSE fd of %s", mp)
        _reply(conn, {"ok": True})
        return
    for fd in fds:
        os.close(fd)
    if op == "get":
        e = entries.get(mp)
        if e is not None and not fuse_mounted(mp):
            log.info("%s is no longer mounted: its fd is closed", mp)
            os.close(entries.pop(mp).fd)
            e = None
        if e is None:
            _reply(conn, {"ok": False})
        else:
            _reply(conn, {"ok": True, "init": e.init.hex()}, e.fd)
    elif op == "drop":
        e = entries.pop(mp, None)
        if e is not None:
            os.close(e.fd)
        _reply(conn, {"ok": True})
    elif op == "list":
        _reply(conn, {"ok": True, "mountpoints": sorted(entries)})
    else:
        raise ValueError(f"unknown op {op!r}")


def _reply(conn: socket.socket, obj: dict, fd: int | None = None) -> None:
    data = (json.dumps(obj) + "\n").encode()
    if fd is None:
        conn.sendall(data)
    else:
        socket.send_fds(conn, [data], [fd])


def request(path: str, req: dict, fd: int | None = None, timeout: float = 10.0) -> tuple[dict, int | None]:
    """Client side: one request; returns (reply, received fd or None)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        data = (json.dumps(req) + "\n").encode()
        if fd is None:
            s.sendall(data)
        else:
            socket.send_fds(s, [data], [fd])
        msg, fds, _, _ = socket.recv_fds(s, MAX_MESSAGE, 1)
    reply = json.loads(msg)
    return reply, (fds[0] if fds else None)
