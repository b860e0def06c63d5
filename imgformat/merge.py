"""MergedView: the layer stack (bottom -> top) as one read-only tree, merged lazily.

OCI layer semantics: an upper entry hides the same name below; directories merge; a whiteout
(.wh.NAME, stored as a WHITEOUT inode named NAME) hides NAME in the layers below its own; an opaque
directory hides the directory's contents below. Nothing is merged up front: a name is resolved
across layers when first looked up (one binary search per layer), and a directory's full listing
is built when first read. Merged inode numbers are dense, start with the root at 1, and are
handed out in discovery order; once given, a number always means the same node. Hardlinks (one
inode in a layer, several names) keep one merged inode.

Attributes of a directory present in several layers come from the topmost layer that has a real
record for it (not an IMPLICIT parent the converter invented), see ``source``. Its nlink is 1 ("unknown" for
find(1)) when several layers contribute, since counting subdirectories would force a merge.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from imgformat.bootstrap import Bootstrap
from imgformat.constants import FLAG_IMPLICIT, FLAG_OPAQUE, FLAG_WHITEOUT, ROOT_INO
from imgformat.errors import BootstrapError
from imgformat.records import ChunkInfo, Inode, Segment

__all__ = ["MergedView"]

_HIDDEN = object()


class _Node:
    """One merged inode: its sources (layer index, layer ino), topmost first."""

    __slots__ = ("attr_source", "children", "is_dir", "listing", "mino", "name", "parent", "sources")

    def __init__(self, mino: int, sources: list[tuple[int, int]], is_dir: bool, parent: int,
                 name: bytes) -> None:
        self.mino = mino
        self.sources = sources
        self.is_dir = is_dir
        self.parent = parent  # directories: the merged parent (0 for the root) and name, for paths
        self.name = name
        self.attr_source: tuple[int, int] | None = None
        self.children: dict[bytes, int | None] = {}
        self.listing: list[tuple[bytes, int]] | None = None


class MergedView:
    """Same read API as Bootstrap over a whole layer stack. Thread-safe."""

    root = ROOT_INO

    def __init__(self, layers: Sequence[Bootstrap], blob_digests: Sequence[str] | None = None) -> None:
        if not layers:
            raise ValueError("MergedView needs at least one layer")
        if blob_digests is not None and len(blob_digests) != len(layers):
            raise ValueError("one blob digest per layer")
        self.layers = list(layers)
        self.blob_digests = list(blob_digests) if blob_digests is not None else [
            bs.blobs[0] for bs in self.layers]
        self._lock = threading.RLock()
        self._nodes: list[_Node] = []
        self._keys: dict[tuple, int] = {}
        top_down = []
        for i in reversed(range(len(self.layers))):
            top_down.append((i, self.layers[i].root))
            if self.layers[i].getattr(self.layers[i].root).flags & FLAG_OPAQUE:
                break
        self._new(("root",), top_down, True, 0, b"")

    # -- internals ----------------------------------------------------------------------------
    def _new(self, key: tuple, sources: list[tuple[int, int]], is_dir: bool, parent: int,
             name: bytes) -> int:
        mino = self._keys.get(key)
        if mino is None:
            mino = len(self._nodes) + 1
            self._nodes.append(_Node(mino, sources, is_dir, parent, name))
            self._keys[key] = mino
        return mino

    def _node(self, mino: int) -> _Node:
        if not isinstance(mino, int) or not 1 <= mino <= len(self._nodes):
            raise BootstrapError(f"merged view: unknown inode {mino}")
        return self._nodes[mino - 1]

    def _dir(self, mino: int) -> _Node:
        node = self._node(mino)
        if not node.is_dir:
            raise BootstrapError(f"merged view: inode {mino} is not a directory")
        return node

    def _entry(self, layer: int, ino: int) -> tuple[bool, int]:
        """(is_dir, flags) of a layer inode."""
        bs = self.layers[layer]
        return bs.is_dir(ino), bs.getattr(ino).flags

    def _intern(self, parent: _Node, name: bytes, sources: list[tuple[int, int]], is_dir: bool) -> int:
        key = ("d", parent.mino, name) if is_dir else ("f", *sources[0])
        mino = self._new(key, sources if is_dir else sources[:1], is_dir, parent.mino, name)
        parent.children[name] = mino
        return mino

    def _accumulate(self, state: list, layer: int, ino: int) -> None:
        """Fold one lower layer's entry into [sources, is_dir, closed]."""
        sources, is_dir, closed = state
        if closed:
            return
        child_dir, flags = self._entry(layer, ino)
        if child_dir and is_dir:
            sources.append((layer, ino))
            state[2] = bool(flags & FLAG_OPAQUE)
        else:  # a whiteout or non-dir below an upper dir: hides everything further down
            state[2] = True

    @staticmethod
    def _first(is_dir: bool, flags: int) -> bool:
        """Closed state of a fresh entry: non-dirs and opaque dirs see nothing below."""
        return not is_dir or bool(flags & FLAG_OPAQUE)

    # -- public API ---------------------------------------------------------------------------
    def lookup(self, dir_ino: int, name: bytes) -> int | None:
        with self._lock:
            parent = self._dir(dir_ino)
            if name in parent.children:
                return parent.children[name]
            state: list | None = None
            for layer, dino in parent.sources:
                ino = self.layers[layer].lookup(dino, name)
                if ino is None:
                    continue
                if state is None:
                    is_dir, flags = self._entry(layer, ino)
                    if flags & FLAG_WHITEOUT:
                        break
                    state = [[(layer, ino)], is_dir, self._first(is_dir, flags)]
                else:
                    self._accumulate(state, layer, ino)
                if state[2]:
                    break
            if state is None:
                parent.children[name] = None
                return None
            return self._intern(parent, name, state[0], state[1])

    def _listing(self, parent: _Node) -> list[tuple[bytes, int]]:
        if parent.listing is None:
            seen: dict[bytes, object] = {}
            for layer, dino in parent.sources:
                for _, name, ino in self.layers[layer].readdir(dino):
                    state = seen.get(name)
                    if state is None:
                        is_dir, flags = self._entry(layer, ino)
                        seen[name] = _HIDDEN if flags & FLAG_WHITEOUT else [
                            [(layer, ino)], is_dir, self._first(is_dir, flags)]
                    elif state is not _HIDDEN:
                        self._accumulate(state, layer, ino)  # type: ignore[arg-type]
            listing = []
            for name in sorted(seen):
                state = seen[name]
                if state is _HIDDEN:
                    continue
                mino = parent.children.get(name)
                if mino is None:
                    mino = self._intern(parent, name, state[0], state[1])  # type: ignore[index]
                listing.append((name, mino))
            parent.listing = listing
        return parent.listing

    def readdir(self, dir_ino: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """(index, name, ino) in name order from ``start``; index + 1 resumes after an entry."""
        with self._lock:
            listing = self._listing(self._dir(dir_ino))
        for i in range(max(start, 0), len(listing)):
            yield i, listing[i][0], listing[i][1]

    def lookup_path(self, path: bytes) -> int | None:
        """The inode at ``path`` (b"usr/bin/env"; b"" is the root), or None."""
        ino: int | None = self.root
        for part in (p for p in path.split(b"/") if p):
            if ino is None or not self._node(ino).is_dir:
                return None
            ino = self.lookup(ino, part)
        return ino

    def source(self, ino: int) -> tuple[int, int]:
        """(layer index, layer inode) whose record gives ``ino``'s attributes and data.

        A directory takes its attributes from its topmost real (not IMPLICIT) record: an unpacker
        keeps an existing directory when it creates parents. That holds even when the implicit
        record is opaque (the marker hides the contents below, not the directory's own record), so
        then the search goes on in the layers below; failing all, the implicit defaults.
        """
        with self._lock:
            node = self._node(ino)
            if not node.is_dir:
                return node.sources[0]
            if node.attr_source is None:
                node.attr_source = self._dir_attr_source(node)
            return node.attr_source

    def _dir_attr_source(self, node: _Node) -> tuple[int, int]:
        for layer, lino in node.sources:
            if not self.layers[layer].getattr(lino).flags & FLAG_IMPLICIT:
                return layer, lino
        lowest, lowest_ino = node.sources[-1]
        if not self.layers[lowest].getattr(lowest_ino).flags & FLAG_OPAQUE:
            return node.sources[0]  # the chain ended below: nothing lower is visible
        # An implicit opaque directory hides what is below it, not its own lower record.
        if node.parent:
            candidates = [(layer, self.layers[layer].lookup(pino, node.name))
                          for layer, pino in self._node(node.parent).sources if layer < lowest]
        else:
            candidates = [(layer, self.layers[layer].root) for layer in reversed(range(lowest))]
        for layer, lino in candidates:
            if lino is None:
                continue
            is_dir, flags = self._entry(layer, lino)
            if not is_dir or flags & FLAG_WHITEOUT:
                break
            if not flags & FLAG_IMPLICIT:
                return layer, lino
        return node.sources[0]

    def getattr(self, ino: int) -> Inode:
        layer, lino = self.source(ino)
        a = self.layers[layer].getattr(lino)
        nlink = a.nlink if len(self._node(ino).sources) == 1 else 1
        return Inode(ino, a.mode, a.uid, a.gid, a.size, a.mtime_ns, a.rdev, nlink, 0)

    def readlink(self, ino: int) -> bytes:
        layer, lino = self.source(ino)
        return self.layers[layer].readlink(lino)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        layer, lino = self.source(ino)
        return self.layers[layer].xattrs(lino)

    def segments(self, ino: int, offset: int, length: int) -> list[tuple[str, Segment, ChunkInfo]]:
        """(blob digest, segment, chunk) covering bytes [offset, offset+length) of file ``ino``."""
        layer, lino = self.source(ino)
        bs = self.layers[layer]
        out = []
        for seg in bs.segments(lino, offset, length):
            info = bs.chunk(seg.chunk_index)
            blob = self.blob_digests[layer] if info.blob_index == 0 else bs.blobs[info.blob_index]
            out.append((blob, seg, info))
        return out

    @property
    def inode_count(self) -> int:
        """Merged inodes discovered so far (the view grows as it is explored)."""
        return len(self._nodes)
