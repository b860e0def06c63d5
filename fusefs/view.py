"""A single layer's bootstrap seen through the merged-view API (``--layer N``, 1-layer images).

``imgformat.merge.MergedView`` serves a stack of layers; for one layer it would only
strip whiteout markers, so this thin adapter does that and nothing else: lookup and
readdir hide entries flagged WHITEOUT (their targets live in lower layers we do not
mount), and ``segments`` returns the (blob digest, Segment, ChunkInfo) triples the
reader expects. Readdir offsets stay the bootstrap's indexes (stable across calls).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from imgformat.constants import FLAG_WHITEOUT


class SingleLayerView:
    def __init__(self, bootstrap: Any, blob_digest: str) -> None:
        self.bs = bootstrap
        self.blob_digest = blob_digest
        self.root = bootstrap.root
        self.inode_count = bootstrap.inode_count
        self._blobs = bootstrap.blobs

    def getattr(self, ino: int) -> Any:
        return self.bs.getattr(ino)

    def lookup(self, dir_ino: int, name: bytes) -> int | None:
        ino = self.bs.lookup(dir_ino, name)
        if ino is None or self.bs.getattr(ino).flags & FLAG_WHITEOUT:
            return None
        return ino

    def readdir(self, dir_ino: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        for index, name, ino in self.bs.readdir(dir_ino, start):
            if not self.bs.getattr(ino).flags & FLAG_WHITEOUT:
                yield index, name, ino

    def readlink(self, ino: int) -> bytes:
        return self.bs.readlink(ino)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.bs.xattrs(ino)

    def segments(self, ino: int, offset: int, length: int) -> list[tuple[str, Any, Any]]:
        out = []
        for seg in self.bs.segments(ino, offset, length):
            info = self.bs.chunk(seg.chunk_index)
            out.append((self._blobs[info.blob_index], seg, info))
        return out
