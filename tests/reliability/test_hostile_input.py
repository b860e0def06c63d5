"""Hostile input: every case gets a clear error (or is kept as plain data, as documented in
docs/reliability.md) and nothing is written outside the target.

Layers go through imgformat.layer.convert_layer (what imgconv runs), bootstraps through
imgformat.bootstrap.Bootstrap (what imgfs mount and the snapshotter read), images through
``imgfs mount`` and ``imgconv unpack`` (real processes, real FUSE).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest

from imgformat import constants as C
from imgformat.bootstrap import Bootstrap
from imgformat.errors import BootstrapError, ImgFormatError
from imgformat.layer import convert_layer
from imgformat.records import DIRENT, SUPER_HEAD, T_DIRENTS, TABLE_DESC
from tests.fusefs import imagekit
from tests.reliability.conftest import ROOT


def tar(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = type_, size
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def convert(raw: bytes, tmp_path) -> object:
    with open(tmp_path / "out.blob", "wb") as out:
        return convert_layer(io.BytesIO(raw), out, workdir=str(tmp_path))


def xattr_bomb() -> tarfile.TarInfo:
    info = ti("f", size=1)
    info.pax_headers = {f"SCHILY.xattr.user.k{i}": "v" * 1000 for i in range(2000)}
    return info


LAYER_CASES = {
    "dotdot": ([(ti("../evil", size=1), b"x")], "'..' component"),
    "dotdot-inside": ([(ti("a/../../evil", size=1), b"x")], "'..' component"),
    "absolute": ([(ti("/etc/passwd", size=1), b"x")], "absolute path"),
    "hardlink-dotdot": ([(ti("l", tarfile.LNKTYPE, linkname="../../etc/shadow"), None)], "'..' component"),
    "hardlink-absolute": ([(ti("l", tarfile.LNKTYPE, linkname="/etc/shadow"), None)], "absolute path"),
    "hardlink-missing": ([(ti("l", tarfile.LNKTYPE, linkname="nowhere"), None)], "target missing"),
    "through-symlinked-dir": ([(ti("d", tarfile.SYMTYPE, linkname="/etc"), None),
                               (ti("d/passwd", size=1), b"x")], "is not a directory"),
    "duplicate-names": ([(ti("a", size=1), b"x"), (ti("a", size=1), b"y")], "duplicate path"),
    "overlong-name": ([(ti("n" * 256, size=1), b"x")], "longer than 255"),
    "xattr-bomb": ([(xattr_bomb(), b"x")], "header larger than"),
    "huge-xattr": ([(ti("f", size=1, pax_headers={"SCHILY.xattr.user.v": "v" * (2 << 20)}), b"x")],
                   "header larger than"),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_hostile_layer_is_refused_with_a_clear_error(case, tmp_path):
    entries, message = LAYER_CASES[case]
    with pytest.raises(ImgFormatError, match=message):
        convert(tar(*entries), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["out.blob"]      # no spool left behind


def test_absurd_size_without_data_is_truncation_not_allocation(tmp_path):
    """A header claiming 8 GiB with no data behind it: an error, no 8 GiB buffer."""
    header = ti("big", size=8 << 30).tobuf(format=tarfile.GNU_FORMAT)
    with pytest.raises(ImgFormatError, match="truncated"):
        convert(header + b"\0" * 4096, tmp_path)


def _run_stream(kind: str, n: int, tmp_path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.reliability.streams", kind, str(n), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)


def test_many_entries_in_one_directory_cost_bounded_memory(tmp_path):
    """20,000 names in one directory, generated while read: peak RSS grows by well under
    2 KiB a name over a 100-name run (200,000 names by hand: 43 s, 289 MiB peak), and the
    bootstrap answers a lookup of the last name by binary search."""
    small = _run_stream("dir", 100, tmp_path)
    big = _run_stream("dir", 20_000, tmp_path)
    assert big["files"] == 20_001
    assert big["maxrss"] - small["maxrss"] < 20_000 * 2048
    blob = (tmp_path / "out.blob").read_bytes()
    bs = Bootstrap.from_blob_bytes(blob[big["bootstrap_offset"]:big["bootstrap_offset"] + big["bootstrap_size"]])
    d = bs.lookup(bs.root, b"d")
    assert bs.lookup(d, b"f0019999") is not None and bs.lookup(d, b"f0020000") is None


def test_zip_bomb_ratio_layer_converts_in_bounded_memory(tmp_path):
    """256 MiB of zeros (a 16,000:1 bomb once compressed): RSS stays far below the payload."""
    r = _run_stream("zeros", 256 << 20, tmp_path)
    assert r["uncompressed"] > 256 << 20
    assert r["blob_size"] < 1 << 20
    assert r["maxrss"] < 160 << 20


# -- bootstraps ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_bootstrap() -> bytes:
    from tests.fusefs.conftest import base_tar

    out = io.BytesIO()
    res = convert_layer(io.BytesIO(base_tar()), out, chunk_size=64 * 1024)
    payload = out.getvalue()[res.bootstrap_offset:res.bootstrap_offset + res.bootstrap_size]
    return Bootstrap.from_blob_bytes(payload)._raw


def _table(raw: bytes, t: int) -> tuple[int, int]:
    off, count, _size, _ = TABLE_DESC.unpack_from(raw, SUPER_HEAD.size + t * TABLE_DESC.size)
    return off, count


def walk(bs: Bootstrap) -> int:
    """Touch every reachable record the way a mount would; returns the inodes seen."""
    seen, todo = 0, [bs.root]
    while todo:
        ino = todo.pop()
        seen += 1
        a = bs.getattr(ino)
        bs.xattrs(ino)
        if stat.S_ISDIR(a.mode):
            for _, _name, child in bs.readdir(ino):
                todo.append(child)
        elif stat.S_ISLNK(a.mode):
            bs.readlink(ino)
        elif stat.S_ISREG(a.mode) and a.size:
            for seg in bs.segments(ino, 0, a.size):
                bs.chunk(seg.chunk_index)
    return seen


def _dir_with_subdir(bs: Bootstrap) -> tuple[int, int]:
    """(dirent index, child dir ino) of a subdirectory entry below the root."""
    for index, _name, child in bs.readdir(bs.root):
        if bs.is_dir(child):
            return index, child
    raise AssertionError("no subdirectory")


def _set_dirent_ino(raw: bytes, index: int, ino: int) -> bytes:
    off, _ = _table(raw, T_DIRENTS)
    b = bytearray(raw)
    name_off, name_len, _old, pad = DIRENT.unpack_from(b, off + index * DIRENT.size)
    DIRENT.pack_into(b, off + index * DIRENT.size, name_off, name_len, ino, pad)
    return bytes(b)


def test_good_bootstrap_walks(good_bootstrap):
    assert walk(Bootstrap(good_bootstrap)) > 100


def test_directory_loop_is_refused(good_bootstrap):
    """A directory entry pointing back at the root: a loop a walker would never leave."""
    bs = Bootstrap(good_bootstrap)
    index, _ = _dir_with_subdir(bs)
    bad = Bootstrap(_set_dirent_ino(good_bootstrap, index, C.ROOT_INO))
    with pytest.raises(BootstrapError, match="links back"):
        walk(bad)


def test_out_of_range_inode_reference_is_refused(good_bootstrap):
    bs = Bootstrap(good_bootstrap)
    bad = Bootstrap(_set_dirent_ino(good_bootstrap, 0, bs.inode_count + 7))
    with pytest.raises(BootstrapError, match="out of range"):
        walk(bad)


def test_table_outside_the_buffer_is_refused_at_open(good_bootstrap):
    b = bytearray(good_bootstrap)
    pos = SUPER_HEAD.size + T_DIRENTS * TABLE_DESC.size
    off, count, size, pad = TABLE_DESC.unpack_from(b, pos)
    TABLE_DESC.pack_into(b, pos, off, count + 10_000_000, size, pad)
    with pytest.raises(BootstrapError, match="outside the buffer"):
        Bootstrap(bytes(b))


def test_bootstrap_claiming_a_huge_decoded_size_is_refused():
    """A tiny zstd frame that says it decodes to 2 GiB: refused before allocating."""
    import zstandard

    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * 1000))
    with pytest.raises(BootstrapError):
        Bootstrap.from_blob_bytes(bytes(frame[:4]) + b"\xff" * 8 + bytes(frame[12:]))


# -- images: manifests that lie, through imgfs mount ----------------------------------------------

def _mount_fails(layout, tmp_path) -> subprocess.CompletedProcess:
    mp = tmp_path / "mnt"
    mp.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "fusefs.cli", "mount", f"oci:{layout}", str(mp), "--daemon",
                        "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=False)
    if r.returncode == 0:   # should not happen: clean up before failing the test
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
    assert not os.path.ismount(mp)
    return r


def _edit_manifest(layout, change) -> None:
    index = json.loads((layout / "index.json").read_text())
    mpath = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    man = json.loads(mpath.read_bytes())
    change(man)
    data = json.dumps(man).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    index["manifests"][0].update(digest="sha256:" + digest, size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


@pytest.fixture
def small_layout(tmp_path):
    from tests.fusefs.conftest import top_tar

    layout = tmp_path / "img"
    imagekit.write_imgfs_layout(layout, [top_tar()], chunk_size=64 * 1024)
    return layout


def test_wrong_bootstrap_digest_annotation_is_a_bad_image(small_layout, tmp_path):
    def change(man):
        man["layers"][0]["annotations"][C.ANNOTATION_BOOTSTRAP_DIGEST] = "sha256:" + "0" * 64
    _edit_manifest(small_layout, change)
    r = _mount_fails(small_layout, tmp_path)
    assert r.returncode == 3 and "does not match the pinned" in r.stderr


def test_bootstrap_place_outside_the_blob_is_refused(small_layout, tmp_path):
    def change(man):
        man["layers"][0]["annotations"][C.ANNOTATION_BOOTSTRAP_OFFSET] = str(10 << 30)
    _edit_manifest(small_layout, change)
    r = _mount_fails(small_layout, tmp_path)
    assert r.returncode in (3, 4) and r.stderr.strip()


def test_wrong_layer_size_is_refused(small_layout, tmp_path):
    def change(man):
        d = man["layers"][0]
        d["size"] = d["size"] * 3
        for k in (C.ANNOTATION_BOOTSTRAP_OFFSET, C.ANNOTATION_BOOTSTRAP_SIZE, C.ANNOTATION_BOOTSTRAP_DIGEST):
            d["annotations"].pop(k)           # make the daemon read the footer at the claimed end
    _edit_manifest(small_layout, change)
    r = _mount_fails(small_layout, tmp_path)
    assert r.returncode in (3, 4) and r.stderr.strip()


def test_manifest_with_a_wrong_digest_is_refused(small_layout, tmp_path):
    index = json.loads((small_layout / "index.json").read_text())
    real = index["manifests"][0]["digest"][7:]
    fake = "1" * 64
    os.rename(small_layout / "blobs/sha256" / real, small_layout / "blobs/sha256" / fake)
    index["manifests"][0]["digest"] = "sha256:" + fake
    (small_layout / "index.json").write_text(json.dumps(index))
    r = _mount_fails(small_layout, tmp_path)
    assert r.returncode in (3, 4) and r.stderr.strip()


def test_devices_and_setid_files_are_data_on_a_nosuid_nodev_mount(tmp_path, daemons):
    """Kept as image content (OCI semantics), but the imgfs mount itself is nosuid,nodev:
    the device cannot be opened through it and set-id bits give nothing there."""
    raw = tar((ti("dev", tarfile.DIRTYPE, mode=0o755), None),
              (ti("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666), None),
              (ti("su", size=3, mode=0o4755), b"#!\n"))
    layout = tmp_path / "img"
    imagekit.write_imgfs_layout(layout, [raw], chunk_size=64 * 1024)
    mp = tmp_path / "mnt"
    daemons(f"oci:{layout}", mp, "--cache-dir", str(tmp_path / "cache"), "--no-prefetch")
    with open("/proc/self/mountinfo") as f:
        opts = next(line.split()[5] for line in f if line.split()[4] == str(mp))
    assert {"ro", "nosuid", "nodev"} <= set(opts.split(","))
    st = os.lstat(mp / "dev/mem")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 1)
    with pytest.raises(PermissionError):
        open(mp / "dev/mem", "rb")  # noqa: SIM115 - must fail
    assert os.stat(mp / "su").st_mode & stat.S_ISUID
