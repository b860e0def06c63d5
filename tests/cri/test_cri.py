"""Kubernetes' path, end to end: a kubelet's CRI calls (tests/support/cri) to a real containerd
1.6 with its CRI plugin configured as docs/snapshotter.md says (snapshotter = "imgfs",
disable_snapshot_annotations = false), the real imgfs-snapshotter, runc, FUSE and docker-registry.

CRI, not ctr-remote, adds the image labels here (`containerd.io/snapshot/cri.*`), so these tests
are what shows that a Kubernetes node pulls imgfs images lazily and runs them from fusefs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
import requests

from snapshotter.proto import snapshots_pb2 as spb
from snapshotter.proto import snapshots_pb2_grpc as spbg
from tests.cri.conftest import PLAIN_MARKER
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

CRI_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER = "containerd.io/snapshot/cri.layer-digest"
CRI_LAYERS = "containerd.io/snapshot/cri.image-layers"
PY = ["python3", "-c", "import sys; print('hello from', sys.implementation.name)"]
_GET = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d+) (\d+)')


# -- helpers ---------------------------------------------------------------------------------
def manifest(registry, ref: str) -> requests.Response:
    """The image manifest `ref` (host/repo:tag) as the registry serves it."""
    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    r = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=30,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return r


def layers_of(registry, ref: str) -> dict[str, int]:
    """{layer digest: size} of the image manifest `ref`."""
    return {d["digest"]: d["size"] for d in manifest(registry, ref).json()["layers"]}


def blob_gets(registry, since: int, ref: str, digests) -> list[tuple[str, int, int]]:
    """(digest, HTTP status, bytes sent) of the registry's GETs of blobs `digests` of the repository
    of `ref`, after blob GET number `since` (registry.blob_gets(): the access log's, oldest first)."""
    repo = ref.split("/", 1)[1].rpartition(":")[0]
    out = []
    for line in registry.blob_gets()[since:]:
        m = _GET.search(line)
        if m and f"/v2/{repo}/blobs/" in line and m.group(1) in digests:
            out.append((m.group(1), int(m.group(2)), int(m.group(3))))
    return out


def snapshots(cri) -> list:
    """Every snapshot, asked of the imgfs-snapshotter itself (containerd's keys: NS/ID/NAME)."""
    with grpc.insecure_channel(f"unix://{cri.stack.snap.socket}") as ch:
        return [i for r in spbg.SnapshotsStub(ch).List(spb.ListSnapshotsRequest()) for i in r.info]


def log_lines(path: Path) -> list[str]:
    """The container's output from a CRI log file ("TIME STREAM P|F TEXT" lines; P = partial)."""
    out, part = [], ""
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split(" ", 3)
        if len(fields) < 3:
            continue
        part += fields[3] if len(fields) == 4 else ""
        if fields[2] == "F":
            out.append(part)
            part = ""
    return out


def start(cri, pods, name: str, image: str, command: list[str]) -> tuple[str, Path]:
    """A host-network pod with one container of `image` running `command`: (container id, log).
    Like the kubelet, callers name the image by the id PullImage returned."""
    pod, config = pods.run(name)
    cid = cri.cri.create_container(pod, config, name, image, command, f"{name}.log")
    cri.cri.start_container(cid)
    return cid, cri.cc.pod_log_dir(name) / f"{name}.log"


def rootfs_lowerdirs(cri, cid: str) -> list[str]:
    """The lowerdirs of the overlay that is the running container's `/` (from its mountinfo)."""
    _, info = cri.cri.container_status(cid, verbose=True)
    pid = json.loads(info["info"])["pid"]
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if pre.split()[4] == "/":
            fstype, _, opts = post.split(" ", 2)
            assert fstype == "overlay", line
            lower = [o for o in opts.split(",") if o.startswith("lowerdir=")]
            return lower[0][len("lowerdir="):].split(":")
    raise AssertionError(f"no / in the mountinfo of container {cid} (pid {pid})")


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imgfs_pull(cri, registry, cri_images) -> dict:
    """CRI PullImage of the converted Debian image, once; what the registry served for it."""
    ref = cri_images["imgfs"]
    layers = layers_of(registry, ref)
    since = len(registry.blob_gets())
    image_id = cri.cri.pull(ref)
    return {"ref": ref, "id": image_id, "layers": layers, "gets": blob_gets(registry, since, ref, layers)}


# -- tests -----------------------------------------------------------------------------------
def test_cri_pull_is_lazy_through_imgfs(cri, imgfs_pull):
    """(a) One bootstrap range per layer and no full blob; each layer committed by skip-pull,
    with the cri.* labels CRI added."""
    layers, gets = imgfs_pull["layers"], imgfs_pull["gets"]
    assert sorted(d for d, _, _ in gets) == sorted(layers), gets      # one request per layer
    assert all(status == 206 and sent < layers[d] for d, status, sent in gets), gets
    log = cri.stack.snap.log_text()
    for digest in layers:
        assert f"committed for layer {digest} (skip-pull)" in log
    remote = {i.labels[CRI_LAYER]: i for i in snapshots(cri) if i.labels.get(CRI_LAYER) in layers}
    assert set(remote) == set(layers)
    assert all(i.labels[CRI_REF] == imgfs_pull["ref"] and i.kind == spb.COMMITTED for i in remote.values())
    assert not [k for i in remote.values() for k in i.labels if "stargz" in k]    # CRI's labels only
    order = list(layers)        # manifest order, bottom first
    for n, digest in enumerate(order):   # cri.image-layers: this layer and those above (labels.py)
        assert remote[digest].labels[CRI_LAYERS].split(",") == order[n:]
    image = cri.cri.image_status(imgfs_pull["ref"])
    assert image is not None and image.id == imgfs_pull["id"]


def test_cri_pod_runs_from_a_fusefs_mount(cri, pods, registry, imgfs_pull):
    """(b) A pod's container of the imgfs image runs; its `/` is an overlay over the image's fusefs
    mount, served by a live daemon; the registry serves ranges only."""
    from tests.support.fixtures import CACHE_DIR
    from tests.support.images import debian_rootfs

    since = len(registry.blob_gets())
    cid, log = start(cri, pods, "lazy", imgfs_pull["id"],
                     ["/bin/sh", "-c", "echo cri-lazy-ok; cat /etc/debian_version; exec sleep 600"])
    want = (debian_rootfs(CACHE_DIR) / "etc" / "debian_version").read_text().strip()
    wait_for(lambda: log.exists() and len(log_lines(log)) >= 2, f"two lines in {log}")
    assert log_lines(log)[:2] == ["cri-lazy-ok", want]
    code, out, err = cri.cri.exec_sync(cid, PY)
    assert (code, out.decode().strip()) == (0, "hello from cpython"), err
    status, _ = cri.cri.container_status(cid)
    assert status.state == cri.cri.pb.CONTAINER_RUNNING

    mounts = cri.stack.fuse_mounts()
    assert len(mounts) == 1 and len(cri.stack.daemon_pids()) == 1
    assert rootfs_lowerdirs(cri, cid) == mounts          # all layers merged in the one fusefs mount
    gets = blob_gets(registry, since, imgfs_pull["ref"], imgfs_pull["layers"])
    assert gets and all(status == 206 for _, status, _ in gets), gets
    assert sum(sent for _, _, sent in gets) < sum(imgfs_pull["layers"].values())


def test_cri_plain_image_is_unpacked_and_runs(cri, pods, registry, cri_images):
    """(c) A plain image through CRI: containerd downloads and unpacks its layers into the
    snapshotter's plain snapshots, and the container runs from them, without fusefs."""
    ref = cri_images["plain"]
    layers = layers_of(registry, ref)
    own = list(layers)[-1]                   # the layer only this image has
    since, mark = len(registry.blob_gets()), len(cri.stack.snap.log_text())
    image_id = cri.cri.pull(ref)
    assert blob_gets(registry, since, ref, {own}) == [(own, 200, layers[own])]   # the whole blob
    log = cri.stack.snap.log_text()[mark:]
    assert "containerd unpacks it" in log and "skip-pull" not in log
    daemons = set(cri.stack.daemon_pids())
    cid, log = start(cri, pods, "plain", image_id, ["/bin/sh", "-c", "read -r l < /etc/imgfs-cri-plain; echo \"$l\"; exec sleep 600"])
    wait_for(lambda: log.exists() and log_lines(log), f"output in {log}")
    assert log_lines(log) == [PLAIN_MARKER.decode().strip()]
    lower = rootfs_lowerdirs(cri, cid)
    snapdir = str(cri.stack.snap.root / "snapshots") + "/"
    assert len(lower) == len(layers) and all(d.startswith(snapdir) for d in lower), lower
    marker = [Path(d) / "etc" / "imgfs-cri-plain" for d in lower]
    assert [m.read_bytes() for m in marker if m.exists()] == [PLAIN_MARKER]    # unpacked by containerd
    assert set(cri.stack.daemon_pids()) <= daemons       # no fusefs daemon for a plain image


def test_cri_cleanup_releases_the_daemon(cri, pods, imgfs_pull):
    """(d) Stop and remove the container and its pod: once containerd's GC has removed the
    container's snapshot, the image's daemon is stopped, its mount and mountpoint gone (the
    snapshotter's rule: no active or view snapshot needs the image any more). The pulled image
    and its committed layers stay, and its next container starts a daemon again."""
    cid, log = start(cri, pods, "release", imgfs_pull["id"], ["/bin/sh", "-c", "echo up; exec sleep 600"])
    wait_for(lambda: log.exists() and log_lines(log) == ["up"], f"output in {log}")
    assert len(cri.stack.daemon_pids()) == 1
    cri.cri.stop_container(cid)
    cri.cri.remove_container(cid)
    pods.remove_all()
    # Kubernetes leaves the backend's Remove to containerd's GC schedule; run it now.
    cri.stack.sync_gc()
    stack = cri.stack
    wait_for(lambda: not stack.daemon_pids() and not stack.fuse_mounts()
             and not list(stack.mounts_dir().glob("*")), "daemon, mount and mountpoint to go")
    left = snapshots(cri)
    assert not [i.name for i in left if cid in i.name]
    assert {i.labels.get(CRI_LAYER) for i in left} >= set(imgfs_pull["layers"])
    assert cri.cri.image_status(imgfs_pull["ref"]) is not None

    cid, log = start(cri, pods, "again", imgfs_pull["id"], ["/bin/sh", "-c", "echo again; exec sleep 600"])
    wait_for(lambda: log.exists() and log_lines(log) == ["again"], f"output in {log}")
    assert len(cri.stack.daemon_pids()) == 1 and rootfs_lowerdirs(cri, cid) == cri.stack.fuse_mounts()


def test_cri_pull_by_digest_is_lazy_and_runs(cri, pods, registry, cri_images):
    """A reference pinned by digest (host/repo@sha256:..., as Kubernetes manifests often name
    images) goes the same lazy way: the cri.image-ref label carries the digest form."""
    tag_ref = cri_images["tiny-imgfs"]
    r = manifest(registry, tag_ref)
    digest_ref = tag_ref.rpartition(":")[0] + "@" + r.headers["Docker-Content-Digest"]
    layers = {d["digest"]: d["size"] for d in r.json()["layers"]}
    since = len(registry.blob_gets())
    image_id = cri.cri.pull(digest_ref)
    gets = blob_gets(registry, since, tag_ref, layers)
    assert sorted(d for d, _, _ in gets) == sorted(layers)
    assert all(status == 206 and sent < layers[d] for d, status, sent in gets), gets
    remote = [i for i in snapshots(cri) if i.labels.get(CRI_LAYER) in layers]
    assert remote and all(i.labels[CRI_REF] == digest_ref for i in remote)

    cid, log = start(cri, pods, "digest", image_id, ["/bin/sh", "-c", "echo pinned-ok; exec sleep 600"])
    wait_for(lambda: log.exists() and log_lines(log), f"output in {log}")
    assert log_lines(log) == ["pinned-ok"]
    lower = rootfs_lowerdirs(cri, cid)
    assert len(lower) == 1 and lower[0] in cri.stack.fuse_mounts()
