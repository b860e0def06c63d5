"""Logical vs stored bytes of the node's shared chunk store (imgfs cache stats --image)."""
from __future__ import annotations

import hashlib

from fusefs.store import ChunkStore


def test_usage_counts_shared_chunks_once_per_image_and_once_on_disk(tmp_path):
    store = ChunkStore(tmp_path / "cache")
    data = {name: name.encode() * 1000 for name in ("base", "v1", "v2")}
    digest = {n: hashlib.sha256(d).digest() for n, d in data.items()}
    for n in ("base", "v1", "v2"):
        store.put(digest[n], data[n])
    missing = hashlib.sha256(b"never fetched").digest()
    images = {
        "v1": {digest["base"]: 4000, digest["v1"]: 2000},
        "v2": {digest["base"]: 4000, digest["v2"]: 2000, missing: 99},
    }
    u = store.usage(images)
    assert u["images"]["v1"] == {"chunks": 2, "cached_chunks": 2, "cached_bytes": 6000}
    assert u["images"]["v2"] == {"chunks": 3, "cached_chunks": 2, "cached_bytes": 6000}
    assert u["logical_bytes"] == 12000
    assert u["stored_bytes"] == 4000 + 2000 + 2000 and u["stored_chunks"] == 3
    assert u["saved_bytes"] == 4000
    assert store.usage({}) == {"images": {}, "logical_bytes": 0, "stored_bytes": 0, "stored_chunks": 0,
                               "saved_bytes": 0}
