"""Blob upload (distribution spec "push"): mount, monolithic PUT, chunked PATCH.

- Cross-repo mount: ``POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other>``;
  201 means the registry linked the blob without a byte sent, 202 means it
  could not (no access, other storage) and opened an ordinary upload instead.
- Monolithic: ``POST`` opens a session, one ``PUT <location>?digest=`` with the body.
- Chunked: ``PATCH <location>`` per chunk with ``Content-Range: a-b`` (the spec's
  form, without ``bytes=``), each answer giving the next Location, then an empty
  ``PUT ?digest=``. Blobs above the chunk size go this way so that a proxy's
  request-size limit or a broken connection costs one chunk, not the blob.

A PATCH is not safe to repeat (the registry appends), so a temporary failure in
the middle restarts the whole upload in a fresh session, up to the retry budget.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from registry.digests import hasher_for
from registry.errors import DigestMismatch, RegistryError
from registry.transport import TEMPORARY_STATUS, Transport

log = logging.getLogger(__name__)

Source = bytes | bytearray | memoryview | str | os.PathLike


def source_size(source: Source) -> int:
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    return Path(source).stat().st_size


def _opener(source: Source) -> Callable[[], IO[bytes]]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return lambda: io.BytesIO(data)
    path = Path(source)
    return lambda: open(path, "rb")


def verify_source(source: Source, digest: str) -> None:
    """Refuse to upload bytes that do not match their digest (before using the network)."""
    h = hasher_for(digest)
    with _opener(source)() as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    got = f"{h.name}:{h.hexdigest()}"
    if got != digest:
        raise DigestMismatch(f"refusing to push: content hashes to {got}", digest=digest)


class Uploader:
    def __init__(self, transport: Transport, repo: str, digest: str, source: Source, size: int,
                 chunk_size: int, mount_from: str | None):
        self.t = transport
        self.repo = repo
        self.digest = digest
        self.source = source
        self.size = size
        self.chunk_size = chunk_size
        self.mount_from = mount_from
        scopes = [f"repository:{repo}:pull,push"]
        if mount_from:
            scopes.append(f"repository:{mount_from}:pull")
        self.scopes = tuple(scopes)
        self.ctx = {"repository": repo, "digest": digest}
        self.mounted = False

    def run(self) -> None:
        attempts = self.t.retries + 1
        for attempt in range(attempts):
            location = self._start(mount=self.mount_from if attempt == 0 else None)
            if location is None:
                self.mounted = True
                return
            try:
                if self.size <= self.chunk_size:
                    self._monolithic(location)
                else:
                    self._chunked(location)
                return
            except _Restart as e:
                if attempt + 1 >= attempts:
                    raise e.error from None
                log.info("upload of %s to %s broke (%s), restarting", self.digest, self.repo, e.error)
                self.t.pause(attempt)

    def _start(self, mount: str | None) -> str | None:
        params = {"mount": self.digest, "from": mount} if mount else None
        r = self.t.request("POST", f"/v2/{self.repo}/blobs/uploads/", scopes=self.scopes,
                           expect=(201, 202), params=params, **self.ctx)
        r.close()
        if r.status_code == 201 and mount:
            log.debug("mounted %s from %s into %s", self.digest, mount, self.repo)
            return None
        if r.status_code == 201:
            raise RegistryError("upload session answered 201 without a mount", status=201,
                                registry=self.t.registry, **self.ctx)
        return self._location(r)

    def _location(self, r) -> str:
        loc = r.headers.get("Location")
        if not loc:
            raise RegistryError("upload answer without Location", status=r.status_code,
                                registry=self.t.registry, **self.ctx)
        return self.t.url(loc)

    def _finish(self, location: str, body, headers: dict) -> None:
        try:
            r = self.t.request("PUT", location, scopes=self.scopes, expect=(201, 204),
                               params={"digest": self.digest}, body=body, headers=headers, retry=False,
                               **self.ctx)
        except RegistryError as e:
            if e.code == "DIGEST_INVALID" or e.code == "SIZE_INVALID":
                raise DigestMismatch(f"registry rejected the content ({e.code})", status=e.status,
                                     registry=self.t.registry, **self.ctx) from None
            if _temporary(e):
                raise _Restart(e) from None
            raise
        r.close()
        got = r.headers.get("Docker-Content-Digest")
        if got and got != self.digest:
            raise DigestMismatch(f"registry stored the blob as {got}", registry=self.t.registry, **self.ctx)

    def _monolithic(self, location: str) -> None:
        self._finish(location, _opener(self.source), {"Content-Type": "application/octet-stream",
                                                      "Content-Length": str(self.size)})

    def _chunked(self, location: str) -> None:
        with _opener(self.source)() as f:
            offset = 0
            while offset < self.size:
                chunk = f.read(min(self.chunk_size, self.size - offset))
                if not chunk:
                    raise RegistryError(f"source ended at {offset} of {self.size} bytes",
                                        registry=self.t.registry, **self.ctx)
                end = offset + len(chunk)
                try:
                    r = self.t.request("PATCH", location, scopes=self.scopes, expect=(202, 204),
                                       body=chunk, retry=False, headers={
                                           "Content-Type": "application/octet-stream",
                                           "Content-Range": f"{offset}-{end - 1}",
                                           "Content-Length": str(len(chunk))}, **self.ctx)
                except RegistryError as e:
                    if _temporary(e) or e.status == 416:
                        raise _Restart(e) from None
                    raise
                r.close()
                location = self._location(r)
                offset = end
        self._finish(location, b"", {"Content-Length": "0"})


def _temporary(e: RegistryError) -> bool:
    """A failure worth a fresh upload session: no answer at all, or a temporary HTTP status."""
    return e.status is None or e.status in TEMPORARY_STATUS


class _Restart(Exception):
    def __init__(self, error: RegistryError):
        self.error = error
