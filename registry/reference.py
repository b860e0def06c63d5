"""Image references: ``host[:port]/repo[:tag][@digest]``.

The grammar follows distribution's reference package (the one docker and
containerd use): the first path component is a registry host when it contains a
``.`` or a ``:`` or is ``localhost``; otherwise the reference is on Docker Hub
(``docker.io``) and a single-component repository gets the ``library/`` prefix.
Without tag and digest the tag is ``latest``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidReference(ValueError):
    """A string is not a valid image reference or digest."""


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``algorithm:hex`` with a known algorithm and length, else raise."""
    m = _DIGEST.fullmatch(digest or "")
    if not m:
        raise InvalidReference(f"invalid digest {digest!r}: expected algorithm:hex")
    algo, hexpart = m.groups()
    want = _DIGEST_HEX_LEN.get(algo)
    if want is None:
        raise InvalidReference(f"unsupported digest algorithm {algo!r} in {digest!r}")
    if len(hexpart) != want or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise InvalidReference(f"invalid {algo} digest {digest!r}: expected {want} lowercase hex digits")
    return digest


def validate_repository(repo: str) -> str:
    """Return ``repo`` if every path component matches the distribution grammar, else raise."""
    if not repo or len(repo) > 255 or any(not _COMPONENT.fullmatch(c) for c in repo.split("/")):
        raise InvalidReference(f"invalid repository name {repo!r}")
    return repo


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it matches the distribution tag grammar, else raise."""
    if not _TAG.fullmatch(tag or ""):
        raise InvalidReference(f"invalid tag {tag!r}")
    return tag


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``tag`` and ``digest`` may both be set (the digest wins when fetching)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to put after ``/manifests/``: the digest if known, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=validate_digest(digest))

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=validate_tag(tag), digest=None)

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(text: str) -> Reference:
    """Parse ``host[:port]/repo[:tag][@digest]`` (see module doc for defaults).

    Raises:
        InvalidReference: the text is not a valid reference; the message says which part is wrong.
    """
    if not isinstance(text, str) or not text or text != text.strip():
        raise InvalidReference(f"invalid reference {text!r}")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        validate_digest(digest)
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise InvalidReference(f"invalid registry host {first!r} in reference {text!r}")
        registry, path = first, remainder
    else:
        registry, path = DEFAULT_REGISTRY, rest
    tag = None
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1:]
        validate_tag(tag)
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    try:
        validate_repository(path)
    except InvalidReference:
        raise InvalidReference(f"invalid repository {path!r} in reference {text!r}") from None
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)
