"""The snapshotter: containerd's Snapshotter operations over the store and the disk.

Plain layers behave exactly like containerd's overlayfs snapshotter: every
snapshot owns `snapshots/<id>/fs` (its upper dir, where containerd unpacks a layer)
and `snapshots/<id>/work`; an active snapshot over parents is an overlay with the
parents' dirs as lowerdir (nearest first), a single-parent view is a read-only bind
mount. Remote (imgfs) layers own no directory: their content is the image's fusefs
mount, which `remote` (snapshotter.remote.RemoteLayers) starts on demand and puts
into the lowerdir chain in their place.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from snapshotter import store as st
from snapshotter.store import Snapshot, Store

log = logging.getLogger("imgfs.snapshotter")


class Remote(Protocol):
    """What the snapshotter asks of the imgfs side (snapshotter.remote implements it)."""

    def try_prepare(self, key: str, parent: str, labels: dict[str, str]) -> dict | None:
        """Returns the remote record of a verified imgfs layer, or None to unpack it plainly."""

    def lowerdirs(self, chain: list[Snapshot]) -> list[str]:
        """The lowerdirs of `chain` (nearest first), with remote layers replaced by mounts."""

    def note_existing(self, snap: Snapshot, labels: dict[str, str]) -> None:
        """A pull met a layer that is already there (maybe the top of one more image)."""

    def release_unused(self, live: Callable[[], list[list[Snapshot]]]) -> None:
        """Stops the mounts no chain in `live()` (active/view snapshots' parents) needs any more."""

    def schedule_release(self, live: Callable[[], list[list[Snapshot]]]) -> None:
        """release_unused(live) soon, off the caller's path (containerd's GC waits on Remove)."""


class Snapshotter:
    """containerd's snapshot semantics. Methods raise store.SnapshotError subclasses."""

    def __init__(self, root: Path, store: Store, remote: Remote | None = None) -> None:
        self.root = root
        self.store = store
        self.remote = remote
        self.snapdir = root / "snapshots"
        self.snapdir.mkdir(parents=True, exist_ok=True)

    # -- paths ------------------------------------------------------------------------
    def _dir(self, snap: Snapshot) -> Path:
        return self.snapdir / str(snap.id)

    def _lowerdirs(self, chain: list[Snapshot]) -> list[str]:
        if self.remote is not None and any(s.remote for s in chain):
            return self.remote.lowerdirs(chain)
        return [str(self._dir(s) / "fs") for s in chain]

    # -- operations ---------------------------------------------------------------------
    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[dict]:
        """Active snapshot; for a layer containerd is about to unpack, maybe a remote commit.

        Skip-pull: when the labels name an imgfs layer that verifies, the layer is committed
        under the target key and AlreadyExists is raised, as containerd expects.
        """
        if self.remote is not None and key:
            target = labels.get("containerd.io/snapshot.ref", "")
            existing = self.store.find(target) if target else None
            if existing is not None:
                self.remote.note_existing(existing, labels)
                raise st.AlreadyExists(f"target snapshot {target!r}: already exists")
            record = self.remote.try_prepare(key, parent, labels) if target else None
            if record is not None:
                self.store.add_committed(target, parent, labels, record)
                log.info("remote snapshot %s committed for layer %s (skip-pull)", target,
                         record.get("layer_digest"))
                raise st.AlreadyExists(f"target snapshot {target!r}: already exists")
        return self._create(st.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[dict]:
        return self._create(st.VIEW, key, parent, labels)

    def _create(self, kind: int, key: str, parent: str, labels: dict[str, str]) -> list[dict]:
        snap = self.store.create(kind, key, parent, labels)
        d = self._dir(snap)
        try:
            return self._mounts(snap)       # makes the dirs
        except BaseException:
            # Keep the store and the disk in step: an error leaves no half-made snapshot.
            try:
                self.store.remove(key)
            finally:
                shutil.rmtree(d, ignore_errors=True)
            raise

    def mounts(self, key: str) -> list[dict]:
        snap = self.store.get(key)
        if snap.kind not in (st.ACTIVE, st.VIEW):
            raise st.FailedPrecondition(f"requested snapshot {key!r} not active or view: "
                                        "failed precondition")
        return self._mounts(snap)

    def _mounts(self, snap: Snapshot) -> list[dict]:
        d = self._dir(snap)
        # The row is written before the dirs: a crash in between must not leave a snapshot
        # whose mounts name missing dirs, so they are (re)made here, idempotently.
        (d / "fs").mkdir(parents=True, exist_ok=True)
        (d / "work").mkdir(exist_ok=True)
        chain = self.store.chain(snap.key)
        if not chain:
            opt = "ro" if snap.kind == st.VIEW else "rw"
            return [{"type": "bind", "source": str(d / "fs"), "options": [opt, "rbind"]}]
        lower = self._lowerdirs(chain)
        if snap.kind == st.VIEW and len(lower) == 1:
            return [{"type": "bind", "source": lower[0], "options": ["ro", "rbind"]}]
        if snap.kind == st.VIEW:
            return [{"type": "overlay", "source": "overlay", "options": ["lowerdir=" + ":".join(lower)]}]
        return [{"type": "overlay", "source": "overlay",
                 "options": [f"workdir={d / 'work'}", f"upperdir={d / 'fs'}",
                             "lowerdir=" + ":".join(lower)]}]

    def commit(self, name: str, key: str, labels: dict[str, str]) -> None:
        snap = self.store.get(key)
        size, inodes = (disk_usage(self._dir(snap) / "fs") if snap.kind == st.ACTIVE else (0, 0))
        self.store.commit(name, key, labels, size, inodes)

    def remove(self, key: str) -> None:
        snap = self.store.remove(key)
        shutil.rmtree(self._dir(snap), ignore_errors=True)
        self._release()

    def stat(self, key: str) -> Snapshot:
        return self.store.get(key)

    def update(self, key: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        """Field-mask semantics of containerd: "labels" replaces all, "labels.K" sets or drops K."""
        snap = self.store.get(key)
        if not paths:
            return self.store.set_labels(key, dict(labels))
        new = dict(snap.labels)
        for p in paths:
            if p == "labels":
                new = dict(labels)
            elif p.startswith("labels."):
                k = p[len("labels."):]
                if k in labels:
                    new[k] = labels[k]
                else:
                    new.pop(k, None)
            else:
                raise st.InvalidArgument(f"cannot update {p!r} field on snapshot {key!r}: "
                                         "invalid argument")
        return self.store.set_labels(key, new)

    def usage(self, key: str) -> tuple[int, int]:
        snap = self.store.get(key)
        if snap.kind == st.ACTIVE:
            return disk_usage(self._dir(snap) / "fs")
        return snap.size, snap.inodes

    def list(self) -> list[Snapshot]:
        return self.store.all()

    def cleanup(self) -> None:
        """Frees what no snapshot uses: orphan dirs (after a crash) and unused mounts."""
        ids = {str(s.id) for s in self.store.all()}
        for d in self.snapdir.iterdir():
            if d.name not in ids:
                log.info("cleanup: removing orphan snapshot dir %s", d)
                shutil.rmtree(d, ignore_errors=True)
        self._release()

    def release(self) -> None:
        """Stops the fusefs daemons no active or view snapshot needs, now (called at start)."""
        if self.remote is not None:
            self.remote.release_unused(self._live)

    def _release(self) -> None:
        if self.remote is not None:
            self.remote.schedule_release(self._live)

    def _live(self) -> list[list[Snapshot]]:
        """The parent chains of all active and view snapshots (what the mounts serve)."""
        out = []
        for s in self.store.all():
            if s.kind in (st.ACTIVE, st.VIEW):
                try:
                    out.append(self.store.chain(s.key))
                except st.NotFound:      # removed meanwhile: needs nothing
                    continue
        return out


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) of a tree, counting hardlinked inodes once, like containerd's fs.DiskUsage."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        names = [os.path.join(dirpath, n) for n in (*dirnames, *filenames)]
        if dirpath == str(path):
            names.append(dirpath)
        for p in names:
            try:
                s = os.lstat(p)
            except OSError:       # removed while we walk: not ours to count
                continue
            if (s.st_dev, s.st_ino) not in seen:
                seen.add((s.st_dev, s.st_ino))
                size += s.st_blocks * 512
    return size, len(seen)
