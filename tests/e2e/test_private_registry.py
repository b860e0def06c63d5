"""A private registry (docker-registry with htpasswd basic auth), end to end.

CI pipelines and nodes pull from registries that want credentials. Each tool reads them
from a docker config.json: `imgconv --authfile`, `imgfs mount --authfile`, the
snapshotter's `[registry] credentials` (handed to its daemons as `--authfile`). Checked
here against the real registry: the converted image is pushed to it and mounted lazily
from it, a container runs from it through containerd, and without credentials, with wrong
ones or with an auth file that does not exist each tool fails with a clear message and a
non-zero exit instead of going on anonymously.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fusefs.conftest import ROOT, mount_image, run_imgfs  # noqa: F401  (mount_image: a fixture)
from tests.support.registry import Registry, start_registry
from tests.support.stack import make_stack
from tests.support.tinyimage import push_tiny_image

pytestmark = pytest.mark.e2e
USER, PASSWORD = "ci-bot", "s3cret-pw"


def imgconv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converter.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def authfile(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def private(tmp_path_factory) -> Registry:
    reg = start_registry(tmp_path_factory.mktemp("private-registry"), users={USER: PASSWORD})
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def auth(private, tmp_path_factory) -> Path:
    return authfile(tmp_path_factory.mktemp("auth") / "config.json", private.host, USER, PASSWORD)


@pytest.fixture(scope="module")
def image(registry, private, auth) -> str:
    """The tiny image from the (anonymous) session registry, converted into the private one."""
    push_tiny_image(registry.host, "private-src", "plain")
    ref = f"{private.host}/private/tiny:imgfs"
    r = imgconv("convert", "--plain-http", "--authfile", str(auth),
                f"docker://{registry.host}/private-src:plain", f"docker://{ref}")
    assert r.returncode == 0, r.stderr[-3000:]
    return ref


def test_imgconv_needs_the_credentials(registry, private, auth, image, tmp_path) -> None:
    src = f"docker://{registry.host}/private-src:plain"
    dst = f"docker://{private.host}/private/other:imgfs"
    r = imgconv("convert", "--plain-http", src, dst)            # no auth file: anonymous
    assert r.returncode == 4 and "credentials" in r.stderr, r.stderr[-2000:]
    wrong = authfile(tmp_path / "wrong.json", private.host, USER, "not-it")
    r = imgconv("convert", "--plain-http", "--authfile", str(wrong), src, dst)
    assert r.returncode == 4 and "rejected" in r.stderr, r.stderr[-2000:]
    assert "not-it" not in r.stdout + r.stderr                   # the secret it sent is not shown
    r = imgconv("inspect", "--plain-http", "--authfile", str(tmp_path / "typo.json"), f"docker://{image}")
    assert r.returncode == 4 and "does not exist" in r.stderr, r.stderr[-2000:]
    r = imgconv("inspect", "--plain-http", "--authfile", str(auth), "--json", f"docker://{image}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert PASSWORD not in r.stdout + r.stderr
    assert json.loads(r.stdout)["layers"]


def test_imgfs_mounts_from_the_private_registry(image, auth, mount_image, tmp_path) -> None:  # noqa: F811
    m = mount_image(f"docker://{image}", "--authfile", str(auth))
    assert (m.mountpoint / "usr" / "bin" / "dash").read_bytes() == Path("/usr/bin/dash").read_bytes()

    mp = tmp_path / "anon"
    mp.mkdir()
    for extra, why in (([], "credentials"), (["--authfile", str(tmp_path / "typo.json")], "does not exist")):
        r = run_imgfs("mount", f"docker://{image}", str(mp), "--plain-http", "--cache-dir",
                      str(tmp_path / "cache"), *extra, timeout=60)
        assert r.returncode != 0 and why in r.stderr, r.stderr[-2000:]
        assert not Path(mp).is_mount()


def test_snapshotter_runs_a_container_from_the_private_registry(private, auth, image) -> None:
    stack = make_stack(private.host, registry_extra=f'credentials = "{auth}"')
    try:
        stack.ctd.ctr_remote("images", "rpull", "--plain-http", "--user", f"{USER}:{PASSWORD}",
                             "--snapshotter", "imgfs", image)
        assert "skip-pull" in stack.snap.log_text()          # bootstraps checked with the credentials
        out = stack.run(image, "private-1", "/bin/sh", "-c", "echo private-ok")
        assert out.strip() == "private-ok"
        assert stack.daemon_pids()                            # served lazily by a fusefs daemon
        assert PASSWORD not in stack.snap.log_text()
    finally:
        stack.stop()


def test_imgconv_record_mounts_with_the_auth_file(image, auth, tmp_path) -> None:
    trace = tmp_path / "trace.json"
    r = imgconv("record", "--plain-http", "--authfile", str(auth), f"docker://{image}", "-o", str(trace),
                "--", "/bin/sh", "-c", "echo recorded")
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(f["path"].endswith("dash") for f in json.loads(trace.read_text())["files"])
