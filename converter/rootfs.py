"""The merged rootfs of an ordinary image, computed from its tar layers (for `imgconv check`).

Deliberately independent of imgformat: it reads the layers with Python's
tarfile and applies the OCI rules itself (whiteouts and opaque markers hide
what lower layers have, then the layer's own entries are added; a
non-directory replaces a whole subtree), so check compares two different
implementations rather than the converter with itself.
Only metadata and a sha256 per file are kept: 50,000 files cost a few MB and
a 4 GiB file costs nothing but time.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass, field
from decimal import Decimal

from converter.errors import BadInput
from converter.image import SourceImage
from converter.streams import READ_SIZE

_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG, tarfile.CONTTYPE: stat.S_IFREG,
          tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
          tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


@dataclass
class Entry:
    """One path of a rootfs, in the attributes check compares."""

    kind: int                       # stat.S_IFMT value
    mode: int                       # permission bits (S_IMODE)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link: bytes = b""               # symlink target
    rdev: tuple[int, int] = (0, 0)  # (major, minor)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    sha256: str | None = None       # regular files
    group: object = None            # hardlink group identity (same object = same inode)
    implicit: bool = False          # a parent no layer recorded: attributes unknown


def _path(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if any(p == b".." for p in parts):
        raise BadInput(f"tar entry {name!r} has a '..' component")
    return b"/".join(parts)


def _mtime_ns(m: tarfile.TarInfo) -> int:
    text = m.pax_headers.get("mtime")
    if text is not None:
        try:
            return int(Decimal(text) * 1_000_000_000)
        except ArithmeticError:
            pass
    return int(m.mtime) * 1_000_000_000


def _xattrs(m: tarfile.TarInfo) -> dict[bytes, bytes]:
    import base64

    out = {}
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            out[k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")] = \
                v.encode("utf-8", "surrogateescape")
        elif k.startswith("LIBARCHIVE.xattr."):
            out[k[len("LIBARCHIVE.xattr."):].encode("utf-8", "surrogateescape")] = base64.b64decode(v)
    return out


def _remove_subtree(tree: dict[bytes, Entry], path: bytes, keep_self: bool = False) -> None:
    """Drop `path` (unless keep_self) and, if it is a directory, everything below it."""
    old = tree.get(path)
    if old is not None and old.kind == stat.S_IFDIR:
        prefix = path + b"/" if path else b""
        for p in [p for p in tree if p.startswith(prefix) and p != path]:
            del tree[p]
    if not keep_self and path != b"":
        tree.pop(path, None)


def _ensure_parents(tree: dict[bytes, Entry], path: bytes) -> None:
    parts = path.split(b"/")[:-1]
    for i in range(1, len(parts) + 1):
        p = b"/".join(parts[:i])
        e = tree.get(p)
        if e is None or e.kind != stat.S_IFDIR:
            if e is not None:
                _remove_subtree(tree, p)
            tree[p] = Entry(stat.S_IFDIR, 0o755, 0, 0, 0, 0, implicit=True)


def _layer_entries(img: SourceImage, index: int) -> tuple[list[tuple[bytes, Entry]], list[bytes], list[bytes]]:
    """(entries in order, whiteout paths, opaque dirs) of one layer, streaming its tar once."""
    # The compressed digest proves these are the published bytes; the diff_id (config consistency)
    # is convert's business, and skipping it saves a sha256 pass over every uncompressed byte.
    checker, tar = img.open_layer(index, diff_id=False)
    entries: list[tuple[bytes, Entry]] = []
    whiteouts: list[bytes] = []
    opaques: list[bytes] = []
    by_path: dict[bytes, Entry] = {}
    try:
        with checker, tarfile.open(fileobj=tar, mode="r|", bufsize=READ_SIZE) as tf:
            for m in tf:
                path = _path(m.name)
                head, _, base = path.rpartition(b"/")
                if base == b".wh..wh..opq":
                    opaques.append(head)
                    continue
                if base.startswith(b".wh."):
                    whiteouts.append(head + b"/" + base[4:] if head else base[4:])
                    continue
                if m.islnk():
                    target = by_path.get(_path(m.linkname))
                    if target is None or target.kind != stat.S_IFREG:
                        raise BadInput(f"layer {index}: hardlink {m.name!r} -> {m.linkname!r}: no such file "
                                       f"earlier in the layer")
                    if target.group is None:
                        target.group = object()
                    entry = target
                else:
                    kind = _TYPES.get(m.type)
                    if kind is None:
                        raise BadInput(f"layer {index}: unsupported tar entry type {m.type!r} for {m.name!r}")
                    entry = Entry(kind, stat.S_IMODE(m.mode), m.uid, m.gid, m.size if kind == stat.S_IFREG else 0,
                                  _mtime_ns(m), link=m.linkname.encode("utf-8", "surrogateescape")
                                  if m.issym() else b"", rdev=(m.devmajor, m.devminor) if m.isdev() else (0, 0),
                                  xattrs=_xattrs(m))
                    if kind == stat.S_IFREG:
                        h = hashlib.sha256()
                        f = tf.extractfile(m)
                        while piece := f.read(READ_SIZE):
                            h.update(piece)
                        entry.sha256 = h.hexdigest()
                by_path[path] = entry
                entries.append((path, entry))
            tar.finish()
            checker.finish()
    except tarfile.TarError as e:
        raise BadInput(f"layer {index} ({img.layers[index].digest}): corrupt tar: {e}") from None
    return entries, whiteouts, opaques


def merged_rootfs(img: SourceImage) -> dict[bytes, Entry]:
    """path (relative, bytes) -> Entry of the image's merged rootfs; b"" is the root."""
    tree: dict[bytes, Entry] = {b"": Entry(stat.S_IFDIR, 0o755, 0, 0, 0, 0, implicit=True)}
    for index in range(len(img.layers)):
        entries, whiteouts, opaques = _layer_entries(img, index)
        for d in opaques:                       # hide lower contents, keep the directory itself
            _remove_subtree(tree, d, keep_self=True)
        for p in whiteouts:
            _remove_subtree(tree, p)
        for path, entry in entries:
            if path == b"":
                tree[b""] = entry
                continue
            old = tree.get(path)
            if old is not None and not (old.kind == stat.S_IFDIR and entry.kind == stat.S_IFDIR):
                _remove_subtree(tree, path)
            _ensure_parents(tree, path)
            tree[path] = entry
    return tree


def rdev_pair(rdev: int) -> tuple[int, int]:
    return (os.major(rdev), os.minor(rdev))
