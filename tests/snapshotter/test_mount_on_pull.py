"""mount_on_pull (on by default): the image's fusefs daemon starts in the background at the
pull's first layer and takes the bootstraps the pull verifies from the node's bootstrap cache
(no second bootstrap request), survives releases until a container claims it, and is then an
ordinary daemon; an image removed before any container used it has its daemon released at once.

Real docker-registry, real `imgfs mount` daemon and FUSE mount; the snapshotter's RemoteLayers
is driven directly (what its Prepare calls), so no containerd is needed for this.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from fusefs.control import query
from snapshotter import config, daemons
from snapshotter import labels as lb
from snapshotter.remote import RemoteLayers
from snapshotter.store import Store
from tests.support.wait import wait_for


@pytest.fixture
def remote(tmp_path, registry):
    root = tmp_path / "root"
    root.mkdir()
    f = tmp_path / "snap.toml"
    f.write_text(f'root = "{root}"\nmount_on_pull = true\naccess_log = true\nmount_timeout = 120.0\n'
                 f'[registry]\nplain_http = ["{registry.host}"]\n')
    store = Store(root / "metadata.db")
    rl = RemoteLayers(config.load(f), store)
    try:
        yield rl
    finally:
        for _key, mp, pid, _spec in store.daemons():
            if daemons.alive(pid) and daemons.cmdline_has(pid, mp):
                daemons.stop(pid, Path(mp), rl._procs.get(_key))
            else:
                daemons.unmount(mp)
        for proc in rl._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        store.close()


def _pull(remote, registry, ref: str, commit: bool = False) -> tuple[list[dict], list[str], dict]:
    """What containerd's pull makes the snapshotter do, bottom layer first: Prepare (skip-pull)
    of each layer, and with ``commit`` the committed record the service then stores.
    Returns the records, the layers' keys and the manifest."""
    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    m = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{tag}", timeout=30,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    records, keys = [], []
    for i, d in enumerate(m["layers"]):
        labels = {k: v for k, v in d["annotations"].items() if k.startswith("containerd.io/snapshot/")}
        labels.update({lb.TARGET: f"pull-{i}", lb.STARGZ_REF: ref, lb.STARGZ_DIGEST: d["digest"]})
        record = remote.try_prepare(f"extract-{i}", keys[-1] if keys else "", labels)
        assert record is not None                      # skip-pull, as without the option
        if commit:
            remote.store.add_committed(f"pull-{i}", keys[-1] if keys else "", labels, record)
        records.append(record)
        keys.append(f"pull-{i}")
    return records, keys, m


def _bootstrap_gets(registry, since: int, manifest: dict) -> int:
    """Blob GETs after log line ``since`` that sent exactly a layer's bootstrap."""
    sizes = {d["digest"]: int(d["annotations"]["containerd.io/snapshot/imgfs.bootstrap.size"])
             for d in manifest["layers"]}
    n = 0
    for ln in registry.blob_gets()[since:]:
        for digest, size in sizes.items():
            if f"/blobs/{digest} " in ln and ln.split('" ', 1)[1].split()[:2] == ["206", str(size)]:
                n += 1
    return n


def test_daemon_starts_during_the_pull_and_waits_for_its_container(remote, registry, debian_refs):
    since = len(registry.blob_gets())
    records, _, manifest = _pull(remote, registry, debian_refs["imgfs"])
    image = records[-1]["tops"][0]
    mp = remote.mountpoint(remote.image_key(image))
    timing_file = remote.daemon_dir / mp.name / "timing.json"
    # nobody asked for the mount: the pull started it
    wait_for(lambda: timing_file.exists() and daemons.healthy(mp), "the early daemon's mount")
    timing = json.loads(timing_file.read_text())
    assert timing["why"] == "pull" and timing["ready"] >= timing["spawned"]
    pid = timing["pid"]
    assert [row[2] for row in remote.store.daemons()] == [pid]
    # one bootstrap request per layer, all the snapshotter's: the daemon found them cached
    assert _bootstrap_gets(registry, since, manifest) == len(manifest["layers"])

    remote.release_unused(list)                  # no container yet: kept for it
    assert daemons.alive(pid) and daemons.mounted(mp)
    assert remote.ensure_mount(image) == mp            # the container's Prepare: the same daemon
    assert [row[2] for row in remote.store.daemons()] == [pid]
    assert (mp / "usr" / "bin").is_dir()
    # access_log = true: the daemon logs the accesses next to its control socket
    query(str(remote.daemon_dir / mp.name / "control.sock"), "/access-log/flush", method="POST", timeout=30)
    log = (remote.daemon_dir / mp.name / "access.jsonl").read_text()
    assert any(json.loads(ln)["path"] == "usr/bin" for ln in log.splitlines())

    remote.release_unused(list)                  # claimed, then unused: released as usual
    wait_for(lambda: not daemons.alive(pid), "the released daemon to exit")
    assert not daemons.mounted(mp) and remote.store.daemons() == []


def test_early_daemon_of_an_image_removed_unused_is_released_at_once(remote, registry, debian_refs):
    records, keys, _ = _pull(remote, registry, debian_refs["imgfs"], commit=True)
    mp = remote.mountpoint(remote.image_key(records[-1]["tops"][0]))
    timing_file = remote.daemon_dir / mp.name / "timing.json"
    wait_for(lambda: timing_file.exists() and daemons.healthy(mp), "the early daemon's mount")
    pid = json.loads(timing_file.read_text())["pid"]
    remote.release_unused(list)                  # pulled, no container yet: kept for it
    assert daemons.alive(pid) and daemons.mounted(mp)
    for key in reversed(keys):                   # the image is removed, then containerd's GC
        remote.store.remove(key)
    remote.release_unused(list)                  # long before EARLY_GRACE: nothing can use it
    wait_for(lambda: not daemons.alive(pid), "the daemon of the removed image to exit")
    assert not daemons.mounted(mp) and remote.store.daemons() == []
