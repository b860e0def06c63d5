"""Snapshot metadata in SQLite, with containerd's metastore semantics.

Why SQLite: every change (create, commit, remove, update) is one transaction, so a
crash at any point leaves either the old or the new state (WAL + synchronous=FULL).
Directories on disk are created before the row that names them and removed after
it is deleted; `Cleanup` removes the directories no row names any more, so a crash
between the two steps leaves at most garbage that the next Cleanup frees.

Errors are typed (`NotFound`, `AlreadyExists`, `FailedPrecondition`,
`InvalidArgument`); the gRPC edge maps them to status codes in one table.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

VIEW, ACTIVE, COMMITTED = 1, 2, 3          # the values of containerd's Kind enum
KIND_NAMES = {VIEW: "view", ACTIVE: "active", COMMITTED: "committed"}


class SnapshotError(Exception):
    """Base of the store's errors; the message is what containerd's client shows."""


class NotFound(SnapshotError):
    pass


class AlreadyExists(SnapshotError):
    pass


class FailedPrecondition(SnapshotError):
    pass


class InvalidArgument(SnapshotError):
    pass


@dataclass
class Snapshot:
    """One row: `id` names the snapshot's directory, `remote` its imgfs backing (or None)."""
    id: int
    key: str
    parent: str
    kind: int
    labels: dict[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0
    size: int = 0
    inodes: int = 0
    remote: dict | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  parent TEXT NOT NULL DEFAULT '',
  kind INTEGER NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  created_ns INTEGER NOT NULL,
  updated_ns INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  inodes INTEGER NOT NULL DEFAULT 0,
  remote TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
CREATE TABLE IF NOT EXISTS daemons (
  image TEXT PRIMARY KEY,
  mountpoint TEXT NOT NULL,
  pid INTEGER NOT NULL DEFAULT 0,
  spec TEXT NOT NULL DEFAULT '{}'
);
"""

_COLS = "id, key, parent, kind, labels, created_ns, updated_ns, size, inodes, remote"


def _row(r: tuple) -> Snapshot:
    return Snapshot(id=r[0], key=r[1], parent=r[2], kind=r[3], labels=json.loads(r[4]),
                    created_ns=r[5], updated_ns=r[6], size=r[7], inodes=r[8],
                    remote=json.loads(r[9]) if r[9] else None)


class Store:
    """The metadata database. Thread-safe: one connection guarded by a lock (gRPC workers)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions -------------------------------------------------------------
    def tx(self) -> _Tx:
        """`with store.tx() as c:` runs the block in one IMMEDIATE transaction."""
        return _Tx(self)

    # -- queries ------------------------------------------------------------------
    def get(self, key: str) -> Snapshot:
        with self._lock:
            r = self._db.execute(f"SELECT {_COLS} FROM snapshots WHERE key=?", (key,)).fetchone()
        if r is None:
            raise NotFound(f"snapshot {key!r} does not exist: not found")
        return _row(r)

    def find(self, key: str) -> Snapshot | None:
        try:
            return self.get(key)
        except NotFound:
            return None

    def all(self) -> list[Snapshot]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM snapshots ORDER BY id").fetchall()
        return [_row(r) for r in rows]

    def chain(self, key: str) -> list[Snapshot]:
        """The parents of `key`, nearest first (not including `key` itself)."""
        out: list[Snapshot] = []
        parent = self.get(key).parent
        while parent:
            snap = self.get(parent)
            out.append(snap)
            parent = snap.parent
        return out

    def has_children(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM snapshots WHERE parent=? LIMIT 1",
                                    (key,)).fetchone() is not None

    # -- changes ------------------------------------------------------------------
    def create(self, kind: int, key: str, parent: str, labels: dict[str, str]) -> Snapshot:
        """Adds an active or view snapshot; checks containerd's preconditions."""
        if kind not in (ACTIVE, VIEW):
            raise InvalidArgument(f"snapshot type {kind} invalid; only snapshots of type Active or "
                                  "View can be created: invalid argument")
        if not key:
            raise InvalidArgument("snapshot key must not be empty: invalid argument")
        now = time.time_ns()
        with self.tx() as c:
            _check_new(c, key, parent)
            c.execute("INSERT INTO snapshots(key, parent, kind, labels, created_ns, updated_ns) "
                      "VALUES(?,?,?,?,?,?)", (key, parent, kind, json.dumps(labels), now, now))
        return self.get(key)

    def add_committed(self, key: str, parent: str, labels: dict[str, str], remote: dict,
                      size: int = 0) -> Snapshot:
        """Records a remote (imgfs) layer as committed in one step (skip-pull)."""
        now = time.time_ns()
        with self.tx() as c:
            _check_new(c, key, parent)
            c.execute("INSERT INTO snapshots(key, parent, kind, labels, created_ns, updated_ns, size, "
                      "remote) VALUES(?,?,?,?,?,?,?,?)",
                      (key, parent, COMMITTED, json.dumps(labels), now, now, size, json.dumps(remote)))
        return self.get(key)

    def commit(self, name: str, key: str, labels: dict[str, str], size: int, inodes: int) -> Snapshot:
        """Turns active `key` into committed `name`, keeping its id (and so its directory)."""
        now = time.time_ns()
        with self.tx() as c:
            r = c.execute("SELECT kind FROM snapshots WHERE key=?", (key,)).fetchone()
            if r is None:
                raise NotFound(f"snapshot {key!r} does not exist: not found")
            if r[0] != ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is not active (it is "
                                         f"{KIND_NAMES.get(r[0])}): failed precondition")
            if c.execute("SELECT 1 FROM snapshots WHERE key=?", (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name!r}: already exists")
            c.execute("UPDATE snapshots SET key=?, kind=?, labels=?, created_ns=?, updated_ns=?, "
                      "size=?, inodes=? WHERE key=?",
                      (name, COMMITTED, json.dumps(labels), now, now, size, inodes, key))
        return self.get(name)

    def remove(self, key: str) -> Snapshot:
        """Deletes the row of `key`; refuses while children exist."""
        with self.tx() as c:
            r = c.execute(f"SELECT {_COLS} FROM snapshots WHERE key=?", (key,)).fetchone()
            if r is None:
                raise NotFound(f"snapshot {key!r} does not exist: not found")
            if c.execute("SELECT 1 FROM snapshots WHERE parent=? LIMIT 1", (key,)).fetchone():
                raise FailedPrecondition(f"cannot remove snapshot {key!r} with child: "
                                         "failed precondition")
            c.execute("DELETE FROM snapshots WHERE key=?", (key,))
        return _row(r)

    def set_labels(self, key: str, labels: dict[str, str]) -> Snapshot:
        with self.tx() as c:
            n = c.execute("UPDATE snapshots SET labels=?, updated_ns=? WHERE key=?",
                          (json.dumps(labels), time.time_ns(), key)).rowcount
            if n == 0:
                raise NotFound(f"snapshot {key!r} does not exist: not found")
        return self.get(key)

    def set_remote(self, key: str, remote: dict) -> None:
        with self.tx() as c:
            c.execute("UPDATE snapshots SET remote=? WHERE key=?", (json.dumps(remote), key))

    # -- daemons (one fusefs mount per image) ------------------------------------------
    def daemons(self) -> list[tuple[str, str, int, dict]]:
        with self._lock:
            rows = self._db.execute("SELECT image, mountpoint, pid, spec FROM daemons").fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def put_daemon(self, image: str, mountpoint: str, pid: int, spec: dict) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO daemons(image, mountpoint, pid, spec) VALUES(?,?,?,?)",
                      (image, mountpoint, pid, json.dumps(spec)))

    def drop_daemon(self, image: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM daemons WHERE image=?", (image,))


class _Tx:
    def __init__(self, store: Store) -> None:
        self._s = store

    def __enter__(self) -> sqlite3.Connection:
        self._s._lock.acquire()
        try:
            self._s._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._s._lock.release()
            raise
        return self._s._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._s._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._s._lock.release()


def _check_new(c: sqlite3.Connection, key: str, parent: str) -> None:
    """containerd's rules for a new snapshot: the parent exists and is committed, the key is free."""
    if parent:
        p = c.execute("SELECT kind FROM snapshots WHERE key=?", (parent,)).fetchone()
        if p is None:
            raise NotFound(f"parent snapshot {parent!r} does not exist: not found")
        if p[0] != COMMITTED:
            raise FailedPrecondition(f"parent {parent!r} is not committed snapshot: failed precondition")
    if c.execute("SELECT 1 FROM snapshots WHERE key=?", (key,)).fetchone():
        raise AlreadyExists(f"snapshot {key!r}: already exists")
