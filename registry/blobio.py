"""A streaming blob reader that verifies the digest at EOF and resumes broken downloads.

Layers are large and read once, so they are streamed, never held in memory.
When the connection breaks mid-body (reset, timeout, truncated chunked body),
the reader reopens at the current offset with a Range request instead of
starting over; the digest is computed over exactly the bytes handed out, so a
resumed stream is verified just the same. A registry that ignores the Range of
a resume (answers 200) is handled by skipping the bytes already delivered.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable

import requests
import urllib3.exceptions

from registry.digests import hasher_for
from registry.errors import DigestMismatch, RegistryError
from registry.ranges import parse_content_range

log = logging.getLogger(__name__)

READ_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
SKIP_CHUNK = 1 << 20
READ_STEP = 1 << 20


class BlobReader(io.RawIOBase):
    """File-like (read-only) view of one blob. ``read`` raises DigestMismatch at EOF on bad content.

    ``open_at(offset)`` returns a streaming response: 200 for the whole blob or 206
    starting at ``offset``.
    """

    def __init__(self, open_at: Callable[[int], requests.Response], digest: str, *, registry: str,
                 repository: str, resumes: int, on_bytes: Callable[[int], None] = lambda n: None):
        super().__init__()
        self._open_at = open_at
        self.digest = digest
        self._ctx = {"registry": registry, "repository": repository, "digest": digest}
        self._hash = hasher_for(digest)
        self._resumes = resumes
        self._on_bytes = on_bytes
        self.pos = 0
        self.size: int | None = None
        self._done = False
        self._failed: RegistryError | None = None
        self._resp = self._open(0)

    def readable(self) -> bool:
        return True

    def _open(self, offset: int) -> requests.Response:
        resp = self._open_at(offset)
        try:
            if resp.status_code == 206:
                start, _, total = parse_content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    raise RegistryError(f"resume at {offset} answered from {start}", **self._ctx)
                if total is not None:
                    self.size = total
            else:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    self.size = int(length)
                self._skip(resp, offset)
        except BaseException:
            resp.close()
            raise
        return resp

    def _skip(self, resp: requests.Response, n: int) -> None:
        """Discard the first ``n`` bytes of a 200 answer to a resume."""
        while n > 0:
            got = resp.raw.read(min(n, SKIP_CHUNK))
            if not got:
                raise RegistryError("blob ended while skipping to the resume offset", **self._ctx)
            n -= len(got)

    def readall(self) -> bytes:
        """Read to EOF in large steps (RawIOBase's default reads 8 KiB per call)."""
        out = bytearray()
        buf = bytearray(READ_STEP)
        while n := self.readinto(buf):
            out += memoryview(buf)[:n]
        return bytes(out)

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._failed is not None:
            raise self._failed
        if self._done or len(buf) == 0:
            return 0
        while True:
            err: BaseException | None = None
            try:
                data = self._resp.raw.read(len(buf))
            except READ_ERRORS as e:
                data = None
                err = e
            if data:
                n = len(data)
                buf[:n] = data
                self._hash.update(data)
                self.pos += n
                self._on_bytes(n)
                if self.size is not None and self.pos > self.size:
                    self._fail(RegistryError(f"blob longer than its announced {self.size} bytes",
                                             **self._ctx))
                return n
            if data is not None and (self.size is None or self.pos >= self.size):
                return self._finish()
            # broken or short body: resume where we are
            self._resp.close()
            reason = type(err).__name__ if data is None else "short body"
            if self._resumes <= 0:
                self._fail(RegistryError(f"blob download broke at byte {self.pos}: {reason}", **self._ctx))
            self._resumes -= 1
            log.info("blob %s broke at byte %d (%s), resuming", self.digest, self.pos, reason)
            try:
                self._resp = self._open(self.pos)
            except RegistryError as e:
                self._fail(e)

    def _fail(self, err: RegistryError) -> None:
        self._failed = err
        raise err

    def _finish(self) -> int:
        self._done = True
        self._resp.close()
        got = f"{self._hash.name}:{self._hash.hexdigest()}"
        if got != self.digest:
            self._fail(DigestMismatch(f"blob content hashes to {got} after {self.pos} bytes", **self._ctx))
        return 0

    def close(self) -> None:
        try:
            self._resp.close()
        finally:
            super().close()
