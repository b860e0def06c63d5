"""Where credentials come from: explicit flags, else the docker config file.

The docker config (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``,
or a path given explicitly) holds ``auths`` keyed by registry, written by
``docker login`` in several spellings (``host``, ``https://host``,
``https://host/v1/``; Docker Hub as ``https://index.docker.io/v1/``). An entry
carries ``auth`` (base64 of ``user:password``) or ``username``/``password``,
or an ``identitytoken`` (an OAuth2 refresh token, exchanged at the token endpoint
as docker does).
``credsStore``/``credHelpers`` run ``docker-credential-<name> get`` like docker does.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


class CredentialsError(ValueError):
    """The docker config exists but cannot be used (bad JSON, bad base64, failing helper)."""


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (refresh) token. Never shown by repr."""

    username: str = field(repr=False)
    password: str = field(repr=False)
    identity_token: bool = False

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


def default_docker_config() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _key_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``; a bare ``host:5000`` stays."""
    if "://" in key:
        return urlsplit(key).netloc
    return key.split("/", 1)[0]


def _same_registry(key: str, registry: str) -> bool:
    host = _key_host(key)
    if host == registry:
        return True
    return host in DOCKER_HUB_ALIASES and registry in DOCKER_HUB_ALIASES


def _decode_entry(entry: dict, registry: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise CredentialsError(f"docker config: auths entry for {registry} is not an object")
    if entry.get("identitytoken"):
        return Credentials(str(entry.get("username") or "<token>"), str(entry["identitytoken"]),
                           identity_token=True)
    if entry.get("auth"):
        try:
            raw = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"docker config: auth for {registry} is not valid base64") from None
        user, sep, password = raw.partition(":")
        if not sep:
            raise CredentialsError(f"docker config: auth for {registry} is not user:password")
        return Credentials(user, password)
    if entry.get("username") is not None and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    server = "https://index.docker.io/v1/" if registry in DOCKER_HUB_ALIASES else registry
    try:
        out = subprocess.run([f"docker-credential-{helper}", "get"], input=server, capture_output=True, check=False,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CredentialsError(f"credential helper {helper!r} failed for {registry}: "
                               f"{type(e).__name__}") from None
    if out.returncode != 0:
        # helpers answer "credentials not found in native keychain" with exit 1: anonymous.
        log.debug("credential helper %s has nothing for %s", helper, registry)
        return None
    try:
        doc = json.loads(out.stdout)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"credential helper {helper!r} gave unparsable output for {registry}") \
            from None
    return Credentials(user, secret, identity_token=user == "<token>")


CredentialSource = Callable[[], "Credentials | None"]


def docker_credential_source(registry: str, path: str | os.PathLike | None = None,
                             required: bool = False) -> CredentialSource:
    """A zero-argument callable giving the credentials for ``registry`` (host[:port]), or None.

    The config file is read and checked now: a missing file means anonymous, unless
    ``required`` (a file the user named, ``--authfile``: a typo must not turn into an
    anonymous pull and a 401 later); an unreadable or malformed one is an error (going anonymous would turn into a
    confusing 401 later). Credential helpers run only when called, i.e. when the
    registry first asks for credentials, as docker does: an anonymous registry
    never starts a helper, and a ``credsStore`` whose program is missing only
    matters if credentials are needed.
    """
    p = Path(path) if path is not None else default_docker_config()
    try:
        with open(p) as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except FileNotFoundError:
        if required:
            raise CredentialsError(f"auth file {p} does not exist") from None
        return lambda: None
    except OSError as e:
        raise CredentialsError(f"cannot read docker config {p}: {e.strerror}") from None
    if mode & 0o022:
        # whoever can write it can name a credential helper, i.e. a program we would run
        raise CredentialsError(f"docker config {p} is writable by other users (mode {mode & 0o777:04o}); "
                               f"refusing to use it: chmod 600 {p}")
    if mode & 0o004 and '"auth' in text:
        log.warning("docker config %s holds credentials and is readable by every user (mode %04o): "
                    "chmod 600 it", p, mode & 0o777)
    try:
        cfg = json.loads(text)
    except ValueError:
        raise CredentialsError(f"docker config {p} is not valid JSON") from None
    if not isinstance(cfg, dict):
        raise CredentialsError(f"docker config {p} is not a JSON object")
    helpers = cfg.get("credHelpers") or {}
    for key, helper in helpers.items():
        if _same_registry(key, registry):
            return lambda: _from_helper(str(helper), registry)
    auths = cfg.get("auths") or {}
    # Exact host first, then the other spellings, so "host" beats "https://host/v1/".
    for key in sorted(auths, key=lambda k: k != registry):
        if _same_registry(key, registry):
            creds = _decode_entry(auths[key], registry)
            if creds is not None:
                return lambda: creds
    if cfg.get("credsStore"):
        return lambda: _from_helper(str(cfg["credsStore"]), registry)
    return lambda: None


def load_docker_credentials(registry: str, path: str | os.PathLike | None = None) -> Credentials | None:
    """Credentials for ``registry`` from the docker config (helpers run now), or None (anonymous)."""
    return docker_credential_source(registry, path)()
