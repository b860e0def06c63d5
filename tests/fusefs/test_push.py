"""Warm sequential reads pushed into the kernel page cache (fusefs.push), without a mount.

The reader runs over test_reader's in-memory blob of real zstd chunk frames; the kernel's
``notify_store`` is replaced by a recorder (or a refusal): what a real kernel cannot be
made to do on demand (refuse the message) or to show (what exactly it was given).
The end-to-end behaviour with a real FUSE mount is in test_push_mount.py.
"""
from __future__ import annotations

import errno

import trio
import trio.lowlevel
import trio.testing

from fusefs.push import KernelPush
from tests.fusefs.test_reader import CHUNK, INO, _setup


class Recorder:
    """notify_store stand-in: keeps (inode, offset, bytes) of every push."""

    def __init__(self, fail: int | None = None) -> None:
        self.calls: list[tuple[int, int, bytes]] = []
        self.fail = fail

    def __call__(self, ino: int, offset: int, data) -> None:
        if self.fail is not None:
            raise OSError(self.fail, "refused")
        self.calls.append((ino, offset, bytes(data)))


async def _read_seq(reader, size: int, step: int) -> bytes:
    out = bytearray()
    async with trio.open_nursery() as nursery:
        reader.spawn = nursery.start_soon
        for off in range(0, size, step):
            out += await reader.read(INO, off, step, size)
            await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return bytes(out)


def _warm(tmp_path, n: int, size: int | None = None):
    """A reader whose store already holds every chunk (a first pass read them)."""
    _, fetcher, reader, expected = _setup(tmp_path, n)
    size = size or len(expected)
    assert trio.run(_read_seq, reader, size, CHUNK) == expected[:size]
    fetcher.fresh._items.clear()
    fetcher.fresh._bytes = 0
    reader._stream.clear()
    return reader, expected[:size]


def test_pushes_exactly_the_file_bytes_never_past_eof(tmp_path):
    size = 100 * CHUNK - 1234           # not a chunk multiple: the last chunk is clipped
    reader, expected = _warm(tmp_path, 100, size)
    rec = Recorder()
    reader.push = KernelPush(reader.store, rec)
    got = trio.run(_read_seq, reader, size, CHUNK)
    assert got == expected
    assert rec.calls, "a sequential reader of cached chunks was not pushed"
    covered = bytearray(size)
    for ino, off, data in rec.calls:
        assert ino == INO
        assert off + len(data) <= size, "pushed past the end of the file"
        assert data == expected[off:off + len(data)]
        covered[off:off + len(data)] = b"\1" * len(data)
    # everything after the first reads was pushed, up to the last byte of the file
    assert covered.rfind(b"\0") < 3 * CHUNK
    assert reader.push.pushed_bytes == sum(len(d) for _, _, d in rec.calls)
    assert reader.push.failures == 0


def test_refused_push_falls_back_to_replies(tmp_path):
    size = 64 * CHUNK
    reader, expected = _warm(tmp_path, 64, size)
    rec = Recorder(fail=errno.ENOSYS)
    reader.push = KernelPush(reader.store, rec)
    assert trio.run(_read_seq, reader, size, CHUNK) == expected
    assert reader.push.failures >= 1 and not reader.push.enabled
    # and the old path took over: chunks loaded ahead into memory and handed over
    reader._stream.clear()
    assert trio.run(_read_seq, reader, size, CHUNK) == expected
    assert reader.fetcher.fresh.served > 0


def test_other_push_errors_stop_the_batch_but_reads_stay_right(tmp_path):
    size = 64 * CHUNK
    reader, expected = _warm(tmp_path, 64, size)
    rec = Recorder(fail=errno.ENOENT)       # the kernel forgot the inode
    reader.push = KernelPush(reader.store, rec)
    assert trio.run(_read_seq, reader, size, CHUNK) == expected
    assert reader.push.failures >= 1 and reader.push.enabled


def test_missing_or_corrupt_chunk_is_not_pushed(tmp_path):
    size = 32 * CHUNK
    reader, _ = _warm(tmp_path, 32, size)
    refs = reader.view.refs
    # chunk 20 rots on disk: its trailer no longer matches
    path = reader.store.path(refs[20].info.digest)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    reader.store._verified.discard(refs[20].info.digest.hex())
    rec = Recorder()
    push = KernelPush(reader.store, rec)
    parts = reader._refs(INO, 0, size, size)
    pushed = push.push(INO, parts, size)
    assert pushed == 20 * CHUNK                 # stopped at the bad chunk
    assert all(off + len(d) <= 20 * CHUNK for _, off, d in rec.calls)
    assert not reader.store.contains(refs[20].info.digest)     # deleted, will be refetched


def test_a_second_run_over_the_file_is_pushed_again(tmp_path, monkeypatch):
    """The kernel may drop pushed pages (memory pressure): a reader starting over from the
    beginning gets its chunks pushed again, not left to plain READs."""
    monkeypatch.setattr("fusefs.reader.SEQUENTIAL_SLACK", 4 * CHUNK)     # to the test's scale
    size = 48 * CHUNK
    reader, expected = _warm(tmp_path, 48, size)
    rec = Recorder()
    reader.push = KernelPush(reader.store, rec)
    assert trio.run(_read_seq, reader, size, CHUNK) == expected
    first = len(rec.calls)
    assert first > 0
    assert trio.run(_read_seq, reader, size, CHUNK) == expected
    assert len(rec.calls) >= 2 * first - 2
