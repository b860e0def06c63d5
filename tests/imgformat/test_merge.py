"""MergedView: OCI layer-stack semantics (whiteouts, opaque dirs, dir merges, hardlinks), lazily."""
from __future__ import annotations

import stat
import tarfile

import pytest

from imgformat.bootstrap import BootstrapError
from imgformat.chunk import decode_chunk
from imgformat.merge import MergedView
from tests.imgformat.tarkit import convert, dir_, file_, info, make_tar

LOWER = [
    dir_("a", mtime=1), file_("a/x", b"lower x"), file_("a/y", b"lower y"), file_("a/sub/deep", b"d"),
    dir_("b"), file_("b/old1", b"1"), file_("b/old2", b"2"),
    file_("c", b"lower c"),
    dir_("keep", mode=0o711, uid=7), file_("keep/k", b"k"),
    file_("hl1", b"H" * 10), dir_("links"), info("links/hl2", tarfile.LNKTYPE, linkname="hl1"),
    file_("gone", b"g"), dir_("dgone"), file_("dgone/f", b"f"),
]
MIDDLE = [
    file_("a/.wh.x", b""), file_("a/z", b"middle z"),
    dir_("b", mode=0o700), file_("b/.wh..wh..opq", b""), file_("b/new", b"new"),
    file_("c/inside", b"i"),
    file_(".wh.gone", b""), file_(".wh.dgone", b""),
    file_("keep/k2", b"k2"),
]
UPPER = [file_("a/x", b"upper x"), file_("dgone/new", b"n")]


@pytest.fixture
def view():
    layers = [convert(make_tar(entries)) for entries in (LOWER, MIDDLE, UPPER)]
    mv = MergedView([cv.bs for cv in layers], blob_digests=[cv.result.blob_digest for cv in layers])
    return mv, layers


def path(mv: MergedView, p: str) -> int | None:
    ino = mv.root
    for part in p.encode().split(b"/"):
        ino = mv.lookup(ino, part)
        if ino is None:
            return None
    return ino


def names(mv: MergedView, p: str = "") -> list[bytes]:
    ino = path(mv, p) if p else mv.root
    return [n for _, n, _ in mv.readdir(ino)]


def content(mv: MergedView, layers, p: str) -> bytes:
    ino = path(mv, p)
    blobs = {cv.result.blob_digest: cv.blob for cv in layers}
    out = b""
    for blob, seg, chunk in mv.segments(ino, 0, mv.getattr(ino).size):
        data = decode_chunk(blobs[blob][chunk.comp_offset:chunk.comp_offset + chunk.comp_size], chunk)
        out += data[seg.offset_in_chunk:seg.offset_in_chunk + seg.length]
    return out


def test_root_listing(view) -> None:
    mv, _ = view
    assert mv.root == 1
    assert names(mv) == [b"a", b"b", b"c", b"dgone", b"hl1", b"keep", b"links"]


def test_whiteout_hides_and_upper_readds(view) -> None:
    mv, layers = view
    assert names(mv, "a") == [b"sub", b"x", b"y", b"z"]
    assert content(mv, layers, "a/x") == b"upper x"
    assert content(mv, layers, "a/z") == b"middle z"
    assert content(mv, layers, "a/y") == b"lower y"
    assert path(mv, "gone") is None
    assert names(mv, "dgone") == [b"new"]  # whited out in the middle, re-created above


def test_opaque_dir_hides_lower_contents(view) -> None:
    mv, _ = view
    assert names(mv, "b") == [b"new"]
    assert path(mv, "b/old1") is None
    assert stat.S_IMODE(mv.getattr(path(mv, "b")).mode) == 0o700


def test_dir_replaces_file(view) -> None:
    mv, layers = view
    c = mv.getattr(path(mv, "c"))
    assert stat.S_ISDIR(c.mode)
    assert content(mv, layers, "c/inside") == b"i"


def test_implicit_upper_dir_keeps_lower_attributes(view) -> None:
    mv, _ = view
    keep = mv.getattr(path(mv, "keep"))
    assert (stat.S_IMODE(keep.mode), keep.uid) == (0o711, 7)
    assert names(mv, "keep") == [b"k", b"k2"]
    assert keep.nlink == 1  # several layers contribute: "unknown" for find(1)


def test_hardlinks_keep_one_inode(view) -> None:
    mv, layers = view
    a, b = path(mv, "hl1"), path(mv, "links/hl2")
    assert a == b and mv.getattr(a).nlink == 2
    assert content(mv, layers, "links/hl2") == b"H" * 10


def test_inode_numbers_stable_and_dense(view) -> None:
    mv, _ = view
    before = path(mv, "a/sub/deep")
    listed = {n: i for _, n, i in mv.readdir(path(mv, "a"))}
    assert path(mv, "a/sub/deep") == before
    assert listed[b"sub"] == path(mv, "a/sub")
    seen = set()
    stack = [mv.root]
    while stack:
        ino = stack.pop()
        seen.add(ino)
        if stat.S_ISDIR(mv.getattr(ino).mode):
            stack.extend(i for _, _, i in mv.readdir(ino))
    assert seen == set(range(1, mv.inode_count + 1))


def test_segments_name_the_right_blob(view) -> None:
    mv, layers = view
    (blob, seg, _), = mv.segments(path(mv, "a/x"), 0, 100)
    assert blob == layers[2].result.blob_digest and seg.length == len(b"upper x")
    (blob, _, _), = mv.segments(path(mv, "a/y"), 0, 100)
    assert blob == layers[0].result.blob_digest


def test_errors(view) -> None:
    mv, _ = view
    with pytest.raises(BootstrapError):
        mv.getattr(10_000)
    with pytest.raises(BootstrapError):
        mv.lookup(path(mv, "a/y"), b"x")
    with pytest.raises(ValueError):
        MergedView([])


def test_opaque_root_hides_all_lower_layers() -> None:
    lower = convert(make_tar([file_("old", b"o")]))
    upper = convert(make_tar([file_(".wh..wh..opq", b""), file_("new", b"n")]))
    mv = MergedView([lower.bs, upper.bs])
    assert names(mv) == [b"new"]
