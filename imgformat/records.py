"""Fixed-size records of the bootstrap and the typed views the reader returns.

All integers little-endian. Every table is an array of fixed-size records so that record i is at
``table_offset + i * size`` and can be read with one ``struct.unpack_from`` on demand.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

# Superblock: magic, version, flags, chunk_size, digest_algo, root_ino, reserved, file_count,
# uncompressed tar size; then TABLE_COUNT table descriptors; zero padding to SUPERBLOCK_SIZE.
SUPER_HEAD = struct.Struct("<8sIIIIII QQ")
TABLE_DESC = struct.Struct("<QQII")  # offset, count, record size, reserved
SUPERBLOCK_SIZE = 256

# Table order in the superblock.
T_INODES, T_DIRENTS, T_SEGMENTS, T_CHUNKS, T_XATTRS, T_BLOBS, T_PREFETCH, T_STRINGS = range(8)
TABLE_COUNT = 8
TABLE_NAMES = ("inodes", "dirents", "segments", "chunks", "xattrs", "blobs", "prefetch", "strings")

# mode, uid, gid, flags, nlink, parent, rdev, size, mtime_ns, data_off, xattr_off, data_count,
# xattr_count. data_off/data_count: dirents (dir), segments (regular), string offset/length (symlink).
INODE = struct.Struct("<IIIIII QQqQQ II")
# name offset, name length, ino, reserved
DIRENT = struct.Struct("<QIII")
# chunk index, offset in chunk, length, reserved, file offset
SEGMENT = struct.Struct("<IIII Q")
# blob index, uncompressed size, compressed offset, compressed size, sha256
CHUNK = struct.Struct("<II QQ 32s")
# key offset, value offset, key length, value length
XATTR = struct.Struct("<QQII")
# digest string offset, length, reserved
BLOB = struct.Struct("<QII")
# chunk index
PREFETCH = struct.Struct("<I")

RECORD_SIZES = (INODE.size, DIRENT.size, SEGMENT.size, CHUNK.size, XATTR.size, BLOB.size,
                PREFETCH.size, 1)

assert SUPER_HEAD.size + TABLE_COUNT * TABLE_DESC.size <= SUPERBLOCK_SIZE


class Inode(NamedTuple):
    """Attributes of one inode. ``flags``: constants.FLAG_WHITEOUT / FLAG_OPAQUE / FLAG_IMPLICIT."""

    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    nlink: int
    flags: int


class Segment(NamedTuple):
    """Bytes [file_offset, file_offset+length) of a file are chunk_index's [offset_in_chunk, +length)."""

    chunk_index: int
    offset_in_chunk: int
    length: int
    file_offset: int


class ChunkInfo(NamedTuple):
    """One zstd frame of a blob: where it is, how big it is decoded, and sha256 of the decoded bytes."""

    blob_index: int
    comp_offset: int
    comp_size: int
    uncomp_size: int
    digest: bytes


class ExternalChunk(NamedTuple):
    """A chunk already stored in another blob (chunk dedup): blob digest "sha256:...", where its frame
    is in that blob, and its decoded size. Keyed by the sha256 of the decoded bytes."""

    blob: str
    comp_offset: int
    comp_size: int
    uncomp_size: int
