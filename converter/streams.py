"""Layer byte streams: digest verification while streaming, and decompression.

A source layer arrives as a compressed byte stream (gzip, zstd or plain tar,
told apart by magic, not by media type, because media types lie). We never
hold a layer in memory: readers pull bounded pieces, and the digest of what
was read is checked when the stream reaches its end. Consumers that stop
early (a tar reader stops at the end-of-archive blocks) must call
`finish()`, which drains the rest so the digest can be checked at all.

Bounded output matters for decompression: 64 KiB of gzip or zstd can expand to
gigabytes (a 4 GiB file of zeros). zlib offers `max_length`; zstandard's
decompressobj does not, and its stream_reader silently stops on a truncated
frame, so zstd input is fed in slices whose size adapts to the expansion
ratio seen so far.
"""
from __future__ import annotations

import hashlib
import io
import threading
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from converter.errors import BadInput

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_SIZE = 1 << 20             # raw read size: large enough that Python overhead is noise
OUT_TARGET = 1 << 20            # at most this much decompressed output per step (= a typical read)
ZSTD_SLICE_MIN = 256            # zstd can expand ~32768:1 (RLE blocks): 256 B -> <= 8 MiB
ZSTD_SLICE_MAX = 256 << 10


class Cancelled(Exception):
    """Another layer failed: this one stops reading (not an error of its own)."""


class DigestReader(io.RawIOBase):
    """Reads `raw` and checks its sha256 (and size, if known) at EOF.

    `what` names the blob in error messages. `expected` may be None, in which
    case the digest is only computed (`digest` after EOF).
    """

    def __init__(self, raw: BinaryIO, expected: str | None, what: str, size: int | None = None,
                 cancel: threading.Event | None = None):
        self._raw = raw
        self._cancel = cancel
        self._expected = expected
        self._size = size
        self._what = what
        self._h = hashlib.sha256()
        self.count = 0
        self.digest: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.digest is not None:
            return 0
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled(f"{self._what}: cancelled")
        n = self._raw.readinto(b) if hasattr(self._raw, "readinto") else _readinto_via_read(self._raw, b)
        if n:
            self._h.update(memoryview(b)[:n])
            self.count += n
            return n
        self._at_eof()
        return 0

    def _at_eof(self) -> None:
        self.digest = "sha256:" + self._h.hexdigest()
        if self._size is not None and self.count != self._size:
            raise BadInput(f"{self._what}: size {self.count} does not match descriptor size {self._size}")
        if self._expected is not None and self.digest != self._expected:
            raise BadInput(f"{self._what}: digest mismatch: content is {self.digest}, "
                           f"expected {self._expected}")

    def finish(self) -> str:
        """Drain what is left, verify, and return the digest."""
        buf = bytearray(READ_SIZE)
        while self.readinto(buf):
            pass
        assert self.digest is not None
        return self.digest

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def _readinto_via_read(raw: BinaryIO, b) -> int:
    data = raw.read(len(b))
    b[:len(data)] = data
    return len(data)


class _Decoder:
    """One compression format. `feed(data)` yields output pieces of at most ~OUT_TARGET bytes.

    A generator, so that one raw read that expands a thousandfold is still
    consumed piece by piece.
    """

    name = "tar"

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def end(self) -> None:
        """Raw input ended: raise BadInput if a stream is incomplete."""


class _GzipDecoder(_Decoder):
    name = "gzip"

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            full = False
            while data or full:
                if self._d.eof:
                    if not data.strip(b"\0"):     # zero padding after the last member is tolerated
                        return
                    self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._started = True
                piece = self._d.decompress(data, OUT_TARGET)
                full = len(piece) == OUT_TARGET
                data = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
                if piece:
                    yield piece
        except zlib.error as e:
            raise BadInput(f"corrupt gzip stream: {e}") from None

    def end(self) -> None:
        if self._started and not self._d.eof:
            raise BadInput("truncated gzip stream (unexpected end of data)")


