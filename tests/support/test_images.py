"""The shared Debian test image is a valid, faithful two-layer OCI image.

Checked against independent oracles: sha256 of every blob, a layer applier
written here (not imgfs code) whose result must equal the merged rootfs, a
real registry via skopeo, and python3 actually running in the tree.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import requests

from tests.support import images
from tests.support.fixtures import debian_image, debian_rootfs  # noqa: F401  (fixtures)
from tests.support.trees import apply_layer, clamp_mtimes, describe_tree, tree_diff, tree_differences, walk


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/")


def _manifest(layout: Path) -> tuple[str, dict, dict]:
    index = json.loads((layout / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    manifest = json.loads(_blob(layout, desc["digest"]).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    return desc["digest"], manifest, config


@pytest.fixture(scope="module")
def applied_rootfs(debian_image: Path, tmp_path_factory) -> Path:  # noqa: F811
    """The image's layers applied in order onto an empty dir by the test's own applier."""
    dest = tmp_path_factory.mktemp("applied")
    _, manifest, _ = _manifest(debian_image)
    for layer in manifest["layers"]:
        apply_layer(_blob(debian_image, layer["digest"]), dest)
    return dest


def test_layout_blobs_digests_and_diff_ids(debian_image: Path) -> None:  # noqa: F811
    assert json.loads((debian_image / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    for blob in (debian_image / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    _, manifest, config = _manifest(debian_image)
    assert manifest["mediaType"] == images.MANIFEST_MEDIA_TYPE
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Cmd"]
    assert len(manifest["layers"]) == 2
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        path = _blob(debian_image, layer["digest"])
        assert layer["mediaType"] == images.LAYER_MEDIA_TYPE
        assert layer["size"] == path.stat().st_size
        with gzip.open(path) as f:
            h = hashlib.sha256()
            while block := f.read(1 << 20):
                h.update(block)
        assert f"sha256:{h.hexdigest()}" == diff_id


def test_top_layer_adds_removes_replaces_and_marks(debian_image: Path) -> None:  # noqa: F811
    _, manifest, _ = _manifest(debian_image)
    with tarfile.open(_blob(debian_image, manifest["layers"][1]["digest"])) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert "etc/.wh.issue.net" in members and "usr/share/doc/.wh.debconf" in members
    assert "etc/skel/.wh..wh..opq" in members and "etc/skel/.profile" in members
    assert "usr/bin/less" in members and "usr/bin/file" in members   # the added packages
    assert "usr/bin/python3.11" not in members                        # unchanged base stays below
    readme = members["etc/skel/README"]
    assert readme.pax_headers["SCHILY.xattr.user.imgfs.layer"] == "2"
    link = members[images.HARDLINKS[1]]
    assert link.islnk() and link.linkname == images.HARDLINKS[0]
    with tarfile.open(_blob(debian_image, manifest["layers"][0]["digest"])) as tar:
        base = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert base["dev/null"].ischr() and (base["dev/null"].devmajor, base["dev/null"].devminor) == (1, 3)
    assert "etc/issue.net" in base and "usr/bin/less" not in base


def test_applied_layers_equal_merged_rootfs(applied_rootfs: Path, debian_rootfs: Path) -> None:  # noqa: F811
    want, got = describe_tree(debian_rootfs), describe_tree(applied_rootfs)
    assert got == want, tree_differences(got, want)
    for rel in images.REMOVED_PATHS:
        assert rel not in got
    assert sorted(p for p in got if p.startswith("etc/skel/")) == ["etc/skel/.profile", "etc/skel/README"]
    assert got["etc/skel/README"].xattrs == (("user.imgfs.layer", b"2"),)
    assert got[images.HARDLINKS[0]].nlink == 2
    assert len(got) > 5000 and any(e.kind == "chardev" for e in got.values())


def test_image_runs_python_and_the_added_package(applied_rootfs: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    out = subprocess.run([chroot, str(applied_rootfs), "python3", "-B", "-c", "print(6*7)"],
                         check=False, capture_output=True, text=True, env=env, timeout=60)
    assert (out.returncode, out.stdout) == (0, "42\n"), out.stderr
    out = subprocess.run([chroot, str(applied_rootfs), "file", "-b", "/etc/skel/README"],
                         check=False, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "text" in out.stdout, out.stderr


def test_push_oci_keeps_digests(debian_image: Path, registry) -> None:  # noqa: F811
    digest, manifest, _ = _manifest(debian_image)
    images.push_oci(debian_image, registry.host, "support/debian", "v1")
    r = requests.get(f"{registry.url}/v2/support/debian/manifests/v1", timeout=30,
                     headers={"Accept": images.MANIFEST_MEDIA_TYPE})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
    assert r.content == _blob(debian_image, digest).read_bytes()
    for layer in manifest["layers"]:
        h = requests.head(f"{registry.url}/v2/support/debian/blobs/{layer['digest']}", timeout=30)
        assert h.status_code == 200 and int(h.headers["Content-Length"]) == layer["size"]


def test_push_oci_reports_failure(debian_image: Path) -> None:  # noqa: F811
    with pytest.raises(RuntimeError, match="skopeo copy"):
        images.push_oci(debian_image, "127.0.0.1:1", "support/none", "v1")


def test_synthetic_diff_round_trips(tmp_path: Path) -> None:
    """tree_diff + the layer writer on every kind of change, applied back by the oracle."""
    lower, upper, applied = tmp_path / "lower", tmp_path / "upper", tmp_path / "applied"
    for root in (lower, upper):
        (root / "keep").mkdir(parents=True)
        (root / "keep/same").write_text("same")
        (root / "keep/changed").write_text("v1")
        (root / "gone/deep").mkdir(parents=True)
        (root / "gone/deep/x").write_text("x")
        (root / "opq").mkdir()
        (root / "opq/old").write_text("old")
        (root / "keep/gone-file").write_text("bye")
        os.mkfifo(root / "keep/fifo")
        (root / "keep/same-h1").write_text("linked")
        os.link(root / "keep/same-h1", root / "keep/same-h2")
    (upper / "keep/changed").write_text("v2")
    (upper / "keep/gone-file").unlink()
    for p in ("gone/deep/x", "gone/deep", "gone"):
        (upper / p).rmdir() if (upper / p).is_dir() else (upper / p).unlink()
    (upper / "opq/old").unlink()
    (upper / "opq/new").write_text("new")
    (upper / "new/dir").mkdir(parents=True)
    (upper / "new/dir/file").write_text("n")
    os.symlink("../keep/same", upper / "new/link")
    os.setxattr(upper / "keep/same", "user.k", b"v")
    os.link(upper / "keep/changed", upper / "new/hard")
    for root in (lower, upper):
        clamp_mtimes(root, images.SOURCE_DATE_EPOCH)
    entries = tree_diff(lower, upper, ("opq",))
    names = [name for name, _ in entries]
    assert "gone" not in names and ".wh.gone" in names and "keep/.wh.gone-file" in names
    assert "opq/.wh..wh..opq" in names and "keep/same-h1" not in names and "keep/fifo" not in names
    layout = tmp_path / "oci"
    (layout / "blobs/sha256").mkdir(parents=True)
    layers = [images._write_layer(layout, lower, [(p, None) for p in walk(lower)]),
              images._write_layer(layout, upper, entries)]
    applied.mkdir()
    for layer in layers:
        apply_layer(_blob(layout, layer["digest"]), applied)
    got, want = describe_tree(applied), describe_tree(upper)
    assert got == want, tree_differences(got, want)
    assert got["new/hard"].nlink == 2


_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.support.images import cached_build
    def build(tmp):
        with open(sys.argv[2], "a") as f:
            f.write("built\\n")
        time.sleep(0.5)
        if sys.argv[3] == "fail":
            raise RuntimeError("boom")
        (tmp / "result").write_text("ok")
    print(cached_build(Path(sys.argv[1]), "thing", build))
""")


