"""Operations without a mount (s3ql's t3_fs_api style): errno mapping at the FUSE edge.

The view and the reader are real (a converted two-layer image in an OCI layout dir);
pyfuse3's request context is not needed by these read-only operations.
"""
from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import pytest
import trio

from fusefs.fetcher import Fetcher
from fusefs.metrics import Metrics
from fusefs.mount import MountConfig, load_image
from fusefs.ops import Operations
from fusefs.reader import FileReader
from fusefs.store import ChunkStore
from imgformat.chunk import decode_chunk
from tests.fusefs.conftest import small_files


@pytest.fixture
def ops(synthetic_layouts, tmp_path):
    cfg = MountConfig(image=f"oci:{synthetic_layouts['a']}", mountpoint=str(tmp_path))
    _layers, source, _bs, view = trio.run(load_image, cfg)
    store = ChunkStore(tmp_path / "cache")
    fetcher = Fetcher(source, store, decode_chunk)
    return Operations(view, FileReader(view, fetcher, store), Metrics()), source


def _errno(coro_fn, *args) -> int | None:
    try:
        trio.run(coro_fn, *args)
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return None


def test_lookup_getattr_readdir_read(ops):
    o, _ = ops
    etc = trio.run(o.lookup, pyfuse3.ROOT_INODE, b"etc", None)
    assert stat.S_ISDIR(etc.st_mode) and etc.entry_timeout >= 3600
    top = trio.run(o.lookup, etc.st_ino, b"top", None)
    assert top.st_size == 6 and top.st_blocks == 1
    fi = trio.run(o.open, top.st_ino, os.O_RDONLY, None)
    assert fi.keep_cache and not fi.direct_io
    assert trio.run(o.read, fi.fh, 0, 4096) == b"top-a\n"
    assert trio.run(o.read, fi.fh, 100, 4096) == b""
    small = trio.run(o.lookup, pyfuse3.ROOT_INODE, b"small", None)
    f7 = trio.run(o.lookup, small.st_ino, b"f007", None)
    assert trio.run(o.read, f7.st_ino, 10, 20) == small_files()["small/f007"][10:30]


def test_errno_mapping(ops):
    o, _ = ops
    root = pyfuse3.ROOT_INODE
    etc = trio.run(o.lookup, root, b"etc", None).st_ino
    top = trio.run(o.lookup, etc, b"top", None).st_ino
    assert _errno(o.lookup, root, b"nope", None) == errno.ENOENT
    assert _errno(o.lookup, etc, b"gone", None) == errno.ENOENT            # whited out
    assert _errno(o.lookup, top, b"x", None) == errno.ENOTDIR
    assert _errno(o.opendir, top, None) == errno.ENOTDIR
    assert _errno(o.readlink, top, None) == errno.EINVAL
    assert _errno(o.getxattr, top, b"user.none", None) == pyfuse3.ENOATTR == errno.ENODATA
    assert _errno(o.open, top, os.O_RDWR, None) == errno.EROFS
    assert _errno(o.open, top, os.O_RDONLY | os.O_TRUNC, None) == errno.EROFS
    assert _errno(o.mkdir, root, b"d", 0o755, None) == errno.EROFS
    assert _errno(o.setxattr, top, b"user.x", b"1", None) == errno.EROFS
    assert _errno(o.access, top, os.W_OK, None) == errno.EROFS
    assert _errno(o.access, top, os.R_OK, None) is None


def test_fetch_failure_is_eio_for_that_read_only(ops, synthetic_layouts):
    o, source = ops
    small = trio.run(o.lookup, pyfuse3.ROOT_INODE, b"small", None).st_ino
    f1 = trio.run(o.lookup, small, b"f001", None).st_ino
    real = source.get_range

    def broken(blob, start, end):
        raise ConnectionResetError("connection reset by peer")

    source.get_range = broken
    assert _errno(o.read, f1, 0, 4096) == errno.EIO
    source.get_range = real
    assert trio.run(o.read, f1, 0, 4096) == small_files()["small/f001"]


def test_readdir_resumes_at_stable_offsets(ops):
    """The kernel's buffer takes 2 entries per call; a refused entry must come again next call."""
    o, _ = ops
    delivered: list[tuple[bytes, int]] = []
    budget = [0]

    def reply(token, name, attr, next_id):
        if budget[0] == 0:
            return False                        # buffer full: this entry was NOT taken
        budget[0] -= 1
        delivered.append((name, next_id))
        return True

    real = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = reply
    try:
        etc = trio.run(o.lookup, pyfuse3.ROOT_INODE, b"etc", None).st_ino
        start = 0
        for _ in range(10):
            budget[0] = 2
            before = len(delivered)
            trio.run(o.readdir, etc, start, object())
            if len(delivered) == before:
                break
            start = delivered[-1][1]
    finally:
        pyfuse3.readdir_reply = real
    assert [n for n, _ in delivered] == [b"empty", b"hostname", b"hostname-again", b"secret", b"top"]
