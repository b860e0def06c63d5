"""`imgconv check ORIGINAL CONVERTED`: prove the conversion lost nothing.

The original's merged rootfs comes from its tar layers (converter.rootfs,
independent of imgformat); the converted one from its bootstraps through
MergedView, with every file's bytes read back from the chunks. Both trees are
built concurrently (each is C-bound: zlib/zstd/sha256 release the GIL), then
compared attribute by attribute. Finally every chunk of every converted layer
is decoded and verified, including chunks no file points to.
"""
from __future__ import annotations

import hashlib
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from converter.image import open_image
from converter.imgview import ChunkReader, load_layers, merged_view, walk
from converter.location import Location
from converter.rootfs import Entry, merged_rootfs, rdev_pair

ATTRS = ("kind", "mode", "uid", "gid", "size", "mtime_ns", "link", "rdev", "xattrs", "sha256")


def converted_rootfs(view: Any, reader: ChunkReader) -> dict[bytes, Entry]:
    """path -> Entry of a converted image, file contents hashed from verified chunks."""
    root = view.getattr(view.root)
    tree = {b"": _entry(view, reader, view.root, root)}
    for path, ino, attr in walk(view):
        tree[path] = _entry(view, reader, ino, attr)
    return tree


def _entry(view: Any, reader: ChunkReader, ino: int, a: Any) -> Entry:
    kind = stat.S_IFMT(a.mode)
    e = Entry(kind, stat.S_IMODE(a.mode), a.uid, a.gid, a.size if kind == stat.S_IFREG else 0, a.mtime_ns,
              xattrs=dict(view.xattrs(ino)), group=ino)
    if kind == stat.S_IFLNK:
        e.link = view.readlink(ino)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        e.rdev = rdev_pair(a.rdev)
    elif kind == stat.S_IFREG:
        h = hashlib.sha256()
        n = 0
        for piece in reader.file_pieces(view, ino, a.size):
            h.update(piece)
            n += len(piece)
        e.sha256 = h.hexdigest() if n == a.size else f"short read ({n} of {a.size} bytes)"
    return e


def _fmt(attr: str, v: Any) -> str:
    if attr == "mode":
        return oct(v)
    if attr == "kind":
        return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chardev",
                stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo"}.get(v, oct(v))
    return repr(v)


def _link_groups(tree: dict[bytes, Entry], by_identity: bool) -> dict[bytes, frozenset]:
    groups: dict[object, list[bytes]] = {}
    for path, e in tree.items():
        if e.kind == stat.S_IFREG:
            groups.setdefault(id(e) if by_identity else e.group, []).append(path)
    return {p: frozenset(ps) for ps in groups.values() if len(ps) > 1 for p in ps}


def compare(orig: dict[bytes, Entry], conv: dict[bytes, Entry]) -> list[str]:
    diffs = []
    show = lambda p: "/" + p.decode("utf-8", "backslashreplace")
    for p in sorted(orig.keys() - conv.keys()):
        diffs.append(f"{show(p)}: missing in the converted image")
    for p in sorted(conv.keys() - orig.keys()):
        diffs.append(f"{show(p)}: only in the converted image")
    for p in sorted(orig.keys() & conv.keys()):
        a, b = orig[p], conv[p]
        attrs = ("kind",) if a.implicit else ATTRS
        for attr in attrs:
            va, vb = getattr(a, attr), getattr(b, attr)
            if va != vb:
                diffs.append(f"{show(p)}: {attr} {_fmt(attr, va)} in the original, {_fmt(attr, vb)} converted")
    la, lb = _link_groups(orig, True), _link_groups(conv, False)
    for p in sorted(la.keys() | lb.keys()):
        ga, gb = la.get(p, frozenset([p])), lb.get(p, frozenset([p]))
        if ga != gb:
            diffs.append(f"{show(p)}: hardlinked with {sorted(map(show, ga - {p}))} in the original, "
                         f"{sorted(map(show, gb - {p}))} converted")
    return diffs


def check_images(original: Location, converted: Location, platform: str | None,
                 registry_opts: dict[str, Any], workdir: Path | None = None) -> tuple[list[str], dict]:
    """(differences, stats). Raises BadInput if either image is malformed or a chunk fails to verify."""
    orig = open_image(original, platform, **registry_opts)
    try:
        conv = open_image(converted, platform, **registry_opts)
        try:
            if workdir is not None:
                workdir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="imgconv-check-", dir=workdir))
            try:
                layers = load_layers(conv)
                view = merged_view(layers)
                reader = ChunkReader(conv, work)
                with ThreadPoolExecutor(max_workers=2) as pool:
                    f_orig = pool.submit(merged_rootfs, orig)
                    f_conv = pool.submit(converted_rootfs, view, reader)
                    tree_c = f_conv.result()
                    tree_o = f_orig.result()
                verified = reader.verify_all(layers)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            conv.close()
    finally:
        orig.close()
    diffs = compare(tree_o, tree_c)
    return diffs, {"paths": len(tree_o), "chunks_verified": verified,
                   "bytes": sum(e.size for e in tree_o.values() if e.kind == stat.S_IFREG)}
