"""The node's bootstrap cache (fusefs/bootcache.py): verified bytes only, and a daemon that
finds its image's bootstraps there makes no bootstrap request."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid

import pytest

from fusefs.bootcache import BootstrapCache
from tests.fusefs import imagekit
from tests.fusefs.conftest import small_files
from tests.fusefs.test_mount import _settled_blob_gets


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_get_roundtrip_and_private_dir(tmp_path):
    cache = BootstrapCache(tmp_path / "cache")
    data = b"bootstrap bytes" * 100
    assert cache.get(_digest(data)) is None
    cache.put(_digest(data), data)
    assert cache.get(_digest(data)) == data
    assert (tmp_path / "cache").stat().st_mode & 0o077 == 0
    assert cache.get(None) is None and cache.get("sha256:../../etc/passwd") is None


def test_bytes_that_do_not_match_their_digest_are_never_stored_or_served(tmp_path):
    cache = BootstrapCache(tmp_path)
    good, bad = b"good" * 50, b"evil" * 50
    cache.put(_digest(good), bad)                   # a caller's mistake: refused
    assert cache.get(_digest(good)) is None
    cache.put(_digest(good), good)
    path = tmp_path / "bootstraps" / _digest(good)[7:]
    path.write_bytes(b"rotted" + good[6:])          # local rot or a planted file
    assert cache.get(_digest(good)) is None
    assert not path.exists()                        # dropped, to be fetched again


def test_cap_drops_least_recently_used(tmp_path):
    cache = BootstrapCache(tmp_path, cap=2500)
    blobs = [bytes([i]) * 1000 for i in range(3)]
    for i, b in enumerate(blobs):
        cache.put(_digest(b), b)
        os.utime(tmp_path / "bootstraps" / _digest(b)[7:], (1000 + i, 1000 + i))
    cache.put(_digest(b"x" * 10), b"x" * 10)       # over the cap: the oldest goes
    assert cache.get(_digest(blobs[0])) is None
    assert cache.get(_digest(blobs[2])) == blobs[2]


def _layer_bootstrap_digests(layout) -> dict[str, str]:
    """bootstrap hex digest -> layer blob digest, from the layout's manifest annotations."""
    from imgformat import constants as C

    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return {d["annotations"][C.ANNOTATION_BOOTSTRAP_DIGEST][7:]: d["digest"] for d in man["layers"]}


@pytest.mark.e2e
def test_remount_takes_bootstraps_from_the_cache_and_survives_a_rotted_one(mount_image, registry,
                                                                           synthetic_layouts, tmp_path):
    repo = f"fusefs/bootcache-{uuid.uuid4().hex[:8]}"
    image = imagekit.push(synthetic_layouts["a"], registry.host, repo)
    cache = tmp_path / "cache"
    mount_image(image, "--no-prefetch", cache_dir=cache, name="first")
    assert len(_settled_blob_gets(registry, repo, 2)) == 2             # one bootstrap per layer
    entries = sorted((cache / "bootstraps").iterdir())
    assert sorted(e.name for e in entries) == sorted(_layer_bootstrap_digests(synthetic_layouts["a"]))

    second = mount_image(image, "--no-prefetch", cache_dir=cache, name="second")
    assert len(_settled_blob_gets(registry, repo, 2)) == 2             # none: both were cached
    assert (second.mountpoint / "small/f007").read_bytes() == small_files()["small/f007"]
    assert len(_settled_blob_gets(registry, repo, 3)) == 3             # its chunk range only

    rotted = entries[0]
    rotted.write_bytes(b"\0" + rotted.read_bytes()[1:])
    third = mount_image(image, "--no-prefetch", cache_dir=cache, name="third")
    gets = _settled_blob_gets(registry, repo, 4)
    assert len(gets) == 4 and _layer_bootstrap_digests(synthetic_layouts["a"])[rotted.name] in gets[-1]
    assert hashlib.sha256(rotted.read_bytes()).hexdigest() == rotted.name   # refetched and cached again
    assert (third.mountpoint / "etc/top").read_bytes() == b"top-a\n"


def _bootstraps_of(layout) -> dict[str, bytes]:
    """bootstrap hex digest -> payload, cut from the layout's own blobs (no registry request)."""
    from imgformat import constants as C

    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    out = {}
    for d in man["layers"]:
        a = d["annotations"]
        off, size = int(a[C.ANNOTATION_BOOTSTRAP_OFFSET]), int(a[C.ANNOTATION_BOOTSTRAP_SIZE])
        blob = (layout / "blobs/sha256" / d["digest"][7:]).read_bytes()
        out[a[C.ANNOTATION_BOOTSTRAP_DIGEST][7:]] = blob[off:off + size]
    return out


@pytest.mark.e2e
def test_bootstrap_wait_takes_bootstraps_that_arrive_while_the_daemon_starts(mount_image, registry,
                                                                            synthetic_layouts, tmp_path):
    """What a daemon the snapshotter starts during a pull (mount_on_pull) sees: the bootstraps
    land in the cache while it starts; it waits for them instead of fetching them again."""
    repo = f"fusefs/bootwait-{uuid.uuid4().hex[:8]}"
    image = imagekit.push(synthetic_layouts["a"], registry.host, repo)
    cache = tmp_path / "cache"
    conf = tmp_path / "wait.toml"
    conf.write_text("bootstrap_wait = 30.0\n")
    payloads = _bootstraps_of(synthetic_layouts["a"])

    def arrive() -> None:                     # the snapshotter verifying the layers, one by one
        for hexdigest, data in payloads.items():
            time.sleep(0.5)
            BootstrapCache(cache).put("sha256:" + hexdigest, data)

    t = threading.Thread(target=arrive)
    t.start()
    try:
        m = mount_image(image, "--no-prefetch", "--config", str(conf), cache_dir=cache, name="waits")
    finally:
        t.join()
    assert _settled_blob_gets(registry, repo, 0) == []                # no bootstrap fetched
    assert (m.mountpoint / "etc/top").read_bytes() == b"top-a\n"
    assert len(_settled_blob_gets(registry, repo, 1)) == 1            # that file's chunk only

    # a bootstrap that never arrives is fetched once the wait is over
    conf.write_text("bootstrap_wait = 0.5\n")
    m = mount_image(image, "--no-prefetch", "--config", str(conf), cache_dir=tmp_path / "empty",
                    name="gives-up")
    assert len(_settled_blob_gets(registry, repo, 3)) == 3            # + one per layer
    assert (m.mountpoint / "etc/top").read_bytes() == b"top-a\n"


def test_bootstrap_wait_must_be_a_non_negative_number():
    from fusefs.mount import MountConfig

    with pytest.raises(ValueError, match="bootstrap_wait"):
        MountConfig(image="oci:x", mountpoint="/m", bootstrap_wait=-1)
