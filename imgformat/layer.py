"""convert_layer: one source layer (uncompressed tar) -> one imgfs blob.

Algorithm: spool the input unless it already is a regular file (bounded memory: only headers and
one record per entry stay in RAM), index and validate it (tarindex), choose the record order
(prefetch list first, each preceded by its not yet written parent directories, then the rest in
source order), write the records as zstd frames (frames), then the tar end-of-archive blocks, the
bootstrap in skippable frames and the footer. The decompressed blob is a tar whose records are the
source's header blocks verbatim, so without a prefetch list even the diff_id is unchanged when the
source ends with exactly two zero blocks.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from imgformat.bootstrap_writer import build_bootstrap
from imgformat.constants import (
    BLOCK,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
)
from imgformat.errors import FormatError
from imgformat.footer import build_footer, skippable_frames
from imgformat.frames import FrameSink, Packer, compressor
from imgformat.records import ExternalChunk
from imgformat.tarindex import Entry, LayerIndex, Node, index_tar, normalize

__all__ = ["ExternalChunk", "FormatError", "LayerResult", "PrefetchEntry", "convert_layer"]

_SPOOL_BLOCK = 1 << 20


class PrefetchEntry(NamedTuple):
    """A file the workload reads at startup: ``path`` in the image ("/usr/bin/python3" or relative),
    ``ranges`` the [start, end) byte ranges read, or None for the whole file. Paths not in a
    layer are ignored for that layer (one list serves every layer of an image)."""

    path: str
    ranges: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class LayerResult:
    """What the converter needs for the manifest, annotations and its summary.

    blob_digest/blob_size: the blob as written; diff_id: sha256 of the decompressed tar stream;
    bootstrap_*: the bootstrap region (offset, size, sha256 of those bytes); files: tar records
    (whiteout markers included); chunks: chunk table entries; uncompressed_size: tar stream bytes.
    external_blobs: other blobs the chunk table points into (chunk dedup; empty without a
    dictionary); external_chunks / external_bytes: chunks (and their compressed bytes) not stored
    here because the dictionary had them.
    """

    blob_digest: str
    blob_size: int
    diff_id: str
    bootstrap_digest: str
    bootstrap_offset: int
    bootstrap_size: int
    files: int
    chunks: int
    uncompressed_size: int
    external_blobs: tuple[str, ...] = ()
    external_chunks: int = 0
    external_bytes: int = 0


def _is_regular_file(f: BinaryIO) -> bool:
    """Seek freely only on real files and BytesIO: GzipFile & co. 'seek' by re-decompressing."""
    if isinstance(f, io.BytesIO):
        return True
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False


def convert_layer(tar_stream: BinaryIO, out: BinaryIO, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  level: int = DEFAULT_LEVEL, prefetch: list[PrefetchEntry] | None = None,
                  workdir: str | os.PathLike | None = None, threads: int | None = None,
                  chunk_dict: Mapping[bytes, ExternalChunk] | None = None) -> LayerResult:
    """Convert an uncompressed tar layer into an imgfs blob written to ``out`` (from its start).

    Args:
        chunk_size: 64 KiB..16 MiB, power of two not required. level: zstd level (1..22 or negative).
        prefetch: files to lay out first, in order; their chunks form the prefetch table.
        workdir: where to spool a non-seekable input (default: the system temp dir).
        threads: compression threads (default min(4, CPUs)); the output does not depend on it.
        chunk_dict: chunks stored elsewhere, by sha256 of their decoded bytes: such chunks are not
            written; the bootstrap points into the other blob (docs/format.md section 5). The blob
            is then no longer a complete tar+zstd layer (the diff_id stays the full layer's).
    Returns: LayerResult. Raises FormatError on a malformed or unsupported tar; ValueError on bad
    arguments. On error ``out`` holds garbage: the caller discards it.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}], got {chunk_size}")
    if not -(1 << 17) <= level <= 22:
        raise ValueError(f"bad zstd level {level}")
    if threads is None:
        threads = min(4, os.cpu_count() or 1)
    if _is_regular_file(tar_stream):
        return _convert_seekable(tar_stream, tar_stream.tell(), out, chunk_size, level, prefetch, threads,
                                 chunk_dict)
    with tempfile.TemporaryFile(dir=workdir, prefix="imgfs-spool-") as spool:
        while block := tar_stream.read(_SPOOL_BLOCK):
            spool.write(block)
        spool.flush()
        return _convert_seekable(spool, 0, out, chunk_size, level, prefetch, threads, chunk_dict)


