"""Auth flows against the fake registry: basic, bearer tokens (cache, expiry, revocation), docker config.

Every test also checks that secrets never reach exceptions, reprs or logs.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import traceback

import pytest

from registry.auth import Authenticator, parse_challenge
from registry.client import AuthError, RegistryClient
from registry.credentials import Credentials
from tests.registry.images import pattern

SECRET = "s3cr3t-Pa55w0rd"
USER = "alice-user"


def assert_no_secret(caplog, *objs) -> None:
    b64 = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    texts = [caplog.text]
    for o in objs:
        texts.append(repr(o))
        texts.append(str(o))
        if isinstance(o, BaseException):
            texts.append("".join(traceback.format_exception(o)))
    for t in texts:
        assert SECRET not in t and b64 not in t


@pytest.fixture(autouse=True)
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)


def client_for(fake, cfg, **kw) -> RegistryClient:
    return RegistryClient(fake.host, plain_http=True, docker_config=cfg, retries=1, backoff=0, **kw)


def test_basic_auth_with_flags(fake, no_docker_config, caplog):
    fake.b.auth, fake.b.users = "basic", {USER: SECRET}
    d = fake.add_blob(pattern(1000, 1))
    c = client_for(fake, no_docker_config, username=USER, password=SECRET)
    assert c.get_blob("r/x", d) == fake.blobs[d]
    assert c.get_range("r/x", d, 10, 20) == fake.blobs[d][10:20]
    # one 401 to learn the scheme, then credentials up front
    assert [s.headers.get("Authorization", "")[:6] for s in fake.seen] == ["", "Basic ", "Basic "]
    assert_no_secret(caplog, c, c.auth)


def test_basic_auth_missing_or_wrong_credentials(fake, no_docker_config, caplog):
    fake.b.auth, fake.b.users = "basic", {USER: SECRET}
    d = fake.add_blob(b"x")
    with pytest.raises(AuthError) as e1:
        client_for(fake, no_docker_config).get_blob("r/x", d)
    assert "no credentials" in str(e1.value) and fake.host in str(e1.value)
    fake.b.users = {USER: "other"}
    c = client_for(fake, no_docker_config, username=USER, password=SECRET)
    with pytest.raises(AuthError) as e2:
        c.get_blob("r/x", d)
    assert "401" in str(e2.value)
    assert_no_secret(caplog, e1.value, e2.value, c)


def test_bearer_token_anonymous_cached_per_scope(fake, no_docker_config, caplog):
    fake.b.auth = "bearer"
    d = fake.add_blob(pattern(5000, 2))
    c = client_for(fake, no_docker_config)
    for _ in range(3):
        assert c.get_blob("lib/app", d) == fake.blobs[d]
    assert len(fake.token_requests) == 1
    q = fake.token_requests[0]["query"]
    assert q["service"] == ["fake-registry"] and q["scope"] == ["repository:lib/app:pull"]
    assert fake.token_requests[0]["authorization"] == ""
    c.get_blob("lib/other", d)           # another scope: own token, fetched before the request
    assert len(fake.token_requests) == 2
    assert fake.count("GET", "/v2/lib/other/") == 1
    assert_no_secret(caplog, c)


def test_bearer_token_with_credentials(fake, no_docker_config, caplog):
    fake.b.auth, fake.b.users = "bearer", {USER: SECRET}
    d = fake.add_blob(pattern(100, 3))
    c = client_for(fake, no_docker_config, username=USER, password=SECRET)
    assert c.get_blob("lib/app", d) == fake.blobs[d]
    assert fake.token_requests[0]["authorization"].startswith("Basic ")
    fake.b.users = {USER: "changed"}
    fake.revoke_tokens()
    with pytest.raises(AuthError) as ei:
        c.get_blob("lib/app", d)
    assert "token endpoint" in str(ei.value) and "401" in str(ei.value)
    assert_no_secret(caplog, c, ei.value)


def test_bearer_token_refreshed_when_revoked(fake, no_docker_config, caplog):
    fake.b.auth = "bearer"
    d = fake.add_blob(pattern(100, 4))
    c = client_for(fake, no_docker_config)
    c.get_blob("lib/app", d)
    fake.revoke_tokens()                 # the registry forgets it: expired early, as far as we know
    assert c.get_blob("lib/app", d) == fake.blobs[d]
    assert len(fake.token_requests) == 2
    assert c.statistics().token_fetches == 2


def test_bearer_token_refreshed_when_lifetime_runs_out(fake, no_docker_config):
    fake.b.auth, fake.b.token_lifetime = "bearer", 0     # expired the moment it is issued
    d = fake.add_blob(pattern(100, 5))
    c = client_for(fake, no_docker_config)
    for _ in range(3):
        c.get_blob("lib/app", d)
    assert len(fake.token_requests) == 3                # one fresh token per request ...
    assert fake.count("GET", "/v2/lib/app/blobs/") == 4  # ... fetched up front: only the first met a 401


def test_token_cache_expiry_margin_with_clock():
    """Unit: a 100 s token is renewed 10 s early; an absent expires_in means 60 s."""
    now = [1000.0]
    answers = [{"token": "t1", "expires_in": 100}, {"token": "t2"}, {"token": "t3"}]

    class Resp:
        status_code = 200

        def __init__(self, doc):
            self.doc = doc

        def json(self):
            return self.doc

    def fetch(method, url, **kw):
        return Resp(answers.pop(0))

    a = Authenticator("r.example", None, fetch, clock=lambda: now[0])
    a._scheme, a._bearer = "bearer", {"realm": "https://auth.example/token", "service": "s"}
    scopes = ("repository:x:pull",)
    assert a.header(scopes) == {"Authorization": "Bearer t1"}
    now[0] += 89.0
    assert a.header(scopes)["Authorization"] == "Bearer t1"
    now[0] += 2.0
    assert a.header(scopes)["Authorization"] == "Bearer t2"
    now[0] += 53.0
    assert a.header(scopes)["Authorization"] == "Bearer t2"
    now[0] += 2.0
    assert a.header(scopes)["Authorization"] == "Bearer t3"


@pytest.mark.parametrize("entry_kind", ["auth", "fields", "https-key"])
def test_docker_config_credentials(fake, tmp_path, caplog, entry_kind):
    fake.b.auth, fake.b.users = "basic", {USER: SECRET}
    d = fake.add_blob(b"hello")
    key = fake.host
    if entry_kind == "auth":
        entry = {"auth": base64.b64encode(f"{USER}:{SECRET}".encode()).decode()}
    elif entry_kind == "fields":
        entry = {"username": USER, "password": SECRET}
    else:
        key = f"https://{fake.host}/v1/"
        entry = {"auth": base64.b64encode(f"{USER}:{SECRET}".encode()).decode()}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"other.example": {"auth": "eDp5"}, key: entry}}))
    c = client_for(fake, cfg)
    assert c.get_blob("r/x", d) == b"hello"
    assert_no_secret(caplog, c, c.auth)


def test_docker_config_from_env_and_credential_helper(fake, tmp_path, monkeypatch, caplog):
    fake.b.auth, fake.b.users = "basic", {USER: SECRET}
    d = fake.add_blob(b"helper")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-imgfstest"
    helper.write_text("#!/bin/sh\nread server\n"
                      f"echo '{{\"ServerURL\": \"'$server'\", \"Username\": \"{USER}\", \"Secret\": \"{SECRET}\"}}'\n")
    helper.chmod(0o755)
    confdir = tmp_path / "dockerconf"
    confdir.mkdir()
    (confdir / "config.json").write_text(json.dumps({"credHelpers": {fake.host: "imgfstest"}}))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(confdir))
    c = RegistryClient(fake.host, plain_http=True)
    assert c.get_blob("r/x", d) == b"helper"
    assert_no_secret(caplog, c)


def test_malformed_docker_config_is_a_clear_error(fake, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {fake.host: {"auth": "%%%not-base64"}}}))
    with pytest.raises(AuthError, match="not valid base64"):
        client_for(fake, cfg)
    cfg.write_text("{not json")
    with pytest.raises(AuthError, match="not valid JSON"):
        client_for(fake, cfg)


def test_auth_file_must_exist_where_the_default_config_may_not(fake, tmp_path, monkeypatch):
    """An auth file the user named (--authfile) that is missing is an error, not anonymous;
    the default docker config may be absent (anonymous pulls)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-such-dir"))
    with pytest.raises(AuthError, match="does not exist"):
        RegistryClient(fake.host, plain_http=True, auth_file=tmp_path / "typo.json")
    RegistryClient(fake.host, plain_http=True)                       # default: anonymous
    d = fake.add_blob(b"named")
    fake.b.auth, fake.b.users = "basic", {USER: SECRET}
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"auths": {fake.host: {"username": USER, "password": SECRET}}}))
    named.chmod(0o600)
    assert RegistryClient(fake.host, plain_http=True, auth_file=named).get_blob("r/x", d) == b"named"


