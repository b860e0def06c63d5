"""Writing and reading chunk cache files around the page cache (O_DIRECT), with fallbacks.

Why: a cold read writes every fetched chunk to the store. A buffered ``write`` copies it
into page-cache pages the kernel has to allocate first; on the VMs imgfs is benchmarked
on (memory the host backs on first touch, free pages handed back to it), that copy cost
~2 CPU-seconds per GiB: 44% of the daemon's CPU in a cold 1 GiB read, measured with
``perf`` (``copy_folio_from_iter_atomic`` under ``ext4_buffered_write_iter``). An
O_DIRECT write hands the user buffer to the disk instead (DMA, no page cache): ~0.1
CPU-s/GiB. The cold reader does not need the file in the page cache: the read waiting
for a chunk gets its bytes in memory (``fusefs.fresh``).

O_DIRECT wants the buffer address, file offset and length aligned to the device's
block size. The chunk bytes (plus trailer) are copied into a page-aligned buffer owned
by the writing thread (reused: no fresh pages per chunk), the aligned head is written
direct, and the short tail (< ALIGN bytes) with O_DIRECT cleared on the same fd. The
file format is unchanged (bytes + trailer). Where O_DIRECT is refused (tmpfs, some
FUSE or network filesystems: EINVAL at open or at the write) the file is written
buffered, and ``ChunkWriter`` stops trying for that store.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

#: Alignment of direct writes: a page satisfies every Linux block device and filesystem.
ALIGN = 4096
#: Chunks smaller than this are written buffered: little to save, and small files are
#: the ones programs read again soon (the page cache then has them).
DIRECT_MIN = 64 << 10

_O_DIRECT = getattr(os, "O_DIRECT", 0)
T = TypeVar("T")


class _AlignedBuffers:
    """O_DIRECT on (where the OS has it) and one page-aligned buffer per thread, reused, grown
    as needed: direct I/O wants aligned memory, and fresh pages per chunk cost more than the I/O."""

    def __init__(self, direct: bool = True) -> None:
        self.direct = direct and _O_DIRECT != 0
        self._local = threading.local()

    def _buffer(self, size: int) -> mmap.mmap:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            if buf is not None:
                buf.close()
            buf = self._local.buf = mmap.mmap(-1, -(-size // ALIGN) * ALIGN)
        return buf


class ChunkWriter(_AlignedBuffers):
    """Writes whole chunk files; thread-safe (each thread has its own aligned buffer)."""

    def write(self, path: str, data: bytes | memoryview, trailer: bytes) -> None:
        """Write ``path`` (created or truncated) holding ``data`` + ``trailer``."""
        total = len(data) + len(trailer)
        if self.direct and total >= DIRECT_MIN:
            try:
                self._write_direct(path, data, trailer, total)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
                log.info("O_DIRECT refused for %s (%s): chunk files are written buffered", path, exc)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data, 0)
            _write_all(fd, trailer, len(data))
        finally:
            os.close(fd)

    def _write_direct(self, path: str, data: bytes | memoryview, trailer: bytes, total: int) -> None:
        buf = self._buffer(total)
        view = memoryview(buf)
        try:
            view[:len(data)] = data
            view[len(data):total] = trailer
            head = total - total % ALIGN
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o644)
            try:
                _write_all(fd, view[:head], 0)
                if head < total:
                    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
                    _write_all(fd, view[head:total], head)
            finally:
                os.close(fd)
        finally:
            view.release()


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite all of ``data`` at ``offset`` (a direct write may be short: continue)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        offset += n


class ChunkLoader(_AlignedBuffers):
    """Reads whole chunk files with O_DIRECT into a per-thread aligned buffer.

    Why: warm sequential reads used to pull chunk files into the page cache (posix_fadvise
    WILLNEED) and ``pread`` them on the event loop. On the benchmark VM, page-cache pages
    the guest has not touched lately are expensive on first touch, and after a cold read
    written O_DIRECT all of them are: a warm read from disk right after a cold one spent
    1.3-3.3 CPU-s/GiB in the daemon (the copy out of those pages) and ran at 310-750
    MB/s. A direct read lands in a buffer the thread reuses (no new pages, and no second
    copy of the data in the page cache next to the FUSE file's own), in a worker thread;
    the caller checks the bytes and copies them out: 1.0 CPU-s/GiB, 980-990 MB/s in the
    same sequence. Where O_DIRECT is refused (EINVAL) the file is read plainly.
    """

    def load(self, path: str, use: Callable[[memoryview], T]) -> T:
        """``use(whole file content)``; the view is valid only during the call (the
        buffer is reused). FileNotFoundError if there is no such file."""
        if self.direct:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
            else:
                try:
                    size = os.fstat(fd).st_size
                    buf = self._buffer(size + ALIGN)
                    try:
                        n = os.preadv(fd, [buf], 0)
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        self.direct = False
                        n = -1
                finally:
                    os.close(fd)
                if n >= 0:
                    with memoryview(buf) as view, view[:n] as content:
                        return use(content)
        with open(path, "rb", buffering=0) as f:
            raw = f.read()
        return use(memoryview(raw))
