"""`imgconv unpack IMAGE DIR`: materialise the merged rootfs of an imgfs image, without FUSE.

Safety: every entry is created relative to an O_DIRECTORY|O_NOFOLLOW file
descriptor of its parent, which this process created itself inside a DIR
that was empty, so no name can resolve through a symlink out of DIR; names
are checked (no "/", "..", NUL) in imgview.walk's rules; regular files are
opened O_CREAT|O_EXCL|O_NOFOLLOW. Symlink targets are written verbatim and
never followed.
Attributes are applied after content (chown before chmod, since chown
clears set-id bits; directory mode and mtime after their children, or
creating the children would undo them). Runs of zero bytes become holes, so a
4 GiB file of zeros costs no disk. Device nodes need root; without it they
are skipped and counted. On failure the partly written DIR is removed.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from converter.errors import BadInput, IOFailure, UsageError
from converter.image import open_image
from converter.imgview import ChunkReader, load_layers, merged_view
from converter.location import Location

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Unpacker:
    def __init__(self, view: Any, reader: ChunkReader, rootfd: int):
        self.view = view
        self.reader = reader
        self.rootfd = rootfd
        self.root = os.geteuid() == 0
        self.first_path: dict[int, bytes] = {}      # ino -> first path (hardlinks)
        self._zero = b""
        self.stats = {"paths": 0, "bytes": 0, "hardlinks": 0, "skipped_devices": 0}

    def run(self, root_ino: int) -> None:
        stack = [(self.rootfd, b"", iter(list(self.view.readdir(root_ino))), self.view.getattr(root_ino),
                  root_ino)]
        try:
            while stack:
                dfd, dpath, entries, dattr, dino = stack[-1]
                item = next(entries, None)
                if item is None:
                    stack.pop()
                    if dfd != self.rootfd or not _implicit(self.view, dino):
                        self._attrs_fd(dfd, dattr, dino)
                    if dfd != self.rootfd:
                        os.close(dfd)
                    continue
                _idx, name, ino = item
                if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                    raise BadInput(f"bootstrap: bad file name {name!r}")
                path = dpath + b"/" + name if dpath else name
                attr = self.view.getattr(ino)
                self.stats["paths"] += 1
                if stat.S_ISDIR(attr.mode):
                    os.mkdir(name, 0o700, dir_fd=dfd)
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                    stack.append((cfd, path, iter(list(self.view.readdir(ino))), attr, ino))
                else:
                    self._non_dir(dfd, name, path, ino, attr)
        finally:
            for dfd, *_ in stack:
                if dfd != self.rootfd:
                    os.close(dfd)

    def _non_dir(self, dfd: int, name: bytes, path: bytes, ino: int, a: Any) -> None:
        first = self.first_path.get(ino)
        if first is not None:
            os.link(first, name, src_dir_fd=self.rootfd, dst_dir_fd=dfd, follow_symlinks=False)
            self.stats["hardlinks"] += 1
            return
        self.first_path[ino] = path
        kind = stat.S_IFMT(a.mode)
        if kind == stat.S_IFREG:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dfd)
            try:
                self._write(fd, ino, a.size)
                self._attrs_fd(fd, a, ino)
            finally:
                os.close(fd)
            return
        if kind == stat.S_IFLNK:
            os.symlink(self.view.readlink(ino), name, dir_fd=dfd)
        elif kind == stat.S_IFIFO:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            if not self.root:
                self.stats["skipped_devices"] += 1
                del self.first_path[ino]
                return
            os.mknod(name, kind | 0o600, a.rdev, dir_fd=dfd)
        else:
            raise BadInput(f"{path!r}: unsupported file type {oct(kind)}")
        self._attrs_path(dfd, name, a, ino, symlink=kind == stat.S_IFLNK)

    def _write(self, fd: int, ino: int, size: int) -> None:
        for piece in self.reader.file_pieces(self.view, ino, size):
            if piece != self._zeros(len(piece)):
                _write_all(fd, piece)
            else:
                os.lseek(fd, len(piece), os.SEEK_CUR)       # a hole
            self.stats["bytes"] += len(piece)
        os.ftruncate(fd, size)

    def _zeros(self, n: int) -> bytes:
        """n zero bytes, kept for the last n asked (pieces are mostly whole chunks): a memcmp, not a scan."""
        if len(self._zero) != n:
            self._zero = bytes(n)
        return self._zero

    def _xattrs(self, target: Any, ino: int, follow: bool = True) -> None:
        for k, v in sorted(self.view.xattrs(ino).items()):
            try:
                os.setxattr(target, k, v, follow_symlinks=follow)
            except OSError as e:
                if not self.root and e.errno in (errno.EPERM, errno.ENOTSUP) and not k.startswith(b"user."):
                    continue            # trusted.* / security.* need root
                raise

    def _attrs_fd(self, fd: int, a: Any, ino: int) -> None:
        if self.root:
            os.fchown(fd, a.uid, a.gid)
        self._xattrs(fd, ino)
        os.fchmod(fd, stat.S_IMODE(a.mode))
        os.utime(fd, ns=(a.mtime_ns, a.mtime_ns))

    def _attrs_path(self, dfd: int, name: bytes, a: Any, ino: int, symlink: bool) -> None:
        if self.root:
            os.chown(name, a.uid, a.gid, dir_fd=dfd, follow_symlinks=False)
        # setxattr has no dir_fd: go through the parent's /proc fd link, never following `name`
        proc = os.fsencode(f"/proc/self/fd/{dfd}/") + name
        if self.view.xattrs(ino):
            self._xattrs(proc, ino, follow=False)
        if not symlink:
            os.chmod(name, stat.S_IMODE(a.mode), dir_fd=dfd, follow_symlinks=True)
        os.utime(name, ns=(a.mtime_ns, a.mtime_ns), dir_fd=dfd, follow_symlinks=False)


def _implicit(view: Any, ino: int) -> bool:
    """A directory no layer recorded (a parent the converter invented): leave DIR's own attributes."""
    from imgformat.constants import FLAG_IMPLICIT

    layer, lino = view.source(ino)
    return bool(view.layers[layer].getattr(lino).flags & FLAG_IMPLICIT)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unpack_image(location: Location, dest: Path, platform: str | None, registry_opts: dict[str, Any],
                 workdir: Path | None = None) -> dict:
    """Unpack into `dest`, which must not exist or be an empty directory. Returns counts."""
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty directory")
    img = open_image(location, platform, **registry_opts)
    try:
        layers = load_layers(img)
        view = merged_view(layers)
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="imgconv-unpack-", dir=workdir))
        dest.mkdir(parents=True, exist_ok=True)
        rootfd = os.open(dest, _DIR_FLAGS)
        try:
            unpacker = _Unpacker(view, ChunkReader(img, work), rootfd)
            unpacker.run(view.root)
        except BaseException as exc:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            if isinstance(exc, OSError):
                raise IOFailure(f"unpacking into {dest}: {exc}") from None
            raise
        finally:
            os.close(rootfd)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        img.close()
    return unpacker.stats
