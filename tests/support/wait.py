"""Waiting for a condition in tests: poll with a generous deadline (CI machines are loaded),
never assert a wall-clock upper bound."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], what: str, timeout: float = 60, interval: float = 0.1) -> T:
    """Return the first truthy value of ``cond()``; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
