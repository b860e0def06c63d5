"""Exceptions of the registry client.

Every error names what it was about (registry, repository, digest, HTTP status,
registry error code) so a log line is enough to diagnose it, and never carries
credentials: messages are built only from these fields and sanitized URLs
(paths without query strings, which may hold signed tokens).
"""
from __future__ import annotations

import re


class RegistryError(Exception):
    """Any failure talking to a registry (base class).

    Attributes are None when unknown: ``registry`` (host[:port]), ``repository``,
    ``digest``, ``status`` (HTTP status code), ``code`` (the registry's error code,
    e.g. ``BLOB_UNKNOWN``).
    """

    def __init__(self, message: str, *, registry: str | None = None, repository: str | None = None,
                 digest: str | None = None, status: int | None = None, code: str | None = None):
        self.registry = registry
        self.repository = repository
        self.digest = digest
        self.status = status
        self.code = code
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.registry:
            where.append(f"registry {self.registry}")
        if self.repository:
            where.append(f"repository {self.repository}")
        if self.digest:
            where.append(f"digest {self.digest}")
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        if self.code:
            where.append(self.code)
        return f"{self.detail} ({', '.join(where)})" if where else self.detail


class NotFound(RegistryError):
    """The manifest, blob, repository or upload does not exist (HTTP 404)."""


class PlatformNotFound(NotFound):
    """An index/manifest list has no manifest for the requested platform."""


class InvalidManifest(RegistryError):
    """The registry served a manifest that is not a usable image manifest/index (bad JSON, schema1, ...)."""


class AuthError(RegistryError):
    """Authentication or authorization failed (401/403, token endpoint refused, no credentials)."""


class DigestMismatch(RegistryError):
    """Content does not match its digest (download, upload or manifest)."""


class RangeError(RegistryError):
    """A range request could not be served as asked (bad range, short or inconsistent response)."""


_QUERY = re.compile(r"\?[^\s'\"]*")


def sanitize(text: str) -> str:
    """Strip query strings from any URL in ``text`` (they may carry signatures or tokens)."""
    return _QUERY.sub("?...", text)
