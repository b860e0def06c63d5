"""benchmarks.benchlock: one benchmark at a time."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from benchmarks.benchlock import exclusive


def test_benchmark_lock_is_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    with exclusive(lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):      # another benchmark would wait here
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the run
    finally:
        os.close(fd)
