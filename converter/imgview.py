"""Read side of a converted image: bootstraps, the merged view, and verified chunk bytes.

inspect, check and unpack all start here. Bootstraps are located by the layer
annotations (one range request per layer), or by the footer when a
descriptor lost its annotations (two requests). Chunk bytes come from local
blob files: for a registry image each layer blob is downloaded (streamed,
digest-verified) into the work dir on first use, because check and unpack
read every chunk anyway and one sequential GET beats thousands of ranges.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import BadInput
from converter.image import Layer, SourceImage
from converter.sources import RegistrySource
from converter.streams import READ_SIZE, DigestReader

DECODED_CACHE = 64          # decoded chunks kept (64 MiB at the default chunk size)


@dataclass
class ImgfsLayer:
    layer: Layer
    bootstrap: Any              # imgformat.bootstrap.Bootstrap
    offset: int
    size: int
    digest: str


def load_layer(img: SourceImage, index: int) -> ImgfsLayer:
    """Fetch and verify one layer's bootstrap (annotations first, footer as the fallback)."""
    from imgformat import constants as C
    from imgformat.bootstrap import Bootstrap
    from imgformat.footer import FOOTER_SIZE, parse_footer_full

    layer = img.layers[index]
    ann = layer.annotations
    what = f"layer {index} ({layer.digest})"
    if C.ANNOTATION_BOOTSTRAP_OFFSET in ann and C.ANNOTATION_BOOTSTRAP_SIZE in ann:
        try:
            offset, size = int(ann[C.ANNOTATION_BOOTSTRAP_OFFSET]), int(ann[C.ANNOTATION_BOOTSTRAP_SIZE])
        except ValueError:
            raise BadInput(f"{what}: bootstrap annotations are not integers") from None
        digest = ann.get(C.ANNOTATION_BOOTSTRAP_DIGEST)
    else:
        if layer.size < FOOTER_SIZE:
            raise BadInput(f"{what} is not an imgfs layer (too small for a footer)")
        try:
            offset, size, raw_digest = parse_footer_full(
                img.read_range(layer.digest, layer.size - FOOTER_SIZE, layer.size))
        except Exception as e:
            if type(e).__name__ == "BootstrapError":
                raise BadInput(f"{what} is not an imgfs layer: {e}") from None
            raise
        digest = "sha256:" + raw_digest.hex()
    if offset < 0 or size <= 0 or offset + size + FOOTER_SIZE > layer.size:
        raise BadInput(f"{what}: bootstrap [{offset}, +{size}) lies outside the {layer.size}-byte blob")
    payload = img.read_range(layer.digest, offset, offset + size)
    try:
        bs = Bootstrap.from_blob_bytes(payload, digest=digest, blob_digest=layer.digest)
    except Exception as e:
        if type(e).__name__ == "BootstrapError":
            raise BadInput(f"{what}: {e}") from None
        raise
    return ImgfsLayer(layer, bs, offset, size, digest or "")


def load_layers(img: SourceImage) -> list[ImgfsLayer]:
    """All bootstraps of an image, fetched in parallel (one round trip each)."""
    if not img.layers:
        raise BadInput(f"{img.location}: the image has no layers")
    with ThreadPoolExecutor(max_workers=min(8, len(img.layers))) as pool:
        return list(pool.map(lambda i: load_layer(img, i), range(len(img.layers))))


def merged_view(layers: list[ImgfsLayer]) -> Any:
    from imgformat.merge import MergedView
    return MergedView([la.bootstrap for la in layers], [la.layer.digest for la in layers])


class ChunkReader:
    """Verified, decoded chunk bytes by (blob digest, ChunkInfo), with a small LRU of decoded chunks.

    Thread-safe. Counts each distinct chunk it has verified (`verified`).
    """

    def __init__(self, img: SourceImage, workdir: Path):
        self._img = img
        self._workdir = workdir
        self._remote = isinstance(img.source, RegistrySource)
        self._local: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._blob_locks: dict[str, threading.Lock] = {}
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.verified: set[tuple[str, int]] = set()

    def _blob_path(self, digest: str) -> Path | None:
        if not self._remote:
            return None
        with self._lock:
            lock = self._blob_locks.setdefault(digest, threading.Lock())
        with lock:
            path = self._local.get(digest)
            if path is None:
                path = self._workdir / digest.split(":", 1)[1]
                tmp = path.with_suffix(".part")
                with DigestReader(self._img.open_blob(digest), digest, f"blob {digest}") as src, \
                        open(tmp, "wb") as out:
                    while piece := src.read(READ_SIZE):
                        out.write(piece)
                os.replace(tmp, path)
                self._local[digest] = path
        return path

    def read_range(self, digest: str, start: int, end: int) -> bytes:
        path = self._blob_path(digest)
        if path is None:
            return self._img.read_range(digest, start, end)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise BadInput(f"blob {digest}: chunk [{start}, {end}) past the end of the blob")
        return data

    def chunk(self, blob: str, info: Any) -> bytes:
        from imgformat.chunk import decode_chunk

        key = (blob, info.comp_offset)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
        try:
            data = decode_chunk(self.read_range(blob, info.comp_offset, info.comp_offset + info.comp_size), info)
        except Exception as e:
            if type(e).__name__ == "ChunkError":
                raise BadInput(f"blob {blob}: {e}") from None
            raise
        with self._lock:
            self.verified.add(key)
            self._cache[key] = data
            while len(self._cache) > DECODED_CACHE:
                self._cache.popitem(last=False)
        return data

    def file_pieces(self, view: Any, ino: int, size: int) -> Iterator[bytes]:
        """The bytes of regular file `ino`, piece by piece, every chunk verified."""
        pos = 0
        step = 64 << 20            # ask for segments in bounded windows (a 4 GiB file has 4096 chunks)
        while pos < size:
            n = min(step, size - pos)
            for blob, seg, info in view.segments(ino, pos, n):
                data = self.chunk(blob, info)
                if seg.offset_in_chunk == 0 and seg.length == len(data):
                    piece = data                # a whole chunk (large files): no copy
                else:
                    piece = data[seg.offset_in_chunk:seg.offset_in_chunk + seg.length]
                if len(piece) != seg.length:
                    raise BadInput(f"blob {blob}: segment outside its chunk")
                yield piece
            pos += n

    def verify_all(self, layers: list[ImgfsLayer]) -> int:
        """Decode and verify every chunk of every layer not verified yet; returns the total verified."""
        for la in layers:
            bs = la.bootstrap
            for i in range(bs.chunk_count):
                info = bs.chunk(i)
                blob = la.layer.digest if info.blob_index == 0 else bs.blobs[info.blob_index]
                if (blob, info.comp_offset) not in self.verified:
                    self.chunk(blob, info)
        return len(self.verified)


def walk(view: Any, ino: int | None = None, prefix: bytes = b"") -> Iterator[tuple[bytes, int, Any]]:
    """(path, ino, Inode) of every entry below `ino` (default root), parents before children.

    Names are checked here, once, for everyone that materialises paths: a name
    with "/" or NUL, "." or ".." or an empty name is a malformed bootstrap.
    """
    import stat

    ino = view.root if ino is None else ino
    stack = [(ino, prefix)]
    while stack:
        dino, dpath = stack.pop()
        children = []
        for _idx, name, child in view.readdir(dino):
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                raise BadInput(f"bootstrap: bad file name {name!r} in {dpath.decode(errors='replace')!r}")
            path = dpath + b"/" + name if dpath else name
            attr = view.getattr(child)
            yield path, child, attr
            if stat.S_ISDIR(attr.mode):
                children.append((child, path))
        stack.extend(reversed(children))
