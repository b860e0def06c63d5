"""Pass 1 of a conversion: index a (seekable) source tar and validate it.

The stdlib tarfile parses headers (it knows PAX, GNU long names and base-256 numbers); this module
adds what tarfile silently tolerates: a corrupt header after the first one (tarfile just stops),
truncation at a member boundary, entries escaping the root, hardlinks to missing or later targets,
duplicate paths. Data is not read here, only located: pass 2 copies it by offset.

Symlinks are stored verbatim (absolute or with ".."): following them is the unpacker's concern,
which must not let an entry escape through a symlinked directory.
"""
from __future__ import annotations

import base64
import os
import stat
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

from imgformat.constants import (
    BLOCK,
    FLAG_IMPLICIT,
    FLAG_OPAQUE,
    MAX_HEADER_SIZE,
    MAX_NAME,
    OPAQUE_NAME,
    WHITEOUT_PREFIX,
)
from imgformat.errors import FormatError
from imgformat.records import Segment

_KINDS = {
    tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "sym", tarfile.LNKTYPE: "lnk",
    tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk", tarfile.FIFOTYPE: "fifo",
}
_TYPE_BITS = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "sym": stat.S_IFLNK, "chr": stat.S_IFCHR,
              "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}
_U32 = 1 << 32


@dataclass(slots=True, eq=False)
class Node:
    """One inode of the layer. Hardlinks share a Node; ``entry`` is the tar record holding the data."""

    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    rdev: int = 0
    size: int = 0
    flags: int = 0
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    entry: Entry | None = None
    children: dict[bytes, Node] | None = None
    whiteouts: set[bytes] | None = None
    nlink: int = 1
    segments: list[Segment] = field(default_factory=list)
    ino: int = 0
    parent: int = 0


@dataclass(slots=True, eq=False)
class Entry:
    """One tar record (header blocks + data) of the source, located by offset in the spool."""

    path: bytes
    kind: str
    hdr_off: int
    data_off: int
    size: int
    node: Node | None = None
    emitted: bool = False


def new_dir(flags: int = 0) -> Node:
    return Node(kind="dir", mode=stat.S_IFDIR | 0o755, flags=flags, children={}, whiteouts=set())


@dataclass(slots=True)
class LayerIndex:
    """All entries in source order, the tree they build, and a global-header prefix if any."""

    entries: list[Entry]
    root: Node
    prefix: tuple[int, int] | None = None  # (offset, length) of a leading global PAX header

    def lookup(self, path: bytes) -> Node | None:
        node = self.root
        for part in (p for p in path.split(b"/") if p and p != b"."):
            if node.children is None:
                return None
            node = node.children.get(part)
            if node is None:
                return None
        return node


