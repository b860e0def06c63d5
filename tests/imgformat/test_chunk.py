"""decode_chunk: returns the promised bytes or raises ChunkError, whatever the frame holds."""
from __future__ import annotations

import hashlib
import random

import pytest
import zstandard

from imgformat.chunk import ChunkError, decode_chunk
from imgformat.records import ChunkInfo
from tests.imgformat.tarkit import convert, file_, make_tar

DATA = random.Random(5).randbytes(3000) + b"a" * 3000


def _frame(data: bytes = DATA) -> tuple[bytes, ChunkInfo]:
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    return frame, ChunkInfo(0, 0, len(frame), len(data), hashlib.sha256(data).digest())


def test_good_frame() -> None:
    frame, info = _frame()
    assert decode_chunk(frame, info) == DATA


def test_every_flipped_byte_is_rejected() -> None:
    frame, info = _frame()
    for pos in range(len(frame)):
        for flip in (0x01, 0x80):
            bad = bytearray(frame)
            bad[pos] ^= flip
            with pytest.raises(ChunkError):
                decode_chunk(bytes(bad), info)


@pytest.mark.parametrize("change", ["truncated", "trailing", "two-frames", "digest", "size", "huge",
                                    "garbage", "empty"])
def test_mismatches(change: str) -> None:
    frame, info = _frame()
    bad_frame, bad_info = {
        "truncated": (frame[:-1], info._replace(comp_size=len(frame) - 1)),
        "trailing": (frame + b"x", info._replace(comp_size=len(frame) + 1)),
        "two-frames": (frame + frame, info._replace(comp_size=2 * len(frame))),
        "digest": (frame, info._replace(digest=bytes(32))),
        "size": (frame, info._replace(uncomp_size=len(DATA) - 1)),
        "huge": (frame, info._replace(uncomp_size=1 << 40)),
        "garbage": (b"\x00" * len(frame), info),
        "empty": (b"", info._replace(comp_size=0)),
    }[change]
    with pytest.raises(ChunkError):
        decode_chunk(bad_frame, bad_info)
    with pytest.raises(ChunkError):
        decode_chunk(frame[:10], info)  # length differs from comp_size


def test_chunks_of_a_converted_blob_verify_and_a_flip_is_caught() -> None:
    cv = convert(make_tar([file_("f", DATA * 30), file_("g", b"small")]))
    for i in range(cv.bs.chunk_count):
        c = cv.bs.chunk(i)
        frame = cv.blob[c.comp_offset:c.comp_offset + c.comp_size]
        decode_chunk(frame, c)
        bad = bytearray(frame)
        bad[len(bad) // 2] ^= 0xFF
        with pytest.raises(ChunkError):
            decode_chunk(bytes(bad), c)
