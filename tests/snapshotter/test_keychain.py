"""snapshotter.keychain: what a CRI pull's AuthConfig gives, per repository, and its auth file."""
from __future__ import annotations

import base64
import json
import stat

import pytest

from registry.credentials import Credentials
from snapshotter.keychain import Keychain, credentials_of, repository_of
from snapshotter.proto import criauth_pb2 as pb

REG = "reg.example:5000"


@pytest.mark.parametrize("auth, want", [
    (pb.AuthConfig(username="u", password="p"), Credentials("u", "p")),
    (pb.AuthConfig(auth=base64.b64encode(b"u:p:with:colons").decode()), Credentials("u", "p:with:colons")),
    (pb.AuthConfig(identity_token="refresh"), Credentials("<token>", "refresh", identity_token=True)),
    (pb.AuthConfig(auth="%%% not base64"), None),
    (pb.AuthConfig(auth="dXNlcjpwdw==é"), None),                 # not ASCII: b64decode's ValueError
    (pb.AuthConfig(auth=base64.b64encode(b"no-colon").decode()), None),
    (pb.AuthConfig(registry_token="bearer-only"), None),
    (pb.AuthConfig(), None),
])
def test_credentials_of(auth, want):
    assert credentials_of(auth) == want


@pytest.mark.parametrize("image, repo", [
    ("127.0.0.1:5000/a/b:1", ("127.0.0.1:5000", "a/b")),
    ("registry.example/team/app@sha256:" + "0" * 64, ("registry.example", "team/app")),
    ("busybox", ("docker.io", "library/busybox")),
    ("UPPER/case", None),
])
def test_repository_of(image, repo):
    assert repository_of(image) == repo


def test_pending_during_the_pull_kept_only_when_it_succeeds():
    k = Keychain()
    good = k.begin(f"{REG}/team/app:1", pb.AuthConfig(username="good", password="1"))
    assert k.get(REG, "team/app") == Credentials("good", "1")       # usable while containerd pulls
    assert k.get(REG, "other/app") is None                          # per repository, not per host
    k.end(good, ok=True)
    bad = k.begin(f"{REG}/team/app:2", pb.AuthConfig(username="wrong", password="x"))
    assert k.get(REG, "team/app") == Credentials("wrong", "x")      # the newest pull in flight
    k.end(bad, ok=False)                                            # refused: the kept ones stay
    assert k.get(REG, "team/app") == Credentials("good", "1")
    assert k.begin(f"{REG}/team/app:3", pb.AuthConfig()) is None     # anonymous: nothing to learn


def test_auth_file_written_0600_and_kept_when_nothing_is_known(tmp_path):
    k = Keychain()
    path = tmp_path / "auth.json"
    assert k.write_auth_file(REG, "team/app", path) is None and not path.exists()
    k.end(k.begin(f"{REG}/team/app:1", pb.AuthConfig(username="u", password="p")), ok=True)
    assert k.write_auth_file(REG, "team/app", path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"auths": {REG: {"username": "u", "password": "p"}}}
    # a restarted snapshotter knows no pulls yet: the daemon keeps the file it had
    assert Keychain().write_auth_file(REG, "team/app", path) == path
    assert json.loads(path.read_text())["auths"][REG]["username"] == "u"
    k.end(k.begin(f"{REG}/team/app:1", pb.AuthConfig(identity_token="tok")), ok=True)
    k.write_auth_file(REG, "team/app", path)
    assert json.loads(path.read_text()) == {"auths": {REG: {"identitytoken": "tok"}}}
