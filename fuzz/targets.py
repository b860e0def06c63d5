"""Fuzz targets shared by the atheris fuzzers (fuzz/fuzz_*.py, `make fuzz`) and the
hypothesis property tests in the suite (tests/reliability/test_fuzz_props.py).

Contract under test: bytes from an image are untrusted; a reader given any bytes either
answers or raises ``ImgFormatError`` (BootstrapError / FormatError / ChunkError), and it
terminates. Any other exception, a hang or a crash is a bug.
"""
from __future__ import annotations

import io
import stat
from functools import cache

from imgformat.bootstrap import Bootstrap
from imgformat.errors import ImgFormatError
from imgformat.layer import convert_layer

#: bound on inodes visited by one walk: termination even if a check were missing
MAX_WALK = 100_000


def walk(bs: Bootstrap) -> int:
    """Touch every reachable record as a mount would (getattr, xattrs, readdir, lookup,
    readlink, segments, chunk); returns the number of inodes visited."""
    seen, todo = 0, [bs.root]
    while todo and seen < MAX_WALK:
        ino = todo.pop()
        seen += 1
        a = bs.getattr(ino)
        bs.xattrs(ino)
        if stat.S_ISDIR(a.mode):
            for _, name, child in bs.readdir(ino):
                bs.lookup(ino, name)
                todo.append(child)
        elif stat.S_ISLNK(a.mode):
            bs.readlink(ino)
        elif stat.S_ISREG(a.mode) and a.size:
            for seg in bs.segments(ino, 0, min(a.size, 1 << 34)):
                bs.chunk(seg.chunk_index)
    bs.blobs  # noqa: B018 - parsing the table is the point
    bs.prefetch  # noqa: B018
    return seen


def bootstrap_target(data: bytes) -> None:
    """Decoded bootstrap bytes -> Bootstrap -> full walk."""
    try:
        walk(Bootstrap(data))
    except ImgFormatError:
        pass


def blob_bootstrap_target(data: bytes) -> None:
    """The payload as stored in a blob (zstd skippable frames) -> Bootstrap.from_blob_bytes."""
    try:
        walk(Bootstrap.from_blob_bytes(data))
    except ImgFormatError:
        pass


def tar_target(data: bytes) -> None:
    """Uncompressed layer tar -> convert_layer (what imgconv runs on every layer)."""
    try:
        convert_layer(io.BytesIO(data), io.BytesIO(), chunk_size=64 * 1024)
    except ImgFormatError:
        pass


@cache
def seed_tar() -> bytes:
    """A small layer with every entry kind: dirs, files, symlink, hardlink, xattrs, whiteout."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, type_=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.mtime = type_, len(data), 1_700_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            t.addfile(ti, io.BytesIO(data) if data else None)
        add("etc", tarfile.DIRTYPE, mode=0o755)
        add("etc/hostname", data=b"fuzz\n")
        add("etc/big", data=bytes(range(256)) * 300)
        add("etc/x", data=b"x", pax_headers={"SCHILY.xattr.user.k": "v"})
        add("etc/link", tarfile.SYMTYPE, linkname="hostname")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/hostname")
        add("etc/.wh.gone")
        add("dev", tarfile.DIRTYPE, mode=0o755)
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    return buf.getvalue()


@cache
def seed_blob_bootstrap() -> bytes:
    out = io.BytesIO()
    res = convert_layer(io.BytesIO(seed_tar()), out, chunk_size=64 * 1024)
    return out.getvalue()[res.bootstrap_offset:res.bootstrap_offset + res.bootstrap_size]


@cache
def seed_bootstrap() -> bytes:
    return Bootstrap.from_blob_bytes(seed_blob_bootstrap())._raw
