"""snapshotter.keychain: what a CRI pull's AuthConfig gives, per registry, and its auth file."""
from __future__ import annotations

import base64
import json
import stat

import pytest

from registry.credentials import Credentials
from snapshotter.keychain import Keychain, credentials_of, registry_of
from snapshotter.proto import criauth_pb2 as pb


@pytest.mark.parametrize("auth, want", [
    (pb.AuthConfig(username="u", password="p"), Credentials("u", "p")),
    (pb.AuthConfig(auth=base64.b64encode(b"u:p:with:colons").decode()), Credentials("u", "p:with:colons")),
    (pb.AuthConfig(identity_token="refresh"), Credentials("<token>", "refresh", identity_token=True)),
    (pb.AuthConfig(auth="%%% not base64"), None),
    (pb.AuthConfig(auth=base64.b64encode(b"no-colon").decode()), None),
    (pb.AuthConfig(registry_token="bearer-only"), None),
    (pb.AuthConfig(), None),
])
def test_credentials_of(auth, want):
    assert credentials_of(auth) == want


@pytest.mark.parametrize("image, host", [
    ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000"),
    ("registry.example/team/app@sha256:" + "0" * 64, "registry.example"),
    ("busybox", "docker.io"),
    ("UPPER/case", None),
])
def test_registry_of(image, host):
    assert registry_of(image) == host


def test_last_pull_wins_per_host_and_auth_file(tmp_path):
    k = Keychain()
    k.learn("reg.example:5000/a:1", pb.AuthConfig(username="old", password="1"))
    k.learn("reg.example:5000/b:1", pb.AuthConfig(username="new", password="2"))
    k.learn("other.example/c:1", pb.AuthConfig())                  # anonymous: nothing learnt
    assert k.get("reg.example:5000") == Credentials("new", "2") and k.get("other.example") is None
    path = k.write_auth_file("reg.example:5000", tmp_path / "auth.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"auths": {"reg.example:5000": {"username": "new", "password": "2"}}}
    assert k.write_auth_file("other.example", path) is None and not path.exists()
    k.learn("reg.example:5000/a:1", pb.AuthConfig(identity_token="tok"))
    k.write_auth_file("reg.example:5000", path)
    assert json.loads(path.read_text()) == {"auths": {"reg.example:5000": {"identitytoken": "tok"}}}
