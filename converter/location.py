"""Parse skopeo-style image locations: docker://, oci:, docker-archive:.

Kept independent of registry.reference so a location can be validated (and
the usage error reported, exit 2) before any network code is imported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converter.errors import UsageError

_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Location:
    """Where an image lives. `kind` is "docker", "oci" or "docker-archive".

    docker: host, repo, ref (tag or digest). oci: path, ref (tag or None).
    docker-archive: path (ref unused).
    """

    kind: str
    path: Path | None = None
    host: str | None = None
    repo: str | None = None
    ref: str | None = None

    def __str__(self) -> str:
        if self.kind == "docker":
            sep = "@" if self.ref and self.ref.startswith("sha256:") else ":"
            return f"docker://{self.host}/{self.repo}{sep}{self.ref}"
        if self.kind == "oci":
            return f"oci:{self.path}" + (f":{self.ref}" if self.ref else "")
        return f"docker-archive:{self.path}"


def parse_location(text: str) -> Location:
    """Parse `docker://HOST/REPO[:TAG|@DIGEST]`, `oci:DIR[:TAG]` or `docker-archive:FILE`.

    Raises UsageError naming the accepted forms.
    """
    if text.startswith("docker://"):
        return _parse_docker(text[len("docker://"):], text)
    if text.startswith("oci:"):
        rest = text[len("oci:"):]
        path, ref = rest, None
        head, sep, tail = rest.rpartition(":")
        if sep and head and "/" not in tail:
            path, ref = head, tail
            if not _TAG_RE.match(ref):
                raise UsageError(f"bad tag {ref!r} in {text!r}")
        if not path:
            raise UsageError(f"empty directory in {text!r}")
        return Location("oci", path=Path(path), ref=ref)
    if text.startswith("docker-archive:"):
        path = text[len("docker-archive:"):]
        if not path:
            raise UsageError(f"empty file name in {text!r}")
        return Location("docker-archive", path=Path(path))
    raise UsageError(f"unknown location {text!r}: use docker://HOST/REPO:TAG, oci:DIR[:TAG] "
                     f"or docker-archive:FILE")


def _parse_docker(rest: str, text: str) -> Location:
    host, sep, name = rest.partition("/")
    if not sep or not host or not name:
        raise UsageError(f"{text!r}: expected docker://HOST/REPO:TAG (the registry host is required)")
    ref = "latest"
    if "@" in name:
        name, ref = name.split("@", 1)
        if not _DIGEST_RE.match(ref):
            raise UsageError(f"bad digest {ref!r} in {text!r}")
    else:
        head, sep, tail = name.rpartition(":")
        if sep:
            name, ref = head, tail
            if not _TAG_RE.match(ref):
                raise UsageError(f"bad tag {ref!r} in {text!r}")
    if not _REPO_RE.match(name):
        raise UsageError(f"bad repository name {name!r} in {text!r}")
    return Location("docker", host=host, repo=name, ref=ref)
