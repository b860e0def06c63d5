"""CRI image service proxy: the kubelet's image calls pass through, its pull credentials stay.

A kubelet started with ``--image-service-endpoint unix://<[cri] listen>`` sends its
ImageService calls (PullImage, ImageStatus, ListImages, RemoveImage, ImageFsInfo) here;
each is forwarded to containerd's CRI socket (``[cri] backend``) as it came, bytes in and
bytes out, with its deadline (none if it had none, as the kubelet's pulls) and metadata;
containerd's answer, or its status, details and trailing metadata, goes back unchanged, and
a call the kubelet cancels is cancelled at containerd. From a PullImage the proxy reads the
image name and the credentials and, once containerd has pulled with them, keeps them for
that image's repository (``snapshotter.keychain``), so that the snapshotter can fetch the
image's bootstraps and start its daemon. The RuntimeService calls keep going to containerd
directly (``--container-runtime-endpoint``).

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
#: What the kubelet and containerd allow in a CRI message (ListImages of a big node)
MAX_MESSAGE = 16 << 20
#: grpc's ServicerContext.time_remaining() of a call without a deadline (~2**63 ns)
NO_DEADLINE = 1e9


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
            pulling = self._begin_pull(request) if pull else None
            ok = False
            try:
                left = context.time_remaining()
                call = forward.future(request, timeout=left if left is not None and left < NO_DEADLINE else None,
                                      metadata=_passable(context.invocation_metadata()))
                context.add_callback(call.cancel)        # the kubelet gave up: so does containerd
                try:
                    response = call.result()
                except grpc.RpcError as e:
                    context.set_trailing_metadata(e.trailing_metadata() or ())
                    context.abort(e.code(), e.details() or "")
                except grpc.FutureCancelledError:
                    context.abort(grpc.StatusCode.CANCELLED, "cancelled by the caller")
                ok = True
            finally:
                if pulling is not None:
                    self._keychain.end(pulling, ok)      # kept only if containerd pulled with them
            context.set_trailing_metadata(call.trailing_metadata() or ())
            return response

        return grpc.unary_unary_rpc_method_handler(handle)

    def _begin_pull(self, request: bytes):
        """The keychain's handle for a PullImageRequest with credentials, else None. Only a
        head start for the snapshotter: whatever goes wrong here, the pull goes on as it came."""
        try:
            from snapshotter.proto import criauth_pb2 as pb

            req = pb.PullImageRequest.FromString(request)
            return self._keychain.begin(req.image.image, req.auth) if req.HasField("auth") else None
        except Exception as e:  # noqa: BLE001 - containerd will say what is wrong with it
            log.warning("could not read the credentials of a CRI pull: %s", type(e).__name__)
            return None


def _passable(metadata) -> list[tuple[str, str | bytes]]:
    """The caller's metadata without what gRPC itself sets on a call."""
    return [(k, v) for k, v in metadata or () if not k.startswith(("grpc-", ":")) and k != "user-agent"]


class CriProxy:
    """The running proxy: its server and the channel to containerd (``stop`` closes both)."""

    def __init__(self, server: grpc.Server, channel: grpc.Channel) -> None:
        self.server, self.channel = server, channel

    def stop(self, grace: float = 5) -> None:
        self.server.stop(grace).wait()
        self.channel.close()


def serve(keychain: Keychain, listen: Path, backend: str, workers: int = 16) -> CriProxy:
    """Starts the proxy on unix socket ``listen`` (mode 0600; the kubelet runs as root) in
    front of containerd's CRI at ``backend`` (a unix socket path). Call it before other
    threads create files: the socket is bound under a umask of 0177."""
    if Path(listen).resolve() == Path(backend).resolve():
        raise ValueError(f"[cri] listen and backend are the same socket: {listen}")
    listen.parent.mkdir(parents=True, exist_ok=True)
    if listen.exists() or listen.is_symlink():
        listen.unlink()
    limits = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    channel = grpc.insecure_channel(f"unix://{backend}", options=limits)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         handlers=[_ImageServiceProxy(channel, keychain)], options=limits)
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix://{listen}")
        server.start()
    except BaseException:
        channel.close()
        raise
    finally:
        os.umask(old)
    os.chmod(listen, 0o600)
    log.info("CRI image service proxy on %s, forwarding to %s", listen, backend)
    return CriProxy(server, channel)
