"""Chunk dictionaries: which chunks are already stored, in which blob of which image.

A dictionary maps the sha256 of a chunk's decoded bytes to where its compressed frame lives
(``imgformat.records.ExternalChunk``), and each blob to the image it can be fetched from, so the
converter can (a) write a bootstrap that points into that blob instead of storing the chunk again
and (b) make the blob available in the destination repository (dedup.publish).

Built from bootstraps only (one range request per layer), never from the data. A chunk that is
itself stored in another blob (a dedup'd source image) is recorded with that blob.

File format (``imgconv chunkdict build -o FILE``): JSON, ``{"format": "imgfs-chunkdict",
"version": 1, "images": [location...], "blobs": [{"digest", "size", "media_type", "image"}],
"chunks": [[sha256 hex, blob index, comp_offset, comp_size, uncomp_size], ...]}``, sorted by
digest so the same inputs give the same bytes. A dictionary is a hint, not a trust anchor: an
entry that lies about offsets makes the new image fail chunk verification (EIO, never wrong
bytes), and ``imgconv check`` catches it before publication.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgformat.constants import ANNOTATION_EXTERNAL_BLOBS, ANNOTATION_SOURCE_DIFF_ID
from imgformat.records import ExternalChunk

FORMAT = "imgfs-chunkdict"
VERSION = 1


class ChunkDictError(ValueError):
    """A dictionary file that is not one (bad JSON, wrong format/version, malformed entry)."""


@dataclass(frozen=True)
class DictBlob:
    """A blob chunks point into: its descriptor and the image location it is fetched from."""

    digest: str
    size: int
    media_type: str
    image: str


@dataclass
class ChunkDict(Mapping[bytes, ExternalChunk]):
    """sha256 (32 bytes) -> ExternalChunk, plus the blobs they live in. A Mapping, so it plugs
    straight into ``imgformat.layer.convert_layer(chunk_dict=...)``."""

    chunks: dict[bytes, ExternalChunk] = field(default_factory=dict)
    blobs: dict[str, DictBlob] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    # whole converted layers by *source* diff_id (descriptor, annotations included): a source
    # layer converted before is reused as is, not even its headers and bootstrap are stored again
    layers: dict[str, dict] = field(default_factory=dict)

    def __getitem__(self, key: bytes) -> ExternalChunk:
        return self.chunks[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def add(self, digest: bytes, chunk: ExternalChunk, blob: DictBlob) -> None:
        """Keep the first location seen for a digest (deterministic for a given input order)."""
        if digest not in self.chunks:
            self.chunks[digest] = chunk
            self.blobs.setdefault(blob.digest, blob)

    def add_layer(self, diff_id: str, descriptor: dict, blob: DictBlob) -> None:
        if diff_id not in self.layers:
            self.layers[diff_id] = descriptor
            self.blobs.setdefault(blob.digest, blob)

    def unsized_blobs(self) -> list[str]:
        return [d for d, b in self.blobs.items() if b.size <= 0]

    def set_blob_size(self, digest: str, size: int) -> None:
        """Fill in the size of a blob only known by reference (from a dedup'd image's bootstrap)."""
        b = self.blobs[digest]
        if any(c.blob == digest and c.comp_offset + c.comp_size > size for c in self.chunks.values()):
            raise ChunkDictError(f"blob {digest} ({size} bytes) is shorter than chunks that point into it")
        self.blobs[digest] = DictBlob(b.digest, size, b.media_type, b.image)

    def merge(self, other: ChunkDict) -> None:
        for d, c in other.chunks.items():
            self.add(d, c, other.blobs[c.blob])
        for diff_id, desc in other.layers.items():
            self.add_layer(diff_id, desc, other.blobs[desc["digest"]])
        self.images += [i for i in other.images if i not in self.images]

    def stored_bytes(self) -> int:
        """Compressed bytes of all chunks in the dictionary."""
        return sum(c.comp_size for c in self.chunks.values())

    # -- file format -------------------------------------------------------------------------
    def to_json(self) -> bytes:
        blob_list = sorted({c.blob for c in self.chunks.values()} | {d["digest"] for d in self.layers.values()})
        index = {b: i for i, b in enumerate(blob_list)}
        doc = {
            "format": FORMAT, "version": VERSION, "images": self.images,
            "blobs": [vars(self.blobs[b]) for b in blob_list],
            "chunks": [[d.hex(), index[c.blob], c.comp_offset, c.comp_size, c.uncomp_size]
                       for d, c in sorted(self.chunks.items())],
            "layers": [[diff_id, self.layers[diff_id]] for diff_id in sorted(self.layers)],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def save(self, path: str | Path) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.write_bytes(self.to_json())
        tmp.replace(path)

    @classmethod
    def from_json(cls, data: bytes, what: str = "chunk dictionary") -> ChunkDict:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise ChunkDictError(f"{what}: not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ChunkDictError(f"{what}: not an {FORMAT} version {VERSION} file")
        try:
            blobs = [DictBlob(str(b["digest"]), int(b["size"]), str(b["media_type"]), str(b["image"]))
                     for b in doc["blobs"]]
            out = cls(images=[str(i) for i in doc["images"]])
            for hexd, bi, off, csize, usize in doc["chunks"]:
                digest = bytes.fromhex(hexd)
                if len(digest) != 32 or not 0 <= bi < len(blobs) or min(off, csize, usize) < 0:
                    raise ValueError(f"bad entry {hexd}")
                blob = blobs[bi]
                if off + csize > blob.size:
                    raise ValueError(f"chunk {hexd} lies outside blob {blob.digest}")
                out.add(digest, ExternalChunk(blob.digest, int(off), int(csize), int(usize)), blob)
            by_digest = {b.digest: b for b in blobs}
            for diff_id, desc in doc.get("layers", []):
                if not isinstance(desc, dict) or desc.get("digest") not in by_digest:
                    raise ValueError(f"layer {diff_id}: descriptor names no listed blob")
                out.add_layer(str(diff_id), desc, by_digest[desc["digest"]])
        except (KeyError, TypeError, ValueError) as e:
            raise ChunkDictError(f"{what}: malformed: {e}") from None
        return out

    @classmethod
    def load(cls, path: str | Path) -> ChunkDict:
        return cls.from_json(Path(path).read_bytes(), str(path))


def image_chunks(layers: Iterable[Any], image: str) -> Iterator[tuple[bytes, ExternalChunk, DictBlob]]:
    """(digest, where, blob) for every chunk of an image's layers (converter.imgview.ImgfsLayer:
    ``.layer`` descriptor + ``.bootstrap``), bottom layer first, chunk table order."""
    for la in layers:
        bs = la.bootstrap
        blobs = bs.blobs
        for i in range(bs.chunk_count):
            info = bs.chunk(i)
            digest = la.layer.digest if info.blob_index == 0 else blobs[info.blob_index]
            # a chunk stored in another blob: that blob's descriptor is not in this manifest, so its
            # size is unknown here (0); the caller fills it in (``ChunkDict.set_blob_size``)
            size = la.layer.size if info.blob_index == 0 else 0
            blob = DictBlob(digest, size, la.layer.media_type, image)
            yield info.digest, ExternalChunk(digest, info.comp_offset, info.comp_size, info.uncomp_size), blob


def from_layers(layers: Iterable[Any], image: str) -> ChunkDict:
    """Every chunk of one image, and its self-contained layers (no chunks in other blobs) by diff_id."""
    layers = list(layers)
    out = ChunkDict(images=[image])
    for digest, chunk, blob in image_chunks(layers, image):
        out.add(digest, chunk, blob)
    for la in layers:
        ann = la.layer.annotations
        diff_id = ann.get(ANNOTATION_SOURCE_DIFF_ID)
        if diff_id and ANNOTATION_EXTERNAL_BLOBS not in ann:
            desc = {"mediaType": la.layer.media_type, "digest": la.layer.digest, "size": la.layer.size,
                    "annotations": dict(ann)}
            out.add_layer(diff_id, desc, DictBlob(la.layer.digest, la.layer.size, la.layer.media_type, image))
    return out


def recurring(per_image: list[ChunkDict], min_images: int) -> ChunkDict:
    """Chunks that occur in at least ``min_images`` of the given images (first image's location
    wins), so a dictionary for a family of images stays small: a chunk seen once predicts nothing."""
    counts: dict[bytes, int] = {}
    for d in per_image:
        for digest in d.chunks:
            counts[digest] = counts.get(digest, 0) + 1
    layer_counts: dict[str, int] = {}
    for d in per_image:
        for diff_id in d.layers:
            layer_counts[diff_id] = layer_counts.get(diff_id, 0) + 1
    out = ChunkDict()
    for d in per_image:
        for digest, c in d.chunks.items():
            if counts[digest] >= min_images:
                out.add(digest, c, d.blobs[c.blob])
        for diff_id, desc in d.layers.items():
            if layer_counts[diff_id] >= min_images:
                out.add_layer(diff_id, desc, d.blobs[desc["digest"]])
        out.images += [i for i in d.images if i not in out.images]
    return out
