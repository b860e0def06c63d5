"""imgconv convert: every source/destination pair, output is a plain OCI image, determinism."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import zstandard

from tests.converter.conftest import imgconv
from tests.support.ocilayout import push_oci_layout, write_docker_archive, write_oci_layout

ANN = "containerd.io/snapshot/imgfs."


def read_layout(dir, tag):
    index = json.loads((dir / "index.json").read_text())
    entry = next(e for e in index["manifests"]
                 if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    blob = lambda d: (dir / "blobs" / "sha256" / d.split(":", 1)[1]).read_bytes()
    manifest = json.loads(blob(entry["digest"]))
    return entry["digest"], manifest, json.loads(blob(manifest["config"]["digest"])), blob


def test_oci_to_oci_is_a_plain_oci_image(rich_oci, rich_converted):
    _digest, manifest, config, blob = read_layout(rich_converted, "v1")
    _, _src_manifest, src_config, _ = read_layout(rich_oci.dir, "latest")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert len(manifest["layers"]) == 2
    # config kept except rootfs.diff_ids
    assert {k: v for k, v in config.items() if k != "rootfs"} == \
        {k: v for k, v in src_config.items() if k != "rootfs"}
    names_per_layer = []
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        data = blob(desc["digest"])
        assert len(data) == desc["size"] and "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
        ann = desc["annotations"]
        assert ann[ANN + "uncompressed-digest"] == diff_id and ann[ANN + "version"] == "1"
        off, size = int(ann[ANN + "bootstrap.offset"]), int(ann[ANN + "bootstrap.size"])
        assert "sha256:" + hashlib.sha256(data[off:off + size]).hexdigest() == ann[ANN + "bootstrap.digest"]
        # a runtime that knows nothing of imgfs: decompress all frames, read it as a tar
        plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(plain)) as t:
            names_per_layer.append({m.name.rstrip("/") for m in t.getmembers()})
    assert {"usr/bin/big", "usr/lib/big-link", "dev/null", "wh/gone"} <= names_per_layer[0]
    assert {"wh/.wh.gone", "opaque/.wh..wh..opq", "etc/added"} <= names_per_layer[1]


def test_convert_is_deterministic_and_json_summary(rich_oci, rich_converted, tmp_path):
    out = tmp_path / "again"
    proc = imgconv("convert", f"oci:{rich_oci.dir}:latest", f"oci:{out}:v1", "--json", check=True)
    summary = json.loads(proc.stdout)
    first, _, _, _ = read_layout(rich_converted, "v1")
    assert summary["manifest_digest"] == first == read_layout(out, "v1")[0]
    layers = summary["images"][0]["layers"]
    assert [la["source_digest"] for la in layers] == rich_oci.layer_digests
    assert [la["compression"] for la in layers] == ["gzip", "zstd"]
    assert [la["source_diff_id"] for la in layers] == rich_oci.diff_ids
    assert all(la["files"] > 0 and la["chunks"] > 0 and la["seconds"] >= 0 for la in layers)
    assert proc.stderr == ""               # no progress bars when stderr is not a terminal
    assert not list(tmp_path.glob(".*tmp*"))


def test_oci_to_registry_and_registry_to_registry(registry, rich_oci, rich_converted, rich_layers_bytes,
                                                  tmp_path):
    expected, _, _, _ = read_layout(rich_converted, "v1")
    proc = imgconv("convert", f"oci:{rich_oci.dir}:latest", f"docker://{registry.host}/conv/rich:v1",
                   "--plain-http", "--json", check=True)
    assert json.loads(proc.stdout)["manifest_digest"] == expected
    push_oci_layout(rich_oci.dir, registry.host, "conv/rich-src", "orig")
    proc = imgconv("convert", f"docker://{registry.host}/conv/rich-src:orig",
                   f"docker://{registry.host}/conv/rich2:v1", "--plain-http", "--json", check=True)
    assert json.loads(proc.stdout)["manifest_digest"] == expected
    # a Docker schema 2 manifest (docker media types; gzip only) as source converts to the same image
    gz = write_oci_layout(tmp_path / "gz", rich_layers_bytes, compression="gzip")
    subprocess.run(["skopeo", "copy", "--quiet", "--format", "v2s2", "--dest-tls-verify=false",
                    f"oci:{gz.dir}:latest", f"docker://{registry.host}/conv/rich-v2s2:orig"],
                   check=True, capture_output=True, timeout=300)
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                     f"docker://{registry.host}/conv/rich-v2s2:orig"],
                                    capture_output=True, check=True, timeout=120).stdout)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    proc = imgconv("convert", f"docker://{registry.host}/conv/rich-v2s2:orig",
                   f"docker://{registry.host}/conv/rich3:v1", "--plain-http", "--json", check=True)
    assert json.loads(proc.stdout)["manifest_digest"] == expected
    # the pushed image reads back as an ordinary OCI image
    inspect = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/conv/rich2:v1"],
        capture_output=True, check=True, timeout=120).stdout)
    assert inspect["layers"][0]["mediaType"].endswith("tar+zstd")


def test_docker_archive_to_oci(tmp_path, rich_layers_bytes, rich_converted):
    expected, _, _, _ = read_layout(rich_converted, "v1")
    for legacy in (True, False):
        archive = write_docker_archive(tmp_path / f"img-{legacy}.tar", rich_layers_bytes, legacy=legacy)
        out = tmp_path / f"out-{legacy}"
        proc = imgconv("convert", f"docker-archive:{archive}", f"oci:{out}:v1", "--json", check=True)
        # same uncompressed layers and config in, same image out, whatever the container format
        assert json.loads(proc.stdout)["manifest_digest"] == expected


def test_options_change_the_output(rich_oci, rich_converted, tmp_path):
    expected, _, _, _ = read_layout(rich_converted, "v1")
    out = tmp_path / "small-chunks"
    imgconv("convert", f"oci:{rich_oci.dir}:latest", f"oci:{out}:v1", "--chunk-size", "64K",
            "--compression", "zstd:1", check=True)
    digest, _manifest, _, _ = read_layout(out, "v1")
    assert digest != expected
    # into an existing layout: a second tag is added, the first kept
    imgconv("convert", f"oci:{rich_oci.dir}:latest", f"oci:{out}:v2", check=True)
    assert read_layout(out, "v1")[0] == digest and read_layout(out, "v2")[0] == expected
