"""convert_layer: round trips of every entry type, tar compatibility, chunking and ordering."""
from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import tarfile

import pytest

from imgformat import constants as C
from imgformat.layer import PrefetchEntry, convert_layer
from tests.imgformat.tarkit import CHUNK, Pipe, convert, decompress_blob, dir_, file_, info, make_tar

LONG = "d" * 120 + "/" + "e" * 120 + "/" + "f" * 200
NAME255 = "n" * 255


def all_types_entries() -> list:
    rnd = random.Random(7)
    big = rnd.randbytes(3 * CHUNK + 123)
    return [
        dir_("./", mode=0o755, mtime=1_600_000_000),
        dir_("etc", mode=0o750, uid=3, gid=4),
        file_("etc/passwd", b"root:x:0:0\n", mode=0o600, uid=5, gid=6,
              pax={"mtime": "1700000000.123456789"}),
        file_("etc/empty", b""),
        file_("etc/caps", b"bin", pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff",
                                        "SCHILY.xattr.user.note": "hello"}),
        dir_("usr/bin"),  # parent usr/ is implicit
        file_("usr/bin/big", big, mode=0o755),
        info("usr/bin/big-link", tarfile.LNKTYPE, linkname="usr/bin/big"),
        info("etc/big-hardlink", tarfile.LNKTYPE, linkname="./usr/bin/big"),
        info("usr/bin/sh", tarfile.SYMTYPE, linkname="/bin/bash"),
        info("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        info("dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0)),
        info("run/fifo", tarfile.FIFOTYPE),
        file_(NAME255, b"long name"),
        file_(LONG, b"long path"),
        file_("var/.wh.cache", b""),
        dir_("opt"),
        file_("opt/.wh..wh..opq", b""),
        file_("opt/new", b"new"),
        file_("setuid", b"x", mode=0o4755),
    ]


@pytest.fixture(scope="module")
def all_types() -> tuple[bytes, object]:
    tar = make_tar(all_types_entries())
    return tar, convert(tar)


def test_round_trip_attributes(all_types) -> None:
    _, cv = all_types
    bs = cv.bs
    root = bs.getattr(bs.root)
    assert stat.S_ISDIR(root.mode) and root.mtime_ns == 1_600_000_000 * 10**9 and not root.flags
    etc = bs.getattr(cv.path("etc"))
    assert (stat.S_IMODE(etc.mode), etc.uid, etc.gid) == (0o750, 3, 4)
    pw = bs.getattr(cv.path("etc/passwd"))
    assert (stat.S_IMODE(pw.mode), pw.uid, pw.gid, pw.size) == (0o600, 5, 6, 11)
    assert pw.mtime_ns == 1_700_000_000_123_456_789
    assert cv.read(cv.path("etc/passwd")) == b"root:x:0:0\n"
    empty = cv.path("etc/empty")
    assert bs.getattr(empty).size == 0 and bs.segments(empty, 0, 10) == [] and cv.read(empty) == b""
    assert bs.xattrs(cv.path("etc/caps")) == {b"security.capability": b"\x01\x00\x00\x02\xff",
                                              b"user.note": b"hello"}
    assert bs.xattrs(cv.path("etc/passwd")) == {}
    usr = bs.getattr(cv.path("usr"))
    assert usr.flags & C.FLAG_IMPLICIT and stat.S_ISDIR(usr.mode)
    sh = cv.path("usr/bin/sh")
    assert stat.S_ISLNK(bs.getattr(sh).mode) and bs.readlink(sh) == b"/bin/bash"
    assert bs.getattr(sh).size == len(b"/bin/bash")
    null, sda = bs.getattr(cv.path("dev/null")), bs.getattr(cv.path("dev/sda"))
    assert stat.S_ISCHR(null.mode) and null.rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(sda.mode) and sda.rdev == os.makedev(8, 0)
    assert stat.S_ISFIFO(bs.getattr(cv.path("run/fifo")).mode)
    assert cv.read(cv.path(NAME255)) == b"long name"
    assert cv.read(cv.path(LONG)) == b"long path"
    assert stat.S_IMODE(bs.getattr(cv.path("setuid")).mode) == 0o4755
    assert cv.result.files == len(all_types_entries())


