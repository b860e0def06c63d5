"""MergedView against a model: random layer stacks applied the way an OCI unpacker applies them."""
from __future__ import annotations

import stat

from hypothesis import given, settings
from hypothesis import strategies as st

from imgformat.chunk import decode_chunk
from imgformat.merge import MergedView
from tests.imgformat.tarkit import convert, dir_, file_, make_tar

NAMES = ["a", "b", "c"]
PATHS = [p for d in (1, 2, 3) for p in
         ("/".join(t) for t in __import__("itertools").product(NAMES, repeat=d))]

op = st.one_of(
    st.tuples(st.just("file"), st.sampled_from(PATHS), st.sampled_from([0o644, 0o600, 0o755])),
    st.tuples(st.just("dir"), st.sampled_from(PATHS), st.sampled_from([0o755, 0o700, 0o711])),
    st.tuples(st.just("wh"), st.sampled_from(PATHS), st.just(0)),
    st.tuples(st.just("opq"), st.sampled_from(PATHS), st.just(0)),
)


def prefixes(p: str) -> list[str]:
    parts = p.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def under(p: str, q: str) -> bool:
    return q == p or q.startswith(p + "/")


class Model:
    """path -> ("dir", mode) | ("file", mode, content); the root is implicit."""

    def __init__(self) -> None:
        self.state: dict[str, tuple] = {}

    def delete(self, p: str) -> None:
        for q in [q for q in self.state if under(p, q)]:
            del self.state[q]

    def is_dir(self, p: str) -> bool:
        return p == "" or self.state.get(p, ("",))[0] == "dir"

    def build_layer(self, n: int, ops: list) -> list:
        """Turn random ops into a valid layer tar, and apply it to the model.

        Whiteouts and opaque markers never overlap entries of the same layer in ways whose result
        depends on record order in real unpackers (OCI leaves those undefined)."""
        kinds: dict[str, str] = {}  # what this layer's tar defines
        tar, whiteouts, opaques, adds = [], [], [], []

        def file_prefix(p: str) -> bool:
            return any(kinds.get(q) == "file" for q in prefixes(p))

        def ok_to_define(p: str, kind: str) -> bool:
            return (not file_prefix(p) and not any(under(p, q) for q in kinds)
                    and not any(under(w, p) or under(p, w) for w in whiteouts)
                    and not (kind == "file" and any(under(p, o) for o in opaques)))

        for kind, p, mode in ops:
            if kind in ("file", "dir"):
                if not ok_to_define(p, kind):
                    continue
                for q in prefixes(p):  # a lower non-dir in the way needs an explicit dir record
                    if q not in kinds and q in self.state and not self.is_dir(q):
                        kinds[q] = "dir"
                        tar.append(dir_(q, mode=0o750))
                        adds.append(("dir", q, 0o750))
                kinds[p] = kind
                if kind == "file":
                    tar.append(file_(p, f"L{n}:{p}".encode(), mode=mode))
                else:
                    tar.append(dir_(p, mode=mode))
                adds.append((kind, p, mode))
            elif kind == "wh":
                parent = p.rpartition("/")[0]
                if (any(under(p, q) for q in kinds) or file_prefix(p)
                        or not (self.is_dir(parent) or kinds.get(parent) == "dir")
                        or any(under(w, p) or under(p, w) for w in whiteouts)
                        or any(under(p, o) for o in opaques)):
                    continue
                whiteouts.append(p)
                head, _, name = p.rpartition("/")
                tar.append(file_(f"{head}/.wh.{name}" if head else f".wh.{name}", b""))
            else:  # opaque
                if (not (self.is_dir(p) or kinds.get(p) == "dir") or kinds.get(p, "dir") != "dir"
                        or p in opaques or file_prefix(p) or any(under(w, p) for w in whiteouts)):
                    continue
                opaques.append(p)
                tar.append(file_(f"{p}/.wh..wh..opq", b""))
        for p in whiteouts:
            self.delete(p)
        for p in opaques:
            for q in [q for q in self.state if q.startswith(p + "/")]:
                del self.state[q]
        for kind, p, mode in adds:
            for q in prefixes(p):
                self.state.setdefault(q, ("dir", 0o755))
            if kind == "file":
                self.delete(p)
                self.state[p] = ("file", mode, f"L{n}:{p}".encode())
            else:
                if not self.is_dir(p) or p not in self.state:
                    self.delete(p)
                self.state[p] = ("dir", mode)
        # unpackers create the parents of marker records (containerd's mkparent)
        for p in whiteouts:
            for q in prefixes(p):
                self.state.setdefault(q, ("dir", 0o755))
        for p in opaques:
            for q in prefixes(p) + [p]:
                self.state.setdefault(q, ("dir", 0o755))
        return tar


def read_view(mv: MergedView, blobs: dict[str, bytes]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    stack = [("", mv.root)]
    while stack:
        path, ino = stack.pop()
        for _, name, child in mv.readdir(ino):
            p = f"{path}/{name.decode()}" if path else name.decode()
            assert mv.lookup(ino, name) == child
            attr = mv.getattr(child)
            if stat.S_ISDIR(attr.mode):
                out[p] = ("dir", stat.S_IMODE(attr.mode))
                stack.append((p, child))
            else:
                data = b""
                for blob, seg, info in mv.segments(child, 0, attr.size):
                    frame = blobs[blob][info.comp_offset:info.comp_offset + info.comp_size]
                    data += decode_chunk(frame, info)[seg.offset_in_chunk:seg.offset_in_chunk + seg.length]
                out[p] = ("file", stat.S_IMODE(attr.mode), data)
    return out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.lists(op, max_size=12), min_size=1, max_size=4))
def test_merged_view_matches_oci_application(layers_ops) -> None:
    model = Model()
    converted = [convert(make_tar(model.build_layer(n, ops))) for n, ops in enumerate(layers_ops)]
    mv = MergedView([c.bs for c in converted], blob_digests=[f"sha256:{n}" for n in range(len(converted))])
    blobs = {f"sha256:{n}": c.blob for n, c in enumerate(converted)}
    assert read_view(mv, blobs) == model.state
