"""Fixtures of the snapshotter tests: images in the session registry, one snapshotter +
containerd stack per module (started and stopped by PID, mounts and daemons cleaned
up even when a test fails)."""
from __future__ import annotations

import pytest

from tests.support.stack import imgconv, make_stack
from tests.support.tinyimage import push_tiny_image


@pytest.fixture(scope="session")
def tiny_refs(registry) -> dict[str, str]:
    """The tiny dash image, plain and converted, in the session registry."""
    repo = f"{registry.host}/snap-tiny"
    push_tiny_image(registry.host, "snap-tiny", "plain")
    imgconv("convert", "--plain-http", f"docker://{repo}:plain", f"docker://{repo}:imgfs")
    return {"plain": f"{repo}:plain", "imgfs": f"{repo}:imgfs"}


@pytest.fixture(scope="session")
def debian_refs(registry) -> dict[str, str]:
    """The two-layer Debian image (tests/support/images.py), plain and converted, in the registry."""
    from tests.support.fixtures import CACHE_DIR
    from tests.support.images import debian_image, push_oci

    layout = debian_image(CACHE_DIR)   # shared with the other packages' tests: built once per machine
    push_oci(layout, registry.host, "snap-debian", "plain")
    repo = f"{registry.host}/snap-debian"
    imgconv("convert", "--plain-http", f"docker://{repo}:plain", f"docker://{repo}:imgfs")
    return {"plain": f"{repo}:plain", "imgfs": f"{repo}:imgfs"}


CACHE_CAP = 8 << 20     # small enough that a Debian python start must evict


@pytest.fixture(scope="module")
def stack(registry):
    s = make_stack(registry.host, f"cache_size = {CACHE_CAP}\nhealth_timeout = 3")
    try:
        yield s
    finally:
        s.stop()
