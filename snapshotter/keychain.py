"""Registry credentials learnt from the node's image pulls, per repository, in memory.

Why: on Kubernetes the credentials of a private image (imagePullSecrets) reach the runtime
only inside the CRI PullImage call; containerd uses them for its own fetches and the
snapshotter never sees them, so it could not check an imgfs image's bootstraps nor start its
fusefs daemon, and the image fell back to a full pull. ``snapshotter.criproxy`` sits in
front of containerd's CRI image service and hands each pull's credentials here.

A pull's credentials are *pending* while containerd pulls (the snapshotter checks the
layers' bootstraps during the pull, so it needs them then) and *kept* only when the pull
succeeds; a failed pull leaves what was kept before. Both are per repository (registry host
and repository): a secret is used for the images it was given for, not for everything else
on the same registry, and a wrong one cannot replace a working one. The snapshotter uses them
before `[registry] credentials`, and hands them to the image's daemon as an auth file. In
memory only, as the kubelet keeps them: after a restart the next pull brings them again;
a daemon keeps the auth file it was started with.
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
        except (binascii.Error, ValueError):      # ValueError: not ASCII, or not UTF-8
            log.warning("a pull's credentials (auth) are not valid base64 of user:password: ignored")
            return None
        return Credentials(user, secret) if sep else None
    if auth.registry_token:
        log.warning("a pull carries a registry token only; the snapshotter cannot use those "
                    "(it uses [registry] credentials for that registry instead)")
    return None


def repository_of(image: str) -> tuple[str, str] | None:
    """(registry host[:port], repository) of a CRI image name (docker.io names normalised)."""
    try:
        ref = parse_reference(image)
    except InvalidReference:
        return None
    return ref.registry, ref.repository


class Keychain:
    """(host, repository) -> credentials of pulls in flight and of the last good pull."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], Credentials] = {}
        self._pending: dict[tuple[str, str], list[Credentials]] = {}

    def begin(self, image: str, auth) -> tuple[tuple[str, str], Credentials] | None:
        """A pull of ``image`` (a CRI image name) with ``auth`` starts; returns the handle for
        ``end``, or None when it carries nothing usable."""
        repo, creds = repository_of(image), credentials_of(auth)
        if repo is None or creds is None:
            return None
        with self._lock:
            self._pending.setdefault(repo, []).append(creds)
        return repo, creds

    def end(self, handle: tuple[tuple[str, str], Credentials], ok: bool) -> None:
        """The pull ``begin`` returned ``handle`` for is over: keep its credentials if ``ok``."""
        repo, creds = handle
        with self._lock:
            pending = self._pending.get(repo, [])
            if creds in pending:
                pending.remove(creds)
            if not pending:
                self._pending.pop(repo, None)
            known = self._kept.get(repo) == creds
            if ok:
                self._kept[repo] = creds
        if ok and not known:
            log.info("credentials for %s/%s learnt from a CRI pull", *repo)

    def get(self, host: str, repository: str) -> Credentials | None:
        """The newest credentials of a pull in flight for the repository, else the kept ones."""
        with self._lock:
            pending = self._pending.get((host, repository))
            return pending[-1] if pending else self._kept.get((host, repository))

    def write_auth_file(self, host: str, repository: str, path: Path) -> Path | None:
        """A docker config.json (mode 0600) at ``path`` with the credentials for the repository;
        when none are known, the file a daemon was given before (a snapshotter restart forgets
        the pulls, not the daemons' credentials), else None."""
        creds = self.get(host, repository)
        if creds is None:
            return path if path.exists() else None
        entry = ({"identitytoken": creds.password} if creds.identity_token
                 else {"username": creds.username, "password": creds.password})
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {host: entry}}, f)
        os.replace(tmp, path)
        return path
