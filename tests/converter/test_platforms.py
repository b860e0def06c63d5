"""Image indexes: pick one platform (default linux/amd64) or convert them all into a new index."""
from __future__ import annotations

import json

import pytest

from tests.converter.conftest import imgconv
from tests.support.ocilayout import TarBuilder, write_multi_platform_layout

AMD = TarBuilder().dir("bin").file("bin/arch", b"amd64\n", mode=0o755).bytes()
ARM = TarBuilder().dir("bin").file("bin/arch", b"arm64\n", mode=0o755).bytes()
SHARED = TarBuilder().dir("etc").file("etc/os-release", b"ID=test\n").bytes()


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi") / "oci"
    write_multi_platform_layout(d, {"linux/amd64": [SHARED, AMD], "linux/arm64": [SHARED, ARM]})
    return d


def blob(dir, digest):
    return json.loads((dir / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())


def test_all_platforms_become_an_index(multi, tmp_path, registry):
    out = tmp_path / "out"
    summary = json.loads(imgconv("convert", f"oci:{multi}:latest", f"oci:{out}:v1", "--all-platforms",
                                 "--json", check=True).stdout)
    assert summary["media_type"] == "application/vnd.oci.image.index.v1+json"
    top = json.loads((out / "index.json").read_text())["manifests"][0]
    index = blob(out, top["digest"])
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    manifests = [blob(out, m["digest"]) for m in index["manifests"]]
    # the shared base layer was converted once and is the same blob in both
    assert manifests[0]["layers"][0]["digest"] == manifests[1]["layers"][0]["digest"]
    assert manifests[0]["layers"][1]["digest"] != manifests[1]["layers"][1]["digest"]
    for arch in ("amd64", "arm64"):
        proc = imgconv("check", f"oci:{multi}:latest", f"oci:{out}:v1", "--platform", f"linux/{arch}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rootfs = tmp_path / arch
        imgconv("unpack", f"oci:{out}:v1", rootfs, "--platform", f"linux/{arch}", check=True)
        assert (rootfs / "bin/arch").read_bytes() == f"{arch}\n".encode()
    # the same index pushed to a registry: sub-manifests by digest, then the tagged index
    proc = imgconv("convert", f"oci:{multi}:latest", f"docker://{registry.host}/multi/img:v1",
                   "--all-platforms", "--plain-http", "--json", check=True)
    assert json.loads(proc.stdout)["manifest_digest"] == top["digest"]
    proc = imgconv("unpack", f"docker://{registry.host}/multi/img:v1", tmp_path / "reg-arm",
                   "--platform", "linux/arm64", "--plain-http")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reg-arm/bin/arch").read_bytes() == b"arm64\n"


def test_one_platform_is_picked(multi, tmp_path):
    for plat, want in ((None, b"amd64\n"), ("linux/arm64", b"arm64\n")):
        out = tmp_path / f"out-{want.strip().decode()}"
        args = ["--platform", plat] if plat else []
        imgconv("convert", f"oci:{multi}:latest", f"oci:{out}:v1", *args, check=True)
        imgconv("unpack", f"oci:{out}:v1", out / "rootfs", check=True)
        assert (out / "rootfs/bin/arch").read_bytes() == want
    proc = imgconv("convert", f"oci:{multi}:latest", f"oci:{tmp_path}/none:v1", "--platform", "linux/s390x")
    assert proc.returncode == 3 and "no manifest for platform linux/s390x" in proc.stderr
