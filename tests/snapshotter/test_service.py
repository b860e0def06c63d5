"""gRPC contract of imgfs-snapshotter: each method with good and bad input, containerd's codes.

The real CLI process serves a private root; the tests talk to it as containerd does
(containerd.services.snapshots.v1 over the unix socket) and look at the disk.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from snapshotter.proto import snapshots_pb2 as pb
from snapshotter.proto import snapshots_pb2_grpc as pbg
from tests.support.containerd import start_snapshotter, write_snapshotter_config

NF, AE = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS
FP, IA = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    d = tmp_path_factory.mktemp("sn")
    root, sock = d / "root", d / "s.sock"
    sp = start_snapshotter(write_snapshotter_config(root, sock, []), root, sock, d / "sn.log")
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield sp, pbg.SnapshotsStub(channel)
    finally:
        channel.close()
        sp.stop()


def code(fn, req) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as ei:
        fn(req)
    return ei.value.code()


def prepare(stub, key, parent="", **labels):
    return stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels)).mounts


def committed(stub, name, parent=""):
    prepare(stub, name + "-a", parent)
    stub.Commit(pb.CommitSnapshotRequest(name=name, key=name + "-a"))


def test_socket_is_owner_only(snap):
    sp, _ = snap
    assert stat.S_IMODE(os.stat(sp.socket).st_mode) == 0o600


def test_prepare_mounts_view_like_overlayfs(snap):
    _, stub = snap
    (m,) = prepare(stub, "p1")
    assert m.type == "bind" and "rw" in m.options and Path(m.source).is_dir()
    (Path(m.source) / "a").write_text("layer1")
    stub.Commit(pb.CommitSnapshotRequest(name="p1-c", key="p1"))
    (v,) = stub.View(pb.ViewSnapshotRequest(key="p1-v", parent="p1-c")).mounts
    assert v.type == "bind" and "ro" in v.options and (Path(v.source) / "a").read_text() == "layer1"
    committed(stub, "p2-c", "p1-c")
    (o,) = prepare(stub, "p3", "p2-c")
    opts = dict(x.split("=", 1) for x in o.options)
    assert o.type == "overlay" and set(opts) == {"workdir", "upperdir", "lowerdir"}
    lowers = opts["lowerdir"].split(":")
    assert len(lowers) == 2 and (Path(lowers[1]) / "a").exists()    # nearest parent first
    assert list(stub.Mounts(pb.MountsRequest(key="p3")).mounts) == [o]
    (vo,) = stub.View(pb.ViewSnapshotRequest(key="p3-v", parent="p2-c")).mounts
    assert vo.type == "overlay" and vo.options == [f"lowerdir={opts['lowerdir']}"]


def test_prepare_and_view_errors(snap):
    _, stub = snap
    prepare(stub, "e1")
    assert code(stub.Prepare, pb.PrepareSnapshotRequest(key="e1")) == AE
    assert code(stub.Prepare, pb.PrepareSnapshotRequest(key="e2", parent="nope")) == NF
    assert code(stub.Prepare, pb.PrepareSnapshotRequest(key="e3", parent="e1")) == FP   # active parent
    assert code(stub.View, pb.ViewSnapshotRequest(key="e4", parent="nope")) == NF
    assert code(stub.Prepare, pb.PrepareSnapshotRequest(key="")) == IA
    keys = {i.name for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info}
    assert not keys & {"e2", "e3", "e4"}       # failed calls leave nothing behind


def test_commit(snap):
    _, stub = snap
    (m,) = prepare(stub, "c1", lbl="x")
    Path(m.source, "f").write_bytes(b"x" * 10000)
    assert code(stub.Commit, pb.CommitSnapshotRequest(name="c1-c", key="nope")) == NF
    stub.Commit(pb.CommitSnapshotRequest(name="c1-c", key="c1", labels={"k": "v"}))
    info = stub.Stat(pb.StatSnapshotRequest(key="c1-c")).info
    assert info.kind == pb.COMMITTED and dict(info.labels) == {"k": "v"}
    assert code(stub.Stat, pb.StatSnapshotRequest(key="c1")) == NF        # the active key is gone
    assert stub.Usage(pb.UsageRequest(key="c1-c")).size >= 10000
    assert code(stub.Commit, pb.CommitSnapshotRequest(name="c1-d", key="c1-c")) == FP  # not active
    stub.View(pb.ViewSnapshotRequest(key="c1-v", parent="c1-c"))
    assert code(stub.Commit, pb.CommitSnapshotRequest(name="c1-e", key="c1-v")) == FP  # a view
    prepare(stub, "c2")
    assert code(stub.Commit, pb.CommitSnapshotRequest(name="c1-c", key="c2")) == AE


def test_mounts_errors(snap):
    _, stub = snap
    committed(stub, "m1")
    assert code(stub.Mounts, pb.MountsRequest(key="nope")) == NF
    assert code(stub.Mounts, pb.MountsRequest(key="m1")) == FP


def test_remove(snap):
    _, stub = snap
    committed(stub, "r1")
    (m,) = prepare(stub, "r2", "r1")
    upper = Path(dict(x.split("=", 1) for x in m.options)["upperdir"])
    assert code(stub.Remove, pb.RemoveSnapshotRequest(key="nope")) == NF
    assert code(stub.Remove, pb.RemoveSnapshotRequest(key="r1")) == FP     # has a child
    stub.Remove(pb.RemoveSnapshotRequest(key="r2"))
    assert not upper.exists()
    stub.Remove(pb.RemoveSnapshotRequest(key="r1"))
    assert code(stub.Stat, pb.StatSnapshotRequest(key="r1")) == NF


def test_stat_and_update(snap):
    _, stub = snap
    prepare(stub, "u1", a="1", b="2")
    info = stub.Stat(pb.StatSnapshotRequest(key="u1")).info
    assert info.kind == pb.ACTIVE and info.parent == "" and info.created_at.seconds > 0
    assert code(stub.Stat, pb.StatSnapshotRequest(key="nope")) == NF

    def update(labels, *paths, key="u1"):
        mask = field_mask_pb2.FieldMask(paths=list(paths)) if paths else None
        req = pb.UpdateSnapshotRequest(info=pb.Info(name=key, labels=labels), update_mask=mask)
        return dict(stub.Update(req).info.labels)

    assert update({"a": "9", "c": "3"}, "labels.a") == {"a": "9", "b": "2"}
    assert update({}, "labels.b") == {"a": "9"}                         # masked but absent: dropped
    assert update({"z": "1"}, "labels") == {"z": "1"}
    assert update({"y": "2"}) == {"y": "2"}                             # no mask: all labels
    assert code(stub.Update, pb.UpdateSnapshotRequest(
        info=pb.Info(name="u1"), update_mask=field_mask_pb2.FieldMask(paths=["parent"]))) == IA
    assert code(stub.Update, pb.UpdateSnapshotRequest(info=pb.Info(name="nope"))) == NF
    info2 = stub.Stat(pb.StatSnapshotRequest(key="u1")).info
    assert info2.updated_at.ToNanoseconds() >= info.updated_at.ToNanoseconds()


def test_usage(snap):
    _, stub = snap
    (m,) = prepare(stub, "g1")
    before = stub.Usage(pb.UsageRequest(key="g1"))
    Path(m.source, "big").write_bytes(b"y" * 100_000)
    after = stub.Usage(pb.UsageRequest(key="g1"))
    assert after.size - before.size >= 100_000 and after.inodes == before.inodes + 1
    assert code(stub.Usage, pb.UsageRequest(key="nope")) == NF


def test_list_and_filters(snap):
    _, stub = snap
    committed(stub, "l1")
    prepare(stub, "l2", "l1", **{"containerd.io/gc.root": "x"})

    def names(*filters):
        return {i.name for r in stub.List(pb.ListSnapshotsRequest(filters=list(filters))) for i in r.info}

    assert {"l1", "l2"} <= names()
    assert names("name==l2") == {"l2"}
    assert names("parent==l1") == {"l2"}
    assert "l2" in names('labels."containerd.io/gc.root"') and "l1" not in names('labels."containerd.io/gc.root"')
    assert names("name==l1", "name==l2") == {"l1", "l2"}
    assert names("kind==committed,name~=^l") == {"l1"}
    with pytest.raises(grpc.RpcError) as ei:
        names("bogus==1")
    assert ei.value.code() == IA


def test_cleanup_removes_orphan_dirs(snap):
    sp, stub = snap
    orphan = sp.root / "snapshots" / "999999"
    (orphan / "fs").mkdir(parents=True)
    prepare(stub, "k1")
    stub.Cleanup(pb.CleanupRequest())
    assert not orphan.exists()
    assert stub.Stat(pb.StatSnapshotRequest(key="k1")).info.name == "k1"


def test_state_survives_kill9(tmp_path):
    root, sock = tmp_path / "root", tmp_path / "s.sock"
    cfg = write_snapshotter_config(root, sock, [])
    sp = start_snapshotter(cfg, root, sock, tmp_path / "sn.log")
    try:
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            stub = pbg.SnapshotsStub(ch)
            committed(stub, "s1")
            prepare(stub, "s2", "s1", a="b")
        sp.kill9()
        sp = start_snapshotter(cfg, root, sock, tmp_path / "sn.log")
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            stub = pbg.SnapshotsStub(ch)
            infos = {i.name: i for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info}
            assert set(infos) == {"s1", "s2"} and infos["s2"].parent == "s1" and infos["s2"].labels["a"] == "b"
            stub.Remove(pb.RemoveSnapshotRequest(key="s2"))
    finally:
        sp.stop()


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('root = "/tmp/x"\ncache_sise = 5\n')
    r = subprocess.run([sys.executable, "-m", "snapshotter.cli", "--config", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "unknown key 'cache_sise'" in r.stderr
    bad.write_text("[registry]\nplain_http = 5\n")
    r = subprocess.run([sys.executable, "-m", "snapshotter.cli", "--config", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "plain_http must be a list of strings" in r.stderr
