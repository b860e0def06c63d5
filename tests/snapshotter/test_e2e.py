"""End to end: real containerd 1.6 + runc, real docker-registry, real FUSE mounts.

One stack (snapshotter + containerd) serves the whole module; tests use their own
container ids, and the destructive ones (kill -9 of a daemon, of the snapshotter)
come last and leave the stack working.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess

import grpc
import pytest
import requests

from imgformat import constants as C
from snapshotter.proto import snapshots_pb2 as pb
from snapshotter.proto import snapshots_pb2_grpc as pbg
from tests.snapshotter.conftest import CACHE_CAP
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

PY = ("python3", "-c", "import sys, time; print('hello from', sys.implementation.name, flush=True); time.sleep(1)")
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def manifest(host: str, ref: str) -> dict:
    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    return requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", timeout=30,
                        headers={"Accept": MANIFEST_ACCEPT}).json()


_ACCESS = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d+) (\d+)')


def log_lines(registry) -> int:
    return len(registry.log.read_text(errors="replace").splitlines())


def blob_gets(registry, since: int, digests: set[str]) -> list[tuple[str, int, int]]:
    """(digest, HTTP status, bytes sent) of blob GETs of `digests` in the registry's access log
    after line `since`."""
    out = []
    for ln in registry.log.read_text(errors="replace").splitlines()[since:]:
        m = _ACCESS.search(ln)
        if m and m.group(1) in digests:
            out.append((m.group(1), int(m.group(2)), int(m.group(3))))
    return out


def backend_snapshots(stack) -> list[tuple[str, str, int]]:
    """(key, parent, kind) of every snapshot, asked of the snapshotter itself."""
    with grpc.insecure_channel(f"unix://{stack.snap.socket}") as ch:
        infos = [i for r in pbg.SnapshotsStub(ch).List(pb.ListSnapshotsRequest()) for i in r.info]
    return sorted((i.name, i.parent, i.kind) for i in infos)


def gone(stack, part: str) -> bool:
    """After a synchronous GC: no snapshot of the snapshotter has `part` in its key."""
    stack.sync_gc()
    return not [i for i in backend_snapshots(stack) if part in i[0]]


def test_plain_image_runs_through_imgfs(stack, tiny_refs):
    ref = tiny_refs["plain"]
    stack.ctd.ctr("images", "pull", "--plain-http", "--snapshotter", "imgfs", ref)
    out = stack.run(ref, "plain-1", "/bin/sh", "-c", "echo plain-ok; sleep 1")
    assert out.strip() == "plain-ok"
    assert not stack.daemon_pids()           # a plain image needs no fusefs daemon


def test_rpull_fetches_no_layer_in_full_and_runs(stack, registry, debian_refs):
    ref = debian_refs["imgfs"]
    layers = {d["digest"]: d["size"] for d in manifest(registry.host, ref)["layers"]}
    since = log_lines(registry)
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    gets = blob_gets(registry, since, set(layers))
    assert len(gets) == len(layers)          # one bootstrap range request per layer, nothing else
    assert all(status == 206 and written < layers[d] for d, status, written in gets), gets
    assert "skip-pull" in stack.snap.log_text()

    # the bootstraps the pull verified are left in the node's bootstrap cache for the daemon
    descs = manifest(registry.host, ref)["layers"]
    boot = {d["digest"]: int(d["annotations"]["containerd.io/snapshot/imgfs.bootstrap.size"]) for d in descs}
    cached = {p.name for p in (stack.snap.root / "cache" / "bootstraps").iterdir()}
    assert {d["annotations"]["containerd.io/snapshot/imgfs.bootstrap.digest"][7:] for d in descs} <= cached

    since = log_lines(registry)
    out = stack.run(ref, "lazy-1", *PY)
    assert out.strip() == "hello from cpython"
    gets = blob_gets(registry, since, set(layers))
    assert all(status == 206 for _, status, _ in gets), gets       # ranges only, no full blob
    assert sum(w for _, _, w in gets) < sum(layers.values())
    assert not [g for g in gets if g[2] == boot[g[0]]], gets       # the daemon fetched no bootstrap


def test_two_containers_share_one_daemon_and_cleanup_frees_all(stack, debian_refs):
    ref = debian_refs["imgfs"]
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    for cid in ("share-1", "share-2"):
        stack.ctd.ctr("run", "-d", "--snapshotter", "imgfs", ref, cid, "sleep", "600")
    try:
        pids = stack.daemon_pids()
        assert len(pids) == 1 and len(stack.fuse_mounts()) == 1
    finally:
        for cid in ("share-1", "share-2"):
            stack.ctd.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            wait_for(lambda c=cid: "STOPPED" in stack.ctd.ctr("tasks", "ls").stdout
                     or c not in stack.ctd.ctr("tasks", "ls").stdout, f"task {cid} to stop")
            stack.ctd.ctr("tasks", "rm", "-f", cid, check=False)
            stack.ctd.ctr("containers", "rm", cid, check=False)
    stack.ctd.ctr("images", "rm", "--sync", ref)
    # containerd's GC removes the snapshots and calls Cleanup; ask for it again to be sure.
    with grpc.insecure_channel(f"unix://{stack.snap.socket}") as ch:
        pbg.SnapshotsStub(ch).Cleanup(pb.CleanupRequest())
    wait_for(lambda: not stack.daemon_pids() and not stack.fuse_mounts()
             and not list(stack.mounts_dir().glob("*")), "daemon, mount and mountpoint to go")
    with grpc.insecure_channel(f"unix://{stack.snap.socket}") as ch:
        left = [i for r in pbg.SnapshotsStub(ch).List(pb.ListSnapshotsRequest()) for i in r.info]
    assert not [i.name for i in left if "share" in i.name]
    # the chunk store stays under its cap (bootstraps have their own, fusefs/bootcache.py)
    cached = sum(f.stat().st_size for f in (stack.snap.root / "cache" / "chunks").rglob("*") if f.is_file())
    assert 0 < cached <= CACHE_CAP


def test_prepare_with_registry_down_falls_back_loudly(stack, fresh_registry, tiny_refs):
    """A Prepare naming an imgfs layer whose registry is unreachable unpacks plainly, and logs why."""
    from tests.support.stack import imgconv
    from tests.support.tinyimage import push_tiny_image

    host = fresh_registry.host
    push_tiny_image(host, "down", "plain")
    imgconv("convert", "--plain-http", f"docker://{host}/down:plain", f"docker://{host}/down:imgfs")
    desc = manifest(host, f"{host}/down:imgfs")["layers"][0]
    fresh_registry.stop()
    labels = {k: v for k, v in desc["annotations"].items() if k.startswith("containerd.io/snapshot/")}
    labels.update({"containerd.io/snapshot.ref": "down-target",
                   "containerd.io/snapshot/remote/stargz.reference": f"{host}/down:imgfs",
                   "containerd.io/snapshot/remote/stargz.digest": desc["digest"]})
    assert C.ANNOTATION_BOOTSTRAP_DIGEST in labels
    with grpc.insecure_channel(f"unix://{stack.snap.socket}") as ch:
        stub = pbg.SnapshotsStub(ch)
        mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="down-extract", labels=labels)).mounts
        assert mounts[0].type == "bind"      # an ordinary active snapshot: containerd unpacks into it
        with pytest.raises(grpc.RpcError) as ei:
            stub.Stat(pb.StatSnapshotRequest(key="down-target"))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        stub.Remove(pb.RemoveSnapshotRequest(key="down-extract"))
    log = stack.snap.log_text()
    assert re.search(r"WARNING .*FALLBACK to plain unpack of imgfs layer " + desc["digest"], log)


def test_prepare_with_a_wrong_bootstrap_digest_falls_back(stack, registry, tiny_refs):
    desc = manifest(registry.host, tiny_refs["imgfs"])["layers"][0]
    labels = {k: v for k, v in desc["annotations"].items() if k.startswith("containerd.io/snapshot/")}
    labels.update({C.ANNOTATION_BOOTSTRAP_DIGEST: "sha256:" + "0" * 64,
                   "containerd.io/snapshot.ref": "bad-target",
                   "containerd.io/snapshot/remote/stargz.reference": tiny_refs["imgfs"],
                   "containerd.io/snapshot/remote/stargz.digest": desc["digest"]})
    with grpc.insecure_channel(f"unix://{stack.snap.socket}") as ch:
        stub = pbg.SnapshotsStub(ch)
        stub.Prepare(pb.PrepareSnapshotRequest(key="bad-extract", labels=labels))
        stub.Remove(pb.RemoveSnapshotRequest(key="bad-extract"))
    assert "bootstrap digest mismatch" in stack.snap.log_text()


def test_mixed_chain_plain_layers_below_and_above_imgfs(stack, registry, debian_refs, tmp_path):
    """A bottom layer that fell back (plain), an imgfs top layer, a plain layer committed above:
    the overlay of a container over that chain sees all three, whiteouts applied."""
    descs = manifest(registry.host, debian_refs["imgfs"])["layers"]
    snap_labels = [{k: v for k, v in d["annotations"].items() if k.startswith("containerd.io/snapshot/")}
                   for d in descs]
    ref_labels = {"containerd.io/snapshot/remote/stargz.reference": debian_refs["imgfs"],
                  "containerd.io/snapshot/remote/stargz.digest": descs[1]["digest"],
                  "containerd.io/snapshot/remote/stargz.layers": ",".join(d["digest"] for d in descs)}
    target = tmp_path / "rootfs"
    target.mkdir()
    with grpc.insecure_channel(f"unix://{stack.snap.socket}") as ch:
        stub = pbg.SnapshotsStub(ch)
        # layer 0 without reference labels (plain `ctr pull`): falls back, unpacked plainly
        stub.Prepare(pb.PrepareSnapshotRequest(key="mx-0-x", labels={
            **snap_labels[0], "containerd.io/snapshot.ref": "mx-0"}))
        stub.Commit(pb.CommitSnapshotRequest(name="mx-0", key="mx-0-x"))
        assert "FALLBACK to plain unpack of mx-0: an imgfs layer, but the client passed no" in \
            stack.snap.log_text()
        with pytest.raises(grpc.RpcError) as ei:
            stub.Prepare(pb.PrepareSnapshotRequest(key="mx-1-x", parent="mx-0", labels={
                **snap_labels[1], **ref_labels, "containerd.io/snapshot.ref": "mx-1"}))
        assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS       # skip-pull
        assert stub.Stat(pb.StatSnapshotRequest(key="mx-1")).info.kind == pb.COMMITTED
        (m,) = stub.Prepare(pb.PrepareSnapshotRequest(key="mx-2-x", parent="mx-1")).mounts
        upper = dict(o.split("=", 1) for o in m.options)["upperdir"]
        with open(os.path.join(upper, "added-above"), "w") as f:
            f.write("plain layer above imgfs\n")
        stub.Commit(pb.CommitSnapshotRequest(name="mx-2", key="mx-2-x"))
        (m,) = stub.Prepare(pb.PrepareSnapshotRequest(key="mx-c", parent="mx-2")).mounts
        lower = dict(o.split("=", 1) for o in m.options)["lowerdir"].split(":")
        assert len(lower) == 2 and lower[1].startswith(str(stack.mounts_dir()))
        subprocess.run(["mount", "-t", m.type, m.source, "-o", ",".join(m.options), str(target)],
                       check=True)
        try:
            assert (target / "added-above").read_text() == "plain layer above imgfs\n"
            assert (target / "usr/bin/file").exists()          # from the imgfs top layer
            assert (target / "etc/os-release").exists()         # from the bottom layer
            assert not (target / "etc/issue.net").exists()      # removed by a whiteout on top
        finally:
            subprocess.run(["umount", str(target)], check=True)
        for key in ("mx-c", "mx-2", "mx-1", "mx-0"):
            stub.Remove(pb.RemoveSnapshotRequest(key=key))
    wait_for(lambda: not stack.fuse_mounts(), "the image mount to be released")


def test_kill9_fusefs_daemon_is_restarted(stack, debian_refs):
    ref = debian_refs["imgfs"]
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    stack.ctd.ctr("run", "-d", "--snapshotter", "imgfs", ref, "k9-hold", "sleep", "600")
    try:
        (pid,) = stack.daemon_pids()
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: stack.fuse_mounts() and [p for p in stack.daemon_pids() if p != pid],
                       "a new fusefs daemon and its mount")
        assert len(new) == 1 and len(stack.fuse_mounts()) == 1
        assert "died or hangs: restarting" in stack.snap.log_text()
        assert stack.run(ref, "k9-next", *PY).strip() == "hello from cpython"
    finally:
        stack.ctd.ctr("tasks", "kill", "-s", "SIGKILL", "k9-hold", check=False)
        wait_for(lambda: "RUNNING" not in stack.ctd.ctr("tasks", "ls").stdout, "k9-hold to stop")
        stack.ctd.ctr("tasks", "rm", "-f", "k9-hold", check=False)
        stack.ctd.ctr("containers", "rm", "k9-hold", check=False)
        wait_for(lambda: gone(stack, "k9-"), "k9 snapshots to go")


def test_hung_fusefs_daemon_is_replaced(stack, debian_refs):
    """A daemon that stops answering (SIGSTOP) is replaced like a dead one."""
    ref = debian_refs["imgfs"]
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    stack.ctd.ctr("run", "-d", "--snapshotter", "imgfs", ref, "hung-hold", "sleep", "600")
    try:
        (pid,) = stack.daemon_pids()
        os.kill(pid, signal.SIGSTOP)
        new = wait_for(lambda: stack.fuse_mounts() and [p for p in stack.daemon_pids() if p != pid],
                       "a new fusefs daemon and its mount", timeout=90)
        assert len(new) == 1 and pid not in stack.daemon_pids()     # the hung one was ended
        assert "it hangs" in stack.snap.log_text()
        assert stack.run(ref, "hung-next", *PY).strip() == "hello from cpython"
    finally:
        stack.ctd.ctr("tasks", "kill", "-s", "SIGKILL", "hung-hold", check=False)
        wait_for(lambda: "RUNNING" not in stack.ctd.ctr("tasks", "ls").stdout, "hung-hold to stop")
        stack.ctd.ctr("tasks", "rm", "-f", "hung-hold", check=False)
        stack.ctd.ctr("containers", "rm", "hung-hold", check=False)
        wait_for(lambda: gone(stack, "hung-"), "hung-* snapshots to go")


def test_kill9_snapshotter_and_restart(stack, debian_refs):
    ref = debian_refs["imgfs"]
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    stack.ctd.ctr("run", "-d", "--snapshotter", "imgfs", ref, "crash-hold", "sleep", "600")
    try:
        before = stack.ctd.ctr("snapshots", "--snapshotter", "imgfs", "ls").stdout
        backend_before = backend_snapshots(stack)
        daemons_before = stack.daemon_pids()
        stack.snap.kill9()
        assert stack.daemon_pids() == daemons_before        # the daemon outlives the crash
        stack.restart_snapshotter()
        after = stack.retry(lambda: stack.ctd.ctr("snapshots", "--snapshotter", "imgfs", "ls").stdout)
        assert sorted(after.splitlines()) == sorted(before.splitlines())
        # containerd's GC may still remove snapshots of earlier tests' containers meanwhile:
        # nothing appears, and the image layers and crash-hold's snapshot are all still there.
        backend_after = backend_snapshots(stack)
        assert set(backend_after) <= set(backend_before)
        kept = [s for s in backend_before if s[2] == pb.COMMITTED or s[0].endswith("/crash-hold")]
        assert set(kept) <= set(backend_after) and any(s[0].endswith("/crash-hold") for s in kept)
        assert stack.daemon_pids() == daemons_before        # adopted, not restarted
        assert "adopted fusefs daemon" in stack.snap.log_text()
        out = stack.retry(lambda: stack.run(ref, "crash-next", *PY))
        assert out.strip() == "hello from cpython"
    finally:
        stack.ctd.ctr("tasks", "kill", "-s", "SIGKILL", "crash-hold", check=False)
        wait_for(lambda: "RUNNING" not in stack.ctd.ctr("tasks", "ls").stdout, "crash-hold to stop")
        stack.ctd.ctr("tasks", "rm", "-f", "crash-hold", check=False)
    stack.ctd.ctr("containers", "rm", "crash-hold")      # Remove of its snapshot works after restart
    assert "crash-hold" not in stack.ctd.ctr("snapshots", "--snapshotter", "imgfs", "ls").stdout
    # containerd's GC removes it from the backend a moment later (asynchronously)
    wait_for(lambda: gone(stack, "crash-hold"), "the snapshotter to remove crash-hold's snapshot")


def test_daemon_that_died_while_the_snapshotter_was_down_is_replaced_at_start(stack, debian_refs):
    ref = debian_refs["imgfs"]
    stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "imgfs", ref)
    stack.ctd.ctr("run", "-d", "--snapshotter", "imgfs", ref, "down-hold", "sleep", "600")
    try:
        (pid,) = stack.daemon_pids()
        stack.snap.kill9()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid not in stack.daemon_pids(), "the daemon to die")
        stack.restart_snapshotter()          # returns once it serves: recovery ran before
        new = stack.daemon_pids()
        assert len(new) == 1 and new[0] != pid and len(stack.fuse_mounts()) == 1
        assert "is gone: restarting it" in stack.snap.log_text()
        out = stack.retry(lambda: stack.run(ref, "down-next", *PY))
        assert out.strip() == "hello from cpython"
    finally:
        stack.ctd.ctr("tasks", "kill", "-s", "SIGKILL", "down-hold", check=False)
        wait_for(lambda: "RUNNING" not in stack.ctd.ctr("tasks", "ls").stdout, "down-hold to stop")
        stack.ctd.ctr("tasks", "rm", "-f", "down-hold", check=False)
        stack.ctd.ctr("containers", "rm", "down-hold", check=False)
        wait_for(lambda: gone(stack, "down-"), "down-* snapshots to go")
