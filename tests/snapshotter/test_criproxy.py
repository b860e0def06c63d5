"""snapshotter.criproxy against a scripted gRPC backend on a unix socket (containerd's part is
tested for real in tests/cri/test_private_pull.py; here: what containerd cannot be made to do
on demand, such as failing with trailing metadata or hanging until a call is cancelled)."""
from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from registry.credentials import Credentials
from snapshotter import criproxy
from snapshotter.keychain import Keychain
from snapshotter.proto import criauth_pb2 as pb
from tests.support.wait import wait_for

PULL = "/runtime.v1.ImageService/PullImage"


class Backend(grpc.GenericRpcHandler):
    """Answers every method with b"ok:" + request, unless `fail` or `hang` say otherwise."""

    def __init__(self, keychain: Keychain) -> None:
        self.keychain = keychain
        self.fail: tuple[grpc.StatusCode, str, tuple] | None = None
        self.hang = threading.Event()
        self.cancelled = threading.Event()
        self.seen: list[tuple[str, bytes, float | None, dict]] = []
        self.creds_during_pull: Credentials | None = None

    def service(self, details):
        method = details.method

        def handle(request: bytes, context):
            self.seen.append((method, request, context.time_remaining(), dict(context.invocation_metadata())))
            if method == PULL:
                self.creds_during_pull = self.keychain.get("reg.example:5000", "team/app")
            if self.hang.is_set():
                context.add_callback(self.cancelled.set)
                self.cancelled.wait(30)
                return b""
            if self.fail:
                code, details_, trailers = self.fail
                context.set_trailing_metadata(trailers)
                context.abort(code, details_)
            return b"ok:" + request

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def proxy(tmp_path):
    keychain = Keychain()
    backend = Backend(keychain)
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[backend])
    server.add_insecure_port(f"unix://{tmp_path / 'ctd.sock'}")
    server.start()
    p = criproxy.serve(keychain, tmp_path / "img.sock", str(tmp_path / "ctd.sock"))
    channel = grpc.insecure_channel(f"unix://{tmp_path / 'img.sock'}")
    try:
        yield channel, backend, keychain
    finally:
        channel.close()
        p.stop(grace=0)
        server.stop(0).wait()


def call(channel, method: str, request: bytes, **kw):
    return channel.unary_unary(method)(request, **kw)


def pull_request(user: str, password: str) -> bytes:
    return pb.PullImageRequest(image=pb.ImageSpec(image="reg.example:5000/team/app:1"),
                               auth=pb.AuthConfig(username=user, password=password)).SerializeToString()


def test_calls_pass_through_unchanged_also_without_a_deadline(proxy):
    channel, backend, _ = proxy
    # the kubelet's PullImage has no deadline: grpc reports ~2**63 ns left, which must not be
    # passed on as a timeout (it would fail at once with DEADLINE_EXCEEDED)
    assert call(channel, "/runtime.v1.ImageService/ListImages", b"\x01\x02") == b"ok:\x01\x02"
    assert backend.seen[-1][2] > criproxy.NO_DEADLINE        # none passed on either
    assert call(channel, "/runtime.v1alpha2.ImageService/ImageStatus", b"x", timeout=30,
                metadata=[("x-trace", "t1")]) == b"ok:x"
    method, _, left, meta = backend.seen[-1]
    assert method == "/runtime.v1alpha2.ImageService/ImageStatus" and 0 < left <= 31   # the deadline passed on (to clock precision)
    assert meta["x-trace"] == "t1"
    with pytest.raises(grpc.RpcError) as e:
        call(channel, "/runtime.v1.RuntimeService/Version", b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_backend_errors_come_back_unchanged(proxy):
    channel, backend, _ = proxy
    backend.fail = (grpc.StatusCode.NOT_FOUND, "no such image", (("x-why", "gone"),))
    with pytest.raises(grpc.RpcError) as e:
        call(channel, "/runtime.v1.ImageService/ImageStatus", b"q", timeout=30)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "no such image")
    assert ("x-why", "gone") in tuple(e.value.trailing_metadata())


def test_pull_credentials_pending_during_the_pull_and_kept_after_success(proxy):
    channel, backend, keychain = proxy
    request = pull_request("bot", "pw")
    assert call(channel, PULL, request) == b"ok:" + request
    assert backend.creds_during_pull == Credentials("bot", "pw")     # usable while pulling
    assert keychain.get("reg.example:5000", "team/app") == Credentials("bot", "pw")

    backend.fail = (grpc.StatusCode.UNKNOWN, "401 Unauthorized", ())
    with pytest.raises(grpc.RpcError):
        call(channel, PULL, pull_request("bot", "wrong"))
    assert backend.creds_during_pull == Credentials("bot", "wrong")
    assert keychain.get("reg.example:5000", "team/app") == Credentials("bot", "pw")   # not replaced

    backend.fail = None
    assert call(channel, PULL, b"\xff\xff garbage") == b"ok:\xff\xff garbage"   # forwarded as it came


def test_a_cancelled_call_is_cancelled_at_the_backend(proxy):
    channel, backend, keychain = proxy
    backend.hang.set()
    future = channel.unary_unary(PULL).future(pull_request("bot", "pw"))
    for _ in range(100):
        if backend.seen:
            break
        threading.Event().wait(0.05)
    future.cancel()
    assert backend.cancelled.wait(10)
    # the proxy's handler ends a moment later: then nothing is pending, and nothing was kept
    wait_for(lambda: keychain.get("reg.example:5000", "team/app") is None, "the cancelled pull's end", 10)


def test_listen_and_backend_must_differ(tmp_path: Path):
    with pytest.raises(ValueError, match="same socket"):
        criproxy.serve(Keychain(), tmp_path / "c.sock", str(tmp_path / "c.sock"))
