"""Decoding and verifying one chunk frame: the only way chunk bytes leave the format layer.

A chunk is exactly one zstd frame with its content size in the header; its identity is the sha256
of the decoded bytes. decode_chunk never returns bytes that do not match that digest.
"""
from __future__ import annotations

import hashlib
import threading

import zstandard

from imgformat.constants import MAX_CHUNK_SIZE, max_frame_size
from imgformat.errors import ChunkError
from imgformat.records import ChunkInfo

__all__ = ["ChunkError", "ChunkInfo", "decode_chunk"]

# Hard cap on a decoded chunk whatever a (possibly forged) ChunkInfo says.
_MAX_UNCOMP = max_frame_size(MAX_CHUNK_SIZE)
_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread: zstandard objects are not safe to share across threads."""
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def decode_chunk(frame: bytes, info: ChunkInfo) -> bytes:
    """Decompress one chunk frame and verify it against ``info``.

    Raises ChunkError if the frame's length differs from info.comp_size, it is not exactly one
    zstd frame, it decodes to a different length than info.uncomp_size, or the sha256 of the
    decoded bytes differs from info.digest.
    """
    if len(frame) != info.comp_size:
        raise ChunkError(f"chunk at {info.comp_offset}: got {len(frame)} bytes, expected {info.comp_size}")
    if not 0 <= info.uncomp_size <= _MAX_UNCOMP:
        raise ChunkError(f"chunk at {info.comp_offset}: implausible size {info.uncomp_size}")
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ChunkError(f"chunk at {info.comp_offset}: not a zstd frame: {exc}") from None
    if declared != info.uncomp_size:
        raise ChunkError(f"chunk at {info.comp_offset}: frame declares {declared} bytes, "
                         f"expected {info.uncomp_size}")
    try:
        data = _decompressor().decompress(frame, max_output_size=info.uncomp_size,
                                          allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ChunkError(f"chunk at {info.comp_offset}: corrupt zstd frame: {exc}") from None
    if len(data) != info.uncomp_size:
        raise ChunkError(f"chunk at {info.comp_offset}: decoded {len(data)} bytes, "
                         f"expected {info.uncomp_size}")
    if hashlib.sha256(data).digest() != info.digest:
        raise ChunkError(f"chunk at {info.comp_offset}: sha256 mismatch")
    return data