class _ZstdDecoder(_Decoder):
    name = "zstd"

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._started = False
        self._slice = 16 << 10

    def feed(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view):
                if self._d.eof:
                    self._d = self._dctx.decompressobj()
                piece_in = view[pos:pos + self._slice]
                self._started = True
                piece = self._d.decompress(piece_in.tobytes())
                used = len(piece_in)
                if self._d.eof:
                    used -= len(self._d.unused_data)
                pos += used
                self._adapt(len(piece))
                if piece:
                    yield piece
        except zstandard.ZstdError as e:
            raise BadInput(f"corrupt zstd stream: {e}") from None

    def _adapt(self, produced: int) -> None:
        if produced > OUT_TARGET // 2:
            self._slice = max(ZSTD_SLICE_MIN, self._slice // 4)
        elif produced < OUT_TARGET // 16:
            self._slice = min(ZSTD_SLICE_MAX, self._slice * 2)

    def end(self) -> None:
        if self._started and not self._d.eof:
            raise BadInput("truncated zstd stream (unexpected end of data)")


class DecompressReader(io.RawIOBase):
    """Uncompressed tar bytes from a (possibly compressed) layer stream.

    The format is detected from the first bytes. `diff_id` (sha256 of the
    uncompressed bytes) is available after EOF; `finish()` drains and returns it.
    Feeding one zstd slice into a decompressobj can only complete one frame;
    the `_ZstdDecoder` loop accounts for `unused_data` so multi-frame streams
    (including skippable frames) work.
    """

    def __init__(self, raw: BinaryIO, what: str = "layer"):
        self._raw = raw
        self._what = what
        head = _read_some(raw, 4)
        if head.startswith(GZIP_MAGIC):
            self._dec: _Decoder = _GzipDecoder()
        elif head.startswith(ZSTD_MAGIC):
            self._dec = _ZstdDecoder()
        else:
            self._dec = _Decoder()
        self.compression = self._dec.name
        self._pieces: Iterator[bytes] = self._dec.feed(head)
        self._buf = b""
        self._bufpos = 0
        self._eof = False
        self._h = hashlib.sha256()
        self.size = 0
        self.diff_id: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._bufpos >= len(self._buf):
            if self._eof:
                return 0
            self._fill()
        n = min(len(b), len(self._buf) - self._bufpos)
        b[:n] = memoryview(self._buf)[self._bufpos:self._bufpos + n]
        self._bufpos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes unless EOF comes first (like a buffered reader), with one copy at most.

        Decompressed pieces are handed out whole when they fit, so the usual
        1 MiB reads of a spooling consumer cost no copy here at all.
        """
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        parts: list[bytes] = []
        want = size
        while want > 0:
            if self._bufpos >= len(self._buf):
                if self._eof:
                    break
                self._fill()
                continue
            avail = len(self._buf) - self._bufpos
            if self._bufpos == 0 and avail <= want:
                piece = self._buf
            else:
                piece = self._buf[self._bufpos:self._bufpos + min(avail, want)]
            self._bufpos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _fill(self) -> None:
        while True:
            try:
                piece = next(self._pieces, None)
                if piece is None:
                    raw = self._raw.read(READ_SIZE)     # DigestReader errors pass through as they are
                    if raw:
                        self._pieces = self._dec.feed(raw)
                        continue
                    self._dec.end()
            except BadInput as e:
                if str(e).startswith(self._what):
                    raise
                raise BadInput(f"{self._what}: {e}") from None
            if piece is None:
                self._eof = True
                self.diff_id = "sha256:" + self._h.hexdigest()
                self._buf, self._bufpos = b"", 0
                return
            self._h.update(piece)
            self.size += len(piece)
            self._buf, self._bufpos = piece, 0
            return

    def finish(self) -> str:
        """Drain the rest (verifying the compressed stream to its end) and return the diff_id."""
        buf = bytearray(READ_SIZE)
        while self.readinto(buf):
            pass
        assert self.diff_id is not None
        return self.diff_id


def _read_some(raw: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        piece = raw.read(n - len(out))
        if not piece:
            break
        out += piece
    return out


def open_tar_stream(raw: BinaryIO, expected_digest: str | None, what: str, size: int | None = None,
                    cancel: threading.Event | None = None) -> tuple[DigestReader, DecompressReader]:
    """Wrap a compressed layer stream: returns (digest checker, uncompressed reader).

    Read the tar from the second; call `finish()` on it, then on the first,
    to verify both the uncompressed digest and the compressed one.
    """
    checked = DigestReader(raw, expected_digest, what, size, cancel)
    return checked, DecompressReader(io.BufferedReader(checked, READ_SIZE), what)
