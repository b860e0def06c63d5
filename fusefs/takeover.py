"""Daemon restart without breaking readers: serve a FUSE connection another daemon started.

The mechanism (used when ``imgfs mount --fd-store SOCK``):

1. A fresh mount is made with ``fusermount3`` over ``_FUSE_COMMFD`` (libfuse's own way), so
   the daemon holds the /dev/fuse fd itself; it reads the kernel's FUSE_INIT request from
   it and keeps those bytes. A restarted daemon instead gets fd + INIT from the fd store
   (``fusefs.fdstore``) when the mountpoint is still a FUSE mount.
2. libfuse has no "attach to a running connection": its session must see an INIT first.
   So pyfuse3 is initialised on ``/dev/fd/L`` (libfuse >= 3.3 takes that as "use fd L,
   do not mount"), where L is one end of a SOCK_SEQPACKET socketpair (one message per
   read/write, like /dev/fuse). We write the INIT into the other end; libfuse answers it
   and so negotiates exactly what the kernel negotiated (same INIT in, same options).
   A fresh mount forwards that reply to the kernel; a takeover drops it (the kernel got
   its reply long ago).
3. ``dup2(real_fd, L)``: from then on libfuse reads and writes /dev/fuse. trio's epoll
   registration of L died with the socket, so one ``wait_writable(L)`` re-arms it
   (/dev/fuse is always writable; trio then re-registers the parked reader).
4. A takeover sends FUSE_NOTIFY_RESEND (Linux >= 6.9): requests the dead daemon had read
   but not answered go back to the queue and are served by us; without it their callers
   would wait forever.

Requests are stateless here (file handles are inode numbers, inode numbers come from the
bootstrap and are the same in every daemon of the same image), so a new daemon can answer
any request the old one was asked.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import struct
import subprocess
from typing import Any

import trio

from fusefs import fdstore

log = logging.getLogger(__name__)

FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
IN_HEADER = struct.Struct("<IIQQIIIHH")   # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")        # len, error, unique
READ_SIZE = (1 << 20) + (64 << 10)        # >= any request the kernel sends (max_pages 256)


class TakeoverError(RuntimeError):
    """The connection could not be started or adopted (message says which step)."""


def fusermount(mountpoint: str, options: set[str]) -> int:
    """Mount with fusermount3 and receive the /dev/fuse fd (libfuse's _FUSE_COMMFD protocol)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
            r = subprocess.run(["fusermount3", "-o", ",".join(sorted(options)), "--", mountpoint],
                               env=env, pass_fds=[theirs.fileno()], capture_output=True, text=True,
                               timeout=60, check=False)
        finally:
            theirs.close()
        if r.returncode != 0:
            raise OSError(errno.EIO, f"fusermount3 failed: {r.stderr.strip()}")
        ours.settimeout(30)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    if len(fds) != 1:
        raise OSError(errno.EIO, "fusermount3 sent no fd")
    return fds[0]


def read_init(fd: int) -> bytes:
    """The kernel's FUSE_INIT request: the first message on a fresh connection."""
    msg = os.read(fd, READ_SIZE)
    if len(msg) < IN_HEADER.size or IN_HEADER.unpack_from(msg)[1] != FUSE_INIT:
        raise TakeoverError(f"expected FUSE_INIT, got {len(msg)} bytes")
    return msg


class Connection:
    """One FUSE connection, fresh or adopted, being handed to pyfuse3 (see module doc)."""

    def __init__(self, real_fd: int, init: bytes, adopted: bool) -> None:
        self.real_fd = real_fd
        self.init = init
        self.adopted = adopted
        self.attached = False
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lib_fd = a.detach()                 # libfuse's fd; becomes /dev/fuse in attach()
        self._ours = trio.socket.from_stdlib_socket(b)
        os.write(self._ours.fileno(), init)     # queued before libfuse even looks

    @property
    def mountpoint_arg(self) -> str:
        """What to give ``pyfuse3.init`` as the mountpoint."""
        return f"/dev/fd/{self.lib_fd}"

    async def attach(self) -> None:
        """Wait for libfuse's INIT reply, then swap the real connection in (pyfuse3.main runs)."""
        with trio.fail_after(30):
            reply = await self._ours.recv(READ_SIZE)
        _, error, _ = OUT_HEADER.unpack_from(reply)
        if error != 0:
            raise TakeoverError(f"libfuse refused the INIT replay (error {error})")
        if not self.adopted:
            os.write(self.real_fd, reply)
        os.dup2(self.real_fd, self.lib_fd, inheritable=False)
        os.close(self.real_fd)
        self.real_fd = self.lib_fd
        self._ours.close()
        # the parked reader's epoll entry went with the socket: re-arm it via a writer wait
        await trio.lowlevel.wait_writable(self.lib_fd)
        if self.adopted:
            try:
                os.write(self.lib_fd, OUT_HEADER.pack(OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0))
            except OSError as exc:  # kernels before 6.9: in-flight requests of the dead daemon hang
                log.warning("FUSE_NOTIFY_RESEND failed (%s): requests the old daemon had read are lost",
                            exc)
        self.attached = True
        log.info("%s FUSE connection attached", "adopted" if self.adopted else "fresh")


def open_connection(mountpoint: str, options: set[str], store: str) -> tuple[int, bytes, bool]:
    """Adopt the connection the fd store holds for ``mountpoint``, or mount afresh (blocking:
    run it in a thread); returns (fd, INIT request, adopted) for ``Connection``."""
    mp = os.path.abspath(mountpoint)
    if fdstore.fuse_mounted(mp):
        try:
            reply, fd = fdstore.request(store, {"op": "get", "mountpoint": mp})
        except OSError as exc:
            raise TakeoverError(f"{mp} is mounted but the fd store {store} cannot be asked: {exc}") from exc
        if not reply.get("ok") or fd is None:
            raise TakeoverError(f"{mp} is already mounted and the fd store {store} holds no fd for it")
        log.info("taking over the FUSE connection of %s", mp)
        return fd, bytes.fromhex(reply["init"]), True
    fd = fusermount(mp, options)
    try:
        init = read_init(fd)
        reply, _ = fdstore.request(store, {"op": "put", "mountpoint": mp, "init": init.hex()}, fd)
        if not reply.get("ok"):
            raise TakeoverError(f"the fd store {store} refused the fd: {reply}")
    except BaseException:
        os.close(fd)
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, check=False)
        raise
    return fd, init, False


def journal_path(mountpoint: str, store: str) -> str:
    """Where the inode journal of ``mountpoint`` lives: next to the fd store's socket."""
    h = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:16]
    return f"{store}.{h}.inodes"


def stable_view(view: Any, mountpoint: str, store: str) -> Any:
    """The view in kernel inode numbers; adopts the journal iff the mount is still there."""
    from fusefs.inodes import StableView

    return StableView(view, journal_path(mountpoint, store), adopt=fdstore.fuse_mounted(mountpoint))


def release(mountpoint: str, store: str, handover: bool) -> None:
    """After pyfuse3.close(unmount=False): unmount and forget the fd, unless handing over."""
    if handover:
        log.info("leaving %s mounted for the next daemon (fd store %s)", mountpoint, store)
        return
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, check=False)
    try:
        os.unlink(journal_path(mountpoint, store))
    except FileNotFoundError:
        pass
    try:
        fdstore.request(store, {"op": "drop", "mountpoint": os.path.abspath(mountpoint)})
    except OSError as exc:
        log.warning("cannot tell the fd store %s to drop %s: %s", store, mountpoint, exc)
