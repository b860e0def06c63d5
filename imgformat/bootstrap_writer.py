"""Serialise a layer's tree, chunk table and prefetch table into bootstrap bytes (docs/format.md).

Inode numbers are assigned breadth-first from the root (ino 1) with names in byte order, so a
directory's children always have larger numbers than the directory itself (the reader relies on
that to reject cycles) and the same input always gives the same numbers.
"""
from __future__ import annotations

import stat

from imgformat.constants import (
    BOOTSTRAP_MAGIC,
    BOOTSTRAP_VERSION,
    DIGEST_SHA256,
    FLAG_IMPLICIT,
    FLAG_OPAQUE,
    FLAG_WHITEOUT,
    ROOT_INO,
)
from imgformat.records import (
    BLOB,
    CHUNK,
    DIRENT,
    INODE,
    PREFETCH,
    RECORD_SIZES,
    SEGMENT,
    SUPER_HEAD,
    SUPERBLOCK_SIZE,
    TABLE_COUNT,
    TABLE_DESC,
    XATTR,
    ChunkInfo,
)
from imgformat.tarindex import Node


class _Strings:
    """The string pool; identical strings (xattr names, common file names) are stored once."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._seen: dict[bytes, int] = {}

    def add(self, s: bytes) -> int:
        off = self._seen.get(s)
        if off is None:
            off = self._seen[s] = len(self.buf)
            self.buf += s
        return off


def _assign(root: Node) -> tuple[list[Node], dict[int, list[tuple[bytes, Node]]]]:
    """Breadth-first inode numbering; returns nodes by ino-1 and each directory's sorted dirents."""
    root.ino = ROOT_INO
    order = [root]
    dirents: dict[int, list[tuple[bytes, Node]]] = {}
    i = 0
    while i < len(order):
        node = order[i]
        i += 1
        if node.kind != "dir":
            continue
        assert node.children is not None and node.whiteouts is not None
        ents = []
        for name in sorted(node.children.keys() | node.whiteouts):
            child = node.children.get(name)
            if child is None:
                child = Node(kind="whiteout", mode=stat.S_IFCHR, flags=FLAG_WHITEOUT)
            elif name in node.whiteouts and child.kind == "dir":
                # ".wh.X" and "X/" in one layer: X replaces the lower X, i.e. an opaque dir
                # whose attributes are its own even if it was only implied by its children.
                child.flags = (child.flags | FLAG_OPAQUE) & ~FLAG_IMPLICIT
            if child.ino == 0:
                child.ino = len(order) + 1
                child.parent = node.ino
                order.append(child)
            ents.append((name, child))
        dirents[node.ino] = ents
    return order, dirents


def build_bootstrap(root: Node, chunks: list[ChunkInfo], prefetch: list[int], chunk_size: int,
                    file_count: int, tar_size: int, blobs: list[str] | None = None) -> bytes:
    """The uncompressed bootstrap bytes. ``blobs``: digests of the other blobs chunks point into
    (chunk dedup), blob indexes 1.. in this order; index 0 is always the containing blob."""
    order, dirents = _assign(root)
    strings = _Strings()
    inodes, dents, segs, xattrs = bytearray(), bytearray(), bytearray(), bytearray()
    for node in order:
        data_off = data_count = 0
        nlink = node.nlink
        if node.kind == "dir":
            ents = dirents[node.ino]
            data_off, data_count = len(dents) // DIRENT.size, len(ents)
            nlink = 2 + sum(1 for _, c in ents if c.kind == "dir")
            for name, child in ents:
                dents += DIRENT.pack(strings.add(name), len(name), child.ino, 0)
        elif node.kind == "reg":
            data_off, data_count = len(segs) // SEGMENT.size, len(node.segments)
            for s in node.segments:
                segs += SEGMENT.pack(s.chunk_index, s.offset_in_chunk, s.length, 0, s.file_offset)
        elif node.kind == "sym":
            data_off, data_count = strings.add(node.target), len(node.target)
        xattr_off = len(xattrs) // XATTR.size
        for key in sorted(node.xattrs):
            value = node.xattrs[key]
            xattrs += XATTR.pack(strings.add(key), strings.add(value), len(key), len(value))
        inodes += INODE.pack(node.mode, node.uid, node.gid, node.flags, nlink, node.parent, node.rdev,
                             node.size, node.mtime_ns, data_off, xattr_off, data_count,
                             len(node.xattrs))
    chunk_tab = b"".join(CHUNK.pack(c.blob_index, c.uncomp_size, c.comp_offset, c.comp_size, c.digest)
                         for c in chunks)
    blob_tab = BLOB.pack(strings.add(b""), 0, 0)  # index 0: the containing blob (digest not knowable)
    for digest in blobs or ():
        raw = digest.encode("ascii")
        blob_tab += BLOB.pack(strings.add(raw), len(raw), 0)
    pref = b"".join(PREFETCH.pack(i) for i in prefetch)
    tables = [bytes(inodes), bytes(dents), bytes(segs), chunk_tab, bytes(xattrs), blob_tab, pref,
              bytes(strings.buf)]
    body = bytearray()
    descs = bytearray()
    for i, (tab, size) in enumerate(zip(tables, RECORD_SIZES, strict=True)):
        body += bytes(-len(body) % 8)
        descs += TABLE_DESC.pack(SUPERBLOCK_SIZE + len(body), len(tab) // size, size, 0)
        body += tab
    assert len(tables) == TABLE_COUNT
    head = SUPER_HEAD.pack(BOOTSTRAP_MAGIC, BOOTSTRAP_VERSION, 0, chunk_size, DIGEST_SHA256, ROOT_INO, 0,
                           file_count, tar_size) + bytes(descs)
    return head + bytes(SUPERBLOCK_SIZE - len(head)) + bytes(body)