def _convert_seekable(src: BinaryIO, base: int, out: BinaryIO, chunk_size: int, level: int,
                      prefetch: list[PrefetchEntry] | None, threads: int,
                      chunk_dict: Mapping[bytes, ExternalChunk] | None = None) -> LayerResult:
    end = src.seek(0, os.SEEK_END)
    index = index_tar(src, base, end)
    plan = _plan(index, prefetch or [])
    sink = FrameSink(out, level, threads, chunk_dict)
    try:
        packer = Packer(sink, chunk_size)
        if index.prefix is not None:
            packer.add_raw(_read_exact(src, *index.prefix))
        for entry in plan:
            _write_record(src, packer, entry)
        packer.add_raw(bytes(2 * BLOCK))
        packer.flush()
        chunks = sink.flush()
    finally:
        sink.close()
    pref = _prefetch_chunks(index, prefetch or [])
    raw = build_bootstrap(index.root, chunks, pref, chunk_size, len(index.entries), sink.uncompressed_size,
                          sink.blobs)
    payload = skippable_frames(compressor(level).compress(raw))
    boot_digest = hashlib.sha256(payload).digest()
    boot_offset = sink.pos
    sink.write_raw(payload)
    sink.write_raw(build_footer(boot_offset, len(payload), boot_digest))
    return LayerResult(
        blob_digest="sha256:" + sink.blob_hash.hexdigest(), blob_size=sink.pos,
        diff_id="sha256:" + sink.diff_hash.hexdigest(), bootstrap_digest="sha256:" + boot_digest.hex(),
        bootstrap_offset=boot_offset, bootstrap_size=len(payload), files=len(index.entries),
        chunks=len(chunks), uncompressed_size=sink.uncompressed_size, external_blobs=tuple(sink.blobs),
        external_chunks=sink.external_chunks, external_bytes=sink.external_bytes)


def _read_exact(src: BinaryIO, offset: int, length: int) -> bytes:
    src.seek(offset)
    data = src.read(length)
    if len(data) != length:
        raise FormatError(f"source shrank while converting (short read at {offset})")
    return data


def _write_record(src: BinaryIO, packer: Packer, entry: Entry) -> None:
    header = _read_exact(src, entry.hdr_off, entry.data_off - entry.hdr_off)
    pos = entry.data_off

    def read(n: int) -> bytes:
        nonlocal pos
        data = _read_exact(src, pos, n)
        pos += n
        return data

    packer.add_record(header, entry.node, entry.size, read)


def _lookup(index: LayerIndex, path: str) -> Node | None:
    try:
        rel = normalize(path.lstrip("/"), "prefetch path")
    except FormatError:
        return None
    return index.lookup(rel)


def _plan(index: LayerIndex, prefetch: list[PrefetchEntry]) -> list[Entry]:
    """Record order: prefetch files first (parents before children), then the rest in source order."""
    plan: list[Entry] = []
    dir_entries: dict[bytes, list[Entry]] = {}
    for e in index.entries:
        if e.kind == "dir":
            dir_entries.setdefault(e.path, []).append(e)

    def emit(e: Entry) -> None:
        if not e.emitted:
            e.emitted = True
            plan.append(e)

    def emit_dirs(path: bytes) -> None:
        parts = path.split(b"/") if path else []
        for i in range(len(parts) + 1):
            for e in dir_entries.get(b"/".join(parts[:i]), ()):
                emit(e)

    for item in prefetch:
        node = _lookup(index, item.path)
        if node is None or node.entry is None:
            continue
        primary = node.entry
        emit_dirs(primary.path if node.kind == "dir" else primary.path.rpartition(b"/")[0])
        emit(primary)
    for e in index.entries:
        emit(e)
    return plan


def _prefetch_chunks(index: LayerIndex, prefetch: list[PrefetchEntry]) -> list[int]:
    """Chunk indexes holding the prefetch list's bytes, in list order, each once."""
    seen: dict[int, None] = {}
    for item in prefetch:
        node = _lookup(index, item.path)
        if node is None or node.kind != "reg":
            continue
        for seg in node.segments:
            lo, hi = seg.file_offset, seg.file_offset + seg.length
            if item.ranges is None or any(a < hi and lo < b for a, b in item.ranges):
                seen.setdefault(seg.chunk_index, None)
    return list(seen)
