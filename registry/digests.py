"""Digest computation and verification (sha256, sha384, sha512 as OCI allows)."""
from __future__ import annotations

import hashlib

from registry.reference import validate_digest

_ALGOS = {"sha256", "sha384", "sha512"}


def hasher_for(digest: str) -> hashlib._Hash:
    """A fresh hash object for the algorithm named by ``digest`` (validated first)."""
    validate_digest(digest)
    algo = digest.split(":", 1)[0]
    assert algo in _ALGOS
    return hashlib.new(algo)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes, like: str) -> str:
    """The digest of ``data`` using the same algorithm as ``like``."""
    h = hasher_for(like)
    h.update(data)
    return f"{h.name}:{h.hexdigest()}"
