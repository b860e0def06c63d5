"""Bad input: a clear message, the documented exit code, and nothing pushed or left behind."""
from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard

from tests.converter.conftest import ROOT, imgconv, manifest_status
from tests.support.ocilayout import MEDIA, RawLayer, TarBuilder, sha256, write_oci_layout
from tests.support.registry import start_registry

GOOD = TarBuilder().dir("etc").file("etc/a", b"a" * 5000).file("etc/b", bytes(range(256)) * 40).bytes()


def tar_with(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(tarfile.TarInfo("ok"), io.BytesIO(b""))
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = type_, linkname
        t.addfile(ti, io.BytesIO(b""))
    data = buf.getvalue()
    assert name.encode() in data
    return data


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


def bad_checksum_tar() -> bytes:
    data = bytearray(GOOD)
    data[0:3] = b"xyz"          # first header's name changes, its checksum field does not
    return bytes(data)


GZ = gzip.compress(GOOD, mtime=0)
ZS = zstandard.ZstdCompressor(write_checksum=True).compress(GOOD)

# name -> (layers for write_oci_layout, expected exit code, expected words in the message)
CASES = {
    "truncated-gzip": ([RawLayer(GZ[:-30], sha256(GOOD))], 3, "truncated gzip"),
    "corrupt-gzip": ([RawLayer(flip(GZ, len(GZ) // 2), sha256(GOOD))], 3, "gzip"),
    "truncated-zstd": ([RawLayer(ZS[:-30], sha256(GOOD), MEDIA["zstd"])], 3, "truncated zstd"),
    "corrupt-zstd": ([RawLayer(flip(ZS, len(ZS) // 2), sha256(GOOD), MEDIA["zstd"])], 3, "zstd"),
    "truncated-tar": ([RawLayer(gzip.compress(GOOD[:2000], mtime=0), sha256(GOOD[:2000]))], 3, ""),
    "bad-tar-checksum": ([RawLayer(gzip.compress(bad_checksum_tar(), mtime=0), sha256(bad_checksum_tar()))],
                         3, "checksum"),
    "dotdot-path": ([tar_with("etc/../../evil")], 3, ".."),
    "absolute-path": ([tar_with("/etc/evil")], 3, "absolute"),
    "hardlink-missing": ([tar_with("etc/link", tarfile.LNKTYPE, "no/such/file")], 3, "no/such/file"),
    "diff-id-mismatch": ([RawLayer(GZ, sha256(b"something else"))], 3, "diff_id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_layer_is_refused_and_nothing_pushed(case, tmp_path, registry):
    layers, code, words = CASES[case]
    src = write_oci_layout(tmp_path / "src", layers)
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"docker://{registry.host}/bad/{case}:v1", "--plain-http")
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("imgconv: error: ") and words.lower() in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert manifest_status(registry.host, f"bad/{case}", "v1") == 404


def test_bad_layer_leaves_no_oci_layout(tmp_path):
    src = write_oci_layout(tmp_path / "src", [GOOD, RawLayer(GZ[:-30], sha256(GOOD))])
    work = tmp_path / "work"
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"oci:{tmp_path}/out:v1", "--workdir", work)
    assert proc.returncode == 3 and "truncated gzip" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "work"]
    assert list(work.iterdir()) == []           # spooled blobs are removed too


def test_layer_digest_mismatch(tmp_path, registry):
    src = write_oci_layout(tmp_path / "src", [GOOD])
    blob = src.blob(src.layer_digests[0])
    blob.write_bytes(gzip.compress(GOOD + bytes(10), mtime=0)[:blob.stat().st_size].ljust(blob.stat().st_size))
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"docker://{registry.host}/bad/digest:v1", "--plain-http")
    assert proc.returncode == 3 and "digest mismatch" in proc.stderr, proc.stderr
    assert manifest_status(registry.host, "bad/digest", "v1") == 404


@pytest.mark.parametrize("what", ["manifest", "config"])
def test_document_that_does_not_parse(what, tmp_path, registry):
    kw = {f"{what}_bytes": b'{"schemaVersion": 2, "broken'}
    src = write_oci_layout(tmp_path / "src", [GOOD], **kw)
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"docker://{registry.host}/bad/{what}:v1", "--plain-http")
    assert proc.returncode == 3 and f"{what}" in proc.stderr and "does not parse" in proc.stderr, proc.stderr
    assert manifest_status(registry.host, f"bad/{what}", "v1") == 404


def test_manifest_without_layers_field(tmp_path):
    src = write_oci_layout(tmp_path / "src", [GOOD], manifest_bytes=b'{"schemaVersion": 2, "config": {}}')
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"oci:{tmp_path}/out")
    assert proc.returncode == 3 and "config" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [
    ["convert", "nonsense:/x", "oci:/tmp/y"],
    ["convert", "oci:/x", "docker-archive:/tmp/y.tar"],
    ["convert", "oci:/x", "docker://no-repo"],
    ["convert", "oci:/x", "oci:/y", "--chunk-size", "1K"],
    ["convert", "oci:/x", "oci:/y", "--compression", "gzip"],
])
def test_usage_errors_exit_2(args):
    proc = imgconv(*args)
    assert proc.returncode == 2 and "imgconv" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_source_is_bad_input(tmp_path):
    proc = imgconv("convert", f"oci:{tmp_path}/nothing:latest", f"oci:{tmp_path}/out")
    assert proc.returncode == 3 and "not an OCI layout" in proc.stderr


def test_registry_failing_mid_push(tmp_path, fresh_registry):
    """The registry stops while blobs are being uploaded: exit 4, and after it is back, no manifest."""
    rng = os.urandom
    layers = [TarBuilder().file(f"f{i}", rng(24 << 20)).bytes() for i in range(4)]   # incompressible
    src = write_oci_layout(tmp_path / "src", layers, compression="none")
    repo = "midpush/img"
    proc = subprocess.Popen([sys.executable, "-m", "converter.cli", "convert", f"oci:{src.dir}:latest",
                             f"docker://{fresh_registry.host}/{repo}:v1", "--plain-http"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        deadline = time.monotonic() + 300
        while "blobs/uploads" not in fresh_registry.log.read_text(errors="replace"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "imgconv never started uploading"
            time.sleep(0.005)
        fresh_registry.stop()
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 4, err
        assert err.startswith("imgconv: error: ") and "Traceback" not in err
        port = int(fresh_registry.host.rsplit(":", 1)[1])
        restarted = start_registry(fresh_registry.root.parent, port=port)
        assert manifest_status(restarted.host, repo, "v1") == 404
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if restarted is not None:
            restarted.stop()


def test_broken_docker_archives(tmp_path):
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"this is not a tar archive" * 100)
    proc = imgconv("convert", f"docker-archive:{not_tar}", f"oci:{tmp_path}/out1")
    assert proc.returncode == 3 and "not a readable tar archive" in proc.stderr, proc.stderr
    bad_manifest = tmp_path / "bad-manifest.tar"
    with tarfile.open(bad_manifest, "w") as t:
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(b"[{broken")
        t.addfile(ti, io.BytesIO(b"[{broken"))
    proc = imgconv("convert", f"docker-archive:{bad_manifest}", f"oci:{tmp_path}/out2")
    assert proc.returncode == 3 and "manifest.json does not parse" in proc.stderr, proc.stderr
    proc = imgconv("convert", f"docker-archive:{tmp_path}/missing.tar", f"oci:{tmp_path}/out3")
    assert proc.returncode == 4 and "missing.tar" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-manifest.tar", "not.tar"]
