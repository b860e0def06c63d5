"""Warm sequential reads: cached chunks pushed into the kernel's page cache of the file.

Why: a FUSE READ is answered by ``fuse_reply_buf``, which pyfuse3 calls with the GIL
held, and the kernel asks for at most 1 MiB per READ. For a sequential reader of cached
chunks the event loop thread then spends most of its time copying replies into the
kernel while the threads loading chunks from disk wait for the GIL (warm reads from disk
stalled at ~1 GB/s, 0.57-0.71x the local disk). ``pyfuse3.notify_store`` (the
FUSE_NOTIFY_STORE message) releases the GIL while the kernel copies the bytes into the
FUSE file's page cache, so a worker thread can read a chunk file (O_DIRECT, no GIL),
check its trailer and push it, all off the event loop; the kernel then finds those pages
cached and sends no READ for them (the file is opened with ``keep_cache``, so they stay).

Safety: only bytes that passed the cache entry's trailer check (their sha256 was checked
when fetched) are pushed, each to its own file offset as the bootstrap maps it, and never
past the file's size (a store beyond EOF would extend the kernel's idea of the file).
A push racing a READ of the same range is a harmless duplicate: same bytes. Pushes go to
the session of this process (pyfuse3's), which after a takeover is the live one; the
worker threads end before the session is closed (trio waits for them). A kernel or
session that refuses the message (ENOSYS, EINVAL without a session) switches pushing
off: reads are then served the ordinary way.

Deadlock to avoid: a READ holds its pages locked until it is answered, and a push to
those pages waits for that lock. So no read ever waits for a push to finish.

Lending: a sequential reader catches up with the pushes (it reads pushed pages at
page-cache speed), and the kernel then sends READs for the chunks being pushed; read from
the chunk files again, those cost a second disk read (measured: 1.26 GB off the disk for
a 1 GiB warm read, the disk being what bounds it). So each chunk a push is loading is
lent out (``borrow``): a READ waits for that load only, never for the store into the
page cache (a load waits for no page lock: no deadlock), and copies the verified bytes
from the pushing thread's buffer. The buffer is reused only after the loan is closed,
under the loan's lock, so a copy never sees the next chunk's bytes.
"""
from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from fusefs.plan import ChunkRef
from fusefs.store import ChunkStore

log = logging.getLogger(__name__)

#: errnos after which pushing is switched off for good (the kernel or session cannot)
_FATAL = {errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ENODEV}

Notify = Callable[[int, int, Any], None]
#: How long a READ waits for a chunk a push is loading before reading it itself (a
#: load is one disk read of a chunk file: milliseconds; the bound is a safety net)
LOAN_WAIT = 5.0


class _Loan:
    """One chunk a push is loading: its verified bytes while the push holds them."""

    __slots__ = ("body", "loaded", "lock")

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.lock = threading.Lock()
        self.body: memoryview | None = None


class KernelPush:
    """Pushes verified chunk bytes of one file into the kernel page cache (thread-safe)."""

    def __init__(self, store: ChunkStore, notify: Notify,
                 on_push: Callable[[int], None] | None = None,
                 on_failure: Callable[[], None] | None = None,
                 on_lend: Callable[[int], None] | None = None) -> None:
        self.store = store
        self._notify = notify
        self._on_push = on_push
        self._on_failure = on_failure
        self._on_lend = on_lend
        self.enabled = True
        self._lock = threading.Lock()
        self.pushed_bytes = 0
        self.pushed_chunks = 0
        self.failures = 0
        self.lent_bytes = 0
        self._loans: dict[bytes, _Loan] = {}

    def borrow(self, digest: bytes, offset: int, length: int, wait: bool) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of a chunk a push is loading (after its trailer
        check), or None: not being pushed, not loaded yet and ``wait`` false, or gone bad.
        ``wait`` blocks the calling thread until the load ends (never on the event loop)."""
        loan = self._loans.get(digest)
        if loan is None:
            return None
        if wait:
            loan.loaded.wait(LOAN_WAIT)
        with loan.lock:
            body = loan.body
            if body is None or offset + length > len(body):
                return None
            data = bytes(body[offset:offset + length])
        with self._lock:
            self.lent_bytes += length
        if self._on_lend is not None:
            self._on_lend(length)
        return data

    def push(self, ino: int, parts: list[tuple[ChunkRef, Any]], file_size: int) -> int:
        """Worker thread: push the segments ``parts`` of inode ``ino``; stops at the first
        chunk not in the store or refused by the kernel. Returns the bytes pushed."""
        done = 0
        i, n = 0, len(parts)
        while i < n and self.enabled:
            ref = parts[i][0]
            j = i + 1
            while j < n and parts[j][0].info.digest == ref.info.digest:
                j += 1
            segs = [seg for _, seg in parts[i:j]]
            send = partial(self._send, ino, segs, file_size, ref.info.uncomp_size)
            sent = self._lend_while(ref.info.digest, send)
            if not sent:        # a miss, a bad entry, or refused: the reads take it from here
                break
            done += sent
            i = j
        return done

    def _lend_while(self, digest: bytes, send: Callable[[memoryview], int]) -> int | None:
        """``store.load_with(digest, send)`` with the chunk lent to READs meanwhile."""
        loan = _Loan()
        with self._lock:
            own = self._loans.setdefault(digest, loan) is loan    # else another push lends it
        if not own:
            return self.store.load_with(digest, send)

        def lent(body: memoryview) -> int:
            with loan.lock:
                loan.body = body
            loan.loaded.set()
            try:
                return send(body)
            finally:
                with loan.lock:     # the buffer is reused after this: no copy may see it
                    loan.body = None
        try:
            return self.store.load_with(digest, lent)
        finally:
            loan.loaded.set()
            with self._lock:
                del self._loans[digest]

    def _send(self, ino: int, segs: list[Any], file_size: int, size: int, body: memoryview) -> int:
        if len(body) != size:
            return 0
        sent = 0
        for seg in segs:
            length = min(seg.length, file_size - seg.file_offset)
            if length <= 0:
                continue
            start = seg.offset_in_chunk
            try:
                with body[start:start + length] as piece:
                    self._notify(ino, seg.file_offset, piece)
            except OSError as exc:
                self._failed(ino, exc)
                return 0
            sent += length
        with self._lock:
            self.pushed_bytes += sent
            self.pushed_chunks += 1
        if self._on_push is not None:
            self._on_push(sent)
        return sent

    def _failed(self, ino: int, exc: OSError) -> None:
        with self._lock:
            self.failures += 1
        if self._on_failure is not None:
            self._on_failure()
        if exc.errno in _FATAL:
            if self.enabled:
                log.info("pushing into the kernel page cache is not possible (%s): warm reads "
                         "are served by READ replies", exc)
            self.enabled = False
        elif exc.errno != errno.ENOENT:      # ENOENT: the kernel forgot the inode (no reader)
            log.warning("pushing inode %d into the kernel page cache failed: %s", ino, exc)
