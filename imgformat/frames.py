"""Pass 2 plumbing: turn the ordered tar records into zstd frames, in order, on a small thread pool.

Every frame is compressed independently with fixed parameters (level, content size in the header,
no checksum, no dict id), so the bytes do not depend on thread scheduling: frames are submitted in
order and written in order. zstd and sha256 release the GIL, so a few threads keep the C code fed.
"""
from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import zstandard

from imgformat.constants import BLOCK, SMALL_FILE_DIVISOR
from imgformat.records import ChunkInfo, ExternalChunk, Segment
from imgformat.tarindex import Node

_ZEROS = bytes(BLOCK)


def compressor(level: int) -> zstandard.ZstdCompressor:
    """The one frame configuration of the format (content size in the header, nothing variable)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False,
                                    write_dict_id=False)


class FrameSink:
    """Writes frames to ``out`` in submission order; records the chunk table and both digests.

    ``diff_id`` hashes the uncompressed stream (the tar), ``blob`` hashes the bytes written.

    With ``external`` (chunk dedup, docs/format.md section 5), a chunk whose sha256 is a key of it is
    not written: its chunk table entry points into the named other blob (``blobs`` lists those blobs
    in first-use order; blob index = position + 1). The diff_id still hashes the chunk's bytes: it is
    the digest of the logical layer tar, whatever is stored.
    """

    def __init__(self, out: BinaryIO, level: int, threads: int,
                 external: Mapping[bytes, ExternalChunk] | None = None) -> None:
        self._out = out
        self._external = external
        self.blobs: list[str] = []
        self._blob_index: dict[str, int] = {}
        self.external_chunks = 0
        self.external_bytes = 0
        self._level = level
        self.pos = 0
        self.uncompressed_size = 0
        self.diff_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.chunks: list[ChunkInfo | None] = []
        self._pending: deque[tuple[Future, int | None, int]] = deque()
        self._max_pending = max(2, threads * 2)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imgformat-zstd") if threads > 1 else None
        self._inline = compressor(level) if self._pool is None else None

    def _work(self, data: bytes, is_chunk: bool) -> tuple[bytes, bytes]:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = compressor(self._level)
        return cctx.compress(data), hashlib.sha256(data).digest() if is_chunk else b""

    def add(self, data: bytes, is_chunk: bool) -> int | None:
        """Queue one frame; returns its chunk index if it is a chunk (holds file data)."""
        self.diff_hash.update(data)
        self.uncompressed_size += len(data)
        idx = None
        if is_chunk:
            idx = len(self.chunks)
            self.chunks.append(None)
            if self._external is not None and self._reuse(data, idx):
                return idx
        if self._pool is None:
            assert self._inline is not None
            comp = self._inline.compress(data)
            self._record(comp, hashlib.sha256(data).digest() if is_chunk else b"", idx, len(data))
        else:
            self._pending.append((self._pool.submit(self._work, data, is_chunk), idx, len(data)))
            while len(self._pending) > self._max_pending:
                self._drain_one()
        return idx

    def _reuse(self, data: bytes, idx: int) -> bool:
        """Point chunk ``idx`` into another blob if the dictionary has its bytes (sha256, not xxhash:
        identity across images must not be forgeable)."""
        assert self._external is not None
        digest = hashlib.sha256(data).digest()
        ext = self._external.get(digest)
        if ext is None or ext.uncomp_size != len(data):
            return False
        blob = self._blob_index.get(ext.blob)
        if blob is None:
            self.blobs.append(ext.blob)
            blob = self._blob_index[ext.blob] = len(self.blobs)
        self.chunks[idx] = ChunkInfo(blob, ext.comp_offset, ext.comp_size, len(data), digest)
        self.external_chunks += 1
        self.external_bytes += ext.comp_size
        return True

    def _drain_one(self) -> None:
        fut, idx, ulen = self._pending.popleft()
        comp, digest = fut.result()
        self._record(comp, digest, idx, ulen)

    def _record(self, comp: bytes, digest: bytes, idx: int | None, ulen: int) -> None:
        if idx is not None:
            self.chunks[idx] = ChunkInfo(0, self.pos, len(comp), ulen, digest)
        self.write_raw(comp)

    def write_raw(self, data: bytes) -> None:
        """Write bytes that are not a frame of the tar stream (bootstrap, footer)."""
        self._out.write(data)
        self.blob_hash.update(data)
        self.pos += len(data)

    def flush(self) -> list[ChunkInfo]:
        while self._pending:
            self._drain_one()
        return [c for c in self.chunks if c is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class Packer:
    """Lays tar records into frames: small files share a frame, big files get chunk-sized frames.

    A pack is flushed before it would pass chunk_size; a frame that holds file data is a chunk,
    a frame of headers only is not (nothing reads it through the bootstrap).
    """

    def __init__(self, sink: FrameSink, chunk_size: int) -> None:
        self._sink = sink
        self._chunk_size = chunk_size
        self._small = chunk_size // SMALL_FILE_DIVISOR
        self._buf = bytearray()
        self._segs: list[tuple[Node, int, int]] = []

    def flush(self) -> None:
        if not self._buf:
            return
        idx = self._sink.add(bytes(self._buf), is_chunk=bool(self._segs))
        for node, off, length in self._segs:
            assert idx is not None
            node.segments.append(Segment(idx, off, length, 0))
        self._buf.clear()
        self._segs.clear()

    def add_raw(self, data: bytes) -> None:
        if self._buf and len(self._buf) + len(data) > self._chunk_size:
            self.flush()
        self._buf += data

    def add_record(self, header: bytes, node: Node | None, size: int,
                   read: Callable[[int], bytes]) -> None:
        """Append one tar record: header blocks, then ``size`` bytes from ``read``, then padding.

        ``node`` is None for data nothing will read (a whiteout marker with content): it is kept in
        the tar stream but gets no segments.
        """
        pad = -size % BLOCK
        if size == 0:
            self.add_raw(header)
            return
        if size < self._small:
            if self._buf and len(self._buf) + len(header) + size + pad > self._chunk_size:
                self.flush()
            self._buf += header
            if node is not None:
                self._segs.append((node, len(self._buf), size))
            self._buf += read(size)
            self._buf += _ZEROS[:pad]
            return
        self.add_raw(header)
        self.flush()
        done = 0
        while done < size:
            piece = read(min(self._chunk_size, size - done))
            idx = self._sink.add(piece, is_chunk=node is not None)
            if node is not None:
                assert idx is not None
                node.segments.append(Segment(idx, 0, len(piece), done))
            done += len(piece)
        self._buf += _ZEROS[:pad]
