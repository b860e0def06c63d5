"""Kubernetes with a private registry: imagePullSecrets reach the snapshotter through its CRI
image service proxy (snapshotter/criproxy.py), so a private imgfs image is still pulled lazily.

The kubelet's side is CriClient: PullImage with credentials on the proxy's socket (its
--image-service-endpoint), the pod and container on containerd's own CRI socket (its
--container-runtime-endpoint). The registry is a real docker-registry with htpasswd auth; the
snapshotter has no credentials configured, so only the pull's own can open it.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest

from tests.cri.test_cri import log_lines, start
from tests.support.cri.client import CriClient
from tests.support.cri_containerd import make_cri_stack
from tests.support.registry import start_registry
from tests.support.stack import imgconv
from tests.support.tinyimage import push_tiny_image
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
USER, PASSWORD = "k8s-puller", "pull-secret-pw"


@pytest.fixture(scope="module")
def private(registry, tmp_path_factory):
    """A password-protected registry holding the tiny image converted to imgfs."""
    reg = start_registry(tmp_path_factory.mktemp("cri-private"), users={USER: PASSWORD})
    try:
        auth = tmp_path_factory.mktemp("cri-auth") / "config.json"
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        auth.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
        auth.chmod(0o600)
        push_tiny_image(registry.host, "cri-private-src", "plain")
        ref = f"{reg.host}/cri-private/tiny:imgfs"
        imgconv("convert", "--plain-http", "--authfile", str(auth),
                f"docker://{registry.host}/cri-private-src:plain", f"docker://{ref}")
        yield reg, ref
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def cri(registry, private, cri_images):
    """This module's CRI stack (conftest's `pods` fixture then makes its pods here)."""
    reg, _ = private
    s = make_cri_stack(reg.host, cri_images["pause"], more_hosts=(registry.host,), image_proxy=True)
    try:
        yield s
    finally:
        s.stop()


def test_pull_secret_reaches_the_snapshotter_and_the_pod_runs_lazily(cri, private, pods):
    reg, ref = private
    kubelet_images = CriClient(cri.image_socket)
    try:
        with pytest.raises(grpc.RpcError) as refused:      # no pull secret: containerd is refused
            kubelet_images.pull(ref)
        assert "401 Unauthorized" in refused.value.details(), refused.value.details()
        image_id = kubelet_images.pull(ref, USER, PASSWORD)
        assert kubelet_images.image_status(ref) is not None          # other image calls pass too
        with pytest.raises(grpc.RpcError) as e:            # the proxy serves images only
            kubelet_images.version()
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        kubelet_images.close()
    log = cri.stack.snap.log_text()
    assert f"credentials for {reg.host}/cri-private/tiny learnt from a CRI pull" in log
    assert "skip-pull" in log                                # bootstraps checked: a lazy pull
    assert PASSWORD not in log

    _cid, path = start(cri, pods, "private", image_id, ["/bin/sh", "-c", "echo private-pod-ok"])
    wait_for(lambda: path.exists() and log_lines(path), "the container's output")
    assert log_lines(path) == ["private-pod-ok"]
    assert cri.stack.daemon_pids()                         # its rootfs is a fusefs mount
    auth = json.loads(next((cri.stack.snap.root / "daemons").glob("*/auth.json")).read_text())
    assert auth == {"auths": {reg.host: {"username": USER, "password": PASSWORD}}}
    for pid in cri.stack.daemon_pids():                    # a path on the command line, no secret
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--authfile" in argv and PASSWORD.encode() not in b" ".join(argv)
    for log_file in (cri.stack.snap.root / "daemons").glob("*/imgfs.log"):
        assert PASSWORD not in log_file.read_text(errors="replace")