def test_hardlinks_share_one_inode(all_types) -> None:
    _, cv = all_types
    ino = cv.path("usr/bin/big")
    assert cv.path("usr/bin/big-link") == ino == cv.path("etc/big-hardlink")
    attr = cv.bs.getattr(ino)
    assert attr.nlink == 3
    assert cv.read(ino) == random.Random(7).randbytes(3 * CHUNK + 123)


def test_whiteouts_and_opaque(all_types) -> None:
    _, cv = all_types
    wh = cv.path("var/cache")
    assert wh is not None and cv.bs.getattr(wh).flags & C.FLAG_WHITEOUT
    assert cv.path("var/.wh.cache") is None
    opt = cv.bs.getattr(cv.path("opt"))
    assert opt.flags & C.FLAG_OPAQUE
    assert [n for _, n, _ in cv.bs.readdir(cv.path("opt"))] == [b"new"]


def test_readdir_sorted_and_resumable(all_types) -> None:
    _, cv = all_types
    names = [n for _, n, _ in cv.bs.readdir(cv.bs.root)]
    assert names == sorted(names)
    assert set(names) >= {b"etc", b"usr", b"dev", b"run", b"var", b"opt", NAME255.encode(), b"d" * 120}
    rest = list(cv.bs.readdir(cv.bs.root, 3))
    assert [i for i, _, _ in rest] == list(range(3, len(names)))


def _entries(tar: bytes) -> list[tuple]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape") as tf:
        for m in tf:
            data = tf.extractfile(m).read() if m.isreg() else None
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname, m.devmajor,
                        m.devminor, dict(m.pax_headers), data))
    return out


def test_decompressed_blob_is_the_same_tar(all_types) -> None:
    tar, cv = all_types
    plain = decompress_blob(cv.blob)
    assert _entries(plain) == _entries(tar)
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == cv.result.diff_id
    assert len(plain) == cv.result.uncompressed_size


def test_diff_id_unchanged_without_reordering() -> None:
    tar = make_tar([dir_("a"), file_("a/x", b"x" * 5000), file_("b", os.urandom(CHUNK))])
    end = len(tar.rstrip(b"\0"))
    end += -end % 512
    tar = tar[:end] + bytes(1024)  # what Go's archive/tar (docker, containerd) writes
    cv = convert(tar)
    assert cv.result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize("size", [0, 1, CHUNK // 4 - 1, CHUNK // 4, CHUNK - 1, CHUNK, CHUNK + 1,
                                  2 * CHUNK, 2 * CHUNK + 511])
