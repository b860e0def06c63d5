"""convert -> check -> unpack on the rich image; check catches differences and tampering; inspect."""
from __future__ import annotations

import json
import os
import shutil
import stat

from tests.converter import images as I
from tests.converter.conftest import imgconv
from tests.support.ocilayout import TarBuilder, push_oci_layout, write_oci_layout


def test_check_passes_on_the_rich_image(rich_oci, rich_converted):
    proc = imgconv("check", f"oci:{rich_oci.dir}:latest", f"oci:{rich_converted}:v1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["differences"] == [] and report["paths"] > 90
    assert report["chunks_verified"] >= 4


def test_check_lists_differences(tmp_path, rich_oci, rich_layers_bytes):
    l2 = (TarBuilder().dir("etc").file("etc/hosts", b"10.0.0.2 changed\n").file("etc/added", b"added in layer 2",
                                                                                 mode=0o600)
          .file("extra", b"not in the original").symlink("usr/bin/sh", "elsewhere").bytes())
    variant = write_oci_layout(tmp_path / "variant", [rich_layers_bytes[0], l2])
    imgconv("convert", f"oci:{variant.dir}:latest", f"oci:{tmp_path}/conv:v1", check=True)
    proc = imgconv("check", f"oci:{rich_oci.dir}:latest", f"oci:{tmp_path}/conv:v1")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "/etc/hosts: sha256" in out and "/etc/added: mode 0o644 in the original, 0o600 converted" in out
    assert "/extra: only in the converted image" in out
    assert "/wh/gone: only in the converted image" in out          # the variant has no whiteouts
    assert "/opaque/c: missing in the converted image" in out
    assert "/usr/bin/sh: link b'big' in the original, b'elsewhere' converted" in out
    assert "/usr/lib/l2-link: missing" in out
    assert out.strip().splitlines()[-1].startswith("DIFFERENT")


def test_check_detects_a_tampered_chunk(tmp_path, rich_oci, rich_converted):
    bad = tmp_path / "bad"
    shutil.copytree(rich_converted, bad)
    manifest = json.loads(imgconv("inspect", f"oci:{bad}:v1", "--json", check=True).stdout)
    layer0 = manifest["layers"][0]
    blob = bad / "blobs" / "sha256" / layer0["digest"].split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[layer0["bootstrap_offset"] // 2] ^= 0x55        # inside the chunk frames of the big random file
    blob.write_bytes(bytes(data))
    proc = imgconv("check", f"oci:{rich_oci.dir}:latest", f"oci:{bad}:v1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "chunk" in proc.stderr and layer0["digest"] in proc.stderr


def assert_rich_rootfs(root):
    for rel, data in I.EXPECTED_FILES.items():
        p = root / rel
        assert p.is_file() and not p.is_symlink(), rel
        assert p.read_bytes() == data, rel
    for rel in I.EXPECTED_ABSENT:
        assert not os.path.lexists(root / rel), rel
    assert sorted(os.listdir(root / "opaque")) == ["c"]
    for rel, target in I.EXPECTED_SYMLINKS.items():
        assert os.readlink(root / rel) == target
    for a, b in I.EXPECTED_HARDLINKS:
        assert os.stat(root / a).st_ino == os.stat(root / b).st_ino
    for rel, (kind, major, minor) in I.EXPECTED_DEVICES.items():
        st = os.lstat(root / rel)
        assert (stat.S_ISCHR if kind == "c" else stat.S_ISBLK)(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)
    assert stat.S_ISFIFO(os.lstat(root / "dev/fifo").st_mode)
    for rel, xattrs in I.EXPECTED_XATTRS.items():
        assert {k: os.getxattr(root / rel, k) for k in os.listxattr(root / rel)} == xattrs
    st = os.lstat(root / "etc/secret")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == \
        (0o600, 1000, 1001, (I.MTIME - 86400) * 10**9)
    assert stat.S_IMODE(os.lstat(root / "usr/bin/suid").st_mode) == 0o4755
    assert os.lstat(root / "usr/share").st_mtime_ns == (I.MTIME - 5) * 10**9    # dir mtime kept after children
    assert os.lstat(root / "usr/bin/abs").st_mtime_ns == I.MTIME * 10**9
    assert len(I.LONG) == 255 and (root / I.LONG_DIR / I.LONG).exists()


def test_unpack_the_rich_image(tmp_path, rich_converted):
    out = tmp_path / "rootfs"
    proc = imgconv("unpack", f"oci:{rich_converted}:v1", out)
    assert proc.returncode == 0, proc.stderr
    assert_rich_rootfs(out)


def test_unpack_refuses_a_non_empty_dir(tmp_path, rich_converted):
    (tmp_path / "x").write_text("mine")
    proc = imgconv("unpack", f"oci:{rich_converted}:v1", tmp_path)
    assert proc.returncode == 2 and "not an empty directory" in proc.stderr
    assert os.listdir(tmp_path) == ["x"]


def test_unpack_refuses_an_unconverted_image(tmp_path, rich_oci):
    proc = imgconv("unpack", f"oci:{rich_oci.dir}:latest", tmp_path / "out")
    assert proc.returncode == 3 and "not an imgfs layer" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def blob_gets(registry, repo):
    """Access-log lines of blob GETs for one repository (the registry logs each request once this way)."""
    return [ln for ln in registry.log.read_text(errors="replace").splitlines()
            if f'"GET /v2/{repo}/blobs/' in ln]


def test_registry_roundtrip_check_unpack_inspect(tmp_path, registry, rich_oci):
    push_oci_layout(rich_oci.dir, registry.host, "rt/orig", "v1")
    src, dst = f"docker://{registry.host}/rt/orig:v1", f"docker://{registry.host}/rt/conv:v1"
    imgconv("convert", src, dst, "--plain-http", check=True)
    proc = imgconv("check", src, dst, "--plain-http")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imgconv("unpack", dst, tmp_path / "rootfs", "--plain-http", check=True)
    assert_rich_rootfs(tmp_path / "rootfs")
    before = len(blob_gets(registry, "rt/conv"))
    report = json.loads(imgconv("inspect", dst, "--plain-http", "--json", check=True).stdout)
    gets = blob_gets(registry, "rt/conv")[before:]
    # the config, then one bootstrap range (206) per layer: never the data
    assert len(gets) == 1 + len(report["layers"]) and sum('" 206 ' in g for g in gets) == len(report["layers"])
    assert report["files"] > 90 and report["chunks"] >= 2
    text = imgconv("inspect", dst, "--plain-http", check=True).stdout
    assert report["manifest_digest"] in text and "files" in text
