"""Disk budget of one layer's conversion: stop a compression bomb before it fills the disk.

``imgformat.convert_layer`` spools the uncompressed tar of a layer to the work dir
(it needs to seek: the prefetch set is laid out first, hardlinks point backwards).
Memory stays bounded, disk does not: a 50 KB gzip of zeros unpacks to 50 GB. So the
tar is read through a ``LayerBudget`` that fails the layer, before the spool grows
any further,

- when its uncompressed size passes ``max_size`` (``--max-layer-size``; bad input,
  exit 3), and
- when the work dir's free space drops below ``min_free`` (``--min-free``; exit 4):
  the disk is shared with the runtime and other jobs of a CI machine, and running it
  full breaks them too.

Free space is looked at every ``CHECK_EVERY`` bytes (a ``statvfs`` costs microseconds),
so the spool overshoots the reserve by at most that much per layer converted at once.
On failure the caller deletes the work dir: nothing is left behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from converter.errors import BadInput, IOFailure

#: Default reserve of free space in the work dir (``--min-free``).
DEFAULT_MIN_FREE = 1 << 30
CHECK_EVERY = 16 << 20


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class LayerBudget:
    """A read-only stream over a layer's uncompressed tar that enforces the budget.

    Only ``read`` is offered (what ``convert_layer`` uses on a non-seekable input);
    ``size`` is the number of bytes passed through so far.
    """

    def __init__(self, stream: BinaryIO, what: str, workdir: Path, *,
                 max_size: int | None = None, min_free: int = DEFAULT_MIN_FREE) -> None:
        self._stream = stream
        self._what = what
        self._workdir = workdir
        self._max_size = max_size or None
        self._min_free = min_free
        self._next_check = 0
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            raise BadInput(f"{self._what}: uncompressed layer is larger than --max-layer-size "
                           f"{_human(self._max_size)} (a compression bomb, or raise the limit)")
        if self._min_free and self.size >= self._next_check:
            self._next_check = self.size + CHECK_EVERY
            free = free_bytes(self._workdir)
            if free < self._min_free:
                raise IOFailure(f"{self._what}: only {_human(free)} left free in the work dir "
                                f"{self._workdir} after spooling {_human(self.size)} of the "
                                f"uncompressed layer, below --min-free {_human(self._min_free)}; "
                                "stopped (use --workdir on a larger disk)")
        return data
