"""Bootstrap reader: answers lookup/getattr/readdir/readlink/xattrs/segments on demand.

Construction checks the superblock and that every table lies inside the buffer; nothing else is
parsed up front, so opening a 100k-file bootstrap costs microseconds. Every access bounds-checks
the indexes and offsets it follows; a malformed bootstrap raises BootstrapError, never IndexError,
struct.error or a wrong answer that points outside the buffer.
"""
from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator

import zstandard

from imgformat.constants import (
    BOOTSTRAP_MAGIC,
    BOOTSTRAP_VERSION,
    DIGEST_SHA256,
    FLAG_WHITEOUT,
    KNOWN_FLAGS,
    MAX_BOOTSTRAP_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    ROOT_INO,
    max_frame_size,
)
from imgformat.errors import BootstrapError
from imgformat.footer import read_skippable_frames
from imgformat.records import (
    BLOB,
    CHUNK,
    DIRENT,
    INODE,
    PREFETCH,
    RECORD_SIZES,
    SEGMENT,
    SUPER_HEAD,
    SUPERBLOCK_SIZE,
    T_BLOBS,
    T_CHUNKS,
    T_DIRENTS,
    T_INODES,
    T_PREFETCH,
    T_SEGMENTS,
    T_STRINGS,
    T_XATTRS,
    TABLE_COUNT,
    TABLE_DESC,
    TABLE_NAMES,
    XATTR,
    ChunkInfo,
    Inode,
    Segment,
)

__all__ = ["Bootstrap", "BootstrapError", "ChunkInfo", "Inode", "Segment"]