def test_credentials_repr_is_redacted():
    c = Credentials(USER, SECRET)
    assert SECRET not in repr(c) and USER not in repr(c)


def test_parse_challenge():
    ch = parse_challenge('Bearer realm="https://a.example/token",service="reg",'
                         'scope="repository:x/y:pull,push",error="a \\"quoted\\" word"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://a.example/token", "service": "reg",
                         "scope": "repository:x/y:pull,push", "error": 'a "quoted" word'}
    assert parse_challenge('Basic realm="x"').scheme == "basic"
    assert parse_challenge("") is None


def test_credential_helper_runs_only_when_credentials_are_needed(fake, tmp_path):
    d = fake.add_blob(b"anon")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credsStore": "imgfs-no-such-helper"}))
    c = RegistryClient(fake.host, plain_http=True, docker_config=cfg, retries=0)
    assert c.get_blob("r/x", d) == b"anon"            # anonymous registry: the helper never runs
    fake.b.auth, fake.b.users = "basic", {USER: SECRET}
    c2 = RegistryClient(fake.host, plain_http=True, docker_config=cfg, retries=0)
    with pytest.raises(AuthError, match="imgfs-no-such-helper"):
        c2.get_blob("r/x", d)


def test_one_token_fetch_for_many_threads(fake, no_docker_config):
    import threading

    fake.b.auth = "bearer"
    data = pattern(100_000, 9)
    d = fake.add_blob(data)
    c = client_for(fake, no_docker_config)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                s = (i * 977 + j * 3001) % 90_000
                assert c.get_range("lib/app", d, s, s + 1000) == data[s:s + 1000]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(fake.token_requests) == 1
