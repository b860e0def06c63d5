"""Chunks a push is loading are lent to READs that race it (fusefs.push ``borrow``), and
pushes are dealt to their jobs round robin (fusefs.reader ``_lanes``).

The kernel's ``notify_store`` is replaced by a stand-in that can hold a push inside the
call, where a real kernel holds it while a READ has the pages locked: the moment a READ
borrows from the pushing thread's buffer. What must hold: a READ gets exactly the chunk's
bytes, and never bytes of a buffer the push has reused for the next chunk.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import trio

from fusefs.push import KernelPush
from fusefs.reader import _lanes
from tests.fusefs.test_push import Recorder, _warm
from tests.fusefs.test_reader import CHUNK, INO


class HeldNotify(Recorder):
    """Blocks the pushing thread inside the push of ``hold_offset`` until released."""

    def __init__(self, hold_offset: int) -> None:
        super().__init__()
        self.hold_offset = hold_offset
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, ino: int, offset: int, data) -> None:
        if offset == self.hold_offset:
            self.holding.set()
            assert self.release.wait(10), "test never released the push"
        super().__call__(ino, offset, data)


@contextlib.contextmanager
def _push_held_at(tmp_path, chunk: int, n: int = 8) -> Iterator[tuple]:
    """A push of an ``n``-chunk warm file, in a thread, held inside the notify_store of chunk
    ``chunk`` (where a kernel holds it while a READ has those pages locked). Yields (reader,
    the file's bytes, the push, the file's parts); on exit releases the push and joins it."""
    size = n * CHUNK
    reader, expected = _warm(tmp_path, n, size)
    rec = HeldNotify(hold_offset=chunk * CHUNK)
    push = KernelPush(reader.store, rec)
    parts = reader._refs(INO, 0, size, size)
    t = threading.Thread(target=push.push, args=(INO, parts, size), daemon=True)
    t.start()
    try:
        assert rec.holding.wait(10)
        yield reader, expected, push, parts
    finally:
        rec.release.set()
        t.join(10)
    assert not t.is_alive()
    assert push.pushed_bytes == size


def test_a_read_borrows_the_chunk_a_push_holds_exactly(tmp_path):
    with _push_held_at(tmp_path, 3) as (_, expected, push, parts):
        digest = parts[3][0].info.digest
        got = push.borrow(digest, 100, 2000, wait=True)
        assert got == expected[3 * CHUNK + 100:3 * CHUNK + 2100]
        assert push.lent_bytes == 2000
        # a chunk no push is loading is not lent: the read goes to the store
        assert push.borrow(parts[6][0].info.digest, 0, CHUNK, wait=True) is None
        # past the chunk's end: refused, not short
        assert push.borrow(digest, CHUNK - 10, 20, wait=False) is None


def test_a_loan_ends_before_its_buffer_is_reused(tmp_path):
    """While chunk 4 is being pushed (the thread's buffer now holds it), chunk 3, pushed
    before from the same buffer, is not lent: its bytes are gone from it."""
    with _push_held_at(tmp_path, 4) as (_, expected, push, parts):
        assert push.borrow(parts[3][0].info.digest, 0, CHUNK, wait=True) is None
        assert push.borrow(parts[4][0].info.digest, 0, CHUNK, wait=True) == expected[4 * CHUNK:5 * CHUNK]
    assert push._loans == {}        # every loan closed


def test_a_rotten_chunk_is_never_lent(tmp_path):
    size = 8 * CHUNK
    reader, _ = _warm(tmp_path, 8, size)
    parts = reader._refs(INO, 0, size, size)
    digest = parts[2][0].info.digest
    path = reader.store.path(digest)
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x01
    path.write_bytes(bytes(raw))
    reader.store._verified.discard(digest.hex())
    seen: list[bytes | None] = []

    class Spy(Recorder):
        def __call__(self, ino, offset, data):
            seen.append(push.borrow(digest, 0, CHUNK, wait=False))
            super().__call__(ino, offset, data)

    push = KernelPush(reader.store, Spy())
    push.push(INO, parts, size)
    assert seen == [None, None]          # pushes of chunks 0 and 1; chunk 2 failed its check
    assert push.borrow(digest, 0, CHUNK, wait=True) is None
    assert push.pushed_bytes == 2 * CHUNK


def test_reader_serves_a_read_racing_a_push_from_the_loan(tmp_path):
    """A READ (worker-thread path) for a chunk whose push is held in notify_store gets the
    lent bytes and does not read the chunk file again."""
    size = 8 * CHUNK
    with _push_held_at(tmp_path, 5) as (reader, expected, push, _):
        reader.push = push
        hits_before = reader.store.statistics().hits - 5     # the push's loads of chunks 0-4
        race = reader._refs(INO, 5 * CHUNK, CHUNK, size)
        out = reader._assemble(race, 5 * CHUNK, CHUNK, True)
        assert out == expected[5 * CHUNK:6 * CHUNK]
        assert push.lent_bytes == CHUNK
    # the push loaded each of the 8 chunks once; the READ added no read of the store
    assert reader.store.statistics().hits == hits_before + 8
    reader._stream.clear()
    reader.spawn = None        # no background tasks: every read served in place

    async def read_all() -> bytes:
        return b"".join([await reader.read(INO, off, CHUNK, size) for off in range(0, size, CHUNK)])

    assert trio.run(read_all) == expected


def test_lanes_deal_chunks_round_robin_keeping_a_chunks_segments_together():
    class Info:
        def __init__(self, digest: bytes) -> None:
            self.digest = digest

    class Ref:
        def __init__(self, digest: bytes) -> None:
            self.info = Info(digest)

    # chunk c3 is used twice in a row (two segments), the rest once
    names = [b"c0", b"c1", b"c2", b"c3", b"c3", b"c4", b"c5", b"c6", b"c7"]
    parts = [(Ref(n), i) for i, n in enumerate(names)]
    lanes = _lanes(parts, 3)
    assert [[seg for _, seg in lane] for lane in lanes] == [[0, 3, 4, 7], [1, 5, 8], [2, 6]]
    assert sorted(seg for lane in lanes for _, seg in lane) == list(range(len(names)))
    assert _lanes(parts[:2], 8) == [[parts[0]], [parts[1]]]     # no empty jobs
    assert _lanes([], 4) == []