class Bootstrap:
    """Read-only view of one layer's bootstrap. Thread-safe (immutable after construction)."""

    @classmethod
    def from_blob_bytes(cls, payload: bytes, *, digest: str | None = None,
                        blob_digest: str | None = None) -> Bootstrap:
        """Decode the bytes at [offset, offset+size) of a blob (skippable frames, zstd inside).

        ``digest`` ("sha256:...", the layer annotation) is verified when given.
        ``blob_digest`` names blob index 0 (a blob cannot contain its own digest).
        """
        if digest is not None and "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
            raise BootstrapError("bootstrap: digest mismatch")
        data = read_skippable_frames(payload)
        try:
            size = zstandard.frame_content_size(data)
            if not 0 < size <= MAX_BOOTSTRAP_SIZE:
                raise BootstrapError(f"bootstrap: bad or missing decoded size {size}")
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=size,
                                                          allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise BootstrapError(f"bootstrap: corrupt zstd data: {exc}") from None
        if len(raw) != size:
            raise BootstrapError("bootstrap: decoded size differs from the frame header")
        return cls(raw, blob_digest=blob_digest)

    def __init__(self, raw: bytes, *, blob_digest: str | None = None) -> None:
        self._raw = bytes(raw)
        if len(self._raw) < SUPERBLOCK_SIZE:
            raise BootstrapError(f"bootstrap: {len(self._raw)} bytes, shorter than the superblock")
        (magic, version, flags, self.chunk_size, algo, root, _res, self.file_count,
         self.tar_size) = SUPER_HEAD.unpack_from(self._raw, 0)
        if magic != BOOTSTRAP_MAGIC:
            raise BootstrapError("bootstrap: bad magic")
        if version != BOOTSTRAP_VERSION:
            raise BootstrapError(f"bootstrap: unsupported version {version}")
        if flags != 0 or algo != DIGEST_SHA256 or root != ROOT_INO:
            raise BootstrapError("bootstrap: unsupported flags, digest algorithm or root inode")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise BootstrapError(f"bootstrap: chunk size {self.chunk_size} out of range")
        self._max_frame = max_frame_size(self.chunk_size)
        self._off: list[int] = []
        self._count: list[int] = []
        for t in range(TABLE_COUNT):
            off, count, size, _ = TABLE_DESC.unpack_from(self._raw, SUPER_HEAD.size + t * TABLE_DESC.size)
            if size != RECORD_SIZES[t]:
                raise BootstrapError(f"bootstrap: {TABLE_NAMES[t]} record size {size}, "
                                     f"expected {RECORD_SIZES[t]}")
            if off < SUPERBLOCK_SIZE or off + count * size > len(self._raw):
                raise BootstrapError(f"bootstrap: {TABLE_NAMES[t]} table outside the buffer")
            self._off.append(off)
            self._count.append(count)
        self.inode_count = self._count[T_INODES]
        self.chunk_count = self._count[T_CHUNKS]
        if self.inode_count < 1:
            raise BootstrapError("bootstrap: no root inode")
        if stat.S_IFMT(self.getattr(ROOT_INO).mode) != stat.S_IFDIR:
            raise BootstrapError("bootstrap: root is not a directory")
        self._blob_digest = blob_digest
        self._blobs: list[str] | None = None
        self._prefetch: list[int] | None = None

    root = ROOT_INO

    # -- record access ------------------------------------------------------------------------
    def _rec(self, table: int, index: int, fmt) -> tuple:
        if not 0 <= index < self._count[table]:
            raise BootstrapError(f"bootstrap: {TABLE_NAMES[table]} index {index} out of range")
        return fmt.unpack_from(self._raw, self._off[table] + index * fmt.size)

    def _range(self, table: int, start: int, count: int, what: str) -> None:
        if start + count > self._count[table]:
            raise BootstrapError(f"bootstrap: {what} points past the {TABLE_NAMES[table]} table")

    def _string(self, off: int, length: int) -> bytes:
        if off + length > self._count[T_STRINGS]:
            raise BootstrapError("bootstrap: string outside the string pool")
        base = self._off[T_STRINGS] + off
        return self._raw[base:base + length]

    def _inode(self, ino: int) -> tuple:
        if not isinstance(ino, int) or not 1 <= ino <= self.inode_count:
            raise BootstrapError(f"bootstrap: inode {ino} out of range")
        return INODE.unpack_from(self._raw, self._off[T_INODES] + (ino - 1) * INODE.size)

    def _typed(self, ino: int, fmt: int, what: str) -> tuple:
        rec = self._inode(ino)
        if stat.S_IFMT(rec[0]) != fmt or rec[3] & FLAG_WHITEOUT:
            raise BootstrapError(f"bootstrap: inode {ino} is not a {what}")
        return rec

    # -- public API ---------------------------------------------------------------------------
    def getattr(self, ino: int) -> Inode:
        mode, uid, gid, flags, nlink, _p, rdev, size, mtime, _d, _x, _dc, _xc = self._inode(ino)
        if flags & ~KNOWN_FLAGS:
            raise BootstrapError(f"bootstrap: inode {ino} has unknown flags {flags:#x}")
        return Inode(ino, mode, uid, gid, size, mtime, rdev, nlink, flags)

    def is_dir(self, ino: int) -> bool:
        rec = self._inode(ino)
        return stat.S_IFMT(rec[0]) == stat.S_IFDIR and not rec[3] & FLAG_WHITEOUT

    def parent(self, ino: int) -> int:
        """The directory holding the first link of ``ino`` (the root is its own parent)."""
        p = self._inode(ino)[5]
        return ino if ino == ROOT_INO else self._check_ino(p)

    def _check_ino(self, ino: int) -> int:
        if not 1 <= ino <= self.inode_count:
            raise BootstrapError(f"bootstrap: inode reference {ino} out of range")
        return ino

    def _dirents(self, dir_ino: int) -> tuple[int, int]:
        rec = self._typed(dir_ino, stat.S_IFDIR, "directory")
        start, count = rec[9], rec[11]
        self._range(T_DIRENTS, start, count, f"directory {dir_ino}")
        return start, count

    def _dirent(self, dir_ino: int, index: int) -> tuple[bytes, int]:
        name_off, name_len, ino, _ = self._rec(T_DIRENTS, index, DIRENT)
        self._check_ino(ino)
        if ino <= dir_ino and self.is_dir(ino):
            raise BootstrapError(f"bootstrap: directory {dir_ino} links back to directory {ino}")
        return self._string(name_off, name_len), ino

    def lookup(self, dir_ino: int, name: bytes) -> int | None:
        """The inode of ``name`` in directory ``dir_ino`` (binary search), or None."""
        start, count = self._dirents(dir_ino)
        lo, hi = start, start + count
        while lo < hi:
            mid = (lo + hi) // 2
            got, ino = self._dirent(dir_ino, mid)
            if got == name:
                return ino
            if got < name:
                lo = mid + 1
            else:
                hi = mid
        return None

    def readdir(self, dir_ino: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """(index, name, ino) in name order from ``start``; index + 1 resumes after an entry."""
        first, count = self._dirents(dir_ino)
        for i in range(max(start, 0), count):
            name, ino = self._dirent(dir_ino, first + i)
            yield i, name, ino

    def readlink(self, ino: int) -> bytes:
        rec = self._typed(ino, stat.S_IFLNK, "symlink")
        return self._string(rec[9], rec[11])

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        rec = self._inode(ino)
        start, count = rec[10], rec[12]
        self._range(T_XATTRS, start, count, f"inode {ino} xattrs")
        out = {}
        for i in range(start, start + count):
            koff, voff, klen, vlen = self._rec(T_XATTRS, i, XATTR)
            out[self._string(koff, klen)] = self._string(voff, vlen)
        return out

    def segments(self, ino: int, offset: int, length: int) -> list[Segment]:
        """Segments covering bytes [offset, offset+length) of regular file ``ino``, clipped to that
        range and to the file size, in file order."""
        rec = self._typed(ino, stat.S_IFREG, "regular file")
        size, start, count = rec[7], rec[9], rec[11]
        self._range(T_SEGMENTS, start, count, f"file {ino}")
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, size)
        if offset >= end:
            return []
        lo, hi = start, start + count  # first segment whose end is > offset
        while lo < hi:
            mid = (lo + hi) // 2
            s = self._segment(mid)
            if s.file_offset + s.length <= offset:
                lo = mid + 1
            else:
                hi = mid
        out = []
        expect = None
        for i in range(lo, start + count):
            s = self._segment(i)
            if s.file_offset >= end:
                break
            if expect is not None and s.file_offset != expect:
                raise BootstrapError(f"bootstrap: file {ino} segments are not contiguous")
            expect = s.file_offset + s.length
            a, b = max(s.file_offset, offset), min(expect, end)
            out.append(Segment(s.chunk_index, s.offset_in_chunk + a - s.file_offset, b - a, a))
        if not out or out[0].file_offset != offset or out[-1].file_offset + out[-1].length != end:
            raise BootstrapError(f"bootstrap: file {ino} segments do not cover [{offset}, {end})")
        return out

    def _segment(self, index: int) -> Segment:
        chunk, off, length, _, foff = self._rec(T_SEGMENTS, index, SEGMENT)
        info = self.chunk(chunk)
        if off + length > info.uncomp_size or length == 0:
            raise BootstrapError(f"bootstrap: segment {index} outside chunk {chunk}")
        return Segment(chunk, off, length, foff)

    def chunk(self, index: int) -> ChunkInfo:
        blob, usize, coff, csize, digest = self._rec(T_CHUNKS, index, CHUNK)
        if blob >= self._count[T_BLOBS] or usize > self._max_frame:
            raise BootstrapError(f"bootstrap: chunk {index} has a bad blob index or size")
        return ChunkInfo(blob, coff, csize, usize, digest)

    @property
    def blobs(self) -> list[str]:
        """Blob digests by blob index; index 0 is this layer's own blob ("" unless given)."""
        if self._blobs is None:
            out = []
            for i in range(self._count[T_BLOBS]):
                off, length, _ = self._rec(T_BLOBS, i, BLOB)
                try:
                    out.append(self._string(off, length).decode("ascii"))
                except UnicodeDecodeError:
                    raise BootstrapError(f"bootstrap: blob {i} digest is not ASCII") from None
            if not out:
                raise BootstrapError("bootstrap: empty blob table")
            if self._blob_digest is not None:
                out[0] = self._blob_digest
            self._blobs = out
        return list(self._blobs)

    @property
    def prefetch(self) -> list[int]:
        """Chunk indexes to prefetch, in fetch order."""
        if self._prefetch is None:
            out = []
            for i in range(self._count[T_PREFETCH]):
                (c,) = self._rec(T_PREFETCH, i, PREFETCH)
                if c >= self.chunk_count:
                    raise BootstrapError(f"bootstrap: prefetch entry {i} names chunk {c} out of range")
                out.append(c)
            self._prefetch = out
        return list(self._prefetch)
