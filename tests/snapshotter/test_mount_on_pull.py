"""mount_on_pull: the image's fusefs daemon starts in the background while its layers are
being pulled, survives releases until a container claims it, and is then an ordinary daemon.

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


def test_daemon_starts_during_the_pull_and_waits_for_its_container(remote, registry, debian_refs):
    ref = debian_refs["imgfs"]
    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    m = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{tag}", timeout=30,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    record = None
    for i, d in enumerate(m["layers"]):
        labels = {k: v for k, v in d["annotations"].items() if k.startswith("containerd.io/snapshot/")}
        labels.update({lb.TARGET: f"pull-{i}", lb.STARGZ_REF: ref, lb.STARGZ_DIGEST: d["digest"]})
        record = remote.try_prepare(f"extract-{i}", "", labels)
        assert record is not None                      # skip-pull, as without the option
    image = record["tops"][0]
    mp = remote.mountpoint(remote.image_key(image))
    timing_file = remote.daemon_dir / mp.name / "timing.json"
    # nobody asked for the mount: the pull's first layer started it
    wait_for(lambda: timing_file.exists() and daemons.healthy(mp), "the early daemon's mount")
    timing = json.loads(timing_file.read_text())
    assert timing["why"] == "pull" and timing["ready"] >= timing["spawned"]
    pid = timing["pid"]
    assert [row[2] for row in remote.store.daemons()] == [pid]

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
