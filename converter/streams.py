"""Layer byte streams: digest verification while streaming, and decompression.

A source layer arrives as a compressed byte stream (gzip, zstd or plain tar,
told apart by magic, not by media type, because media types lie). We never
hold a layer in memory: readers pull bounded pieces, and the digest of what
was read is checked when the stream reaches its end. Consumers that stop
early (a tar reader stops at the end-of-archive blocks) must call
`finish()`, which drains the rest so the digest can be checked at all.

Bounded output matters for decompression: 64 KiB of gzip or zstd can expand to
gigabytes (a 4 GiB file of zeros). zlib offers `max_length`; zstandard's
decompressobj does not, and its stream_reader (bounded) silently stops on a
truncated frame, so zstd goes through stream_reader while a small walker of
the frame and block headers (ZstdFraming) proves the stream ended on a frame
boundary.
"""
from __future__ import annotations

import hashlib
import io
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import zstandard

from converter.errors import BadInput

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_SIZE = 1 << 20             # raw read size: large enough that Python overhead is noise
OUT_TARGET = 1 << 20            # at most this much decompressed output per step (= a typical read)


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
    """One compression format: `pieces(read)` pulls raw bytes with `read(n)` and yields output pieces.

    Each piece is at most ~OUT_TARGET bytes whatever the compression ratio.
    Raises BadInput (without the layer name; the reader adds it).
    """

    name = "tar"

    def pieces(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        while data := read(READ_SIZE):
            yield data


class _GzipDecoder(_Decoder):
    """zlib with max_length: bounded output; multi-member streams; zero padding after the end."""

    name = "gzip"

    def pieces(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        started = False
        try:
            while raw := read(READ_SIZE):
                data, full = raw, False
                while data or full:
                    if d.eof:
                        if not data.strip(b"\0"):
                            break
                        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    started = True
                    piece = d.decompress(data, OUT_TARGET)
                    full = len(piece) == OUT_TARGET
                    data = d.unused_data if d.eof else d.unconsumed_tail
                    if piece:
                        yield piece
        except zlib.error as e:
            raise BadInput(f"corrupt gzip stream: {e}") from None
        if started and not d.eof:
            raise BadInput("truncated gzip stream (unexpected end of data)")


class ZstdFraming:
    """Walks the frame/block structure of a zstd stream (RFC 8878) as its bytes pass by.

    zstandard's stream_reader bounds its output but ends silently on a
    truncated frame; this walker knows whether the stream stopped exactly at
    a frame boundary. It parses headers only (a few bytes per 128 KiB block).
    """

    def __init__(self) -> None:
        self._need = 4              # bytes wanted by the current state
        self._state = "magic"
        self._hdr = b""
        self._skip = 0              # content bytes to pass over
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            take = min(self._need - len(self._hdr), n - pos)
            self._hdr += data[pos:pos + take]
            pos += take
            if len(self._hdr) == self._need:
                hdr, self._hdr = self._hdr, b""
                self._step(hdr)

    def _step(self, hdr: bytes) -> None:
        st = self._state
        if st == "magic":
            magic = int.from_bytes(hdr, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skipsize", 4
            else:
                raise BadInput(f"corrupt zstd stream: bad frame magic {hdr.hex()}")
        elif st == "skipsize":
            self._skip = int.from_bytes(hdr, "little")
            self._frame_done()
        elif st == "fhd":
            fhd = hdr[0]
            if fhd & 0x08:
                raise BadInput("corrupt zstd stream: reserved bit set in a frame header")
            single = bool(fhd & 0x20)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            self._checksum = bool(fhd & 0x04)
            self._state, self._need = "fhrest", rest
            if rest == 0:
                self._state, self._need = "block", 3
        elif st == "fhrest":
            self._state, self._need = "block", 3
        elif st == "block":
            h = int.from_bytes(hdr, "little")
            last, btype, size = h & 1, (h >> 1) & 3, h >> 3
            if btype == 3:
                raise BadInput("corrupt zstd stream: reserved block type")
            self._skip = 1 if btype == 1 else size
            if last:
                if self._checksum:
                    self._state, self._need = "checksum", 4
                else:
                    self._frame_done()
        elif st == "checksum":
            self._frame_done()

    def _frame_done(self) -> None:
        self.frames += 1
        self._state, self._need = "magic", 4

    def end(self) -> None:
        """The stream ended: it must end exactly after a complete frame."""
        if self._skip or self._hdr or self._state != "magic" or not self.frames:
            raise BadInput("truncated zstd stream (unexpected end of data)")


class _Tap:
    """A read() source for zstandard that shows every byte to the framing walker first."""

    def __init__(self, read: Callable[[int], bytes], framing: ZstdFraming):
        self._read = read
        self._framing = framing

    def read(self, n: int) -> bytes:
        data = self._read(n)
        self._framing.feed(data)
        return data


class _ZstdDecoder(_Decoder):
    name = "zstd"

    def pieces(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        framing = ZstdFraming()
        reader = zstandard.ZstdDecompressor().stream_reader(_Tap(read, framing), read_size=READ_SIZE,
                                                            read_across_frames=True)
        try:
            while piece := reader.read(OUT_TARGET):
                yield piece
        except zstandard.ZstdError as e:
            raise BadInput(f"corrupt zstd stream: {e}") from None
        framing.end()


class DecompressReader(io.RawIOBase):
    """Uncompressed tar bytes from a (possibly compressed) layer stream.

    The format is detected from the first bytes. `diff_id` (sha256 of the
    uncompressed bytes) is available after EOF; `finish()` drains and returns it.
    """

    def __init__(self, raw: BinaryIO, what: str = "layer", diff_id: bool = True):
        self._raw = raw
        self._what = what
        self._head = _read_some(raw, 4)
        if self._head.startswith(GZIP_MAGIC):
            self._dec: _Decoder = _GzipDecoder()
        elif self._head.startswith(ZSTD_MAGIC):
            self._dec = _ZstdDecoder()
        else:
            self._dec = _Decoder()
        self.compression = self._dec.name
        self._pieces: Iterator[bytes] = self._dec.pieces(self._read_raw)
        self._buf = b""
        self._bufpos = 0
        self._eof = False
        self._h = hashlib.sha256() if diff_id else None
        self.size = 0
        self.diff_id: str | None = None

    def _read_raw(self, n: int) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._raw.read(n)

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
        try:
            piece = next(self._pieces, None)
        except BadInput as e:
            if str(e).startswith(self._what):        # DigestReader errors already name the layer
                raise
            raise BadInput(f"{self._what}: {e}") from None
        if piece is None:
            self._eof = True
            self.diff_id = "sha256:" + self._h.hexdigest() if self._h is not None else ""
            self._buf, self._bufpos = b"", 0
            return
        if self._h is not None:
            self._h.update(piece)
        self.size += len(piece)
        self._buf, self._bufpos = piece, 0

    def finish(self) -> str:
        """Drain the rest (verifying the compressed stream to its end) and return the diff_id."""
        while not self._eof:
            self._fill()
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
                    cancel: threading.Event | None = None, diff_id: bool = True
                    ) -> tuple[DigestReader, DecompressReader]:
    """Wrap a compressed layer stream: returns (digest checker, uncompressed reader).

    Read the tar from the second; call `finish()` on it, then on the first,
    to verify both the uncompressed digest and the compressed one.
    """
    checked = DigestReader(raw, expected_digest, what, size, cancel)
    return checked, DecompressReader(io.BufferedReader(checked, READ_SIZE), what, diff_id)
