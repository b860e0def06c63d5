"""zstd skippable frames and the fixed-size footer that locates the bootstrap in a blob.

The footer is itself a skippable frame, so ``zstd -d`` and every conforming decoder skip it. A
reader fetches the last FOOTER_SIZE bytes of the blob (or takes offset/size from the layer's
annotations and skips this step), then fetches [offset, offset+size).
"""
from __future__ import annotations

import struct

from imgformat.constants import (
    FOOTER_MAGIC,
    FOOTER_PAYLOAD_SIZE,
    FOOTER_SIZE,
    FOOTER_VERSION,
    SKIPPABLE_BOOTSTRAP_MAGIC,
    SKIPPABLE_FOOTER_MAGIC,
    SKIPPABLE_MAX_PAYLOAD,
)
from imgformat.errors import BootstrapError

__all__ = ["FOOTER_SIZE", "build_footer", "parse_footer", "read_skippable_frames", "skippable_frames"]

_FRAME_HEAD = struct.Struct("<II")
# magic, version, flags, bootstrap offset, bootstrap size, sha256 of the bootstrap bytes
_FOOTER = struct.Struct("<8sIIQQ32s")
assert _FOOTER.size == FOOTER_PAYLOAD_SIZE


def skippable_frames(payload: bytes, magic: int = SKIPPABLE_BOOTSTRAP_MAGIC) -> bytes:
    """Wrap ``payload`` in as many skippable frames as needed (each holds at most 4 GiB - 1)."""
    out = bytearray()
    for start in range(0, max(len(payload), 1), SKIPPABLE_MAX_PAYLOAD):
        piece = payload[start:start + SKIPPABLE_MAX_PAYLOAD]
        out += _FRAME_HEAD.pack(magic, len(piece))
        out += piece
    return bytes(out)


def read_skippable_frames(data: bytes, magic: int = SKIPPABLE_BOOTSTRAP_MAGIC) -> bytes:
    """Concatenate the payloads of a run of skippable frames that must cover ``data`` exactly."""
    view = memoryview(data)
    pos, parts = 0, []
    if not data:
        raise BootstrapError("bootstrap: empty payload")
    while pos < len(data):
        if len(data) - pos < _FRAME_HEAD.size:
            raise BootstrapError(f"bootstrap: truncated skippable frame header at {pos}")
        got, size = _FRAME_HEAD.unpack_from(data, pos)
        if got != magic:
            raise BootstrapError(f"bootstrap: bad skippable frame magic {got:#x} at {pos}")
        pos += _FRAME_HEAD.size
        if size > len(data) - pos:
            raise BootstrapError(f"bootstrap: skippable frame at {pos - 8} runs past the payload")
        parts.append(view[pos:pos + size])
        pos += size
    return b"".join(parts)


def build_footer(offset: int, size: int, digest: bytes) -> bytes:
    """The FOOTER_SIZE bytes that end every imgfs blob."""
    payload = _FOOTER.pack(FOOTER_MAGIC, FOOTER_VERSION, 0, offset, size, digest)
    frame = _FRAME_HEAD.pack(SKIPPABLE_FOOTER_MAGIC, len(payload)) + payload
    assert len(frame) == FOOTER_SIZE
    return frame


def parse_footer_full(data: bytes) -> tuple[int, int, bytes]:
    """Like parse_footer, also returning the sha256 (32 bytes) of the bootstrap bytes."""
    if len(data) != FOOTER_SIZE:
        raise BootstrapError(f"footer: need exactly {FOOTER_SIZE} bytes, got {len(data)}")
    magic, size = _FRAME_HEAD.unpack_from(data, 0)
    if magic != SKIPPABLE_FOOTER_MAGIC or size != FOOTER_PAYLOAD_SIZE:
        raise BootstrapError("footer: not an imgfs blob (no footer frame at the end)")
    fmagic, version, flags, offset, bsize, digest = _FOOTER.unpack_from(data, 8)
    if fmagic != FOOTER_MAGIC:
        raise BootstrapError("footer: bad magic")
    if version != FOOTER_VERSION:
        raise BootstrapError(f"footer: unsupported version {version}")
    if flags != 0:
        raise BootstrapError(f"footer: unknown flags {flags:#x}")
    if bsize < 8:
        raise BootstrapError(f"footer: bootstrap size {bsize} too small")
    return offset, bsize, digest


def parse_footer(data: bytes) -> tuple[int, int]:
    """Parse the last FOOTER_SIZE bytes of a blob into (bootstrap offset, bootstrap size).

    Raises BootstrapError if the bytes are not an imgfs footer. The caller checks that
    offset + size + FOOTER_SIZE equals the blob size when it knows it.
    """
    offset, size, _ = parse_footer_full(data)
    return offset, size
