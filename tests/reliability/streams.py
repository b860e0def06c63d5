"""Hostile inputs generated as streams (never held in memory): a directory with N entries,
a file of N zero bytes. Run as ``python -m tests.reliability.streams KIND N WORKDIR`` it
converts the stream with imgformat.layer.convert_layer and prints one JSON line with
the peak RSS, so tests can check that memory stays bounded."""
from __future__ import annotations

import io
import json
import sys
import tarfile


class TarStream(io.RawIOBase):
    """A tar made while it is read: ``dir`` = one directory of N empty files,
    ``zeros`` = one file of N zero bytes (a zip-bomb's payload)."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind, self.n, self.i, self.buf, self.left = kind, n, -1, b"", 0

    def readable(self) -> bool:
        return True

    def _next(self) -> bytes:
        if self.left:
            k = min(self.left, 1 << 20)
            self.left -= k
            return b"\0" * k
        if self.i == -1:                       # the directory
            self.i = 0
            ti = tarfile.TarInfo("d")
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            return ti.tobuf(format=tarfile.USTAR_FORMAT)
        entries = self.n if self.kind == "dir" else 1
        if 0 <= self.i < entries:              # the files
            ti = tarfile.TarInfo(f"d/f{self.i:07d}")
            self.i += 1
            if self.kind == "zeros":
                ti.size = self.n
                self.left = self.n + (-self.n) % 512
            return ti.tobuf(format=tarfile.GNU_FORMAT)
        if self.i == entries:                  # the end-of-archive marker, once
            self.i = entries + 1
            return b"\0" * 1024
        return b""

    def readinto(self, b) -> int:  # type: ignore[override]
        while len(self.buf) < len(b):
            nxt = self._next()
            if not nxt:
                break
            self.buf += nxt
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def main(kind: str, n: int, workdir: str) -> None:
    from imgformat.layer import convert_layer

    with open(f"{workdir}/out.blob", "wb") as out:
        r = convert_layer(io.BufferedReader(TarStream(kind, n), 1 << 20), out, workdir=workdir)
    print(json.dumps({"files": r.files, "chunks": r.chunks, "uncompressed": r.uncompressed_size,
                      "blob_size": r.blob_size, "bootstrap_offset": r.bootstrap_offset,
                      "bootstrap_size": r.bootstrap_size,
                      "maxrss": peak_rss()}))


def peak_rss() -> int:
    """This process's own peak RSS in bytes.

    Not getrusage(): Linux carries ru_maxrss across execve, so a child of a big pytest process
    would report the parent's peak at fork time. VmHWM belongs to the address space that
    execve created."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
