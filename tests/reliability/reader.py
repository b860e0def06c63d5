"""A reader process for restart tests: reads files of a mount in a loop (page cache dropped
before each read, so every read reaches the daemon) until STOPFILE exists, compares each
file with its expected sha256 and writes a JSON summary. Run as
``python -m tests.reliability.reader MOUNTPOINT EXPECTED.json STOPFILE OUT.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time


def main(mp: str, expected_path: str, stop: str, out: str) -> None:
    with open(expected_path) as f:
        expected: dict[str, str] = json.load(f)
    ok = wrong = 0
    errors: list[str] = []
    max_gap = 0.0
    last = time.monotonic()
    while not os.path.exists(stop):
        for name, digest in expected.items():
            try:
                fd = os.open(os.path.join(mp, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    chunks = []
                    while data := os.read(fd, 1 << 20):
                        chunks.append(data)
                finally:
                    os.close(fd)
                if hashlib.sha256(b"".join(chunks)).hexdigest() == digest:
                    ok += 1
                else:
                    wrong += 1
            except OSError as exc:
                errors.append(f"{name}: {exc}")
            now = time.monotonic()
            max_gap, last = max(max_gap, now - last), now
    with open(out + ".tmp", "w") as f:
        json.dump({"ok": ok, "wrong": wrong, "errors": errors[:50], "error_count": len(errors),
                   "max_gap": max_gap}, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
