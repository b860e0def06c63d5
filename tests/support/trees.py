"""Directory-tree helpers for test images: walk, normalise, diff, describe.

`describe_tree` is the oracle tests use to compare a rootfs with what a FUSE mount,
`imgconv unpack` or a layer applier produced: every path with its type, mode,
owner, size, mtime, link target, device number, xattrs and content digest.
"""
from __future__ import annotations

import filecmp
import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple


def walk(root: Path | str) -> list[str]:
    """Relative paths under root (root itself excluded), parents first, names sorted bytewise."""
    out: list[str] = []

    def rec(rel: str) -> None:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            out.append(path)
            if e.is_dir(follow_symlinks=False):
                rec(path)

    rec("")
    return out


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Cut mtimes to whole seconds and clamp them to epoch (atime := mtime), root included.

    Why: tar layers keep whole seconds, and files the build itself writes would
    otherwise carry the build time and differ between rebuilds.
    """
    limit = epoch * 10**9
    for rel in [*reversed(walk(root)), ""]:
        path = os.path.join(root, rel) if rel else str(root)
        mtime = os.lstat(path).st_mtime_ns
        new = min(mtime - mtime % 10**9, limit)
        os.utime(path, ns=(new, new), follow_symlinks=False)


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((n, os.getxattr(path, n, follow_symlinks=False))
                 for n in sorted(os.listxattr(path, follow_symlinks=False)))


def _meta(path: str) -> tuple:
    st = os.lstat(path)
    fmt = stat.S_IFMT(st.st_mode)
    return (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
            st.st_rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
            os.readlink(path) if fmt == stat.S_IFLNK else None,
            st.st_size if fmt == stat.S_IFREG else 0, _xattrs(path))


def tree_diff(lower: Path, upper: Path, opaque_dirs: tuple[str, ...] = ()) -> list[tuple[str, str | None]]:
    """Entries of an OCI layer that turns lower into upper, in tar order.

    Returns (name, marker) pairs: marker None means "the path name of upper",
    "whiteout"/"opaque" means an empty marker file called name. Changed or new
    paths are included with all their ancestor dirs; a hardlink group is included
    whole when any member changed (no links into lower layers); a removed path is
    one whiteout at its highest removed ancestor; opaque_dirs (present in both)
    get the opaque marker and all of their upper contents.
    """
    up_paths = walk(upper)
    up_set = set(up_paths)
    low_paths = walk(lower)
    low_set = set(low_paths)
    opaque = set(opaque_dirs)

    def under_opaque(rel: str) -> bool:
        return any(rel.startswith(d + "/") for d in opaque)

    changed: set[str] = set()
    groups: dict[tuple[int, int], list[str]] = {}
    for rel in up_paths:
        u = os.path.join(upper, rel)
        st = os.lstat(u)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
        if rel in opaque or under_opaque(rel) or rel not in low_set:
            changed.add(rel)
            continue
        lo = os.path.join(lower, rel)
        mu, ml = _meta(u), _meta(lo)
        if mu != ml or (stat.S_ISREG(st.st_mode) and not filecmp.cmp(lo, u, shallow=False)):
            changed.add(rel)
    for members in groups.values():
        if changed.intersection(members):
            changed.update(members)

    whiteouts: dict[str, list[str]] = {}
    for rel in low_paths:
        parent = os.path.dirname(rel)
        if rel not in up_set and (not parent or parent in up_set) and not under_opaque(rel) \
                and rel not in opaque:
            whiteouts.setdefault(parent, []).append(os.path.basename(rel))

    include = set(changed) | {d for d in whiteouts if d}
    for rel in [*changed, *whiteouts]:
        parent = os.path.dirname(rel)
        while parent:
            include.add(parent)
            parent = os.path.dirname(parent)

    def markers(d: str) -> list[tuple[str, str | None]]:
        prefix = f"{d}/" if d else ""
        out: list[tuple[str, str | None]] = [(f"{prefix}.wh..wh..opq", "opaque")] if d in opaque else []
        return out + [(f"{prefix}.wh.{name}", "whiteout") for name in whiteouts.get(d, [])]

    entries = markers("")
    for rel in up_paths:
        if rel in include:
            entries.append((rel, None))
            entries.extend(markers(rel))
    return entries


class Entry(NamedTuple):
    """What a container can observe of one path (nlink only for non-directories)."""
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str | None
    rdev: int
    xattrs: tuple[tuple[str, bytes], ...]
    sha256: str | None
    nlink: int


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chardev",
          stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def describe_tree(root: Path | str) -> dict[str, Entry]:
    """Every path under root (root excluded) -> Entry; compare two trees with ==."""
    out: dict[str, Entry] = {}
    for rel in walk(root):
        path = os.path.join(root, rel)
        st = os.lstat(path)
        fmt = stat.S_IFMT(st.st_mode)
        out[rel] = Entry(
            kind=_KINDS[fmt], mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
            size=st.st_size if fmt in (stat.S_IFREG, stat.S_IFLNK) else 0, mtime_ns=st.st_mtime_ns,
            target=os.readlink(path) if fmt == stat.S_IFLNK else None,
            rdev=st.st_rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
            xattrs=_xattrs(path), sha256=_digest(path) if fmt == stat.S_IFREG else None,
            nlink=0 if fmt == stat.S_IFDIR else st.st_nlink)
    return out


def tree_differences(a: dict[str, Entry], b: dict[str, Entry], limit: int = 20) -> list[str]:
    """Human-readable differences between two describe_tree results (for assertion messages)."""
    out = [f"only in first: {p}" for p in sorted(a.keys() - b.keys())]
    out += [f"only in second: {p}" for p in sorted(b.keys() - a.keys())]
    for p in sorted(a.keys() & b.keys()):
        if a[p] != b[p]:
            fields = [f for f in Entry._fields if getattr(a[p], f) != getattr(b[p], f)]
            out.append(f"{p}: " + ", ".join(f"{f} {getattr(a[p], f)!r} != {getattr(b[p], f)!r}"
                                             for f in fields))
    return out[:limit]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        for rel in reversed(walk(path)):
            p = os.path.join(path, rel)
            os.rmdir(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)


def apply_layer(layer: Path, dest: Path) -> None:
    """Apply one OCI tar layer (gzip or plain) onto dest, as a runtime's unpacker does.

    An independent oracle for tests (not imgfs code): whiteouts and opaque markers
    delete from the lower layers first, then entries replace what is there
    (unlinked first, so hardlinked lower files are not written through), then
    xattrs from PAX `SCHILY.xattr.*`, and directory mtimes last.
    """
    import tarfile

    with tarfile.open(layer, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            parent, name = os.path.split(m.name.rstrip("/"))
            if name == ".wh..wh..opq":
                d = os.path.join(dest, parent)
                for child in os.listdir(d) if os.path.isdir(d) else []:
                    _remove(os.path.join(d, child))
            elif name.startswith(".wh."):
                _remove(os.path.join(dest, parent, name[len(".wh."):]))
        dirs = []
        for m in members:
            if os.path.basename(m.name.rstrip("/")).startswith(".wh."):
                continue
            target = os.path.join(dest, m.name.rstrip("/"))
            if os.path.lexists(target) and not (m.isdir() and os.path.isdir(target)
                                                and not os.path.islink(target)):
                _remove(target)
            tar.extract(m, dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
            for key, value in m.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    os.setxattr(target, key[len("SCHILY.xattr."):],
                                value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            if m.issym():                   # tarfile leaves symlink times alone
                os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
            if m.isdir():
                dirs.append(m)
        for m in dirs:
            os.utime(os.path.join(dest, m.name.rstrip("/")), (m.mtime, m.mtime))
