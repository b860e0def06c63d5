"""End-to-end: real imgfs daemons mounting images from the real docker-registry.

A small synthetic two-layer image (tests/fusefs/conftest.py) keeps these fast; the
Debian image gets the full tree comparison in test_debian.py.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import time
import uuid

import pytest

from tests.fusefs import imagekit
from tests.fusefs.conftest import run_imgfs, small_files
from tests.fusefs.imagekit import blob_data

pytestmark = pytest.mark.e2e


def _repo(name: str) -> str:
    return f"fusefs/{name}-{uuid.uuid4().hex[:8]}"


def _chunk_span(layout, path: str) -> tuple[str, int]:
    """(blob digest, compressed bytes of the merged range) holding ``path`` of the bottom layer."""
    digest, infos = imagekit.file_chunks(layout, path)
    start = min(i.comp_offset for i in infos)
    end = max(i.comp_offset + i.comp_size for i in infos)
    return digest, end - start


def _repo_blob_gets(registry, repo: str) -> list[str]:
    """Blob GETs of ``repo`` served by the registry, from its access log (the combined-format
    lines: tests.support.registry.Registry.blob_gets matches the structured lines, which
    do not have "GET /v2/" in them)."""
    text = registry.log.read_text(errors="replace")
    return [ln for ln in text.splitlines() if f'"GET /v2/{repo}/blobs/' in ln]


def _settled_blob_gets(registry, repo: str, at_least: int) -> list[str]:
    """The registry logs a request just after answering it: wait until ``at_least`` lines
    are there (up to 60 s), then a little more so that an unexpected extra one shows."""
    deadline = time.monotonic() + 60
    while len(_repo_blob_gets(registry, repo)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return _repo_blob_gets(registry, repo)


@pytest.fixture
def image_a(registry, synthetic_layouts):
    repo = _repo("a")
    return imagekit.push(synthetic_layouts["a"], registry.host, repo), repo


def test_merged_tree_metadata_and_contents(mount_image, image_a):
    m = mount_image(image_a[0], "--no-prefetch")
    root = m.mountpoint
    assert sorted(os.listdir(root)) == ["big", "bin", "etc", "small"]
    assert sorted(os.listdir(root / "etc")) == ["empty", "hostname", "hostname-again", "secret", "top"]
    assert not (root / "etc/gone").exists()                         # whiteout applied
    assert (root / "etc/top").read_bytes() == b"top-a\n"
    assert (root / "etc/hostname").read_bytes() == b"imgfs-test-2\n"   # upper layer wins
    assert (root / "etc/hostname-again").read_bytes() == b"imgfs-test\n"
    assert (root / "etc/empty").read_bytes() == b""
    st = os.lstat(root / "etc/secret")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o600, 1000, 1000, 7)
    assert os.getxattr(root / "etc/secret", "user.note") == b"hello"
    assert os.listxattr(root / "etc/secret") == ["user.note"]
    with pytest.raises(OSError) as exc:
        os.getxattr(root / "etc/empty", "user.nope")
    assert exc.value.errno == errno.ENODATA
    assert os.readlink(root / "bin/link") == "../etc/hostname"
    for name, data in small_files().items():
        assert (root / name).read_bytes() == data, name
    assert (root / "big/blob").read_bytes() == blob_data(10_000, 5 * (1 << 20) + 12345)
    with open(root / "big/blob", "rb") as f:                         # random access in a large file
        f.seek(3 * (1 << 20) + 7)
        assert f.read(100) == blob_data(10_000, 5 * (1 << 20) + 12345)[3 * (1 << 20) + 7:][:100]
    for bad in (lambda: os.open(root / "etc/new", os.O_WRONLY | os.O_CREAT), lambda: os.mkdir(root / "d"),
                lambda: os.unlink(root / "etc/top"), lambda: os.open(root / "etc/top", os.O_RDWR)):
        with pytest.raises(OSError) as exc:
            bad()
        assert exc.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        os.stat(root / "nope")
    with pytest.raises(NotADirectoryError):
        os.listdir(root / "etc/top")
    assert os.statvfs(root).f_namemax == 255
    state = m.state()
    assert state["pid"] == m.pid and state["fetcher"]["corrupt"] == 0
    assert stat.S_IMODE(os.stat(m.control).st_mode) == 0o600


def test_hardlinks_share_an_inode(mount_image, registry, tmp_path):
    t = imagekit.Tar().dir("a").dir("b").file("a/one", b"linked\n").hardlink("b/two", "a/one")
    layout = tmp_path / "hl"
    imagekit.write_imgfs_layout(layout, [t.bytes()])
    m = mount_image(imagekit.push(layout, registry.host, _repo("hl")), "--no-prefetch")
    a, b = os.stat(m.mountpoint / "a/one"), os.stat(m.mountpoint / "b/two")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (m.mountpoint / "b/two").read_bytes() == b"linked\n"


def test_lazy_mount_fetches_only_bootstraps_then_one_chunk_range(mount_image, registry, image_a,
                                                                 synthetic_layouts):
    image, repo = image_a
    m = mount_image(image, "--no-prefetch")
    gets = _settled_blob_gets(registry, repo, 2)
    assert len(gets) == 2, gets                                         # one bootstrap per layer
    assert m.metrics()['imgfs_registry_requests_total{kind="ondemand"}'] == 0
    path = "small/f050"
    assert (m.mountpoint / path).read_bytes() == small_files()[path]
    blob, span = _chunk_span(synthetic_layouts["a"], path)
    metrics = m.metrics()
    assert metrics['imgfs_registry_requests_total{kind="ondemand"}'] == 1
    assert metrics['imgfs_registry_bytes_total{kind="ondemand"}'] == span   # exactly its chunk range
    assert span < 200 * 1024
    gets = _settled_blob_gets(registry, repo, 3)
    assert len(gets) == 3 and blob in gets[-1]


def test_adjacent_small_files_are_merged_into_few_requests(mount_image, image_a):
    m = mount_image(image_a[0], "--no-prefetch")
    files = small_files()
    n = 60
    for i in range(n):
        name = f"small/f{i:03d}"
        assert (m.mountpoint / name).read_bytes() == files[name]
    requests = m.metrics()['imgfs_registry_requests_total{kind="ondemand"}']
    assert requests <= n // 5, requests


def test_two_images_sharing_a_layer_fetch_shared_chunks_once(mount_image, registry, synthetic_layouts,
                                                             tmp_path):
    repo_a, repo_b = _repo("share-a"), _repo("share-b")
    img_a = imagekit.push(synthetic_layouts["a"], registry.host, repo_a)
    img_b = imagekit.push(synthetic_layouts["b"], registry.host, repo_b)
    cache = tmp_path / "shared-cache"
    a = mount_image(img_a, "--no-prefetch", cache_dir=cache, name="a")
    b = mount_image(img_b, "--no-prefetch", cache_dir=cache, name="b")
    for name in [*small_files(), "big/blob", "etc/hostname-again"]:
        assert (a.mountpoint / name).read_bytes() == (b.mountpoint / name).read_bytes()
    assert (b.mountpoint / "etc/top").read_bytes() == b"top-b\n"
    base_blob = imagekit.layer_bootstraps(synthetic_layouts["b"])[0][0]
    b_base_gets = [g for g in _settled_blob_gets(registry, repo_b, 2) if base_blob in g]
    # no GET at all: the shared base's bootstrap comes from the node's bootstrap cache
    # (fusefs/bootcache.py), its chunks from the shared chunk store
    assert not b_base_gets, b_base_gets
    assert b.metrics()['imgfs_registry_requests_total{kind="ondemand"}'] <= 1   # etc/top only
    assert a.metrics()['imgfs_registry_bytes_total{kind="ondemand"}'] > 5 << 20


def test_prefetch_all_fetches_everything_in_background(mount_image, image_a):
    m = mount_image(image_a[0], "--prefetch-all")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and m.state()["prefetch"]["phase"] != "done":
        time.sleep(0.1)
    state = m.state()
    assert state["prefetch"]["phase"] == "done" and state["prefetch"]["failed"] == 0
    before = state["fetcher"]["requests"]
    assert (m.mountpoint / "big/blob").read_bytes() == blob_data(10_000, 5 * (1 << 20) + 12345)
    for name, data in small_files().items():
        assert (m.mountpoint / name).read_bytes() == data
    assert m.state()["fetcher"]["requests"] == before                   # all served from the cache
    assert m.metrics()['imgfs_registry_requests_total{kind="prefetch"}'] >= 1


def test_access_log_records_paths_ranges_and_stats(mount_image, image_a):
    m = mount_image(image_a[0], "--no-prefetch", access_log=True)
    (m.mountpoint / "small/f001").read_bytes()
    os.stat(m.mountpoint / "etc/empty")
    with open(m.mountpoint / "big/blob", "rb") as f:
        f.seek(1 << 20)
        f.read(4096)
    from fusefs.control import query

    status, _ = query(str(m.control), "/access-log/flush", method="POST")
    assert status == 200
    recs = {r["path"]: r for r in map(json.loads, m.access_log.read_text().splitlines())}
    assert recs["small/f001"]["ranges"] == [[0, len(small_files()["small/f001"])]]
    assert recs["etc/empty"]["stat_only"] is True
    big = recs["big/blob"]["ranges"]
    assert any(s <= (1 << 20) < e for s, e in big)
    assert recs["small/f001"]["first_access"] <= recs["etc/empty"]["first_access"]


def test_sigterm_unmounts_and_exits(mount_image, image_a):
    from tests.fusefs.conftest import _alive

    m = mount_image(image_a[0], "--no-prefetch")
    os.kill(m.pid, 15)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_alive(m.pid) or os.path.ismount(m.mountpoint)):
        time.sleep(0.05)
    assert not os.path.ismount(m.mountpoint) and not _alive(m.pid)


def test_bad_images_fail_with_clear_errors(registry, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = run_imgfs("mount", f"docker://{registry.host}/fusefs/missing:latest", str(mp), "--daemon",
                  "--plain-http", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 4 and "missing" in r.stderr
    plain = tmp_path / "plain"
    from tests.support.ocilayout import write_oci_layout

    write_oci_layout(plain, [imagekit.Tar().file("x", b"x").bytes()])
    r = run_imgfs("mount", f"oci:{plain}", str(mp), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 3 and "not an imgfs layer" in r.stderr
    r = run_imgfs("mount", "nonsense", str(mp))
    assert r.returncode == 3 and "docker://" in r.stderr
    assert not os.path.ismount(mp)


def test_cache_cli_stats_and_verify(mount_image, image_a):
    m = mount_image(image_a[0], "--no-prefetch")
    (m.mountpoint / "small/f001").read_bytes()
    r = run_imgfs("cache", "stats", "--cache-dir", str(m.cache_dir))
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] >= 1
    victim = next(p for p in (m.cache_dir / "chunks").rglob("*") if p.is_file())
    victim.write_bytes(b"rot")
    r = run_imgfs("cache", "verify", "--cache-dir", str(m.cache_dir))
    assert r.returncode == 1 and victim.name in r.stdout and not victim.exists()


def test_small_cache_cap_evicts_and_still_serves_right_bytes(mount_image, image_a):
    cap = 512 * 1024
    m = mount_image(image_a[0], "--no-prefetch", "--cache-size", "512K")
    assert (m.mountpoint / "big/blob").read_bytes() == blob_data(10_000, 5 * (1 << 20) + 12345)
    for name, data in small_files().items():
        assert (m.mountpoint / name).read_bytes() == data
    store = m.state()["store"]
    assert store["evictions"] > 0 and store["capacity"] == cap
    assert store["bytes"] <= cap
    on_disk = sum(p.stat().st_size for p in (m.cache_dir / "chunks").rglob("*") if p.is_file())
    assert on_disk == store["bytes"]


def test_config_file_and_usage_errors(tmp_path, image_a, capsys):
    """Usage errors are found before anything is mounted (in-process: no fork happens)."""
    from fusefs.cli import main

    mp = tmp_path / "mnt"
    mp.mkdir()
    cfg = tmp_path / "imgfs.toml"

    def run(*args: str) -> tuple[int, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:            # argparse
            code = exc.code
        return code, capsys.readouterr().err

    cfg.write_text('cache_dir = "/nonexistent"\nbogus_key = 1\n')
    code, err = run("mount", image_a[0], str(mp), "--config", str(cfg))
    assert code == 2 and "bogus_key" in err
    cfg.write_text('prefetch = "sometimes"\n')
    code, err = run("mount", image_a[0], str(mp), "--config", str(cfg))
    assert code == 2 and "prefetch must be" in err
    code, err = run("mount", image_a[0], str(mp), "--cache-size", "lots")
    assert code == 2 and "not a size" in err
    code, err = run("mount", image_a[0], str(tmp_path / "no-such-dir"))
    assert code == 2 and "not a directory" in err
    assert not os.path.ismount(mp)


def test_prefetch_fills_scattered_holes_with_multi_range_requests(mount_image, image_a, tmp_path):
    cache = tmp_path / "holes-cache"
    first = mount_image(image_a[0], "--no-prefetch", cache_dir=cache, name="first")
    files = small_files()
    for i in range(0, len(files), 8):                       # cache every 8th file's chunks
        name = f"small/f{i:03d}"
        assert (first.mountpoint / name).read_bytes() == files[name]
    cfg = tmp_path / "nogap.toml"
    cfg.write_text("gap_bytes = 0\n")                        # every hole its own range
    m = mount_image(image_a[0], "--prefetch-all", "--config", str(cfg), cache_dir=cache, name="second")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and m.state()["prefetch"]["phase"] != "done":
        time.sleep(0.1)
    state = m.state()
    assert state["prefetch"]["phase"] == "done" and state["prefetch"]["failed"] == 0
    assert state["fetcher"]["corrupt"] == 0 and state["fetcher"]["errors"] == 0
    assert state["fetcher"]["prefetch_requests"] <= 4                # 2 slots: holes share requests
    before = state["fetcher"]["requests"]
    for name, data in files.items():
        assert (m.mountpoint / name).read_bytes() == data
    assert (m.mountpoint / "big/blob").read_bytes() == blob_data(10_000, 5 * (1 << 20) + 12345)
    assert m.state()["fetcher"]["requests"] == before


def test_concurrent_readers_fetch_each_chunk_once(mount_image, image_a, synthetic_layouts):
    from concurrent.futures import ThreadPoolExecutor

    m = mount_image(image_a[0], "--no-prefetch")
    files = small_files()
    names = sorted(files)

    def reader(k: int) -> int:
        order = names[k::2] + names[:k:2] if k % 2 else list(reversed(names))
        bad = 0
        for name in order:
            bad += (m.mountpoint / name).read_bytes() != files[name]
        return bad

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(reader, range(8))) == 0
    wanted = {info.digest for name in names
              for info in imagekit.file_chunks(synthetic_layouts["a"], name)[1]}
    fetched = m.state()["fetcher"]
    assert fetched["chunks"] == len(wanted) and fetched["errors"] == 0


def test_imgfs_umount_stops_the_daemon(mount_image, image_a):
    from tests.fusefs.conftest import _alive

    m = mount_image(image_a[0], "--no-prefetch")
    r = run_imgfs("umount", str(m.mountpoint))
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(m.mountpoint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(m.pid):
        time.sleep(0.05)
    assert not _alive(m.pid)
    assert "unmounted" in m.log.read_text()


def test_prefetch_table_is_fetched_in_background_at_mount(mount_image, registry, tmp_path):
    from tests.fusefs.conftest import base_tar

    startup = ["small/f100", "small/f007", "etc/hostname"]
    layout = tmp_path / "with-prefetch"
    imagekit.write_imgfs_layout(layout, [base_tar()], chunk_size=64 * 1024, prefetch=startup)
    m = mount_image(imagekit.push(layout, registry.host, _repo("pf")))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and m.state()["prefetch"]["phase"] != "done":
        time.sleep(0.05)
    state = m.state()
    assert state["prefetch"]["phase"] == "done" and state["prefetch"]["total"] >= 1
    assert state["fetcher"]["prefetch_requests"] == 1                  # one contiguous range at the front
    assert state["fetcher"]["requests"] == 1
    for name in startup[:2]:
        assert (m.mountpoint / name).read_bytes() == small_files()[name]
    assert (m.mountpoint / "etc/hostname").read_bytes() == b"imgfs-test\n"
    assert m.state()["fetcher"]["requests"] == 1                      # served by the prefetch
    assert (m.mountpoint / "small/f050").read_bytes() == small_files()["small/f050"]
    assert m.state()["fetcher"]["requests"] == 2                      # not prefetched: on demand


def test_layer_option_mounts_one_layer(mount_image, image_a):
    m = mount_image(image_a[0], "--no-prefetch", "--layer", "1")
    assert sorted(os.listdir(m.mountpoint)) == ["etc"]
    assert sorted(os.listdir(m.mountpoint / "etc")) == ["hostname", "top"]   # whiteout marker hidden
    assert (m.mountpoint / "etc/top").read_bytes() == b"top-a\n"
    assert len(m.state()["layers"]) == 1


def test_mount_by_manifest_digest(mount_image, image_a, synthetic_layouts, registry):
    """The snapshotter mounts images as docker://HOST/REPO@sha256:... (no tag)."""
    index = json.loads((synthetic_layouts["a"] / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    m = mount_image(f"docker://{registry.host}/{image_a[1]}@{digest}", "--no-prefetch")
    assert (m.mountpoint / "etc/top").read_bytes() == b"top-a\n"


def test_foreground_mount_ready_file_and_sigint(image_a, tmp_path):
    """Foreground mode (how the snapshotter runs it): --pid-file appears when ready, SIGINT
    unmounts and exits 0."""
    import signal
    import subprocess
    import sys

    from tests.fusefs.conftest import ROOT, stop_daemon, unmount

    mp, pidfile = tmp_path / "mnt", tmp_path / "pid"
    mp.mkdir()
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fusefs.cli", "mount", image_a[0], str(mp),
                                 "--plain-http", "--no-prefetch", "--cache-dir", str(tmp_path / "c"),
                                 "--pid-file", str(pidfile)], cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pidfile.exists(), (tmp_path / "log").read_text()
        assert int(pidfile.read_text()) == proc.pid and os.path.ismount(mp)
        assert (mp / "etc/top").read_bytes() == b"top-a\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not os.path.ismount(mp)
    finally:
        unmount(mp)
        if proc.poll() is None:
            stop_daemon(proc.pid)
            proc.wait(30)
