"""Node-local cache of verified bootstraps, keyed by their pinned sha256.

Why: on a lazy pull the snapshotter fetches every layer's bootstrap to check it (digest
against the annotation, structure), and the fusefs daemon that later mounts the image
needed the same bytes again: one more round trip plus the bootstrap's size per layer on
the container's critical path (a 100k-file layer's bootstrap is megabytes). The snapshotter
now leaves what it verified here and the daemon looks here first; a daemon restarted on
the same image (takeover, a second container after the first released it) does too.

Layout, next to the chunk store in the same cache dir::

    CACHE_DIR/bootstraps/<hex sha256>    the bootstrap payload exactly as in the blob

Trust: an entry is used only when the reader knows the digest (pinned in the layer's
annotation) and the bytes hash to it, so a corrupted or planted file is a miss (deleted,
then fetched from the registry), never a wrong tree. Writes are atomic (temp + rename).
Bootstraps are small next to the chunks, but the directory is still kept under
``DEFAULT_CAP`` bytes by dropping the least recently used entries when one is added.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SUBDIR = "bootstraps"
DEFAULT_CAP = 256 << 20


def _hex(digest: str) -> str | None:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        return None
    return hexpart


class BootstrapCache:
    """``get``/``put`` of bootstrap payloads by ``sha256:<hex>`` digest under ``CACHE_DIR``."""

    def __init__(self, cache_dir: str | os.PathLike, cap: int = DEFAULT_CAP) -> None:
        self.dir = Path(cache_dir) / SUBDIR
        self.cap = cap

    def get(self, digest: str | None) -> bytes | None:
        """The payload whose sha256 is ``digest``, or None (not cached, unreadable, or bad)."""
        name = _hex(digest) if digest else None
        if name is None:
            return None
        path = self.dir / name
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != name:
            log.warning("cached bootstrap %s is corrupted: dropped, fetching it again", path)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)          # LRU by mtime
        except OSError:
            pass
        return data

    def has(self, digest: str | None) -> bool:
        """Whether a payload for ``digest`` is there (a stat; ``get`` checks its bytes)."""
        name = _hex(digest) if digest else None
        return name is not None and (self.dir / name).is_file()

    def put(self, digest: str, data: bytes) -> None:
        """Keep ``data`` (the caller verified it hashes to ``digest``). Best effort: a cache
        that cannot be written costs a fetch later, never an error now."""
        name = _hex(digest)
        if name is None or hashlib.sha256(data).hexdigest() != name:
            return
        try:
            self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)   # the cache dir: private
            self.dir.mkdir(mode=0o700, exist_ok=True)
            if (self.dir / name).exists():
                return
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.dir / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._trim()
        except OSError as exc:
            log.warning("could not cache bootstrap %s in %s: %s", digest, self.dir, exc)

    def _trim(self) -> None:
        entries = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith(".tmp-"):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.cap:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass
