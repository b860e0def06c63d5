"""Progress bars on a terminal, nothing otherwise (logs and pipes stay clean).

Workers register a task with a callable that reports bytes read so far; the
main thread polls (`refresh`) rather than workers pushing updates, so the
hot read loops carry no progress code at all.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class Progress:
    def __init__(self, enabled: bool):
        self._enabled = enabled
        self._lock = threading.Lock()
        self._tasks: dict[int, Callable[[], int]] = {}
        self._bar = None

    def __enter__(self) -> Self:
        if self._enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeElapsedColumn(), transient=False)
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.stop()

    def add(self, description: str, total: int, count: Callable[[], int]) -> int:
        if self._bar is None:
            return -1
        with self._lock:
            task = self._bar.add_task(description, total=total)
            self._tasks[task] = count
        return task

    def done(self, task: int) -> None:
        if self._bar is None:
            return
        with self._lock:
            count = self._tasks.pop(task, None)
        if count is not None:
            self._bar.update(task, completed=count())

    def refresh(self) -> None:
        if self._bar is None:
            return
        with self._lock:
            items = list(self._tasks.items())
        for task, count in items:
            self._bar.update(task, completed=count())
