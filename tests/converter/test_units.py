"""Unit tests of the pieces below the CLI: locations, streams (bounded, verified), prefetch lists."""
from __future__ import annotations

import gzip
import hashlib
import io
import subprocess

import pytest
import zstandard

from converter.errors import BadInput, UsageError
from converter.location import parse_location
from converter.prefetchlist import load_prefetch_list
from converter.streams import OUT_TARGET, DecompressReader, ZstdFraming, open_tar_stream


@pytest.mark.parametrize("text, kind, fields", [
    ("docker://127.0.0.1:5000/lib/py:3.11", "docker", {"host": "127.0.0.1:5000", "repo": "lib/py", "ref": "3.11"}),
    ("docker://reg/x", "docker", {"repo": "x", "ref": "latest"}),
    ("docker://reg/a/b@sha256:" + "a" * 64, "docker", {"repo": "a/b", "ref": "sha256:" + "a" * 64}),
    ("oci:/tmp/dir:v1", "oci", {"ref": "v1"}),
    ("oci:/tmp/dir", "oci", {"ref": None}),
    ("oci:rel/dir.x", "oci", {"ref": None}),
    ("docker-archive:/tmp/a.tar", "docker-archive", {}),
])
def test_locations(text, kind, fields):
    loc = parse_location(text)
    assert loc.kind == kind and all(getattr(loc, k) == v for k, v in fields.items())
    assert parse_location(str(loc)) == loc


@pytest.mark.parametrize("text", ["docker://hostonly", "docker://h/UPPER:x", "docker://h/r@sha256:12",
                                  "oci:", "oci:/d:bad tag", "http://x/y", "docker-archive:"])
def test_bad_locations(text):
    with pytest.raises(UsageError):
        parse_location(text)


def drain(reader, size=1 << 20):
    """Read everything; return (total bytes, largest single read)."""
    total = biggest = 0
    while piece := reader.read(size):
        total += len(piece)
        biggest = max(biggest, len(piece))
    return total, biggest


@pytest.mark.parametrize("compress", ["gzip", "zstd-cli", "zstd-lib"])
def test_decompression_bombs_stay_bounded(compress):
    """1 GiB of zeros from ~100 KB of input: every piece the decoder yields is bounded, the total exact."""
    block = bytes(64 << 20)
    if compress == "gzip":
        member = gzip.compress(block, 9, mtime=0)
    elif compress == "zstd-cli":
        member = subprocess.run(["zstd", "-q", "-c", "-"], input=block, capture_output=True, check=True).stdout
    else:
        member = zstandard.ZstdCompressor().compress(block)
    data = member * 16
    r = DecompressReader(io.BytesIO(data))
    sizes = [len(p) for p in r._pieces]          # the decoder's own steps
    assert sum(sizes) == 1 << 30
    assert max(sizes) <= OUT_TARGET


@pytest.mark.parametrize("cut", [1, 3, 4, 30, 36, 100, 300])
def test_truncated_zstd_is_detected_wherever_it_is_cut(cut):
    data = zstandard.ZstdCompressor(write_checksum=False).compress(bytes(range(256)) * 4000 + bytes(300_000))
    data += zstandard.ZstdCompressor(write_checksum=True).compress(b"second frame" * 1000)
    r = DecompressReader(io.BytesIO(data[:-cut]))
    with pytest.raises(BadInput, match="truncated zstd|corrupt zstd"):
        r.finish()
    assert DecompressReader(io.BytesIO(data)).finish()


def test_zstd_framing_walker_accepts_skippable_frames():
    w = ZstdFraming()
    frame = zstandard.ZstdCompressor().compress(b"x" * 1000)
    skippable = (0x184D2A5A).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    for i in range(0, len(frame + skippable), 3):       # fed in awkward pieces
        w.feed((frame + skippable)[i:i + 3])
    w.end()
    assert w.frames == 2


def test_digests_checked_at_end_and_on_finish():
    raw = b"x" * 100_000
    blob = gzip.compress(raw, mtime=0)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    chk, tar = open_tar_stream(io.BytesIO(blob), digest, "layer", len(blob))
    assert tar.read(10) == b"xxxxxxxxxx"
    assert tar.finish() == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert chk.finish() == digest
    chk, tar = open_tar_stream(io.BytesIO(blob), digest, "layer", len(blob) + 1)
    with pytest.raises(BadInput, match="size 132 does not match descriptor size 133"):
        tar.finish()            # the compressed stream's EOF is seen while draining the tar


def test_prefetch_list_forms(tmp_path):
    text = tmp_path / "list.txt"
    text.write_text("# comment\n/usr/bin/python3\nusr/lib/x.so\t0-4096,8192-9000\n\n")
    entries = load_prefetch_list(text)
    assert [(e.path, e.ranges) for e in entries] == [("/usr/bin/python3", None),
                                                      ("usr/lib/x.so", ((0, 4096), (8192, 9000)))]
    js = tmp_path / "list.json"
    js.write_text('[{"path": "/a", "ranges": [[0, 10]]}, {"path": "/b", "ranges": null}, "/c"]')
    assert [(e.path, e.ranges) for e in load_prefetch_list(js)] == [("/a", ((0, 10),)), ("/b", None), ("/c", None)]
    bad = tmp_path / "bad.txt"
    bad.write_text("/a\t10-5\n")
    with pytest.raises(BadInput, match="bad.txt:1"):
        load_prefetch_list(bad)