def test_cached_build_once_across_processes(tmp_path: Path) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "count"
    repo = Path(__file__).resolve().parents[2]

    def run(mode: str) -> list[subprocess.Popen]:
        return [subprocess.Popen([sys.executable, "-c", _BUILDER, str(cache), str(counter), mode], cwd=repo,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(3 if mode == "ok" else 1)]

    (failing,) = run("fail")
    assert failing.wait(60) != 0 and "boom" in failing.stderr.read()
    assert not (cache / "thing").exists()            # nothing half-built is published
    procs = run("ok")
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(outs) == {str(cache / "thing")}
    assert (cache / "thing" / "result").read_text() == "ok"
    assert counter.read_text().count("built") == 2   # the failed try, then exactly one build
    assert not (cache / ".thing.tmp").exists()


def test_apt_mirror_from_deb822_and_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("IMGFS_DEBIAN_MIRROR", raising=False)
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# comment\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb deb-src\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert images.apt_mirror(apt) == "http://mirror.example/debian"
    (apt / "sources.list.d/debian.sources").unlink()
    (apt / "sources.list").write_text("# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/d bookworm main\n")
    assert images.apt_mirror(apt) == "http://m.example/d"
    monkeypatch.setenv("IMGFS_DEBIAN_MIRROR", "http://env.example/debian")
    assert images.apt_mirror(apt) == "http://env.example/debian"
