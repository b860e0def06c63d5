"""The compatibility promise: a converted image is still an ordinary OCI image.

The real two-layer Debian image is converted registry-to-registry by `imgconv
convert`, `imgconv check` proves nothing was lost, and a plain containerd (its
overlayfs snapshotter, runc; nothing of imgfs) pulls the converted image,
unpacks its tar+zstd layers with its own unpacker, and runs python3 in it. Its
unpacked rootfs must equal the original one, path by path.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.containerd import Containerd, start_containerd
from tests.support.fixtures import debian_image, debian_rootfs  # noqa: F401  (fixtures)
from tests.support.images import REMOVED_PATHS, push_oci
from tests.support.trees import describe_tree, tree_differences

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
REPO = "e2e-compat/debian"


def imgconv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converter.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def refs(registry, debian_image: Path) -> dict[str, str]:  # noqa: F811
    """The original image and its imgfs conversion, both in the session registry."""
    push_oci(debian_image, registry.host, REPO, "plain")
    plain, converted = f"{registry.host}/{REPO}:plain", f"{registry.host}/{REPO}:imgfs"
    r = imgconv("convert", "--plain-http", f"docker://{plain}", f"docker://{converted}")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"plain": plain, "imgfs": converted}


@pytest.fixture(scope="module")
def ctd():
    """A private containerd with only its stock snapshotters (overlayfs by default)."""
    c = start_containerd()
    try:
        yield c
    finally:
        c.stop()


def test_converted_manifest_is_imgfs(registry, refs) -> None:
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    r = requests.get(f"{registry.url}/v2/{REPO}/manifests/imgfs", timeout=60, headers={"Accept": accept})
    assert r.status_code == 200
    layers = r.json()["layers"]
    assert len(layers) == 2
    for layer in layers:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert any(k.startswith("containerd.io/snapshot/imgfs.") for k in layer.get("annotations", {}))


def test_imgconv_check_passes(refs) -> None:
    r = imgconv("check", "--plain-http", f"docker://{refs['plain']}", f"docker://{refs['imgfs']}")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])


def test_plain_containerd_pulls_and_runs_the_converted_image(ctd: Containerd, refs, tmp_path: Path) -> None:
    ctd.ctr("images", "pull", "--plain-http", refs["imgfs"])
    out = tmp_path / "out"
    out.mkdir()
    script = ("python3 -c 'print(6*7)' | tee /out/py; ls -A /etc/skel > /out/skel; "
              "for p in " + " ".join("/" + p for p in REMOVED_PATHS) + "; do test -e $p && echo $p; done "
              "> /out/present; file -b /etc/skel/README > /out/file")
    run = ctd.ctr("run", "--rm", "--mount", f"type=bind,src={out},dst=/out,options=rbind:rw",
                  refs["imgfs"], "compat-run", "sh", "-c", script)
    # ctr may lose a short-lived task's stdout (containerd fifo race): the files are the proof.
    assert run.stdout in ("", "42\n")
    assert (out / "py").read_text() == "42\n"
    assert (out / "skel").read_text().split() == [".profile", "README"]   # opaque dir of layer 2
    assert (out / "present").read_text() == ""                            # whiteouts of layer 2
    assert "text" in (out / "file").read_text()                           # a package of layer 2 runs


def test_plain_containerd_unpacks_the_original_rootfs(ctd: Containerd, refs, debian_rootfs: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    ctd.ctr("images", "pull", "--plain-http", refs["imgfs"])
    target = tmp_path / "mnt"
    target.mkdir()
    ctd.ctr("images", "mount", refs["imgfs"], str(target))
    try:
        got = describe_tree(target)
    finally:
        ctd.ctr("images", "unmount", "--rm", str(target), check=False)
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
    want = describe_tree(debian_rootfs)
    assert got == want, json.dumps(tree_differences(got, want), default=str)
