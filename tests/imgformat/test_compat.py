"""The compatibility promise: an imgfs blob is a plain tar+zstd layer for tools that know nothing
of imgfs (the zstd CLI, GNU tar, Python's tarfile; containerd's unpacker reads it the same way)."""
from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile

import pytest

from tests.imgformat.tarkit import CHUNK, convert, dir_, file_, info, make_tar


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    big = bytes(range(256)) * (3 * CHUNK // 256) + b"tail"
    entries = [
        dir_("etc", mode=0o750), file_("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640),
        file_("etc/empty", b""), dir_("usr/lib"), file_("usr/lib/big", big, mode=0o755),
        info("usr/lib/big.1", tarfile.LNKTYPE, linkname="usr/lib/big"),
        info("bin", tarfile.SYMTYPE, linkname="usr/bin"),
        info("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        info("fifo", tarfile.FIFOTYPE, mode=0o600),
        file_("var/.wh.gone", b""), dir_("opq"), file_("opq/.wh..wh..opq", b""),
    ] + [file_(f"many/{i:03}", f"file {i}\n".encode() * (i + 1)) for i in range(200)]
    cv = convert(make_tar(entries))
    path = tmp_path_factory.mktemp("compat") / "layer.tar.zst"
    path.write_bytes(cv.blob)
    return path, big, cv


def test_zstd_cli_accepts_the_blob(layer) -> None:
    path, _, cv = layer
    subprocess.run(["zstd", "-q", "-t", str(path)], check=True)
    out = subprocess.run(["zstd", "-q", "-d", "-c", str(path)], check=True, capture_output=True).stdout
    assert len(out) == cv.result.uncompressed_size
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        assert tf.extractfile("usr/lib/big").read() == layer[1]


def test_zstd_pipe_to_gnu_tar_unpacks(layer, tmp_path) -> None:
    path, big, _ = layer
    root = tmp_path / "root"
    root.mkdir()
    with subprocess.Popen(["zstd", "-q", "-d", "-c", str(path)], stdout=subprocess.PIPE) as z:
        subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-C", str(root)], stdin=z.stdout, check=True)
        z.stdout.close()
        assert z.wait() == 0
    assert (root / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE((root / "etc/hosts").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o750
    assert (root / "usr/lib/big").read_bytes() == big
    assert (root / "usr/lib/big").stat().st_ino == (root / "usr/lib/big.1").stat().st_ino
    assert os.readlink(root / "bin") == "usr/bin"
    assert stat.S_ISFIFO((root / "fifo").lstat().st_mode)
    assert (root / "var/.wh.gone").exists() and (root / "opq/.wh..wh..opq").exists()
    assert (root / "many/199").read_bytes() == b"file 199\n" * 200
    if os.geteuid() == 0:
        assert (root / "dev/null").lstat().st_rdev == os.makedev(1, 3)


def test_tar_with_zstd_filter_lists_every_entry(layer) -> None:
    path, _, cv = layer
    out = subprocess.run(["tar", "--zstd", "-t", "-f", str(path)], check=True, capture_output=True,
                         text=True).stdout.split()
    assert len(out) == cv.result.files
