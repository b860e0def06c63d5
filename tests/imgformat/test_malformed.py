"""Bad source layers: every malformed tar is a FormatError with a useful message, never a blob."""
from __future__ import annotations

import io
import random
import tarfile

import pytest

from imgformat.layer import FormatError, convert_layer
from tests.imgformat.tarkit import CHUNK, Pipe, convert, decompress_blob, dir_, file_, info, make_tar


def _convert(tar: bytes) -> None:
    convert_layer(io.BytesIO(tar), io.BytesIO(), chunk_size=CHUNK)


def _good() -> bytes:
    return make_tar([dir_("a"), file_("a/x", b"x" * 1000), file_("b", b"y" * 3000)])


def _header_offsets(tar: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return [m.offset for m in tf]


def _corrupt_header(tar: bytes, index: int) -> bytes:
    off = _header_offsets(tar)[index]
    buf = bytearray(tar)
    buf[off + 10] ^= 0x41  # inside the name field: checksum no longer matches
    return bytes(buf)


@pytest.mark.parametrize("case, message", [
    ("truncated-data", "truncated|unexpected end"),
    ("truncated-header", "truncated|end-of-archive|unexpected end"),
    ("no-end-marker", "end-of-archive"),
    ("bad-checksum-first", "checksum|corrupt"),
    ("bad-checksum-later", "checksum|corrupt"),
    ("empty", "empty|corrupt|truncated"),
    ("garbage", "corrupt|checksum|invalid"),
])
def test_truncated_or_corrupt(case: str, message: str) -> None:
    tar = _good()
    offs = _header_offsets(tar)
    data_end = len(tar.rstrip(b"\0"))
    mutated = {
        "truncated-data": tar[:offs[2] + 512 + 100],
        "truncated-header": tar[:offs[2] + 300],
        "no-end-marker": tar[:data_end + (-data_end % 512)],
        "bad-checksum-first": _corrupt_header(tar, 0),
        "bad-checksum-later": _corrupt_header(tar, 2),
        "empty": b"",
        "garbage": random.Random(0).randbytes(4096),
    }[case]
    with pytest.raises(FormatError, match=message):
        _convert(mutated)


@pytest.mark.parametrize("entries, message", [
    ([file_("a/../../etc/passwd", b"x")], r"'\.\.'"),
    ([file_("../x", b"x")], r"'\.\.'"),
    ([file_("/etc/passwd", b"x")], "absolute"),
    ([info("l", tarfile.LNKTYPE, linkname="missing")], "hardlink.*missing"),
    ([info("l", tarfile.LNKTYPE, linkname="later"), file_("later", b"x")], "hardlink.*later"),
    ([dir_("d"), info("l", tarfile.LNKTYPE, linkname="d")], "hardlink.*director"),
    ([file_("x", b"x"), info("l", tarfile.LNKTYPE, linkname="/x")], "absolute"),
    ([file_("x", b"1"), file_("x", b"2")], "duplicate"),
    ([file_("a", b"1"), file_("a/b", b"2")], "not a directory"),
    ([file_("n" * 256, b"")], "longer than 255"),
    ([info("odd", b"Z")], "unsupported"),
    ([info("s", tarfile.SYMTYPE, linkname="")], "empty target"),
    ([file_("m", b"", pax={"mtime": "yesterday"})], "mtime"),
    ([file_(".wh.", b"")], "whiteout"),
])
def test_invalid_entries(entries: list, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        _convert(make_tar(entries))


def test_spooled_input_error_leaves_no_spool(tmp_path) -> None:
    with pytest.raises(FormatError):
        convert_layer(io.BufferedReader(Pipe(_good()[:1500])), io.BytesIO(), chunk_size=CHUNK,
                      workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_symlinks_may_point_anywhere() -> None:
    # Following them safely is the unpacker's job; the format stores them verbatim.
    cv = convert(make_tar([info("up", tarfile.SYMTYPE, linkname="../../etc/shadow"),
                           info("abs", tarfile.SYMTYPE, linkname="/etc/shadow")]))
    assert cv.bs.readlink(cv.path("up")) == b"../../etc/shadow"
    assert cv.bs.readlink(cv.path("abs")) == b"/etc/shadow"


def test_leading_global_pax_header_is_kept() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "c"}) as tf:
        ti = info("f")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
    cv = convert(buf.getvalue())
    assert cv.read(cv.path("f")) == b"abc"
    with tarfile.open(fileobj=io.BytesIO(decompress_blob(cv.blob))) as tf:
        (member,) = tf.getmembers()
        assert member.pax_headers.get("comment") == "c"


def test_repeated_directory_takes_last_attributes() -> None:
    cv = convert(make_tar([dir_("d", mode=0o700), file_("d/f", b"f"), dir_("d", mode=0o711)]))
    assert cv.bs.getattr(cv.path("d")).mode & 0o777 == 0o711
    assert cv.read(cv.path("d/f")) == b"f"


def test_whiteout_marker_with_data_is_kept_but_not_indexed() -> None:
    cv = convert(make_tar([file_(".wh.x", b"odd but harmless" * 10), file_("big/.wh..wh..opq", bytes(CHUNK)),
                           file_("y", b"y")]))
    assert cv.result.chunks == 1 and cv.read(cv.path("y")) == b"y"
    assert len(decompress_blob(cv.blob)) == cv.result.uncompressed_size
