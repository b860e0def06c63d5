"""The node's bootstrap cache (fusefs/bootcache.py): verified bytes only, and a daemon that
finds its image's bootstraps there makes no bootstrap request."""
from __future__ import annotations

import hashlib
import json
import os
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
