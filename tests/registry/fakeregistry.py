"""A tiny registry of our own, for faults and auth flows the real docker-registry cannot produce.

It speaks just enough of the distribution API (GET/HEAD of blobs and manifests,
a token endpoint) and can be told to: demand basic auth or bearer tokens (with
expiry and revocation), answer some requests with 5xx/429 first, ignore Range
(200 + whole body), refuse multi-range, serve only the first range, cut a body
short, or serve corrupt bytes. Runs in a thread on a free loopback port; every
request is recorded so tests can count round trips.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 128   # many client threads connect at once; the default backlog is 5


@dataclass
class Seen:
    method: str
    path: str
    headers: dict


@dataclass
class Behaviour:
    auth: str | None = None                 # None | "basic" | "bearer"
    users: dict = field(default_factory=dict)   # username -> password
    token_lifetime: int | None = 300        # expires_in sent with tokens (None: omitted)
    faults: list = field(default_factory=list)  # statuses (int) or (status, headers) for next requests
    fault_paths: str = "/v2/"               # faults apply to paths starting with this
    fault_methods: tuple = ("GET", "HEAD", "POST", "PATCH", "PUT")   # ... and to these methods
    range_mode: str = "multipart"           # multipart | ignore | refuse_multi | first_only | refuse_400
    truncate_once: bool = False             # cut the next blob body after half, then close
    corrupt: bool = False                   # flip a byte in every blob body


class FakeRegistry:
    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}   # digest or tag -> (data, media type)
        self.b = Behaviour()
        self.seen: list[Seen] = []
        self.tokens: dict[str, str] = {}   # valid token -> scope string
        self.token_requests: list[dict] = []
        self.uploads: dict[str, bytearray] = {}
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        if tls is not None:   # (certfile, keyfile): serve HTTPS with that (self-signed) certificate
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def add_blob(self, data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[d] = data
        return d

    def add_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.manifests[d] = (data, media_type)
        if tag:
            self.manifests[tag] = (data, media_type)
        return d

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for s in self.seen if s.method == method and fragment in s.path)


def _handler(reg: FakeRegistry):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # keep test output clean
            pass

        # -- helpers ---------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            hdrs = {"Content-Length": str(len(body))}
            hdrs.update(headers or {})
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, headers: dict | None = None) -> None:
            body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _authorized(self) -> bool:
            b = reg.b
            if b.auth is None:
                return True
            got = self.headers.get("Authorization", "")
            if b.auth == "basic":
                if got.startswith("Basic "):
                    user, _, pw = base64.b64decode(got[6:]).decode().partition(":")
                    if reg.b.users.get(user) == pw:
                        return True
                self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            m = re.match(r"/v2/(.+)/(blobs|manifests|tags)/", self.path)
            repo = m.group(1) if m else ""
            with reg.lock:
                ok = got.startswith("Bearer ") and got[7:] in reg.tokens
            if ok:
                return True
            realm = f"http://{reg.host}/token"
            scope = f"repository:{repo}:pull" if repo else ""
            challenge = f'Bearer realm="{realm}",service="fake-registry"' + (f',scope="{scope}"' if scope else "")
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
            return False

        def _token(self) -> None:
            from urllib.parse import parse_qs, urlsplit
            q = parse_qs(urlsplit(self.path).query)
            got = self.headers.get("Authorization", "")
            rec = {"query": q, "authorization": got}
            reg.token_requests.append(rec)
            if reg.b.users:
                if not got.startswith("Basic "):
                    self._send(401, b'{"details":"no credentials"}')
                    return
                user, _, pw = base64.b64decode(got[6:]).decode().partition(":")
                if reg.b.users.get(user) != pw:
                    self._send(401, b'{"details":"bad credentials"}')
                    return
            tok = secrets.token_hex(16)
            with reg.lock:
                reg.tokens[tok] = " ".join(q.get("scope", []))
            doc = {"token": tok}
            if reg.b.token_lifetime is not None:
                doc["expires_in"] = reg.b.token_lifetime
            self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

        def _fault(self) -> bool:
            if not self.path.startswith(reg.b.fault_paths) or self.command not in reg.b.fault_methods:
                return False
            with reg.lock:
                if not reg.b.faults:
                    return False
                f = reg.b.faults.pop(0)
            status, headers = (f, {}) if isinstance(f, int) else f
            self._error(status, "UNAVAILABLE", headers)
            return True

        # -- verbs -----------------------------------------------------------------------------
        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _upload_verb(self) -> None:
            body = self._body()
            reg.seen.append(Seen(self.command, self.path, dict(self.headers)))
            if not self._authorized() or self._fault():
                return
            from urllib.parse import parse_qs, urlsplit
            u = urlsplit(self.path)
            if self.command == "POST" and re.fullmatch(r"/v2/.+/blobs/uploads/", u.path):
                uid = secrets.token_hex(8)
                reg.uploads[uid] = bytearray()
                return self._send(202, b"", {"Location": f"/upload/{uid}?_state=opaque",
                                             "Range": "0-0"})
            m = re.fullmatch(r"/upload/([0-9a-f]+)", u.path)
            if not m or m.group(1) not in reg.uploads:
                return self._error(404, "BLOB_UPLOAD_UNKNOWN")
            buf = reg.uploads[m.group(1)]
            if self.command == "PATCH":
                start = int(self.headers["Content-Range"].split("-")[0])
                if start != len(buf):
                    return self._send(416, b"", {"Range": f"0-{len(buf) - 1}"})
                buf += body
                return self._send(202, b"", {"Location": f"/upload/{m.group(1)}?_state=next",
                                             "Range": f"0-{len(buf) - 1}"})
            if self.command == "PUT":
                buf += body
                want = parse_qs(u.query)["digest"][0]
                if "sha256:" + hashlib.sha256(buf).hexdigest() != want:
                    return self._error(400, "DIGEST_INVALID")
                reg.blobs[want] = bytes(buf)
                del reg.uploads[m.group(1)]
                return self._send(201, b"", {"Docker-Content-Digest": want})
            return self._error(405, "UNSUPPORTED")

        do_POST = do_PATCH = do_PUT = _upload_verb

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            if self.path.startswith("http://"):   # absolute-form: we are being used as an HTTP proxy
                self.path = "/" + self.path.split("/", 3)[3]
            reg.seen.append(Seen(self.command, self.path, dict(self.headers)))
            if self.path.startswith("/token"):
                return self._token()
            if not self._authorized() or self._fault():
                return
            if self.path == "/v2/":
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            m = re.fullmatch(r"/v2/(.+)/(blobs|manifests)/([^/?]+)", self.path)
            if not m:
                return self._error(404, "NAME_UNKNOWN")
            _repo, kind, ref = m.groups()
            if kind == "manifests":
                if ref not in reg.manifests:
                    return self._error(404, "MANIFEST_UNKNOWN")
                data, mt = reg.manifests[ref]
                dg = "sha256:" + hashlib.sha256(data).hexdigest()
                return self._send(200, data, {"Content-Type": mt, "Docker-Content-Digest": dg})
            if ref not in reg.blobs:
                return self._error(404, "BLOB_UNKNOWN")
            data = reg.blobs[ref]
            if reg.b.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            rng = self.headers.get("Range")
            if rng and self.command == "GET" and reg.b.range_mode != "ignore":
                return self._ranges(data, rng)
            if reg.b.truncate_once and self.command == "GET":
                reg.b.truncate_once = False
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(200, data, {"Content-Type": "application/octet-stream"})

        def _ranges(self, data: bytes, header: str) -> None:
            spans = []
            for part in header.removeprefix("bytes=").split(","):
                a, _, b = part.strip().partition("-")
                spans.append((int(a), min(int(b) if b else len(data) - 1, len(data) - 1)))
            if any(a >= len(data) for a, _ in spans):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            mode = reg.b.range_mode
            if len(spans) > 1 and mode == "refuse_multi":
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            if len(spans) > 1 and mode == "refuse_400":
                return self._error(400, "RANGE_INVALID")
            if len(spans) == 1 or mode == "first_only":
                a, b = spans[0]
                if reg.b.truncate_once:
                    reg.b.truncate_once = False
                    body = data[a:b + 1]
                    self.send_response(206)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                return self._send(206, data[a:b + 1], {"Content-Range": f"bytes {a}-{b}/{len(data)}",
                                                      "Content-Type": "application/octet-stream"})
            boundary = "fakeboundary" + secrets.token_hex(4)
            out = bytearray()
            for a, b in spans:
                out += (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Range: bytes {a}-{b}/{len(data)}\r\n\r\n").encode()
                out += data[a:b + 1]
            out += f"\r\n--{boundary}--\r\n".encode()
            self._send(206, bytes(out), {"Content-Type": f"multipart/byteranges; boundary={boundary}"})

    return H
