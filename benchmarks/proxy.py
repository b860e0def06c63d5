"""A shaping, counting and fault-injecting HTTP/1.1 reverse proxy for an OCI registry.

Why: tc netem is not available here, yet imgfs is judged on slow, far links and
on registries that misbehave. So tests and imgbench put this proxy between the
client and a real docker-registry on loopback.

Link model (what `bandwidth` and `rtt` mean):
- bandwidth: one token bucket per direction shared by all connections (an
  access link is shared, so N parallel range requests do not get N times the
  bandwidth). Bodies are sent in CHUNK pieces, each paid for before it is
  sent; the bucket holds at most BURST_SECONDS of credit (at least one CHUNK):
  enough to make up for a sender thread that wakes late on a loaded machine,
  small enough that an idle link gives away only ~10 ms of transfer.
  Headers are not charged (they are ~0.1% of a blob transfer).
- rtt: each request waits `rtt` before it is forwarded, i.e. one round trip
  per request; TCP/TLS handshakes are not modelled (loopback keep-alive).
Both can be changed at run time (set_link).

Faults (inject): the next N requests matching a regex on "METHOD /path" get
a 503, a connection reset mid-body (RST), a truncated body (FIN before
Content-Length bytes), one flipped byte (at the middle of the body), or an
extra delay. set_down(True) closes the listening socket (connection refused)
and drops open connections; set_down(False) listens on the same port again.
Upstream unreachable gives 502.

Every request is recorded (method, path, Range header, status, body bytes,
fault), so tests can assert "only these ranges were fetched".
Also runnable alone: `python -m benchmarks.proxy --upstream HOST:PORT --bandwidth 100mbit --rtt 20ms`.
"""
from __future__ import annotations

import argparse
import http.client
import re
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Self

CHUNK = 16 * 1024        # body piece: 1.6 ms at 80 Mbit/s, fine-grained enough for shaping
BURST_SECONDS = 0.01     # bucket depth in time; measured: with 1 chunk, 10 MB at 80 Mbit/s took 1.9 s under load
FAULTS = ("503", "reset", "truncate", "flip", "delay")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "expect"}
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/[a-z0-9+._-]+:[a-zA-Z0-9=_-]+$")
_NO_FORWARD = _HOP | {"content-length"}   # the proxy re-frames request bodies itself
_UNITS = {"bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
          "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1 << 20, "gib": 1 << 30}


def parse_bandwidth(text: str) -> float:
    """'100mbit' -> bytes/s (units bit/kbit/mbit/gbit, b/kb/mb/gb, kib/mib/gib; bare = bytes/s)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)(?:/s|ps)?\s*", text)
    if not m or (m.group(2) and m.group(2).lower() not in _UNITS):
        raise ValueError(f"bad bandwidth {text!r}: use e.g. 100mbit, 5mb, 1gbit")
    return float(m.group(1)) * (_UNITS[m.group(2).lower()] if m.group(2) else 1)


def parse_duration(text: str) -> float:
    """'20ms' -> 0.02 s (units us/ms/s; bare = seconds)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s)?\s*", text)
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 20ms, 0.5s")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}[m.group(2)]


@dataclass(frozen=True)
class Record:
    """One request as the proxy saw it. bytes = body bytes handed to the client's socket;
    start = wall time (``time.time()``) it was forwarded, after the emulated round trip;
    end = when its last byte was handed to the client or it failed (None: still running)."""
    method: str
    path: str
    range: str | None
    status: int
    bytes: int
    fault: str | None
    start: float = 0.0
    end: float | None = None


@dataclass(frozen=True)
class ProxyStats:
    requests: int
    bytes_down: int
    bytes_up: int
    faults: int
    connections: int       # client connections accepted (keep-alive reuse keeps this low)


class TokenBucket:
    """Aggregate byte-rate limit; take() reserves bytes and sleeps until they are due.

    Reservations may drive the balance negative: each caller sleeps until its own
    bytes are paid for, so concurrent callers queue fairly and the sum is exact.
    """

    def __init__(self, rate: float | None) -> None:
        self._lock = threading.Lock()
        self.rate = rate
        self._tokens, self._last = 0.0, time.monotonic()

    @property
    def burst(self) -> float:
        return max(float(CHUNK), (self.rate or 0) * BURST_SECONDS)

    def take(self, n: int, stop: threading.Event) -> None:
        with self._lock:
            now = time.monotonic()
            if not self.rate:
                self._last = now
                return
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
            self._last = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            stop.wait(wait)


@dataclass
class _Fault:
    kind: str
    remaining: int
    seconds: float
    match: re.Pattern | None


@dataclass
class _Conn:
    """A client connection: its thread, its upstream connection (0 or 1), its cancel event."""
    thread: threading.Thread
    upstream: list
    cancel: threading.Event


class _Abort(Exception):
    """Drop the client connection now (fault injected); rst=True sends a TCP reset."""

    def __init__(self, rst: bool) -> None:
        self.rst = rst


