"""Helpers for the imgformat tests: build tars entry by entry, convert them, read files back."""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

from imgformat.bootstrap import Bootstrap
from imgformat.chunk import decode_chunk
from imgformat.footer import FOOTER_SIZE, parse_footer
from imgformat.layer import LayerResult, convert_layer

CHUNK = 64 << 10  # the smallest chunk size keeps boundary tests small


def info(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: float = 1_700_000_000, linkname: str = "", dev: tuple[int, int] = (0, 0),
         pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname = kind, mode, uid, gid, mtime, linkname
    ti.devmajor, ti.devminor = dev
    ti.uname = ti.gname = ""
    if pax:
        ti.pax_headers = dict(pax)
    return ti


def make_tar(entries: list, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of (TarInfo, data or None) pairs or bare TarInfos (entries without data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for item in entries:
            ti, data = (item, None) if isinstance(item, tarfile.TarInfo) else item
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def dir_(name: str, **kw) -> tuple[tarfile.TarInfo, None]:
    kw.setdefault("mode", 0o755)
    return info(name, tarfile.DIRTYPE, **kw), None


def file_(name: str, data: bytes, **kw) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, tarfile.REGTYPE, **kw), data


@dataclass
class Converted:
    result: LayerResult
    blob: bytes
    bs: Bootstrap

    def path(self, path: str) -> int | None:
        ino = self.bs.root
        for part in [p for p in path.encode().split(b"/") if p]:
            ino = self.bs.lookup(ino, part)
            if ino is None:
                return None
        return ino

    def read(self, ino: int, offset: int = 0, length: int | None = None) -> bytes:
        size = self.bs.getattr(ino).size
        length = size if length is None else length
        out = bytearray()
        for seg in self.bs.segments(ino, offset, length):
            c = self.bs.chunk(seg.chunk_index)
            data = decode_chunk(self.blob[c.comp_offset:c.comp_offset + c.comp_size], c)
            out += data[seg.offset_in_chunk:seg.offset_in_chunk + seg.length]
        return bytes(out)


def bootstrap_of(blob: bytes) -> Bootstrap:
    off, size = parse_footer(blob[-FOOTER_SIZE:])
    assert off + size + FOOTER_SIZE == len(blob)
    return Bootstrap.from_blob_bytes(blob[off:off + size])


def convert(tar: bytes, **kw) -> Converted:
    kw.setdefault("chunk_size", CHUNK)
    out = io.BytesIO()
    res = convert_layer(io.BytesIO(tar), out, **kw)
    blob = out.getvalue()
    assert res.blob_size == len(blob)
    return Converted(res, blob, bootstrap_of(blob))


def decompress_blob(blob: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()


class Pipe(io.RawIOBase):
    """A non-seekable stream (like a decompressor or a socket) over bytes, read in odd sizes."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), 7919, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n
