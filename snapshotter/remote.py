"""Remote (imgfs) layers: skip-pull on Prepare, one fusefs mount per image, supervision.

Skip-pull (snapshotter.skippull): a layer whose labels name an imgfs layer is verified by
its bootstrap alone and recorded as committed; containerd then downloads nothing.

Mounts: the image's fusefs mount (`imgfs mount docker://REPO@MANIFEST`) holds its imgfs
layers merged, whiteouts applied: all of them, or the bottom N (`--layer-count`) of an
image whose upper layers are plain (built FROM an imgfs image; containerd pulls and
unpacks those as usual, onto overlays over the mount). A chain's lowerdir is that mount
for the topmost remote layer (it stands for every layer below it too: the imgfs layers
are the bottom of the image) plus the plain snapshots above it. The image used for
a remote layer is one whose top layer it is (`tops` in its record): an image pulled
later that ends at an existing layer is added to that list.

Daemon state (image -> mountpoint, pid) is in the store, so a restarted snapshotter
adopts live daemons, and replaces dead ones at the same mountpoint. Daemons run with
`--fd-store` (snapshotter.fdkeeper): a dead or hung daemon is replaced by a new one that
takes over the live FUSE connection, so running containers see a pause, not ENOTCONN;
only when that fails (TAKEOVER_TRIES times) is the mount removed and made afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from snapshotter import daemons
from snapshotter import store as st
from snapshotter.config import Config
from snapshotter.fdkeeper import FdKeeper
from snapshotter.keychain import Keychain
from snapshotter.skippull import SkipPull, image_key
from snapshotter.store import Snapshot, Store

log = logging.getLogger("imgfs.snapshotter")

EARLY_GRACE = 120.0  # seconds a daemon started by a pull (mount_on_pull) survives unused
#: Seconds a daemon started by a pull waits for a bootstrap the pull has not verified yet
#: before fetching it itself (the start holds its image's lock: bounded, and short next to a pull)
EARLY_BOOTSTRAP_WAIT = 5.0
TAKEOVER_TRIES = 3   # new daemons tried on a live connection before it is unmounted and remade


class RemoteLayers:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.mounts_dir = cfg.root / "mounts"
        self.daemon_dir = cfg.root / "daemons"
        # _lock: the daemon table, early marks, release and supervision; a daemon's start
        # holds only its image's lock (_key_lock), so different images start side by side
        self._lock = threading.RLock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()
        self._release_again = False     # a release skipped an image busy starting: retry
        self._procs: dict[str, subprocess.Popen] = {}     # our children, by image key
        self.restarts = 0
        self.takeovers = 0     # restarts that kept the mount (and the containers' open files)
        self.fdkeeper = FdKeeper(cfg.root, cfg.imgfs_bin)
        self._release_wanted = threading.Event()
        self._live: Callable[[], list[list[Snapshot]]] | None = None
        self._early: dict[str, float] = {}    # image key -> when a pull started its daemon
        self._early_committed: set[str] = set()  # early keys whose top layer was seen committed
        self._early_starting: set[str] = set()  # image keys with an early start in flight
        self._early_lock = threading.Lock()
        self.keychain = Keychain()      # credentials of CRI pulls (snapshotter.criproxy)
        self.pull = SkipPull(cfg, store, self.mount_early, self.keychain)

    def try_prepare(self, key: str, parent: str, labels: dict[str, str]) -> dict | None:
        return self.pull.try_prepare(key, parent, labels)

    def note_existing(self, snap: Snapshot, labels: dict[str, str]) -> None:
        self.pull.note_existing(snap, labels)

    # -- mounts -------------------------------------------------------------------------
    image_key = staticmethod(image_key)

    def _image_for(self, chain: list[Snapshot]) -> tuple[int, dict] | None:
        for i, s in enumerate(chain):
            if s.remote:
                tops = s.remote.get("tops") or []
                if not tops:
                    raise st.FailedPrecondition(
                        f"remote layer {s.key!r} is the top of no image pulled here: pull the image "
                        "that ends at it: failed precondition")
                return i, tops[0]
        return None

    def lowerdirs(self, chain: list[Snapshot]) -> list[str]:
        found = self._image_for(chain)
        plain = [str(self.cfg.root / "snapshots" / str(s.id) / "fs") for s in chain]
        if found is None:
            return plain
        i, image = found
        return plain[:i] + [str(self.ensure_mount(image))]

    def _control(self, mp: str | Path) -> Path:
        return self.daemon_dir / Path(mp).name / "control.sock"

    def mountpoint(self, key: str) -> Path:
        return self.mounts_dir / hashlib.sha256(key.encode()).hexdigest()[:16]

    def _fd_store(self) -> str | None:
        """The fd store's socket, started or adopted; None (logged) when it cannot run:
        daemons then work as before, without takeover."""
        try:
            return self.fdkeeper.ensure()
        except OSError as e:
            log.error("no fd store (%s): fusefs daemons run without takeover", e)
            return None

    def _argv(self, image: dict, mp: Path, fd_store: str | None = None, why: str = "mount") -> list[str]:
        r, f = self.cfg.registry, self.cfg.fetch
        argv = [*daemons.imgfs_command(self.cfg.imgfs_bin), "mount",
                f"docker://{image['registry']}/{image['repository']}@{image['manifest']}", str(mp),
                "--cache-dir", str(self.cfg.cache), "--cache-size", str(self.cfg.cache_size)]
        if image.get("layers"):
            argv += ["--layer-count", str(image["layers"])]
        if image["registry"] in r.plain_http:
            argv.append("--plain-http")
        if image["registry"] in r.insecure:
            argv.append("--insecure")
        ddir = self.daemon_dir / mp.name
        ddir.mkdir(parents=True, exist_ok=True)
        # a pull's own credentials (CRI, imagePullSecrets) before the node's configured ones
        learnt = self.keychain.write_auth_file(image["registry"], image["repository"], ddir / "auth.json")
        if learnt or r.credentials:
            argv += ["--authfile", str(learnt or r.credentials)]
        if f.prefetch_all:
            argv.append("--prefetch-all")
        elif not f.prefetch:
            argv.append("--no-prefetch")
        tuning = ddir / "mount.toml"      # fusefs MountConfig keys that have no flag
        # started by a pull: the snapshotter is still verifying the layers, and their
        # bootstraps land in the bootstrap cache one by one
        wait = min(float(r.timeout), EARLY_BOOTSTRAP_WAIT) if why == "pull" else 0.0
        tuning.write_text(f"gap_bytes = {f.merge_gap}\nmax_request = {f.max_request}\n"
                          f"retries = {r.retries}\ntimeout = {float(r.timeout)}\n"
                          f"bootstrap_wait = {wait}\n")
        argv += ["--config", str(tuning), "--control-socket", str(self._control(mp))]
        if self.cfg.access_log:
            argv += ["--access-log", str(ddir / "access.jsonl")]
        if fd_store:
            argv += ["--fd-store", fd_store]
        return argv

    def _key_lock(self, key: str) -> threading.Lock:
        with self._key_locks_guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def ensure_mount(self, image: dict, why: str = "mount") -> Path:
        """The image's fusefs mount, started (or restarted) when it is not healthy.

        Holds the image's own lock while it checks and starts (starts of other images run at
        the same time), and takes the global lock for its bookkeeping before it returns, on
        every path: release_unused holds the global lock from reading the live snapshots to
        stopping, and skips an image whose lock is taken, so a daemon found healthy here is
        either seen as needed there (the caller's snapshot row predates this call) or not
        stopped."""
        key = self.image_key(image)
        with self._key_lock(key):
            mp = self.mountpoint(key)
            row = {r[0]: r for r in self.store.daemons()}.get(key)
            if row is not None and daemons.alive(row[2]) and daemons.healthy(mp, self.cfg.health_timeout, self._control(mp)):
                with self._lock:
                    self._unmark_early(key)      # claimed by a container: releasable as usual
                return mp
            self._start(key, image, mp, row[2] if row else 0, why)
            with self._lock:
                if why == "pull":
                    self._early[key] = time.monotonic()
                else:
                    self._unmark_early(key)
            return mp

    def _unmark_early(self, key: str) -> None:
        self._early.pop(key, None)
        self._early_committed.discard(key)

    def mount_early(self, image: dict) -> None:
        """`mount_on_pull`: starts the image's daemon in the background as soon as the pull's
        first imgfs layer is verified, so the daemon's start (a Python process: interpreter,
        imports, the FUSE mount) overlaps the rest of the pull and the container's creation
        instead of sitting inside the container's Prepare; the daemon waits for each
        bootstrap to appear in the node's bootstrap cache (``bootstrap_wait``) as the
        snapshotter verifies the layers, instead of fetching it a second time. The Prepare
        then finds the mount ready (or waits on the image's lock for the start in flight).
        Unused, it stays EARLY_GRACE seconds, or until the image is removed."""
        key = self.image_key(image)
        with self._early_lock:
            if key in self._early_starting:
                return                   # every layer of the pull asks; one start is enough
            self._early_starting.add(key)

        def run() -> None:
            try:
                self.ensure_mount(image, why="pull")
            except Exception as e:  # noqa: BLE001 - only a head start; Prepare starts it again
                log.warning("early start of the fusefs daemon of %s failed: %s", key, e)
            finally:
                with self._early_lock:
                    self._early_starting.discard(key)

        threading.Thread(target=run, name="mount-on-pull", daemon=True).start()

    def _start(self, key: str, image: dict, mp: Path, old_pid: int, why: str = "mount") -> None:
        proc = self._procs.pop(key, None)
        if old_pid and daemons.alive(old_pid) and daemons.cmdline_has(old_pid, str(mp)):
            daemons.kill(old_pid, proc)   # only called for a daemon that is gone or hangs
        elif proc is not None:
            proc.poll()
        store = self._fd_store()
        store_pid = self.fdkeeper.pid()
        logfile = self.daemon_dir / mp.name / "imgfs.log"
        control = self._control(mp)
        spawned = time.time()
        argv = self._argv(image, mp, store, why)
        proc = None
        if store and daemons.mounted(mp) and self.fdkeeper.holds(mp):
            proc = self._take_over(key, argv, mp, logfile, control)
            why = "takeover" if proc is not None else why
        if proc is None:
            daemons.unmount(mp)          # a dead daemon leaves an ENOTCONN mount behind
            if store:
                self.fdkeeper.drop(mp)
            try:
                proc = daemons.start(argv, mp, logfile, self.cfg.mount_timeout,
                                     control=control)
            except daemons.MountError as e:
                if not store or (self.fdkeeper.alive() and self.fdkeeper.pid() == store_pid):
                    raise
                # the fd store went away under the start (its put failed; another image's start
                # may have replaced it meanwhile): once more with the one running now
                log.warning("fusefs daemon of %s failed without its fd store (%s): retrying", key, e)
                argv = self._argv(image, mp, self._fd_store(), why)
                daemons.unmount(mp)
                proc = daemons.start(argv, mp, logfile, self.cfg.mount_timeout,
                                     control=control)
        ready = time.time()
        self._procs[key] = proc
        self.store.put_daemon(key, str(mp), proc.pid, image)
        # Wall-clock times (not monotonic): other processes (imgbench) line them up with theirs.
        timing = {"pid": proc.pid, "spawned": spawned, "ready": ready, "start_seconds": ready - spawned,
                  "why": why}
        (self.daemon_dir / mp.name / "timing.json").write_text(json.dumps(timing) + "\n")
        log.info("fusefs daemon %d serves %s at %s (ready in %.2f s, started %s)", proc.pid, key, mp,
                 ready - spawned, why)

    def _take_over(self, key: str, argv: list[str], mp: Path, logfile: Path,
                   control: Path) -> subprocess.Popen | None:
        """A new daemon on the live connection of `mp` (tried TAKEOVER_TRIES times); None
        when none came up: the caller then remounts, and says so."""
        for attempt in range(1, TAKEOVER_TRIES + 1):
            try:
                proc = daemons.start(argv, mp, logfile, self.cfg.mount_timeout,
                                     control=control, keep_mount=True)
            except daemons.MountError as e:
                log.warning("takeover of %s at %s failed (try %d of %d): %s", key, mp, attempt,
                            TAKEOVER_TRIES, e)
                if not (daemons.mounted(mp) and self.fdkeeper.holds(mp)):
                    break
                continue
            with self._lock:
                self.takeovers += 1
            log.info("fusefs daemon %d took over the live mount %s of %s", proc.pid, mp, key)
            return proc
        log.error("takeover of %s at %s failed: remounting it (open files of its running "
                  "containers see ENOTCONN)", key, mp)
        return None

    def schedule_release(self, live: Callable[[], list[list[Snapshot]]]) -> None:
        self._live = live
        self._release_wanted.set()

    def release_unused(self, live: Callable[[], list[list[Snapshot]]]) -> None:
        """Stops the daemons no active or view snapshot needs; frees their mountpoints.

        `live()` is read under the global lock, which ensure_mount takes before it returns
        (see there), and an image whose start or check is in flight is skipped, so a Prepare
        that needs a daemon either is seen here or starts the daemon again after this returns.
        """
        with self._lock:
            needed = set()
            for chain in live():
                try:
                    found = self._image_for(chain)
                except st.FailedPrecondition:
                    continue
                if found is not None:
                    needed.add(self.image_key(found[1]))
            now = time.monotonic()
            pulled = {self.image_key(t) for s in self.store.all() if s.remote
                      for t in s.remote.get("tops") or []} if self._early else set()
            for key, mp, pid, _spec in self.store.daemons():
                if key in needed:
                    continue
                if now - self._early.get(key, -EARLY_GRACE) < EARLY_GRACE:
                    if key in pulled:
                        self._early_committed.add(key)
                        continue    # started by a pull; its container has not asked yet
                    if key not in self._early_committed:
                        continue    # its pull has not committed the top layer yet
                    log.info("image %s was removed before any container used it", key)
                busy = self._key_lock(key)
                if not busy.acquire(blocking=False):
                    # ensure_mount is checking or starting it: wanted now, most likely; judged
                    # again at the next supervision tick in case its caller went away
                    self._release_again = True
                    continue
                try:
                    self._stop_unused(key, mp, pid)
                finally:
                    busy.release()

    def _stop_unused(self, key: str, mp: str, pid: int) -> None:
        self._unmark_early(key)
        log.info("stopping unused fusefs daemon %d of %s", pid, key)
        if daemons.alive(pid) and daemons.cmdline_has(pid, mp):
            daemons.stop(pid, Path(mp), self._procs.pop(key, None))
        else:
            daemons.unmount(mp)
            self.fdkeeper.drop(mp)
            proc = self._procs.pop(key, None)
            if proc is not None:
                proc.wait()
        self.store.drop_daemon(key)
        try:
            Path(mp).rmdir()
        except OSError:
            pass
        shutil.rmtree(self.daemon_dir / Path(mp).name, ignore_errors=True)

    # -- recovery and supervision --------------------------------------------------------
    def recover(self) -> None:
        """At start: adopt live daemons of the last run, replace dead ones, drop stray mounts."""
        with self._lock:
            self._fd_store()
            known = set()
            for key, mp, pid, spec in self.store.daemons():
                known.add(Path(mp).name)
                if daemons.alive(pid) and daemons.cmdline_has(pid, mp) and daemons.healthy(mp, self.cfg.health_timeout, self._control(mp)):
                    log.info("adopted fusefs daemon %d of %s at %s", pid, key, mp)
                    continue
                self._restart(key, spec, mp, pid, "is gone")
            if self.mounts_dir.exists():
                for d in self.mounts_dir.iterdir():
                    if d.name not in known:
                        daemons.unmount(d)
                        try:
                            d.rmdir()
                        except OSError:
                            pass

    def check_once(self) -> None:
        """Restarts every daemon that died or whose mount stopped answering."""
        with self._lock:
            for key, proc in list(self._procs.items()):
                proc.poll()          # reap a dead child so that it is no zombie
            for key, mp, pid, spec in self.store.daemons():
                if daemons.alive(pid) and daemons.healthy(mp, self.cfg.health_timeout, self._control(mp)):
                    continue
                busy = self._key_lock(key)
                if not busy.acquire(blocking=False):
                    continue        # ensure_mount is restarting it right now
                try:
                    self._restart(key, spec, mp, pid, "died or hangs")
                finally:
                    busy.release()

    def _restart(self, key: str, spec: dict, mp: str, pid: int, what: str) -> None:
        log.warning("fusefs daemon %d of %s %s: restarting it at %s", pid, key, what, mp)
        try:
            self._start(key, spec, Path(mp), pid)
            self.restarts += 1
        except daemons.MountError as e:
            log.error("cannot restart fusefs daemon of %s: %s", key, e)

    def supervise(self, stop: threading.Event) -> None:
        """Until `stop`: releases unused daemons when asked, checks all every interval."""
        while not stop.is_set():
            self._release_wanted.wait(self.cfg.supervise_interval)
            if stop.is_set():
                break
            try:
                if self._release_wanted.is_set() or self._release_again:
                    self._release_wanted.clear()
                    self._release_again = False
                    if self._live is not None:
                        self.release_unused(self._live)
                self.check_once()
            except Exception:   # the supervisor must outlive one bad check
                log.exception("supervision check failed")

    def wake(self) -> None:
        """Lets supervise() notice `stop` at once."""
        self._release_wanted.set()
