"""The acceptance test: a real two-layer Debian image, converted with imgconv, pushed to the
real registry, mounted lazily, and compared with the unpacked original rootfs path by path;
then a program of the image runs chrooted into an overlay whose lowerdir is the mount.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fusefs import imagekit
from tests.support.fixtures import CACHE_DIR
from tests.support.images import debian_image, debian_rootfs
from tests.support.trees import describe_tree, tree_differences

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def debian_layout(tmp_path_factory) -> Path:
    """The Debian test image converted by `imgconv convert` into an OCI layout."""
    out = tmp_path_factory.mktemp("debian-imgfs") / "oci"
    src = debian_image(CACHE_DIR)
    r = subprocess.run([sys.executable, "-m", "converter.cli", "convert", f"oci:{src}:latest",
                        f"oci:{out}:latest"], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def debian_remote(registry, debian_layout) -> str:
    return imagekit.push(debian_layout, registry.host, f"fusefs/debian-{uuid.uuid4().hex[:8]}")


def test_mounted_tree_equals_the_original_rootfs(mount_image, debian_remote):
    m = mount_image(debian_remote)
    want = describe_tree(debian_rootfs(CACHE_DIR))
    got = describe_tree(m.mountpoint)
    diffs = tree_differences(want, got, limit=30)
    assert not diffs, "\n".join(diffs)
    assert len(got) > 3000
    assert m.state()["fetcher"]["corrupt"] == 0


def test_python_runs_chrooted_in_an_overlay_over_the_mount(mount_image, debian_remote, tmp_path):
    m = mount_image(debian_remote)
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={m.mountpoint},upperdir={upper},workdir={work}", str(merged)],
                   check=True, capture_output=True, timeout=60)
    try:
        code = "import hashlib, sys; open('/tmp/hello', 'w').write('hi'); print(sys.version_info[:2])"
        r = subprocess.run(["chroot", str(merged), "/usr/bin/python3", "-c", code],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "(3, 11)"
        assert (upper / "tmp/hello").read_text() == "hi"                 # writes go to the upper dir
        fetched = m.metrics()['imgfs_registry_bytes_total{kind="ondemand"}']
        assert 0 < fetched < 40 << 20                                        # a fraction of the image
    finally:
        subprocess.run(["umount", str(merged)], capture_output=True, check=False, timeout=60)
        if subprocess.run(["mountpoint", "-q", str(merged)], check=False).returncode == 0:
            subprocess.run(["umount", "-l", str(merged)], capture_output=True, check=False)
