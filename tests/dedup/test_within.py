"""Dedup within one image: the node cache never fetches a chunk twice, and --dedup stores it once."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from imgformat import constants as C
from tests.converter.conftest import imgconv
from tests.fusefs.imagekit import Tar, blob_data
from tests.support.ocilayout import write_oci_layout

BIG = blob_data(7, 5 * (1 << 20) + 4321)           # 6 chunks, incompressible
NEW = blob_data(8, 2 * (1 << 20))
_GET = re.compile(r'"GET /v2/(\S+)/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d{3}) (\d+)')


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two layers; the upper one carries a copy of a big lower file (e.g. a re-installed library)."""
    lower = Tar().dir("lib").file("lib/big.so", BIG).file("lib/small", b"s" * 999).bytes()
    upper = Tar().dir("opt").file("opt/big-copy.so", BIG).file("opt/new", NEW).bytes()
    d = tmp_path_factory.mktemp("within") / "src"
    write_oci_layout(d, [lower, upper])
    return d


def _manifest(host: str, repo: str) -> dict:
    from registry.client import RegistryClient
    return RegistryClient(registry=host, plain_http=True).get_manifest(repo, "latest").json


def test_dedup_stores_the_upper_copy_once_and_round_trips(source, registry):
    h = registry.host
    for repo, extra in (("within/plain", []), ("within/dedup", ["--dedup"])):
        imgconv("convert", f"oci:{source}:latest", f"docker://{h}/{repo}:latest", "--plain-http", *extra,
                check=True)
        p = imgconv("check", f"oci:{source}:latest", f"docker://{h}/{repo}:latest", "--plain-http")
        assert p.returncode == 0, p.stdout + p.stderr
    plain, dedup = _manifest(h, "within/plain")["layers"], _manifest(h, "within/dedup")["layers"]
    assert plain[0]["digest"] == dedup[0]["digest"]                  # the bottom layer is the same
    assert dedup[1]["size"] < plain[1]["size"] - len(BIG) + (64 << 10)  # the copy is not stored again
    assert dedup[1]["annotations"][C.ANNOTATION_EXTERNAL_BLOBS] == dedup[0]["digest"]
    assert C.ANNOTATION_EXTERNAL_BLOBS not in plain[1]["annotations"]  # default: self-contained layers
    # same rootfs for containerd: the config's diff_ids are the logical layers' either way
    assert [d["annotations"][C.ANNOTATION_UNCOMPRESSED] for d in plain] == \
           [d["annotations"][C.ANNOTATION_UNCOMPRESSED] for d in dedup]


def _gets(registry, repo: str, start: int) -> list[tuple[str, int]]:
    lines = registry.log.read_text(errors="replace").splitlines()[start:]
    return [(m.group(2), int(m.group(4))) for ln in lines if (m := _GET.search(ln)) and m.group(1) == repo]


@pytest.mark.parametrize("repo", ["within/plain", "within/dedup"])
def test_upper_copy_of_a_lower_chunk_is_not_fetched_again(source, registry, mount_image, repo):
    h = registry.host
    if not _manifest_exists(h, repo):
        imgconv("convert", f"oci:{source}:latest", f"docker://{h}/{repo}:latest", "--plain-http",
                *(["--dedup"] if repo.endswith("dedup") else []), check=True)
    m = mount_image(f"docker://{h}/{repo}:latest", "--no-prefetch", name=repo.replace("/", "-"))
    assert hashlib.sha256((m.mountpoint / "lib/big.so").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    start = len(registry.log.read_text(errors="replace").splitlines())
    assert (m.mountpoint / "opt/big-copy.so").read_bytes() == BIG
    assert _gets(registry, repo, start) == []                        # every chunk came from the node store
    assert (m.mountpoint / "opt/new").read_bytes() == NEW
    assert _gets(registry, repo, start)                                # ...and this one did need a fetch


def _manifest_exists(host: str, repo: str) -> bool:
    import requests
    r = requests.head(f"http://{host}/v2/{repo}/manifests/latest", timeout=30,
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return r.status_code == 200


def test_convert_rejects_dedup_with_all_platforms(source, tmp_path):
    p = imgconv("convert", f"oci:{source}:latest", f"oci:{tmp_path}/out", "--dedup", "--all-platforms")
    assert p.returncode == 2 and "--platform" in p.stderr


def test_chunkdict_build_file_feeds_convert(source, registry, tmp_path):
    """A dictionary file from two images keeps only the chunks both have; converting with it reuses
    them (the GC side is in test_debian)."""
    h = registry.host
    lower_only = Tar().dir("lib").file("lib/big.so", BIG).bytes()
    other = tmp_path / "other"
    write_oci_layout(other, [lower_only])
    imgconv("convert", f"oci:{other}:latest", f"docker://{h}/within/other:latest", "--plain-http", check=True)
    imgconv("convert", f"oci:{source}:latest", f"docker://{h}/within/base:latest", "--plain-http", check=True)
    out = tmp_path / "dict.json"
    p = imgconv("chunkdict", "build", f"docker://{h}/within/other:latest", f"docker://{h}/within/base:latest",
                "-o", out, "--plain-http", "--json", check=True)
    summary = json.loads(p.stdout)
    doc = json.loads(out.read_bytes())
    assert summary["chunks"] == len(doc["chunks"]) == 6                 # BIG's chunks, not NEW's or packs
    app = Tar().dir("app").file("app/vendored.so", BIG).file("app/main", b"m" * 100).bytes()
    src = tmp_path / "app"
    write_oci_layout(src, [app])
    p = imgconv("convert", f"oci:{src}:latest", f"docker://{h}/within/app:latest", "--plain-http",
                "--chunk-dict", out, "--json", check=True)
    layer = json.loads(p.stdout)["images"][0]["layers"][0]
    assert layer["external_chunks"] == 6 and layer["target_size"] < 100_000
    p = imgconv("check", f"oci:{src}:latest", f"docker://{h}/within/app:latest", "--plain-http")
    assert p.returncode == 0, p.stdout + p.stderr
    # a dictionary of the dedup'd app names the blobs it points into with their real sizes
    d2 = tmp_path / "d2.json"
    imgconv("chunkdict", "build", f"docker://{h}/within/app:latest", "-o", d2, "--plain-http", check=True)
    from registry.client import RegistryClient
    client = RegistryClient(registry=h, plain_http=True)
    for b in json.loads(d2.read_bytes())["blobs"]:
        assert b["size"] == client.blob_exists("within/app", b["digest"]) > 0
    # the same dictionary into an OCI layout: the foreign blobs are copied in, check passes
    imgconv("convert", f"oci:{src}:latest", f"oci:{tmp_path}/app-oci", "--plain-http", "--chunk-dict", d2,
            check=True)
    p = imgconv("check", f"oci:{src}:latest", f"oci:{tmp_path}/app-oci")
    assert p.returncode == 0, p.stdout + p.stderr
    p = imgconv("convert", f"oci:{src}:latest", f"oci:{tmp_path}/y", "--chunk-dict", tmp_path / "missing")
    assert p.returncode == 2, p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    p = imgconv("convert", f"oci:{src}:latest", f"oci:{tmp_path}/x", "--chunk-dict", bad)
    assert p.returncode == 3 and "imgfs-chunkdict" in p.stderr
