"""Generated test images: every file type, hardlinks across dirs, xattrs, whiteouts, opaque dirs.

`rich_layers()` returns two uncompressed layer tars; `EXPECTED` describes the
merged rootfs they make (what unpack must produce), written by hand from
the layer definitions, so tests do not compare the converter to itself.
"""
from __future__ import annotations

import random

from tests.support.ocilayout import MTIME, TarBuilder

LONG = "n" * 255                                   # a 255-byte name (NAME_MAX)
LONG_DIR = "d" * 255
BIG = random.Random(7).randbytes(3 * (1 << 20) + 12345)  # spans several 1 MiB chunks
SMALL = {f"usr/share/small/f{i:03d}": f"small file {i}\n".encode() * (i % 7) for i in range(60)}


def layer1() -> bytes:
    t = TarBuilder()
    t.dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n").file("etc/empty", b"")
    t.file("etc/secret", b"shh", mode=0o600, uid=1000, gid=1001, mtime=MTIME - 86400)
    t.dir("usr").dir("usr/bin").dir("usr/lib").dir("usr/share", mtime=MTIME - 5).dir("usr/share/small")
    t.file("usr/bin/big", BIG, mode=0o755)
    t.file("usr/bin/suid", b"#!/bin/sh\n", mode=0o4755)
    t.hardlink("usr/lib/big-link", "usr/bin/big")               # hardlink across directories
    t.symlink("usr/bin/sh", "big").symlink("usr/bin/abs", "/etc/hosts").symlink("usr/bin/dangling", "nowhere")
    t.file("usr/bin/xattr", b"with xattrs", xattrs={"user.comment": b"hello", "user.bin": b"\x00\x01\xff"})
    t.dir("usr/xdir", xattrs={"user.dir": b"on a dir"})
    for name, data in SMALL.items():
        t.file(name, data)
    t.dir("dev").device("dev/null", "c", 1, 3, mode=0o666).device("dev/loop0", "b", 7, 0).fifo("dev/fifo")
    t.dir(LONG_DIR).file(f"{LONG_DIR}/{LONG}", b"long name")
    t.dir("opaque").file("opaque/a", b"a").file("opaque/b", b"b").dir("opaque/sub").file("opaque/sub/x", b"x")
    t.dir("wh").file("wh/keep", b"keep").file("wh/gone", b"gone").dir("wh/gonedir").file("wh/gonedir/f", b"f")
    t.file("swap", b"a file that becomes a directory")
    return t.bytes()


def layer2() -> bytes:
    t = TarBuilder()
    t.dir("etc").file("etc/hosts", b"10.0.0.1 changed\n").file("etc/added", b"added in layer 2")
    t.dir("wh").whiteout("wh/gone").whiteout("wh/gonedir")
    t.dir("opaque").opaque("opaque").file("opaque/c", b"c")
    t.whiteout("swap").dir("swap").file("swap/inside", b"now a dir")
    t.dir("usr").dir("usr/lib").file("usr/lib/l2", b"layer two").hardlink("usr/lib/l2-link", "usr/lib/l2")
    return t.bytes()


def rich_layers() -> list[bytes]:
    return [layer1(), layer2()]


# path -> (kind, extra): what the merged rootfs must contain (a subset of attributes per entry).
EXPECTED_FILES = {
    "etc/hosts": b"10.0.0.1 changed\n", "etc/empty": b"", "etc/secret": b"shh", "etc/added": b"added in layer 2",
    "usr/bin/big": BIG, "usr/lib/big-link": BIG, "usr/bin/xattr": b"with xattrs",
    f"{LONG_DIR}/{LONG}": b"long name", "opaque/c": b"c", "wh/keep": b"keep", "swap/inside": b"now a dir",
    "usr/lib/l2": b"layer two", "usr/lib/l2-link": b"layer two", "usr/bin/suid": b"#!/bin/sh\n", **SMALL,
}
EXPECTED_ABSENT = ["wh/gone", "wh/gonedir", "opaque/a", "opaque/b", "opaque/sub"]
EXPECTED_SYMLINKS = {"usr/bin/sh": "big", "usr/bin/abs": "/etc/hosts", "usr/bin/dangling": "nowhere"}
EXPECTED_HARDLINKS = [("usr/bin/big", "usr/lib/big-link"), ("usr/lib/l2", "usr/lib/l2-link")]
EXPECTED_DEVICES = {"dev/null": ("c", 1, 3), "dev/loop0": ("b", 7, 0)}
EXPECTED_XATTRS = {"usr/bin/xattr": {"user.comment": b"hello", "user.bin": b"\x00\x01\xff"},
                   "usr/xdir": {"user.dir": b"on a dir"}}