def test_chunk_boundaries(size: int) -> None:
    data = random.Random(size).randbytes(size)
    cv = convert(make_tar([file_("small", b"s" * 100), file_("f", data), file_("after", b"a" * 10)]))
    ino = cv.path("f")
    assert cv.read(ino) == data
    segs = cv.bs.segments(ino, 0, size)
    assert sum(s.length for s in segs) == size
    for s in segs:
        assert cv.bs.chunk(s.chunk_index).uncomp_size <= C.max_frame_size(CHUNK)
    if size >= CHUNK // 4:  # big files: whole chunks of file data only (dedup-friendly)
        assert len(segs) == -(-size // CHUNK)
        assert all(s.offset_in_chunk == 0 for s in segs)
    assert cv.read(cv.path("after")) == b"a" * 10


def test_segments_for_arbitrary_ranges() -> None:
    rnd = random.Random(1)
    data = rnd.randbytes(5 * CHUNK + 777)
    cv = convert(make_tar([file_("f", data)]))
    ino = cv.path("f")
    for _ in range(200):
        a = rnd.randrange(0, len(data) + 10)
        n = rnd.randrange(0, 2 * CHUNK)
        segs = cv.bs.segments(ino, a, n)
        want = data[a:a + n]
        assert cv.read(ino, a, n) == want
        assert sum(s.length for s in segs) == len(want)
        if want:
            assert segs[0].file_offset == a


def test_small_files_share_chunks() -> None:
    files = [file_(f"s/{i:04}", random.Random(i).randbytes(300)) for i in range(400)]
    cv = convert(make_tar(files))
    chunks = {cv.bs.segments(cv.path(f"s/{i:04}"), 0, 300)[0].chunk_index for i in range(400)}
    assert len(chunks) < 10 and cv.result.chunks == len(chunks)
    for i in (0, 199, 399):
        assert cv.read(cv.path(f"s/{i:04}")) == random.Random(i).randbytes(300)


def test_prefetch_reorders_and_fills_table() -> None:
    big = random.Random(3).randbytes(4 * CHUNK)
    entries = [dir_("a"), file_("a/one", b"1" * 100), dir_("b"), dir_("b/c"), file_("b/c/two", b"2" * 200),
               file_("big", big), file_("z", b"z"), info("a/link", tarfile.LNKTYPE, linkname="b/c/two")]
    tar = make_tar(entries)
    prefetch = [PrefetchEntry("/a/link"), PrefetchEntry("/missing"), PrefetchEntry("big", ((CHUNK + 5, CHUNK + 6),))]
    cv = convert(tar, prefetch=prefetch)
    names = [e[0] for e in _entries(decompress_blob(cv.blob))]
    assert names == ["b", "b/c", "b/c/two", "big", "a", "a/one", "z", "a/link"]
    assert _entries(decompress_blob(cv.blob)) != _entries(tar)
    assert sorted(_entries(decompress_blob(cv.blob))) == sorted(_entries(tar))
    two = cv.bs.segments(cv.path("b/c/two"), 0, 200)[0].chunk_index
    big_chunks = [s.chunk_index for s in cv.bs.segments(cv.path("big"), 0, len(big))]
    assert cv.bs.prefetch == [two, big_chunks[1]]
    # the prefetch set is at the front of the blob
    assert cv.bs.chunk(two).comp_offset < cv.bs.chunk(cv.bs.segments(cv.path("z"), 0, 1)[0].chunk_index).comp_offset
    assert cv.read(cv.path("big")) == big and cv.read(cv.path("a/link")) == b"2" * 200


def test_deterministic_and_thread_independent(all_types) -> None:
    tar, cv = all_types
    for threads in (1, 3):
        out = io.BytesIO()
        res = convert_layer(io.BytesIO(tar), out, chunk_size=CHUNK, threads=threads)
        assert out.getvalue() == cv.blob and res == cv.result


def test_non_seekable_input_is_spooled(all_types, tmp_path) -> None:
    tar, cv = all_types
    out = io.BytesIO()
    res = convert_layer(io.BufferedReader(Pipe(tar)), out, chunk_size=CHUNK, workdir=tmp_path)
    assert out.getvalue() == cv.blob and res == cv.result
    assert list(tmp_path.iterdir()) == []  # the spool is gone


def test_real_file_input_from_offset(all_types, tmp_path) -> None:
    tar, cv = all_types
    path = tmp_path / "layer.tar"
    path.write_bytes(b"junk" + tar)
    with open(path, "rb") as f:
        f.seek(4)
        out = io.BytesIO()
        convert_layer(f, out, chunk_size=CHUNK)
    assert out.getvalue() == cv.blob


def test_gnu_format_long_names() -> None:
    tar = make_tar([file_(LONG, b"gnu"), info("l" * 150, tarfile.SYMTYPE, linkname="t" * 150)],
                   fmt=tarfile.GNU_FORMAT)
    cv = convert(tar)
    assert cv.read(cv.path(LONG)) == b"gnu"
    assert cv.bs.readlink(cv.path("l" * 150)) == b"t" * 150
    assert _entries(decompress_blob(cv.blob)) == _entries(tar)


def test_same_name_whiteout_and_dir_becomes_opaque() -> None:
    cv = convert(make_tar([file_(".wh.x", b""), dir_("x"), file_("x/f", b"f"), file_(".wh.y", b""),
                           file_("y", b"y")]))
    assert cv.bs.getattr(cv.path("x")).flags & C.FLAG_OPAQUE
    assert not cv.bs.getattr(cv.path("y")).flags & C.FLAG_WHITEOUT and cv.read(cv.path("y")) == b"y"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        convert_layer(io.BytesIO(make_tar([])), io.BytesIO(), chunk_size=1000)
    with pytest.raises(ValueError):
        convert_layer(io.BytesIO(make_tar([])), io.BytesIO(), chunk_size=CHUNK, level=99)
