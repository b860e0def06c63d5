"""Registry credentials learnt from the node's image pulls, per registry host, in memory.

Why: on Kubernetes the credentials of a private image (imagePullSecrets) reach the runtime
only inside the CRI PullImage call; containerd uses them for its own fetches and the
snapshotter never sees them, so it could not check an imgfs image's bootstraps nor start its
fusefs daemon, and the image fell back to a full pull. ``snapshotter.criproxy`` sits in
front of containerd's CRI image service and puts each pull's credentials here; the
snapshotter then uses them for that registry (before `[registry] credentials`), and hands
them to the image's daemon as an auth file. Kept in memory only, like the kubelet keeps
them: after a restart the next pull brings them again (a running daemon has its file).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from pathlib import Path

from registry.credentials import Credentials
from registry.reference import InvalidReference, parse_reference

log = logging.getLogger("imgfs.snapshotter")


def credentials_of(auth) -> Credentials | None:
    """The Credentials in a CRI AuthConfig message, or None (anonymous, or a kind we cannot use)."""
    if auth.identity_token:
        return Credentials("<token>", auth.identity_token, identity_token=True)
    if auth.username or auth.password:
        return Credentials(auth.username, auth.password)
    if auth.auth:
        try:
            user, sep, secret = base64.b64decode(auth.auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("a pull's credentials (auth) are not valid base64 of user:password: ignored")
            return None
        return Credentials(user, secret) if sep else None
    if auth.registry_token:
        log.warning("a pull carries a registry token only; the snapshotter cannot use those "
                    "(it uses [registry] credentials for that registry instead)")
    return None


def registry_of(image: str) -> str | None:
    """The registry host[:port] of a CRI image name (docker.io names normalised)."""
    try:
        return parse_reference(image).registry
    except InvalidReference:
        return None


class Keychain:
    """host -> the credentials of the last pull from it that had some (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._creds: dict[str, Credentials] = {}

    def learn(self, image: str, auth) -> None:
        """Remember the credentials a pull of ``image`` (a CRI image name) came with."""
        host, creds = registry_of(image), credentials_of(auth)
        if host is None or creds is None:
            return
        with self._lock:
            known = self._creds.get(host) == creds
            self._creds[host] = creds
        if not known:
            log.info("credentials for %s learnt from a CRI pull", host)

    def get(self, host: str) -> Credentials | None:
        with self._lock:
            return self._creds.get(host)

    def write_auth_file(self, host: str, path: Path) -> Path | None:
        """A docker config.json (mode 0600) with the credentials for ``host`` at ``path``; None
        (and no file) when there are none."""
        creds = self.get(host)
        if creds is None:
            if path.exists():
                path.unlink()
            return None
        entry = ({"identitytoken": creds.password} if creds.identity_token
                 else {"username": creds.username, "password": creds.password})
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {host: entry}}, f)
        os.replace(tmp, path)
        return path
