"""CRI image service proxy: the kubelet's image calls pass through, its pull credentials stay.

A kubelet started with ``--image-service-endpoint unix://<[cri] listen>`` sends its
ImageService calls (PullImage, ImageStatus, ListImages, RemoveImage, ImageFsInfo) here;
each is forwarded to containerd's CRI socket (``[cri] backend``) as it came, bytes in and
bytes out, with its deadline and metadata, and containerd's answer or error goes back
unchanged. From PullImage the proxy first reads the image name and the credentials
(``snapshotter.keychain``), so that the snapshotter can fetch that image's bootstraps and
start its daemon while containerd is still pulling. Its RuntimeService calls keep going to
containerd directly (``--container-runtime-endpoint``).

Both CRI versions containerd 1.6 serves (runtime.v1 and runtime.v1alpha2) are passed
through; their PullImageRequest has the same wire layout.
"""
from __future__ import annotations

import logging
import os
from concurrent import futures
from pathlib import Path

import grpc

from snapshotter.keychain import Keychain

log = logging.getLogger("imgfs.snapshotter")

SERVICES = ("/runtime.v1.ImageService/", "/runtime.v1alpha2.ImageService/")


class _ImageServiceProxy(grpc.GenericRpcHandler):
    def __init__(self, backend: grpc.Channel, keychain: Keychain) -> None:
        self._backend = backend
        self._keychain = keychain

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if not method.startswith(SERVICES):
            return None                     # UNIMPLEMENTED: this socket serves images only
        forward = self._backend.unary_unary(method)     # no (de)serialisers: raw bytes
        pull = method.endswith("/PullImage")

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            if pull:
                self._learn(request)
            try:
                return forward(request, timeout=context.time_remaining(),
                               metadata=_passable(context.invocation_metadata()))
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "")
                raise                        # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(handle)

    def _learn(self, request: bytes) -> None:
        from google.protobuf.message import DecodeError

        from snapshotter.proto import criauth_pb2 as pb

        try:
            req = pb.PullImageRequest.FromString(request)
        except DecodeError:
            return                           # containerd will say what is wrong with it
        if req.HasField("auth"):
            self._keychain.learn(req.image.image, req.auth)


def _passable(metadata) -> list[tuple[str, str | bytes]]:
    """The caller's metadata without what gRPC itself sets on a call."""
    return [(k, v) for k, v in metadata or () if not k.startswith(("grpc-", ":")) and k != "user-agent"]


def serve(keychain: Keychain, listen: Path, backend: str, workers: int = 8) -> grpc.Server:
    """Starts the proxy on unix socket ``listen`` (mode 0600; kubelet runs as root) in front
    of containerd's CRI at ``backend`` (a unix socket path)."""
    listen.parent.mkdir(parents=True, exist_ok=True)
    if listen.exists() or listen.is_symlink():
        listen.unlink()
    channel = grpc.insecure_channel(f"unix://{backend}")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         handlers=[_ImageServiceProxy(channel, keychain)])
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix://{listen}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(listen, 0o600)
    log.info("CRI image service proxy on %s, forwarding to %s", listen, backend)
    return server
