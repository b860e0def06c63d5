"""One benchmark at a time on a machine: an exclusive flock on /tmp/imgfs-bench.lock.

Why: two benchmarks at once share two cores and one disk, and each then measures the other.
imgbench, the fusefs benchmark and the page-fill benchmark take it for their whole run;
anything else that must not disturb them (a test run on a developer's machine) can take it
shared: ``flock -s /tmp/imgfs-bench.lock make test``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

LOCK = Path("/tmp/imgfs-bench.lock")


@contextlib.contextmanager
def exclusive(path: Path = LOCK) -> Iterator[None]:
    """Hold the benchmark lock (waiting for the holder, and saying so, if it is taken)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the benchmark holding {path}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
