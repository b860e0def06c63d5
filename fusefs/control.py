"""Control socket: HTTP/1.0 over a unix socket (mode 0600) for state and metrics.

Endpoints: ``GET /metrics`` (Prometheus text format), ``GET /state`` (JSON),
``POST /access-log/flush`` (write the access log now). A unix socket, not TCP, so only
root (or the socket's owner) can talk to it and no port is taken; HTTP so that curl
(``curl --unix-socket S http://x/metrics``) and Prometheus exporters can read it.
The server is deliberately tiny: one request per connection, no keep-alive.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 16 * 1024

Handler = Callable[[str, str], Awaitable[tuple[int, str, bytes]]]


async def serve_control(path: str, handler: Handler, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` until cancelled; ``handler(method, path)`` -> (status, type, body)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is created 0600, no window where others can connect
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        await trio.serve_listeners(lambda stream: _serve_one(stream, handler), [listener])
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


async def _serve_one(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST_HEAD:
                data = await stream.receive_some(4096)
                if not data:
                    break
                head += data
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode().split(" ", 2)
        except ValueError:
            status, ctype, body = 400, "text/plain", b"bad request\n"
        else:
            try:
                status, ctype, body = await handler(method, target.split("?", 1)[0])
            except Exception as exc:  # the daemon keeps serving; the caller sees why
                log.exception("control request %s %s failed", method, target)
                status, ctype, body = 500, "text/plain", f"{exc}\n".encode()
        resp = (f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        try:
            await stream.send_all(resp)
        except trio.BrokenResourceError:
            pass


def query(socket_path: str, target: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, bytes]:
    """Client helper (sync): one request to a control socket; returns (status, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(f"{method} {target} HTTP/1.0\r\nHost: imgfs\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def state_json(state: dict[str, Any]) -> bytes:
    return (json.dumps(state, indent=1, sort_keys=True, default=str) + "\n").encode()
