"""A big file of which a workload reads a little: the prefetch list keeps its ranges, the
prefetch table holds only their chunks, and at runtime the prefetch moves those ranges,
not the file (the converter lays the whole file record in the prefetch region, in its
place in first-read order; the prefetch stream skips the holes of the table by reopening
its range after each: one request per hole, none of the hole's bytes)."""
from __future__ import annotations

import os
import uuid

import pytest

from benchmarks.proxy import ShapingProxy
from prefetch.trace import FileAccess, Trace
from tests.fusefs import imagekit
from tests.fusefs.imagekit import Tar, blob_data, layer_bootstraps
from tests.prefetch.conftest import imgconv
from tests.prefetch.test_coldstart import data_gets, layers, mounted, wait_prefetch_done
from tests.support.ocilayout import write_oci_layout

pytestmark = pytest.mark.e2e

MiB = 1 << 20
BIG = 24 * MiB
BIG_READS = ((0, 4096), (10 * MiB + 5, 10 * MiB + 9000))


@pytest.fixture(scope="module")
def partial_image(tmp_path_factory, registry):
    base = tmp_path_factory.mktemp("partial")
    tar = (Tar().dir("bin").dir("lib").dir("etc")
           .file("etc/conf", b"x=1\n").file("bin/app", blob_data(1, 300 << 10))
           .file("lib/big.so", blob_data(2, BIG)).file("lib/other", blob_data(3, 2 * MiB)).bytes())
    write_oci_layout(base / "src", [tar])
    trace = Trace([FileAccess("bin/app", 0.0, ((0, 300 << 10),), False, 300 << 10, 0.0),
                   FileAccess("lib/big.so", 0.1, BIG_READS, False, BIG, 0.1),
                   FileAccess("etc/conf", 0.2, ((0, 4),), False, 4, 0.2),
                   FileAccess("lib", 0.3, (), True, 0)])
    trace.save(base / "trace.json")
    imgconv("convert", f"oci:{base / 'src'}:latest", f"oci:{base / 'out'}:latest",
            "--prefetch-from-trace", str(base / "trace.json"))
    image = imagekit.push(base / "out", registry.host, f"prefetch/partial-{uuid.uuid4().hex[:8]}")
    return base / "out", image


def test_only_the_read_ranges_of_a_big_file_are_in_the_prefetch_table(partial_image):
    layout, _ = partial_image
    ((_, bs),) = layer_bootstraps(layout)
    table = set(bs.prefetch)
    size = sum(bs.chunk(i).comp_size for i in table)
    assert size < 4 * MiB, f"prefetch table holds {size} bytes (the whole 24 MiB file?)"
    ino = bs.lookup(bs.lookup(bs.root, b"lib"), b"big.so")
    segs = bs.segments(ino, 0, BIG)
    in_table = [s for s in segs if s.chunk_index in table]
    # 0 and 10 as read, and 9: the read at 10 MiB + 5 is within the 128 KiB the runtime's
    # kernel readahead reads around a page (the planner pads ranges by it)
    assert {s.file_offset // MiB for s in in_table} == {0, 9, 10}


def test_at_runtime_a_big_partial_file_costs_only_its_ranges(partial_image, registry, tmp_path):
    layout, pushed = partial_image
    boot = layers(layout)
    with ShapingProxy(registry.host) as proxy, \
            mounted(pushed.replace(registry.host, proxy.host), tmp_path) as m:
        wait_prefetch_done(m)
        gets = data_gets(proxy, boot)
        # one stream: opened at the front, reopened after each of the two holes of big.so
        assert sum(gets.values()) <= 3, gets
        assert m.metrics()['imgfs_registry_bytes_total{kind="prefetch"}'] < 4 * MiB
        want = blob_data(2, BIG)
        with open(m.mountpoint / "lib/big.so", "rb", buffering=0) as f:
            # no kernel readahead: the reads ask for what the trace recorded (readahead
            # beyond the ranges is the on-demand path's business, not the prefetch's)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            for start, end in BIG_READS:
                f.seek(start)
                assert f.read(end - start) == want[start:end]
        assert (m.mountpoint / "bin/app").read_bytes() == blob_data(1, 300 << 10)
        assert data_gets(proxy, boot) == gets           # all local: nothing fetched on demand
