"""Chunk dedup in the format writer and the dictionary file, without registries (fast, in-process)."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from dedup.chunkdict import ChunkDict, ChunkDictError, DictBlob, recurring
from dedup.report import ImageSummary, pair
from imgformat.chunk import ChunkError, decode_chunk
from imgformat.layer import ExternalChunk, convert_layer
from imgformat.merge import MergedView
from tests.imgformat.tarkit import bootstrap_of, decompress_blob, dir_, file_, make_tar

CHUNK = 64 << 10
BIG = os.urandom(3 * CHUNK + 123)        # a large file: chunk-aligned, identical chunks anywhere
OTHER = os.urandom(2 * CHUNK)


def _convert(tar: bytes, chunk_dict=None):
    out = io.BytesIO()
    res = convert_layer(io.BytesIO(tar), out, chunk_size=CHUNK, chunk_dict=chunk_dict)
    blob = out.getvalue()
    return res, blob, bootstrap_of(blob)


def _dict_of(bs, blob_digest: str, blob_size: int) -> ChunkDict:
    d = ChunkDict(images=["test"])
    for i in range(bs.chunk_count):
        c = bs.chunk(i)
        d.add(c.digest, ExternalChunk(blob_digest, c.comp_offset, c.comp_size, c.uncomp_size),
              DictBlob(blob_digest, blob_size, "m", "test"))
    return d


def _read(view: MergedView, blobs: dict[str, bytes], path: str) -> bytes:
    ino = view.root
    for part in path.encode().split(b"/"):
        ino = view.lookup(ino, part)
    size = view.getattr(ino).size
    out = bytearray()
    for blob, seg, info in view.segments(ino, 0, size):
        data = decode_chunk(blobs[blob][info.comp_offset:info.comp_offset + info.comp_size], info)
        out += data[seg.offset_in_chunk:seg.offset_in_chunk + seg.length]
    return bytes(out)


def test_upper_layer_points_into_lower_blob():
    lower_tar = make_tar([dir_("usr"), file_("usr/big", BIG), file_("usr/small", b"x" * 100)])
    upper_tar = make_tar([dir_("opt"), file_("opt/copy", BIG), file_("opt/new", OTHER)])
    r1, b1, bs1 = _convert(lower_tar)
    plain, _, _ = _convert(upper_tar)
    d = _dict_of(bs1, r1.blob_digest, r1.blob_size)
    r2, b2, bs2 = _convert(upper_tar, d)
    # the copy's 4 chunks are not stored again; the new file's are
    assert r2.external_chunks == 4 and r2.external_blobs == (r1.blob_digest,)
    assert r2.blob_size < plain.blob_size - len(BIG) // 2
    assert bs2.blobs[1:] == [r1.blob_digest]
    # the diff_id is the logical layer's (the config's rootfs does not change with --dedup)
    assert r2.diff_id == plain.diff_id
    # ...and the stored blob no longer decompresses to that tar: a plain runtime's diff_id check fails
    assert "sha256:" + hashlib.sha256(decompress_blob(b2)).hexdigest() != r2.diff_id
    view = MergedView([bs1, bs2], [r1.blob_digest, r2.blob_digest])
    blobs = {r1.blob_digest: b1, r2.blob_digest: b2}
    assert _read(view, blobs, "opt/copy") == BIG
    assert _read(view, blobs, "opt/new") == OTHER
    assert _read(view, blobs, "usr/small") == b"x" * 100


def test_dedup_output_is_deterministic():
    lower = make_tar([file_("a", BIG)])
    r1, _, bs1 = _convert(lower)
    d = _dict_of(bs1, r1.blob_digest, r1.blob_size)
    upper = make_tar([file_("b", BIG), file_("c", OTHER)])
    assert _convert(upper, d)[1] == _convert(upper, d)[1]


def test_lying_dictionary_gives_chunk_errors_not_wrong_bytes():
    r1, b1, bs1 = _convert(make_tar([file_("a", BIG)]))
    d = _dict_of(bs1, r1.blob_digest, r1.blob_size)
    # shift every entry: the bootstrap then points at the wrong frame
    d.chunks = {k: v._replace(comp_offset=v.comp_offset + 1) for k, v in d.chunks.items()}
    _, _, bs2 = _convert(make_tar([file_("b", BIG)]), d)
    info = bs2.chunk(0)
    with pytest.raises(ChunkError):
        decode_chunk(b1[info.comp_offset:info.comp_offset + info.comp_size], info)


def test_dict_file_roundtrip_and_errors(tmp_path):
    r1, _, bs1 = _convert(make_tar([file_("a", BIG), file_("b", OTHER)]))
    d = _dict_of(bs1, r1.blob_digest, r1.blob_size)
    path = tmp_path / "d.json"
    d.save(path)
    back = ChunkDict.load(path)
    assert back.chunks == d.chunks and list(back.blobs) == [r1.blob_digest]
    assert path.read_bytes() == back.to_json()          # deterministic
    for bad in (b"nope", b'{"format": "x"}',
                d.to_json().replace(b'"size":' + str(r1.blob_size).encode(), b'"size":10')):
        with pytest.raises(ChunkDictError):
            ChunkDict.from_json(bad)


def test_recurring_keeps_only_shared_chunks():
    blob = DictBlob("sha256:" + "a" * 64, 1000, "m", "i1")
    a, b, c = ChunkDict(images=["i1"]), ChunkDict(images=["i2"]), ChunkDict(images=["i3"])
    e = ExternalChunk(blob.digest, 0, 10, 20)
    for d, keys in ((a, [b"1", b"2"]), (b, [b"2", b"3"]), (c, [b"3", b"4"])):
        for k in keys:
            d.add(k * 32, e, blob)
    assert sorted(recurring([a, b, c], 2)) == [b"2" * 32, b"3" * 32]
    assert len(recurring([a, b, c], 1)) == 4


def test_report_pair_counts_shared_bytes_of_b():
    a, b = ImageSummary("a"), ImageSummary("b")
    a.add_chunk(b"1" * 32, 100, 200)
    b.add_chunk(b"1" * 32, 100, 200)
    b.add_chunk(b"2" * 32, 300, 400)
    a.add_file([(b"1" * 32, 0, 200)], 200)
    b.add_file([(b"1" * 32, 0, 200)], 200)
    b.add_file([(b"2" * 32, 0, 400)], 400)
    p = pair(a, b)
    assert p["shared_chunk_bytes_compressed"] == 100 and p["new_chunk_bytes_compressed"] == 300
    assert p["chunk_share"] == 0.25 and p["shared_file_bytes"] == 200