def normalize(name: str, what: str = "entry") -> bytes:
    """Tar name -> b"a/b/c" (root is b""). Rejects absolute paths, "..", over-long components."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw.startswith(b"/"):
        raise FormatError(f"{what} {raw!r}: absolute path")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    for p in parts:
        if p == b"..":
            raise FormatError(f"{what} {raw!r}: '..' component")
        if len(p) > MAX_NAME:
            raise FormatError(f"{what} {raw!r}: name component longer than {MAX_NAME} bytes")
    return b"/".join(parts)


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    text = ti.pax_headers.get("mtime")
    try:
        value = Decimal(text) if text is not None else Decimal(int(ti.mtime))
        ns = int((value * 1_000_000_000).to_integral_value(rounding="ROUND_FLOOR"))
    except (InvalidOperation, ValueError, OverflowError):
        raise FormatError(f"{ti.name!r}: bad mtime {text!r}") from None
    if not -(1 << 63) <= ns < (1 << 63):
        raise FormatError(f"{ti.name!r}: mtime out of range")
    return ns


def _xattrs(ti: tarfile.TarInfo) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            k = key[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")
            out[k] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            k = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr."):])
            try:
                out[k] = base64.b64decode(value.encode("ascii"), validate=False)
            except (ValueError, UnicodeError):
                raise FormatError(f"{ti.name!r}: bad LIBARCHIVE.xattr value") from None
    for k in out:
        if not k or b"\x00" in k:
            raise FormatError(f"{ti.name!r}: bad xattr name {k!r}")
    return out


class _Builder:
    def __init__(self) -> None:
        self.index = LayerIndex(entries=[], root=new_dir(FLAG_IMPLICIT))

    def dir_at(self, path: bytes, full: bytes) -> Node:
        node = self.index.root
        for part in (p for p in path.split(b"/") if p):
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = new_dir(FLAG_IMPLICIT)
            elif child.kind != "dir":
                raise FormatError(f"entry {full!r}: parent {part!r} is not a directory")
            node = child
        return node

    def add(self, ti: tarfile.TarInfo, entry: Entry) -> None:
        kind, path = entry.kind, entry.path
        if kind == "lnk":
            target = normalize(ti.linkname, f"hardlink {path!r} target")
            node = self.index.lookup(target)
            if node is None or node is self.index.root or node.kind == "dir" or node.entry is None:
                raise FormatError(f"hardlink {path!r} -> {target!r}: target missing, later in the "
                                  "archive, or a directory")
            node.nlink += 1
        else:
            node = self._node(ti, entry)
        if path == b"":
            if kind != "dir":
                raise FormatError("root entry is not a directory")
            self._update_dir(self.index.root, node, entry)
            return
        parent_path, _, name = path.rpartition(b"/")
        parent = self.dir_at(parent_path, path)
        assert parent.children is not None and parent.whiteouts is not None
        if name == OPAQUE_NAME:
            parent.flags |= FLAG_OPAQUE
            return
        if name.startswith(WHITEOUT_PREFIX):
            hidden = name[len(WHITEOUT_PREFIX):]
            if not hidden or hidden.startswith(WHITEOUT_PREFIX):
                raise FormatError(f"entry {path!r}: malformed whiteout name")
            parent.whiteouts.add(hidden)
            return
        existing = parent.children.get(name)
        if existing is not None:
            if existing.kind == "dir" and node.kind == "dir":
                self._update_dir(existing, node, entry)
                return
            if existing.kind == "dir" and existing.flags & FLAG_IMPLICIT:
                raise FormatError(f"entry {path!r}: not a directory, but earlier entries are inside it")
            raise FormatError(f"entry {path!r}: duplicate path (only directories may repeat)")
        parent.children[name] = node
        entry.node = node

    @staticmethod
    def _update_dir(existing: Node, new: Node, entry: Entry) -> None:
        """A later directory record updates attributes (tar semantics) but keeps the children."""
        for attr in ("mode", "uid", "gid", "mtime_ns", "xattrs"):
            setattr(existing, attr, getattr(new, attr))
        existing.flags &= ~FLAG_IMPLICIT
        if existing.entry is None:
            existing.entry = entry
        entry.node = existing

    @staticmethod
    def _node(ti: tarfile.TarInfo, entry: Entry) -> Node:
        kind = entry.kind
        for value, what in ((ti.uid, "uid"), (ti.gid, "gid")):
            if not 0 <= value < _U32:
                raise FormatError(f"entry {entry.path!r}: {what} {value} out of range")
        node = Node(kind=kind, mode=_TYPE_BITS[kind] | (ti.mode & 0o7777), uid=ti.uid, gid=ti.gid,
                    mtime_ns=_mtime_ns(ti), xattrs=_xattrs(ti), entry=entry)
        if kind == "dir":
            node.children, node.whiteouts = {}, set()
        elif kind == "reg":
            node.size = entry.size
        elif kind == "sym":
            node.target = ti.linkname.encode("utf-8", "surrogateescape")
            if not node.target:
                raise FormatError(f"symlink {entry.path!r}: empty target")
            node.size = len(node.target)
        elif kind in ("chr", "blk"):
            if not (0 <= ti.devmajor < _U32 and 0 <= ti.devminor < _U32):
                raise FormatError(f"device {entry.path!r}: bad device numbers")
            node.rdev = os.makedev(ti.devmajor, ti.devminor)
        return node


def index_tar(f: BinaryIO, base: int, end: int) -> LayerIndex:
    """Index the tar occupying [base, end) of seekable ``f``; raise FormatError if malformed."""
    builder = _Builder()
    try:
        f.seek(base)
        tf = tarfile.TarFile(fileobj=f, mode="r", encoding="utf-8", errors="surrogateescape")
        expected = base
        while True:
            ti = tf.next()
            tf.members.clear()  # we keep our own compact records; bounded memory per entry
            if ti is None:
                break
            _check_member(builder, f, ti, expected, end)
            expected = ti.offset_data + (-(-ti.size // BLOCK) * BLOCK if ti.isreg() else 0)
        stop = tf.offset
    except FormatError:
        raise
    except (tarfile.TarError, ValueError, UnicodeError, OverflowError, EOFError) as exc:
        raise FormatError(f"corrupt tar: {exc}") from None
    _check_end(f, stop, end)
    return builder.index


def _check_member(builder: _Builder, f: BinaryIO, ti: tarfile.TarInfo, expected: int, end: int) -> None:
    if ti.offset != expected:
        if builder.index.entries or builder.index.prefix:
            raise FormatError(f"unsupported: global PAX header or gap before {ti.name!r} at {expected}")
        builder.index.prefix = (expected, ti.offset - expected)
    kind = _KINDS.get(ti.type)
    if kind is None or ti.sparse is not None:
        raise FormatError(f"entry {ti.name!r}: unsupported tar entry type {ti.type!r}")
    if kind != "reg" and ti.size != 0:
        raise FormatError(f"entry {ti.name!r}: non-regular entry with data ({ti.size} bytes)")
    if ti.offset_data - ti.offset > MAX_HEADER_SIZE:
        raise FormatError(f"entry {ti.name!r}: header larger than {MAX_HEADER_SIZE} bytes")
    if ti.size < 0 or ti.offset_data + ti.size > end:
        raise FormatError(f"entry {ti.name!r}: truncated data")
    path = normalize(ti.name)
    entry = Entry(path=path, kind=kind, hdr_off=ti.offset, data_off=ti.offset_data,
                  size=ti.size if kind == "reg" else 0)
    builder.add(ti, entry)
    builder.index.entries.append(entry)


def _check_end(f: BinaryIO, stop: int, end: int) -> None:
    """tarfile stops silently at a bad header or EOF; insist on a real end-of-archive block."""
    f.seek(stop)
    block = f.read(BLOCK) if stop < end else b""
    if len(block) < BLOCK:
        raise FormatError(f"truncated tar: no end-of-archive marker at offset {stop}")
    if block.count(0) != BLOCK:
        raise FormatError(f"corrupt tar header (bad checksum?) at offset {stop}")
