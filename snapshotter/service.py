"""containerd.services.snapshots.v1.Snapshots over gRPC: translation only.

The one mapping table from the snapshotter's typed errors to gRPC status codes
lives here (containerd's errdefs turn the codes back into ErrNotFound etc.).
Calls are serialized by one lock: containerd's own snapshotters serialize their
metadata transactions too, and a remote Prepare must not race a Remove.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from snapshotter import store as st
from snapshotter.filters import FilterError, parse_filters
from snapshotter.proto import mount_pb2
from snapshotter.proto import snapshots_pb2 as pb
from snapshotter.proto import snapshots_pb2_grpc as pbg
from snapshotter.snapshots import Snapshotter

log = logging.getLogger("imgfs.snapshotter")

_CODES: dict[type, grpc.StatusCode] = {
    st.NotFound: grpc.StatusCode.NOT_FOUND,
    st.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    st.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    st.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FilterError: grpc.StatusCode.INVALID_ARGUMENT,
}


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _info(s: st.Snapshot) -> pb.Info:
    return pb.Info(name=s.key, parent=s.parent, kind=s.kind, created_at=_ts(s.created_ns),
                   updated_at=_ts(s.updated_ns), labels=s.labels)


def _mounts(ms: list[dict]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m["type"], source=m["source"], options=m["options"]) for m in ms]


class SnapshotsService(pbg.SnapshotsServicer):
    def __init__(self, snap: Snapshotter) -> None:
        self.snap = snap
        self.lock = threading.Lock()

    def _call(self, context: grpc.ServicerContext, what: str, fn, *args):
        try:
            with self.lock:
                return fn(*args)
        except tuple(_CODES) as e:
            code = _CODES.get(type(e), grpc.StatusCode.INVALID_ARGUMENT)
            log.debug("%s: %s: %s", what, code.name, e)
            context.abort(code, str(e))
        except Exception as e:      # the edge: log the cause, answer INTERNAL
            log.exception("%s failed", what)
            context.abort(grpc.StatusCode.INTERNAL, f"{what}: {e}")

    def Prepare(self, request, context):
        log.debug("prepare key=%s parent=%s labels=%s", request.key, request.parent, dict(request.labels))
        ms = self._call(context, f"prepare {request.key}", self.snap.prepare, request.key,
                        request.parent, dict(request.labels))
        return pb.PrepareSnapshotResponse(mounts=_mounts(ms))

    def View(self, request, context):
        ms = self._call(context, f"view {request.key}", self.snap.view, request.key, request.parent,
                        dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=_mounts(ms))

    def Mounts(self, request, context):
        ms = self._call(context, f"mounts {request.key}", self.snap.mounts, request.key)
        return pb.MountsResponse(mounts=_mounts(ms))

    def Commit(self, request, context):
        self._call(context, f"commit {request.key}", self.snap.commit, request.name, request.key,
                   dict(request.labels))
        return empty_pb2.Empty()

    def Remove(self, request, context):
        self._call(context, f"remove {request.key}", self.snap.remove, request.key)
        return empty_pb2.Empty()

    def Stat(self, request, context):
        s = self._call(context, f"stat {request.key}", self.snap.stat, request.key)
        return pb.StatSnapshotResponse(info=_info(s))

    def Update(self, request, context):
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        s = self._call(context, f"update {request.info.name}", self.snap.update, request.info.name,
                       dict(request.info.labels), paths)
        return pb.UpdateSnapshotResponse(info=_info(s))

    def List(self, request, context):
        def run():
            match = parse_filters(list(request.filters))
            return [s for s in self.snap.list() if match(s)]
        snaps = self._call(context, "list", run)
        for i in range(0, len(snaps), 100):   # batches, as containerd's service streams them
            yield pb.ListSnapshotsResponse(info=[_info(s) for s in snaps[i:i + 100]])

    def Usage(self, request, context):
        size, inodes = self._call(context, f"usage {request.key}", self.snap.usage, request.key)
        return pb.UsageResponse(size=size, inodes=inodes)

    def Cleanup(self, request, context):
        self._call(context, "cleanup", self.snap.cleanup)
        return empty_pb2.Empty()


def serve(snap: Snapshotter, socket_path: Path, workers: int = 8) -> grpc.Server:
    """Starts the server on a unix socket that only its owner may use (mode 0600)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists() or socket_path.is_symlink():
        socket_path.unlink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pbg.add_SnapshotsServicer_to_server(SnapshotsService(snap), server)
    old = os.umask(0o177)       # the socket is born 0600: no window where others can connect
    try:
        server.add_insecure_port(f"unix://{socket_path}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    return server
