"""Slow but required: a file over 4 GiB and 50,000 small files round-trip convert -> check -> unpack.

The 4 GiB layer is generated as a tar *stream* gzip-compressed on the fly
into the layer file: the uncompressed tar never exists in memory or on disk
(the converter itself spools it while converting; that is imgformat's choice).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import pytest

from tests.converter.conftest import imgconv
from tests.support.ocilayout import MTIME, FileLayer, TarBuilder, write_oci_layout

BIG_SIZE = (4 << 30) + (1 << 20) + 123          # over 4 GiB, not chunk-aligned
MARKS = {0: b"start", 1 << 32: b"past 4 GiB", BIG_SIZE - 9: b"the end!!"}   # offset -> bytes (non-zero)


def write_big_layer(path) -> str:
    """Stream a one-file tar through gzip into `path`; returns the diff_id (sha256 of the tar).

    The gzip stream is a series of members (RFC 1952 allows any number): each
    64 MiB run of zeros is the same member, compressed once, which keeps this
    fixture at the cost of hashing 4 GiB rather than deflating it.
    """
    ti = tarfile.TarInfo("data/huge.bin")
    ti.size, ti.mode, ti.mtime = BIG_SIZE, 0o644, MTIME
    header = tarfile.TarInfo("data")
    header.type, header.mode, header.mtime = tarfile.DIRTYPE, 0o755, MTIME
    diff = hashlib.sha256()
    zeros = bytes(64 << 20)
    zero_member = gzip.compress(zeros, compresslevel=9, mtime=0)
    with open(path, "wb") as out:
        def emit(data: bytes) -> None:
            diff.update(data)
            out.write(zero_member if data is zeros else gzip.compress(data, compresslevel=1, mtime=0))

        emit(header.tobuf(tarfile.PAX_FORMAT) + ti.tobuf(tarfile.PAX_FORMAT))
        pos = 0
        while pos < BIG_SIZE:
            if pos in MARKS:
                emit(MARKS[pos])
                pos += len(MARKS[pos])
                continue
            nxt = min([off for off in MARKS if off > pos] + [BIG_SIZE])
            n = min(len(zeros), nxt - pos)
            emit(zeros if n == len(zeros) else bytes(n))
            pos += n
        emit(bytes(-BIG_SIZE % 512) + bytes(1024))
    return "sha256:" + diff.hexdigest()


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    diff_id = write_big_layer(d / "layer.tar.gz")
    small = TarBuilder().dir("etc").file("etc/hello", b"hello").bytes()
    return write_oci_layout(d / "oci", [FileLayer(d / "layer.tar.gz", diff_id), small],
                            compression=["gzip", "gzip"])


def test_file_over_4gib_round_trips(big_image, tmp_path):
    work = tmp_path / "work"
    conv = f"oci:{tmp_path}/conv:v1"
    imgconv("convert", f"oci:{big_image.dir}:latest", conv, "--workdir", work, check=True)
    proc = imgconv("check", f"oci:{big_image.dir}:latest", conv, "--workdir", work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    out = tmp_path / "rootfs"
    imgconv("unpack", conv, out, "--workdir", work, check=True)
    huge = out / "data/huge.bin"
    st = huge.stat()
    assert st.st_size == BIG_SIZE
    assert st.st_blocks * 512 < (256 << 20)              # zero runs became holes
    with open(huge, "rb") as f:
        for off, data in MARKS.items():
            f.seek(off)
            assert f.read(len(data)) == data
        f.seek(BIG_SIZE // 2)
        assert f.read(1 << 20) == bytes(1 << 20)
    assert (out / "etc/hello").read_bytes() == b"hello"
    assert list(work.iterdir()) == []


def many_files_layer(n: int = 50_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for d in range(n // 500):
            ti = tarfile.TarInfo(f"many/d{d:03d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            t.addfile(ti)
            for i in range(500):
                data = f"file {d}/{i}\n".encode() * (i % 5)
                ti = tarfile.TarInfo(f"many/d{d:03d}/f{i:03d}")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, MTIME + i
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_50000_small_files_round_trip(tmp_path):
    src = write_oci_layout(tmp_path / "src", [many_files_layer()], compression="gzip")
    conv = f"oci:{tmp_path}/conv:v1"
    summary = imgconv("convert", f"oci:{src.dir}:latest", conv, "--json", check=True).stdout
    assert '"files": 50' in summary
    proc = imgconv("check", f"oci:{src.dir}:latest", conv)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "50102 paths" in proc.stdout             # 50,000 files, 100 dirs, many/ and the root
    out = tmp_path / "rootfs"
    imgconv("unpack", conv, out, check=True)
    assert sum(len(files) for _, _, files in os.walk(out)) == 50_000
    assert (out / "many/d099/f499").read_bytes() == b"file 99/499\n" * 4
    assert (out / "many/d000/f000").read_bytes() == b""
    assert (out / "many/d042/f007").stat().st_mtime == MTIME + 7
