"""The startup working set of a workload: what it read, and what that costs compressed.

Input is a fusefs access log (JSON lines: path, first_access, ranges, stat_only).
Bytes read are the uncompressed file bytes in the logged ranges. The compressed
working set maps those ranges onto the imgfs image's chunks (through the merged
bootstraps, as fusefs itself does) and adds the compressed size of each distinct
chunk once: the least data a chunk-granular lazy loader must move over the link.
It feeds the physical limit (see runner.physical_limit).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imgformat import constants as C
from imgformat.bootstrap import Bootstrap
from imgformat.merge import MergedView
from registry.client import RegistryClient


@dataclass(frozen=True)
class WorkingSet:
    files_touched: int        # paths looked up or read
    files_read: int           # paths with at least one byte read
    bytes_read: int           # uncompressed bytes in the read ranges
    chunks: int               # distinct chunks holding those bytes
    compressed_bytes: int     # their compressed size (what must cross the link)


def read_access_log(path: Path) -> list[dict]:
    """The records of an access log, in first-access order."""
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return sorted(recs, key=lambda r: r["first_access"])


def prefetch_list(records: list[dict]) -> list[dict]:
    """A converter --prefetch-list (JSON form): files read, in first-access order, with their ranges."""
    return [{"path": r["path"], "ranges": r["ranges"]} for r in records
            if not r.get("stat_only") and r.get("ranges")]


def merged_view(client: RegistryClient, repo: str, tag: str) -> MergedView:
    """Bootstraps of an imgfs image fetched by range and merged (bottom layer first)."""
    manifest = client.get_manifest(repo, tag).json
    layers, digests = [], []
    for layer in manifest["layers"]:
        ann = layer.get("annotations") or {}
        off, size = int(ann[C.ANNOTATION_BOOTSTRAP_OFFSET]), int(ann[C.ANNOTATION_BOOTSTRAP_SIZE])
        layers.append(Bootstrap.from_blob_bytes(client.get_range(repo, layer["digest"], off, off + size)))
        digests.append(layer["digest"])
    return MergedView(layers, blob_digests=digests)


def working_set(records: list[dict], view: MergedView) -> WorkingSet:
    """Bytes read and the distinct compressed chunks that hold them."""
    chunks: dict[tuple[str, int], int] = {}
    read = files_read = 0
    for r in records:
        ranges = [] if r.get("stat_only") else r.get("ranges") or []
        if not ranges:
            continue
        files_read += 1
        ino = view.lookup_path(r["path"].encode("utf-8", "surrogateescape"))
        for start, end in ranges:
            read += end - start
            if ino is None:
                continue
            for blob, _seg, info in view.segments(ino, start, end - start):
                chunks[(blob, info.comp_offset)] = info.comp_size
    return WorkingSet(len(records), files_read, read, len(chunks), sum(chunks.values()))
