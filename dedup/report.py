"""How much images share: chunk level (what dedup can save) and file level (what a smarter chunker
could at best add), pairwise. Pure: works on per-image summaries built from bootstraps.

Chunk level: the unit imgfs stores and fetches. Two images share a chunk when a chunk of one has
the same sha256 as a chunk of the other; its compressed size is what neither the registry (with
--chunk-dict) nor the node (content-addressed store) stores or moves twice.

File level: a regular file's identity here is the list of (chunk digest, offset, length) of its
segments. For a large file (own chunks) that is exactly its content; a small file packed with
neighbours only matches when the whole pack matches, so file-level sharing of small files is a
lower bound. Bootstraps carry no per-file digest, and reading every file's data to hash it would
cost the whole image; the lower bound is what the format can exploit anyway.

OCI layer level (for comparison): bytes of identical layer blobs, what plain layer sharing saves.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class ImageSummary:
    """What the report needs of one image: chunk digest -> (compressed, uncompressed) size; file
    identity -> size; layer digest -> size."""

    name: str
    chunks: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    files: dict[bytes, int] = field(default_factory=dict)
    file_count: int = 0
    layers: dict[str, int] = field(default_factory=dict)

    def add_chunk(self, digest: bytes, comp: int, uncomp: int) -> None:
        self.chunks.setdefault(digest, (comp, uncomp))

    def add_file(self, segments: Iterable[tuple[bytes, int, int]], size: int) -> None:
        h = hashlib.sha256()
        for digest, off, length in segments:
            h.update(digest + off.to_bytes(8, "little") + length.to_bytes(8, "little"))
        self.files.setdefault(h.digest(), size)
        self.file_count += 1

    def totals(self) -> dict:
        return {"image": self.name, "chunks": len(self.chunks),
                "chunk_bytes_compressed": sum(c for c, _ in self.chunks.values()),
                "chunk_bytes_uncompressed": sum(u for _, u in self.chunks.values()),
                "files": self.file_count, "distinct_file_contents": len(self.files),
                "file_bytes": sum(self.files.values()),
                "layer_bytes": sum(self.layers.values())}


def pair(a: ImageSummary, b: ImageSummary) -> dict:
    """What b shares with a (b's bytes that a already has), at each level."""
    shared_c = [b.chunks[d] for d in b.chunks.keys() & a.chunks.keys()]
    shared_f = [b.files[k] for k in b.files.keys() & a.files.keys()]
    shared_l = [b.layers[k] for k in b.layers.keys() & a.layers.keys()]
    tot = b.totals()
    comp = sum(c for c, _ in shared_c)
    return {
        "a": a.name, "b": b.name,
        "shared_chunks": len(shared_c), "shared_chunk_bytes_compressed": comp,
        "shared_chunk_bytes_uncompressed": sum(u for _, u in shared_c),
        "new_chunk_bytes_compressed": tot["chunk_bytes_compressed"] - comp,
        "chunk_share": round(comp / tot["chunk_bytes_compressed"], 4) if tot["chunk_bytes_compressed"] else None,
        "shared_file_contents": len(shared_f), "shared_file_bytes": sum(shared_f),
        "file_share": round(sum(shared_f) / tot["file_bytes"], 4) if tot["file_bytes"] else None,
        "shared_layers": len(shared_l), "shared_layer_bytes": sum(shared_l),
        "layer_share": round(sum(shared_l) / tot["layer_bytes"], 4) if tot["layer_bytes"] else None,
    }


def report(images: list[ImageSummary]) -> dict:
    """Per-image totals, every ordered pair, and the union (what storing all of them once costs)."""
    union: dict[bytes, tuple[int, int]] = {}
    for img in images:
        union.update(img.chunks)
    separately = sum(img.totals()["chunk_bytes_compressed"] for img in images)
    once = sum(c for c, _ in union.values())
    return {
        "images": [img.totals() for img in images],
        "pairs": [pair(a, b) for a in images for b in images if a is not b],
        "all": {"chunk_bytes_stored_separately": separately, "chunk_bytes_stored_once": once,
                "saved": separately - once,
                "saved_share": round((separately - once) / separately, 4) if separately else None},
    }


def render(rep: dict) -> str:
    mb = lambda n: f"{n / 1e6:.1f} MB"
    lines = [f"{'image':<40} {'chunks':>7} {'stored':>10} {'files':>7}"]
    for t in rep["images"]:
        lines.append(f"{t['image'][-40:]:<40} {t['chunks']:>7} {mb(t['chunk_bytes_compressed']):>10} "
                     f"{t['files']:>7}")
    lines.append("")
    lines.append("b shares with a:    chunk bytes (share)      file bytes (share)     OCI layer bytes (share)")
    for p in rep["pairs"]:
        lines.append(f"{p['a'][-30:]} <- {p['b'][-30:]}")
        lines.append(f"    {mb(p['shared_chunk_bytes_compressed']):>10} ({p['chunk_share']})"
                     f"   {mb(p['shared_file_bytes']):>10} ({p['file_share']})"
                     f"   {mb(p['shared_layer_bytes']):>10} ({p['layer_share']})")
    a = rep["all"]
    lines.append(f"all images: {mb(a['chunk_bytes_stored_separately'])} stored separately, "
                 f"{mb(a['chunk_bytes_stored_once'])} with every chunk once (saves {a['saved_share']})")
    return "\n".join(lines)
