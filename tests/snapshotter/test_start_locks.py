"""snapshotter.remote: a daemon's start holds only its image's lock.

The daemon itself is replaced by a scripted start (its timing is what is under test: real
daemons start in ~0.4 s, too close to the noise of two `ctr run`s to show an overlap);
tests/snapshotter/test_e2e.py and the container soak run the real ones concurrently.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from snapshotter import config, daemons
from snapshotter import remote as remote_mod
from snapshotter.remote import RemoteLayers
from snapshotter.store import Store

START_SECONDS = 0.6


def image(n: int) -> dict:
    return {"registry": "reg.example:5000", "repository": f"app{n}", "manifest": f"sha256:{n:064x}"}


@pytest.fixture
def remote(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text(f'root = "{tmp_path / "root"}"\n')
    (tmp_path / "root").mkdir()
    store = Store(tmp_path / "root" / "metadata.db")
    r = RemoteLayers(config.load(f), store)
    r.starts: list[tuple[str, float, float]] = []
    r.stopped: list[str] = []
    r.slow_health = threading.Event()
    pids = iter(range(10_000, 20_000))

    def start(key, image, mp, old_pid, why="mount"):
        t0 = time.monotonic()
        time.sleep(START_SECONDS)
        store.put_daemon(key, str(mp), next(pids), image)
        r.starts.append((key, t0, time.monotonic()))

    def healthy(mp, timeout, control):
        if r.slow_health.is_set():
            time.sleep(START_SECONDS)
        return True

    monkeypatch.setattr(r, "_start", start)
    monkeypatch.setattr(r, "_stop_unused", lambda key, mp, pid: (r.stopped.append(key), store.drop_daemon(key)))
    monkeypatch.setattr(daemons, "alive", lambda pid: True)
    monkeypatch.setattr(remote_mod.daemons, "healthy", healthy)
    try:
        yield r
    finally:
        store.close()


def in_threads(*calls) -> None:
    threads = [threading.Thread(target=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_two_images_start_side_by_side_one_image_once(remote):
    t0 = time.monotonic()
    in_threads(lambda: remote.ensure_mount(image(1)), lambda: remote.ensure_mount(image(2)),
               lambda: remote.ensure_mount(image(1)))
    elapsed = time.monotonic() - t0
    keys = sorted(k for k, _, _ in remote.starts)
    assert keys == sorted({remote.image_key(image(1)), remote.image_key(image(2))})  # image 1 once
    (_, a0, a1), (_, b0, b1) = remote.starts
    assert max(a0, b0) < min(a1, b1), remote.starts      # the two starts overlapped
    assert elapsed < 2 * START_SECONDS + 0.5


def test_release_skips_an_image_whose_check_is_in_flight(remote):
    remote.ensure_mount(image(1))
    key = remote.image_key(image(1))
    remote.slow_health.set()          # the next ensure_mount holds the image's lock a while
    checking = threading.Thread(target=lambda: remote.ensure_mount(image(1)))
    checking.start()
    time.sleep(START_SECONDS / 3)
    remote.release_unused(list)        # no snapshot needs it: but a Prepare is asking now
    assert remote.stopped == []
    checking.join(10)
    remote.slow_health.clear()
    remote.release_unused(list)        # nobody asking any more: released
    assert remote.stopped == [key]


def test_check_once_skips_an_image_being_started(remote, monkeypatch):
    remote.ensure_mount(image(1))
    monkeypatch.setattr(remote_mod.daemons, "healthy", lambda mp, timeout, control: False)
    held = remote._key_lock(remote.image_key(image(1)))
    with held:                               # ensure_mount of this image in flight
        remote.check_once()
    assert len(remote.starts) == 1 and remote.restarts == 0
    remote.check_once()                      # nobody else on it: restarted
    assert len(remote.starts) == 2 and remote.restarts == 1


def test_mountpoints_differ(remote):
    assert remote.mountpoint(remote.image_key(image(1))) != remote.mountpoint(remote.image_key(image(2)))
    assert isinstance(remote.mountpoint("x"), Path)


def test_a_prepare_waiting_for_the_bookkeeping_keeps_its_daemon(remote):
    """The narrow window: ensure_mount has found the daemon healthy and waits for the global
    lock while a release that read the live snapshots before the Prepare's row holds it."""
    remote.ensure_mount(image(1))
    key = remote.image_key(image(1))
    returned = threading.Event()
    seen: dict[str, bool] = {}
    asking = threading.Thread(target=lambda: (remote.ensure_mount(image(1)), returned.set()))

    def live():                              # read before the Prepare's snapshot row existed
        asking.start()
        deadline = time.monotonic() + 5
        while not remote._key_lock(key).locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)                      # past its health check, now waiting for our lock
        seen["waiting"] = not returned.is_set()
        return []

    remote.release_unused(live)
    assert returned.wait(10)
    asking.join(10)
    assert seen["waiting"] and remote.stopped == []
    assert remote._release_again             # judged again at the next supervision tick
