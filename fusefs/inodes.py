"""Stable inode numbers across daemon restarts: the kernel's numbers, journaled.

A merged view hands out inode numbers in discovery order, so a new daemon numbers the tree
differently from the one that died; but the kernel keeps the old numbers (dentries, open
files) and asks about them after a takeover. ``StableView`` wraps a view (Bootstrap or
MergedView, same read API) and speaks the kernel's numbers:

- every (parent, name) -> number the kernel learns (lookup, readdir) is appended to a
  journal file, one write per new name, before the reply leaves (a kill -9 loses nothing
  the kernel could ask about);
- a new daemon loads the journal and maps a kernel number to its own view lazily, by
  looking the journaled name up under the (recursively mapped) parent;
- numbers of a fresh daemon are the view's own (identity); after a takeover a node the
  kernel never saw gets the view's number if the journal does not use it, else a new one.

Hardlinks: every name is journaled, so all names of a file keep the kernel's one number.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

ROOT = 1


class StableView:
    """The view's read API with kernel inode numbers; ``journal`` is the file path."""

    def __init__(self, view: Any, journal: str, *, adopt: bool) -> None:
        self.view = view
        self._lock = threading.RLock()
        self._names: dict[tuple[int, bytes], int] = {}   # (kernel parent, name) -> kernel ino
        self._where: dict[int, tuple[int, bytes]] = {}   # kernel ino -> (kernel parent, name)
        self._k2v: dict[int, int] = {ROOT: view.root}
        self._v2k: dict[int, int] = {view.root: ROOT}
        if adopt and os.path.exists(journal):
            with open(journal, "rb") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) != 3:
                        continue   # a torn last line of a killed daemon
                    k, p, name = int(parts[0]), int(parts[1]), bytes.fromhex(parts[2].decode())
                    self._names[(p, name)] = k
                    self._where.setdefault(k, (p, name))
            self._fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self._fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                               0o600)
        self._next = max([ROOT, *self._where]) + 1

    def close(self) -> None:
        os.close(self._fd)

    # -- mapping --------------------------------------------------------------------------

    def resolve(self, k: int) -> int:
        """Kernel number -> view number (KeyError: the kernel names a node we never gave out)."""
        with self._lock:
            v = self._k2v.get(k)
            if v is not None:
                return v
            p, name = self._where[k]
            v = self.view.lookup(self.resolve(p), name)
            if v is None:
                raise KeyError(k)
            self._k2v[k] = v
            self._v2k.setdefault(v, k)
            return v

    def _kernel(self, pk: int, name: bytes, v: int) -> int:
        with self._lock:
            k = self._names.get((pk, name))
            if k is None:
                k = self._v2k.get(v)
                if k is None:
                    free = v not in self._k2v and v not in self._where
                    k = v if free else self._fresh()
                os.write(self._fd, b"%d %d %s\n" % (k, pk, name.hex().encode()))
                self._names[(pk, name)] = k
                self._where.setdefault(k, (pk, name))
            if k not in self._k2v:
                self._k2v[k] = v
            self._v2k.setdefault(v, k)
            self._next = max(self._next, k + 1)
            return k

    def _fresh(self) -> int:
        k = self._next
        self._next += 1
        return k

    # -- the view API ---------------------------------------------------------------------

    @property
    def root(self) -> int:
        return ROOT

    def getattr(self, k: int) -> Any:
        node = self.view.getattr(self.resolve(k))
        return node if node is None else node._replace(ino=k)

    def lookup(self, pk: int, name: bytes) -> int | None:
        v = self.view.lookup(self.resolve(pk), name)
        return None if v is None else self._kernel(pk, name, v)

    def readdir(self, pk: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        for index, name, v in self.view.readdir(self.resolve(pk), start):
            yield index, name, self._kernel(pk, name, v)

    def readlink(self, k: int) -> bytes:
        return self.view.readlink(self.resolve(k))

    def xattrs(self, k: int) -> dict[bytes, bytes]:
        return self.view.xattrs(self.resolve(k))

    def segments(self, k: int, offset: int, length: int) -> Any:
        return self.view.segments(self.resolve(k), offset, length)

    def __getattr__(self, name: str) -> Any:   # inode_count, file_count, ...
        return getattr(self.view, name)
