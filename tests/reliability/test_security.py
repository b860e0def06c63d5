"""Security defaults: private sockets (0600 from the moment they exist), a private cache dir,
credentials only from safely-moded files and never in errors or logs, chunk verification
that cannot be switched off. TLS verification by default is proven in
tests/registry/test_faults.py::test_tls_verified_by_default_and_insecure_per_client.
"""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from dataclasses import fields

import pytest
import trio

from fusefs import control, fdstore
from fusefs.mount import MountConfig, private_dir
from registry.client import RegistryClient, RegistryError
from registry.credentials import CredentialsError, docker_credential_source
from tests.reliability.conftest import ROOT

SECRET = "pw-9f8e7d6c5b4a"


def _no_chmod(monkeypatch, module) -> None:
    """A chmod after bind would leave a window; with chmod gone the mode must still be 0600."""
    monkeypatch.setattr(module.os, "chmod", lambda *a, **k: None)


def test_control_socket_is_0600_at_bind_time(tmp_path, monkeypatch):
    _no_chmod(monkeypatch, control)
    path = str(tmp_path / "ctl.sock")
    old = os.umask(0)   # the most permissive umask a caller could have
    try:
        async def main():
            async def handler(method, target):
                return 200, "text/plain", b"ok\n"
            async with trio.open_nursery() as n:
                await n.start(control.serve_control, path, handler)
                mode = stat.S_IMODE(os.stat(path).st_mode)
                n.cancel_scope.cancel()
            return mode
        assert trio.run(main) == 0o600
    finally:
        os.umask(old)


def test_fd_store_socket_is_0600_at_bind_time(tmp_path):
    old = os.umask(0)
    try:
        sock = fdstore.bind_private(str(tmp_path / "s.sock"))
    finally:
        os.umask(old)
    with sock:
        assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o600


def test_cache_dir_is_private(tmp_path):
    fresh = tmp_path / "a" / "cache"
    old = os.umask(0)
    try:
        private_dir(str(fresh))
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    private_dir(str(loose))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_a_real_mount_makes_its_cache_dir_private(tmp_path, layout, daemons):
    cache = tmp_path / "cache"
    daemons(f"oci:{layout}", tmp_path / "mnt", "--cache-dir", str(cache), "--no-prefetch")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def _config(tmp_path, mode: int):
    p = tmp_path / "config.json"
    p.write_text('{"auths": {"127.0.0.1:1": {"auth": "dTpwdy05ZjhlN2Q2YzViNGE="}}}')
    os.chmod(p, mode)
    return p


def test_credentials_file_writable_by_others_is_refused(tmp_path):
    with pytest.raises(CredentialsError, match="writable by other users"):
        docker_credential_source("127.0.0.1:1", _config(tmp_path, 0o666))


def test_world_readable_credentials_warn(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        creds = docker_credential_source("127.0.0.1:1", _config(tmp_path, 0o644))()
    assert creds is not None and "readable by every user" in caplog.text
    assert SECRET not in caplog.text


def test_private_credentials_are_used_quietly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        creds = docker_credential_source("127.0.0.1:1", _config(tmp_path, 0o600))()
    assert creds is not None and caplog.text == ""


def test_credentials_never_in_errors_or_logs(registry, caplog):
    """A failing request with credentials: neither the error nor DEBUG logs show the password."""
    client = RegistryClient(registry.host, plain_http=True, username="user", password=SECRET, retries=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(RegistryError) as ei:
        client.get_manifest("reliability/nothing-here", "latest")
    assert SECRET not in str(ei.value) and SECRET not in repr(client) and SECRET not in caplog.text


def test_chunk_verification_cannot_be_switched_off():
    """No config key or flag disables it (the behaviour itself: tests/fusefs/test_faults.py
    ::test_flipped_byte_is_eio_logged_never_cached_then_recovers)."""
    assert not [f.name for f in fields(MountConfig) if "verif" in f.name or "digest" in f.name]
    r = subprocess.run([sys.executable, "-m", "fusefs.cli", "mount", "oci:/nonexistent", "/tmp", "--no-verify"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "unrecognized arguments: --no-verify" in r.stderr
