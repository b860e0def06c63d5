"""`imgconv convert --prefetch-from-trace`: the trace's files come first in each blob,
contiguous, in the order they were needed, and the prefetch table holds their chunks
(checked from the bootstraps)."""
from __future__ import annotations

from itertools import pairwise

import pytest

from prefetch.order import plan
from prefetch.trace import load_trace
from tests.fusefs.imagekit import layer_bootstraps

pytestmark = pytest.mark.e2e

#: Between two prefetched chunks only tar header frames (and directory records) may sit.
MAX_GAP = 64 << 10


def lookup(bs, path: str) -> int | None:
    ino = bs.root
    for name in path.split("/"):
        ino = bs.lookup(ino, name.encode())
        if ino is None:
            return None
    return ino


def test_prefetch_chunks_come_first_contiguous_and_in_access_order(prefetched_layout, python_trace):
    entries = plan([load_trace(python_trace)])
    assert all(e.ranges is None for e in entries)        # this workload reads small or mostly-read files
    layers = layer_bootstraps(prefetched_layout)
    placed: set[str] = set()
    for _blob, bs in layers:
        table = bs.prefetch
        infos = [bs.chunk(i) for i in table]
        offsets = [c.comp_offset for c in infos]
        assert offsets == sorted(offsets), "prefetch table is not in blob order"
        rest = [bs.chunk(i).comp_offset for i in range(bs.chunk_count) if i not in set(table)]
        if infos:
            assert max(offsets) < min(rest, default=1 << 62), "a non-prefetch chunk sits before prefetched ones"
            gaps = [b.comp_offset - (a.comp_offset + a.comp_size) for a, b in pairwise(infos)]
            assert max(gaps, default=0) <= MAX_GAP, f"prefetch region not contiguous: gaps {gaps}"
        last = -1
        for e in entries:
            ino = lookup(bs, e.path)
            if ino is None or bs.getattr(ino).size == 0:
                continue
            segs = bs.segments(ino, 0, bs.getattr(ino).size)
            assert {s.chunk_index for s in segs} <= set(table), f"{e.path}: chunks missing from the table"
            first = bs.chunk(segs[0].chunk_index).comp_offset
            assert first >= last, f"{e.path} laid out before a file needed earlier"
            last = first
            placed.add(e.path)
    assert placed == {e.path for e in entries}, "a file of the list is in no layer"
    assert layers[0][1].prefetch, "the bottom layer (python, libc) has a prefetch table"