class ShapingProxy:
    """Reverse proxy on 127.0.0.1 in front of `upstream` ("HOST:PORT"). Use as a context manager."""

    def __init__(self, upstream: str, *, bandwidth: float | None = None, rtt: float = 0.0,
                 port: int = 0, timeout: float = 60.0) -> None:
        self.upstream = upstream.removeprefix("http://").rstrip("/")
        self.rtt, self.timeout, self.port = rtt, timeout, port
        self.down_bucket, self.up_bucket = TokenBucket(bandwidth), TokenBucket(bandwidth)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._records: list[dict] = []     # live: a request's entry is final before its last byte is sent
        self._bytes_up = self._accepted = 0
        self._conns: dict[socket.socket, _Conn] = {}
        self._listener: socket.socket | None = None
        self._accept_stop = threading.Event()
        self._accept_thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        self._listen()
        return self

    def stop(self) -> None:
        """Stop accepting, drop every connection, join every thread (raises if one hangs)."""
        self._unlisten()
        self._drop_connections()

    def set_down(self, down: bool) -> None:
        """down: refuse new connections and cut open ones; up: listen on the same port again."""
        if down:
            self._unlisten()
            self._drop_connections()
        elif self._listener is None:
            self._listen()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._listener, self._accept_stop = sock, threading.Event()
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock, self._accept_stop),
                                               name=f"proxy-accept-{self.port}", daemon=True)
        self._accept_thread.start()

    def _unlisten(self) -> None:
        if self._listener is None:
            return
        self._accept_stop.set()
        self._accept_thread.join(10)
        self._listener.close()
        self._listener = None

    def _drop_connections(self) -> None:
        with self._lock:
            conns = list(self._conns.items())
        for sock, conn in conns:
            conn.cancel.set()
            for s in (sock, *(c.sock for c in list(conn.upstream) if c.sock is not None)):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for _, conn in conns:
            conn.thread.join(10)
            if conn.thread.is_alive():
                raise RuntimeError(f"proxy connection thread {conn.thread.name} did not stop")

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            if not select.select([listener], [], [], 0.05)[0]:
                continue
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                          name=f"proxy-conn-{sock.fileno()}"), [], threading.Event())
            with self._lock:
                self._conns[sock] = conn
                self._accepted += 1
            conn.thread.start()

    # --- control and observation -----------------------------------------------------------------
    def set_link(self, bandwidth: float | None = None, rtt: float | None = None) -> None:
        """Change the link at run time (bandwidth in bytes/s, 0 = unlimited; rtt in seconds)."""
        if bandwidth is not None:
            self.down_bucket.rate = self.up_bucket.rate = bandwidth or None
        if rtt is not None:
            self.rtt = rtt

    def inject(self, fault: str, count: int = 1, *, seconds: float = 0.0, match: str | None = None) -> None:
        """The next `count` requests whose "METHOD /path" matches regex `match` get `fault`."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            self._faults.append(_Fault(fault, count, seconds, re.compile(match) if match else None))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def records(self) -> list[Record]:
        with self._lock:
            return [Record(**r) for r in self._records]

    def blob_gets(self, digest: str | None = None) -> list[Record]:
        """GETs of blobs (optionally of one digest), in arrival order, with their Range headers."""
        return [r for r in self.records() if r.method == "GET" and _BLOB_PATH.match(r.path)
                and (digest is None or r.path.endswith("/blobs/" + digest))]

    def bytes_by_path(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records():
            out[r.path] = out.get(r.path, 0) + r.bytes
        return out

    def requests_by_path(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records():
            out[r.path] = out.get(r.path, 0) + 1
        return out

    def reset_counters(self) -> None:
        with self._lock:
            self._records.clear()
            self._bytes_up = self._accepted = 0

    def statistics(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(len(self._records), sum(r["bytes"] for r in self._records), self._bytes_up,
                              sum(1 for r in self._records if r["fault"]), self._accepted)

    # --- one client connection ------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            conn = self._conns[sock]
        box, cancel = conn.upstream, conn.cancel
        rfile = sock.makefile("rb")
        try:
            while not cancel.is_set():
                line = rfile.readline(65537)
                if not line:
                    break
                if line.strip() and not self._request(sock, rfile, line, box, cancel):
                    break
        except _Abort as abort:
            if abort.rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            for up in box:
                up.close()
            rfile.close()
            sock.close()
            with self._lock:
                self._conns.pop(sock, None)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.match is None or f.match.search(f"{method} {path}"):
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
                    return f
        return None

    def _request(self, sock: socket.socket, rfile, line: bytes, box: list, cancel: threading.Event) -> bool:
        """Serve one request; return whether the client connection stays open."""
        method, target, version = line.decode("latin-1").split()
        headers = http.client.parse_headers(rfile)
        path = target.split("?", 1)[0]
        keep = version == "HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
        fault = self._take_fault(method, path)
        if headers.get("Expect", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._request_body(rfile, headers)
        if cancel.wait(self.rtt + (fault.seconds if fault and fault.kind == "delay" else 0)):
            return False
        record = {"method": method, "path": path, "range": headers.get("Range"), "status": 0, "bytes": 0,
                  "fault": fault.kind if fault else None, "start": time.time(), "end": None}
        with self._lock:
            self._records.append(record)
        try:
            if fault and fault.kind == "503":
                record["status"] = 503
                self._send_simple(sock, 503, b"imgfs test proxy: injected 503\n", keep)
                return keep
            return self._forward(sock, method, target, headers, body, keep, fault, record, box, cancel)
        finally:
            record["end"] = time.time()

    def _request_body(self, rfile, headers) -> list[bytes]:
        """The request body as pieces (buffered: uploads here are tests' pushes, not hot paths)."""
        pieces: list[bytes] = []
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            while size := int(rfile.readline(1024).split(b";")[0], 16):
                pieces.append(rfile.read(size))
                rfile.readline(16)
            while rfile.readline(65537).strip():     # trailers
                pass
        elif (n := int(headers.get("Content-Length", "0"))) > 0:
            while n > 0 and (piece := rfile.read(min(n, CHUNK))):
                pieces.append(piece)
                n -= len(piece)
            if n:
                raise ValueError("client closed during request body")
        return pieces

    def _send_simple(self, sock: socket.socket, status: int, body: bytes, keep: bool) -> None:
        reason = http.client.responses.get(status, "")
        sock.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
                     f"\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n".encode() + body)

    def _upstream_response(self, method, target, headers, body, box, cancel) -> http.client.HTTPResponse:
        for attempt in (0, 1):    # a reused keep-alive connection may have been closed by upstream
            if not box:
                box.append(http.client.HTTPConnection(self.upstream, timeout=self.timeout))
            conn = box[0]
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    if k.lower() not in _NO_FORWARD:
                        conn.putheader(k, v)
                if body or "Content-Length" in headers or "Transfer-Encoding" in headers:
                    conn.putheader("Content-Length", str(sum(map(len, body))))
                conn.endheaders()
                for piece in body:
                    self.up_bucket.take(len(piece), cancel)
                    conn.send(piece)
                    with self._lock:
                        self._bytes_up += len(piece)
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()
                box.clear()
                if attempt or cancel.is_set():
                    raise
        raise AssertionError("unreachable")

    def _forward(self, sock, method, target, headers, body, keep, fault, record, box, cancel) -> bool:
        try:
            resp = self._upstream_response(method, target, headers, body, box, cancel)
        except (OSError, http.client.HTTPException) as e:
            if cancel.is_set():
                return False
            record["status"] = 502
            self._send_simple(sock, 502, f"imgfs test proxy: upstream {self.upstream}: {e}\n".encode(), keep)
            return keep
        record["status"] = resp.status
        has_body = method != "HEAD" and resp.status not in (204, 304) and resp.status >= 200
        chunked = has_body and resp.length is None
        lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        lines += [f"{k}: {v}" for k, v in resp.msg.items() if k.lower() not in _HOP]
        lines += ["Transfer-Encoding: chunked"] if chunked else []
        lines.append(f"Connection: {'keep-alive' if keep else 'close'}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not has_body:
            resp.read()
            if fault and fault.kind in ("reset", "truncate"):
                raise _Abort(rst=fault.kind == "reset")
            return keep
        total = resp.length or 0
        kind = fault.kind if fault else None
        cut = total // 2 if kind in ("reset", "truncate") else None
        flip_at = total // 2 if kind == "flip" else None
        sent = 0
        while True:
            data = resp.read(CHUNK)
            if cut is not None and sent + len(data) >= cut:
                data = data[:cut - sent]
            if flip_at is not None and sent <= flip_at < sent + len(data):
                data = bytearray(data)
                data[flip_at - sent] ^= 0xFF
                data = bytes(data)
            if data:
                self.down_bucket.take(len(data), cancel)
                sent += len(data)
                record["bytes"] = sent                  # counted before the client can see it
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if cut is not None and sent >= cut:
                box.pop().close()                     # the rest of the upstream body is abandoned
                raise _Abort(rst=kind == "reset")
            if not data:
                break
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return keep


def main(argv: list[str] | None = None) -> None:
    """Run the proxy in the foreground until SIGINT/SIGTERM; prints its address."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="registry HOST:PORT")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bandwidth", type=parse_bandwidth, default=None, help="e.g. 100mbit")
    ap.add_argument("--rtt", type=parse_duration, default=0.0, help="e.g. 20ms")
    args = ap.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with ShapingProxy(args.upstream, bandwidth=args.bandwidth, rtt=args.rtt, port=args.port) as proxy:
        print(proxy.host, flush=True)
        done.wait()


if __name__ == "__main__":
    main()
