"""The FUSE edge: translate kernel requests to bootstrap and reader calls, errors to errno.

Translation only (s3ql's fs.py shape): metadata comes from the (merged) bootstrap view,
file bytes from ``FileReader``; both are injected, so tests call these methods with a
fake ctx and no mount. The image never changes, hence long entry/attr timeouts and
``keep_cache`` (the page cache survives between opens), and every write is EROFS.

errno mapping, the only place it happens:

    no such name / inode           ENOENT
    lookup/readdir in a non-dir    ENOTDIR
    readlink of a non-symlink      EINVAL
    missing xattr                  ENODATA (pyfuse3.ENOATTR)
    any write, create, setattr     EROFS
    fetch failed / chunk corrupt   EIO (logged by the fetcher with blob and chunk)
    malformed bootstrap record     EIO (logged here with the inode)

Inode numbers are the view's own (root is ``imgformat.constants.ROOT_INO`` == 1 ==
``pyfuse3.ROOT_INODE``); hardlinks share one inode. We keep no lookup counts: inodes
live as long as the mount, so ``forget`` has nothing to free.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3

from fusefs.accesslog import AccessLog
from fusefs.fetcher import FetchError
from fusefs.metrics import Metrics
from fusefs.push import KernelPush
from fusefs.reader import FileReader

log = logging.getLogger(__name__)

#: The image is immutable: the kernel may cache names and attributes for a day.
TIMEOUT = 86400.0
BLOCK = 4096


def _translate(fn: Callable) -> Callable:
    """Map domain errors to FUSEError at the edge; count errors by errno."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as exc:
            if exc.errno not in (errno.ENOENT, pyfuse3.ENOATTR):
                self.metrics.errors.labels(errno.errorcode.get(exc.errno, str(exc.errno))).inc()
            raise
        except FetchError:
            self.metrics.errors.labels("EIO").inc()
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[:2])
            self.metrics.errors.labels("EIO").inc()
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _erofs(name: str) -> Callable:
    async def refuse(self: Operations, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    refuse.__name__ = name
    refuse.__doc__ = "The image is read-only."
    return refuse


class Operations(pyfuse3.Operations):
    """Read-only pyfuse3 operations over a bootstrap view (Bootstrap or MergedView)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, view: Any, reader: FileReader, metrics: Metrics,
                 access_log: AccessLog | None = None) -> None:
        super().__init__()
        self.view = view
        self.reader = reader
        self.metrics = metrics
        self.access_log = access_log
        # ino -> path relative to the root, only kept for the access log
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._statfs_files = int(getattr(view, "inode_count", 0) or 0)
        if reader.push is None:
            # warm sequential reads go into the kernel page cache off the event loop
            reader.push = KernelPush(reader.store, pyfuse3.notify_store, on_push=metrics.push_bytes.inc,
                                     on_failure=metrics.push_failures.inc,
                                     on_lend=metrics.push_lent_bytes.inc)

    # -- helpers -------------------------------------------------------------------------

    def _inode(self, ino: int) -> Any:
        try:
            node = self.view.getattr(ino)
        except (KeyError, IndexError, LookupError):
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Any) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        a.st_size = node.size
        a.st_blksize = BLOCK
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_ctime_ns = a.st_mtime_ns = node.mtime_ns
        return a

    def _remember(self, parent: int, name: bytes, ino: int) -> str | None:
        if self.access_log is None:
            return None
        path = self._paths.get(ino)
        if path is None:
            base = self._paths.get(parent)
            if base is None:
                return None
            path = os.fsdecode(name) if not base else f"{base}/{os.fsdecode(name)}"
            self._paths[ino] = path
        return path

    # -- metadata ------------------------------------------------------------------------

    @_translate
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if not stat.S_ISDIR(parent.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._attrs(parent)
        ino = self.view.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = self._remember(parent_inode, name, ino)
        if path is not None:
            self.access_log.touch(path)
        return self._attrs(self._inode(ino))

    @_translate
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self._inode(inode))

    @_translate
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        node = self._inode(inode)
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.view.readlink(inode)

    @_translate
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if not stat.S_ISDIR(self._inode(inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_translate
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """Entries from offset ``start_id``; offsets are the bootstrap's stable indexes."""
        for index, name, ino in self.view.readdir(fh, start_id):
            attrs = self._attrs(self._inode(ino))
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                break
            self._remember(fh, name, ino)

    async def releasedir(self, fh: int) -> None:
        return None

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        value = self.view.xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_translate
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        return sorted(self.view.xattrs(inode))

    @_translate
    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        self._inode(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self._statfs_files
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def forget(self, inode_list: Any) -> None:
        return None

    # -- data ----------------------------------------------------------------------------

    @_translate
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    @_translate
    async def read(self, fh: int, off: int, size: int) -> bytes:
        t0 = time.perf_counter()
        node = self._inode(fh)
        try:
            data = await self.reader.read(fh, off, size, node.size)
        finally:
            self.metrics.read_latency.observe(time.perf_counter() - t0)
        self.metrics.reads.inc()
        self.metrics.read_bytes.inc(len(data))
        if self.access_log is not None:
            path = self._paths.get(fh)
            if path is not None:
                self.access_log.read(path, off, len(data))
        return data

    async def flush(self, fh: int) -> None:
        """ENOSYS: the kernel then stops sending FLUSH on this connection (fc->no_flush). A
        read-only image has nothing to flush, every close() saves a round trip, and a close()
        (also the implicit ones of a fork/exec) never waits on a daemon that is restarting."""
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        return None

    # -- writes: all refused -------------------------------------------------------------

    setattr = _erofs("setattr")
    mknod = _erofs("mknod")
    mkdir = _erofs("mkdir")
    unlink = _erofs("unlink")
    rmdir = _erofs("rmdir")
    symlink = _erofs("symlink")
    rename = _erofs("rename")
    link = _erofs("link")
    write = _erofs("write")
    create = _erofs("create")
    setxattr = _erofs("setxattr")
    removexattr = _erofs("removexattr")
