"""Fixtures of the CRI tests: the images in the session registry, one snapshotter + CRI
containerd per module, and pods that are stopped and removed after each test (also a failed one).
"""
from __future__ import annotations

import pytest

from tests.support.cri_containerd import CriStack, make_cri_stack, push_pause_image, push_variant
from tests.support.stack import imgconv
from tests.support.tinyimage import push_tiny_image

PLAIN_MARKER = b"a plain layer, unpacked by containerd\n"


@pytest.fixture(scope="session")
def cri_images(registry) -> dict[str, str]:
    """pause (sandbox image), plain (tiny image + a layer of its own), imgfs (converted Debian),
    tiny-imgfs (the tiny image converted: a second imgfs image, pulled by digest)."""
    from tests.support.fixtures import CACHE_DIR
    from tests.support.images import debian_image, push_oci

    host = registry.host
    pause = push_pause_image(host, "cri-pause", "1")
    # A layer no other image of this module has: its pull must unpack it (nothing to share).
    plain = push_variant(host, "cri-plain", "1", files={"/etc/imgfs-cri-plain": PLAIN_MARKER})
    push_oci(debian_image(CACHE_DIR), host, "cri-debian", "plain")   # built once per machine
    imgconv("convert", "--plain-http", f"docker://{host}/cri-debian:plain", f"docker://{host}/cri-debian:imgfs")
    push_tiny_image(host, "cri-tiny", "plain")
    imgconv("convert", "--plain-http", f"docker://{host}/cri-tiny:plain", f"docker://{host}/cri-tiny:imgfs")
    return {"pause": pause, "plain": plain, "imgfs": f"{host}/cri-debian:imgfs",
            "tiny-imgfs": f"{host}/cri-tiny:imgfs"}


@pytest.fixture(scope="module")
def cri(registry, cri_images) -> CriStack:
    s = make_cri_stack(registry.host, cri_images["pause"])
    try:
        yield s
    finally:
        s.stop()


class Pods:
    """Host-network pods of one test; `close()` stops and removes them (their containers too)."""

    def __init__(self, cri: CriStack) -> None:
        self.cri, self.made = cri, []

    def run(self, name: str):
        """RunPodSandbox; returns (pod id, its config: CreateContainer wants it again)."""
        config = self.cri.cc.pod_config(name)
        pod = self.cri.cri.run_pod(config)
        self.made.append(pod)
        return pod, config

    def remove_all(self) -> None:
        """StopPodSandbox + RemovePodSandbox of every pod not removed yet (as the kubelet does)."""
        errors = []
        while self.made:
            pod = self.made.pop()
            try:
                self.cri.cri.remove_pod(pod)
            except Exception as e:  # noqa: BLE001 - try every pod, then report
                errors.append(f"{pod}: {e}")
        if errors:
            raise RuntimeError(f"pods not removed: {errors}")


@pytest.fixture
def pods(cri) -> Pods:
    p = Pods(cri)
    try:
        yield p
    finally:
        p.remove_all()
