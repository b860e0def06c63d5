"""A counting reverse proxy in front of the test registry that can answer 503 on cue.

A real registry cannot be told "fail the next two blob GETs, then work"; this proxy
can. Everything else is passed through unchanged (method, path, Range and auth
headers, status, body), so the client under test talks HTTP to a real registry.
"""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream            # "127.0.0.1:PORT"
        self.fail_blob_gets = 0             # answer this many next blob GETs with 503
        self.blob_gets: list[tuple[str, str | None, int]] = []   # (path, range, status)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                is_blob = self.command == "GET" and "/blobs/" in self.path
                with proxy.lock:
                    fail = is_blob and proxy.fail_blob_gets > 0
                    if fail:
                        proxy.fail_blob_gets -= 1
                if fail:
                    proxy.blob_gets.append((self.path, self.headers.get("Range"), 503))
                    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if is_blob:
                    proxy.blob_gets.append((self.path, self.headers.get("Range"), resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
