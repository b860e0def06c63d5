"""Bootstrap reader: lazy opening, and a malformed bootstrap or footer only ever raises BootstrapError."""
from __future__ import annotations

import hashlib
import stat
import struct
import tarfile

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgformat.bootstrap import Bootstrap, BootstrapError
from imgformat.constants import FOOTER_SIZE
from imgformat.footer import build_footer, parse_footer, read_skippable_frames, skippable_frames
from imgformat.records import INODE, SUPER_HEAD, T_INODES, TABLE_DESC
from tests.imgformat.tarkit import CHUNK, convert, dir_, file_, info, make_tar


@pytest.fixture(scope="module")
def sample():
    entries = [dir_("d"), file_("d/a", b"a" * 100, pax={"SCHILY.xattr.user.k": "v"}),
               file_("d/big", bytes(2 * CHUNK + 5)), info("d/l", tarfile.SYMTYPE, linkname="a"),
               info("h", tarfile.LNKTYPE, linkname="d/a"), file_(".wh.gone", b""), dir_("e"),
               file_("e/.wh..wh..opq", b""), info("dev", tarfile.CHRTYPE, dev=(4, 5))]
    cv = convert(make_tar(entries))
    payload = cv.blob[cv.result.bootstrap_offset:cv.result.bootstrap_offset + cv.result.bootstrap_size]
    raw = zstandard.ZstdDecompressor().decompress(read_skippable_frames(payload))
    return cv, payload, raw


def walk(bs: Bootstrap) -> int:
    """Touch every record reachable from the root the way fusefs and unpack do."""
    seen, stack = set(), [bs.root]
    while stack:
        ino = stack.pop()
        if ino in seen:
            continue
        seen.add(ino)
        attr = bs.getattr(ino)
        bs.xattrs(ino)
        if stat.S_ISDIR(attr.mode) and bs.is_dir(ino):
            for _, name, child in bs.readdir(ino):
                bs.lookup(ino, name)
                stack.append(child)
            bs.lookup(ino, b"no-such-name")
        elif stat.S_ISLNK(attr.mode):
            bs.readlink(ino)
        elif stat.S_ISREG(attr.mode):
            bs.segments(ino, 0, attr.size)
            bs.segments(ino, attr.size // 3, 1000)
    for i in range(bs.chunk_count):
        bs.chunk(i)
    assert isinstance(bs.blobs, list)
    assert isinstance(bs.prefetch, list)
    return len(seen)


def test_reference_walk(sample) -> None:
    cv, payload, raw = sample
    bs = Bootstrap(raw)
    assert walk(bs) == bs.inode_count
    assert bs.blobs == [""]
    assert Bootstrap.from_blob_bytes(payload, blob_digest="sha256:ab").blobs == ["sha256:ab"]
    assert bs.file_count == cv.result.files and bs.chunk_count == cv.result.chunks


def test_digest_is_verified(sample) -> None:
    _, payload, _ = sample
    good = "sha256:" + hashlib.sha256(payload).hexdigest()
    Bootstrap.from_blob_bytes(payload, digest=good)
    with pytest.raises(BootstrapError, match="digest"):
        Bootstrap.from_blob_bytes(payload, digest="sha256:" + "0" * 64)


def test_wrong_type_access_is_an_error(sample) -> None:
    cv, _, _ = sample
    bs = cv.bs
    with pytest.raises(BootstrapError):
        bs.readlink(cv.path("d/a"))
    with pytest.raises(BootstrapError):
        bs.segments(cv.path("d"), 0, 1)
    with pytest.raises(BootstrapError):
        bs.lookup(cv.path("d/a"), b"x")
    for bad in (0, -1, bs.inode_count + 1, 1 << 40):
        with pytest.raises(BootstrapError):
            bs.getattr(bad)
    with pytest.raises(BootstrapError):
        bs.chunk(bs.chunk_count)


def test_opening_is_lazy(tmp_path) -> None:
    """A broken record far into the inode table is only noticed when that inode is used."""
    n = 3000
    cv = convert(make_tar([file_(f"f{i:05}", b"x") for i in range(n)]))
    payload = cv.blob[cv.result.bootstrap_offset:cv.result.bootstrap_offset + cv.result.bootstrap_size]
    raw = bytearray(zstandard.ZstdDecompressor().decompress(read_skippable_frames(payload)))
    inode_off = TABLE_DESC.unpack_from(raw, SUPER_HEAD.size + T_INODES * TABLE_DESC.size)[0]
    last = inode_off + n * INODE.size  # ino n+1 is the last file
    struct.pack_into("<Q", raw, last + 48, 1 << 50)  # data_off: segment index far out of range
    bs = Bootstrap(bytes(raw))
    assert bs.inode_count == n + 1
    assert bs.getattr(2).size == 1 and bs.lookup(bs.root, b"f00000") == 2
    with pytest.raises(BootstrapError):
        bs.segments(n + 1, 0, 1)


_SLOW = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SLOW
@given(data=st.data())
def test_mutated_bootstrap_only_raises_bootstrap_error(sample, data) -> None:
    _, _, raw = sample
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 6))):
        if data.draw(st.booleans()):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] = data.draw(st.integers(0, 255))
        else:  # a plausible-looking but wrong integer at a 4-aligned place
            pos = data.draw(st.integers(0, len(buf) // 4 - 2)) * 4
            value = data.draw(st.sampled_from([0, 1, 2, 7, 255, 1 << 16, 1 << 31, (1 << 32) - 1]))
            struct.pack_into("<I", buf, pos, value)
    if data.draw(st.booleans()):
        del buf[data.draw(st.integers(0, len(buf))):]
    try:
        walk(Bootstrap(bytes(buf)))
    except BootstrapError:
        pass


@_SLOW
@given(data=st.data())
def test_mutated_payload_only_raises_bootstrap_error(sample, data) -> None:
    _, payload, _ = sample
    buf = bytearray(payload)
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] ^= data.draw(st.integers(1, 255))
    try:
        walk(Bootstrap.from_blob_bytes(bytes(buf)))
    except BootstrapError:
        pass


def test_payload_errors() -> None:
    for bad in (b"", b"\x00" * 7, skippable_frames(b"not zstd"), skippable_frames(b"x", magic=0x184D2A50)):
        with pytest.raises(BootstrapError):
            Bootstrap.from_blob_bytes(bad)
    with pytest.raises(BootstrapError, match="shorter"):
        Bootstrap.from_blob_bytes(skippable_frames(zstandard.ZstdCompressor().compress(b"tiny")))


def test_footer_round_trip(sample) -> None:
    cv, _, _ = sample
    assert parse_footer(cv.blob[-FOOTER_SIZE:]) == (cv.result.bootstrap_offset, cv.result.bootstrap_size)
    assert parse_footer(build_footer(10, 20, bytes(32))) == (10, 20)
    with pytest.raises(BootstrapError):
        parse_footer(cv.blob[-FOOTER_SIZE - 1:])


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(min_size=FOOTER_SIZE, max_size=FOOTER_SIZE), st.integers(0, FOOTER_SIZE - 1))
def test_fuzz_parse_footer(junk: bytes, cut: int) -> None:
    valid = build_footer(1000, 2000, bytes(32))
    for data in (junk, valid[:cut] + junk[cut:], valid[:cut] + bytes([junk[cut]]) + valid[cut + 1:]):
        try:
            offset, size = parse_footer(data)
        except BootstrapError:
            continue
        assert isinstance(offset, int) and isinstance(size, int) and size >= 8
