"""The subset of containerd's filter syntax that snapshot listing uses.

A filter is `selector[,selector...]` (all must match); a list of filters matches
when any one does. A selector is `field`, `field==value`, `field!=value` or
`field~=regex`, with field one of name, parent, kind, labels.KEY (KEY may be
double-quoted, e.g. labels."containerd.io/gc.root"); values may be quoted too.
Anything else is an InvalidArgument, never a silent match-all.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from snapshotter import store as st


class FilterError(Exception):
    pass


_SEL = re.compile(r'''\s*(?P<field>[A-Za-z_]+(?:\.(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_\-./]+))*)\s*
                      (?:(?P<op>==|!=|~=)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^,]*?))?\s*(?:,|$)''', re.VERBOSE)


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def _getter(path: str) -> Callable[[st.Snapshot], str | None]:
    head, _, rest = path.partition(".")
    if head == "name" and not rest:
        return lambda s: s.key
    if head == "parent" and not rest:
        return lambda s: s.parent
    if head == "kind" and not rest:
        return lambda s: st.KIND_NAMES.get(s.kind, "unknown")
    if head == "labels" and rest:
        key = _unquote(rest)
        return lambda s: s.labels.get(key)
    raise FilterError(f"unknown filter field {path!r}: invalid argument")


def _one(text: str) -> Callable[[st.Snapshot], bool]:
    preds: list[Callable[[st.Snapshot], bool]] = []
    pos = 0
    while pos < len(text):
        m = _SEL.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"cannot parse filter {text!r} at {pos}: invalid argument")
        pos = m.end()
        get, op, value = _getter(m["field"]), m["op"], _unquote((m["value"] or "").strip())
        if op is None:
            preds.append(lambda s, g=get: g(s) is not None)
        elif op == "==":
            preds.append(lambda s, g=get, v=value: g(s) == v)
        elif op == "!=":
            preds.append(lambda s, g=get, v=value: g(s) != v)
        else:
            try:
                rx = re.compile(value)
            except re.error as e:
                raise FilterError(f"bad regex in filter {text!r}: {e}: invalid argument") from None
            preds.append(lambda s, g=get, r=rx: (x := g(s)) is not None and r.search(x) is not None)
    return lambda s: all(p(s) for p in preds)


def parse_filters(filters: list[str]) -> Callable[[st.Snapshot], bool]:
    """A predicate matching a snapshot when any filter matches (all when there are none)."""
    parsed = [_one(f) for f in filters if f.strip()]
    if not parsed:
        return lambda s: True
    return lambda s: any(p(s) for p in parsed)
