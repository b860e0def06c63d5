"""Reference grammar: host detection, Docker Hub defaults, tags, digests, and clear errors."""
from __future__ import annotations

import pytest

from registry.reference import InvalidReference, Reference, parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:5000/lib/python:3", ("127.0.0.1:5000", "lib/python", "3", None)),
    (f"127.0.0.1:5000/lib/python:3@{D}", ("127.0.0.1:5000", "lib/python", "3", D)),
    (f"127.0.0.1:5000/lib/python@{D}", ("127.0.0.1:5000", "lib/python", None, D)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("ghcr.io/a/b/c:v1.2-rc_3", ("ghcr.io", "a/b/c", "v1.2-rc_3", None)),
    ("[::1]:5000/x:y", ("[::1]:5000", "x", "y", None)),
    ("busybox", ("docker.io", "library/busybox", "latest", None)),
    ("user/repo:tag", ("docker.io", "user/repo", "tag", None)),
    ("my-reg.local:80/a__b/c.d-e:t", ("my-reg.local:80", "a__b/c.d-e", "t", None)),
])
def test_parse(text, want):
    r = parse_reference(text)
    assert (r.registry, r.repository, r.tag, r.digest) == want


def test_str_and_with():
    r = parse_reference("127.0.0.1:5000/lib/python:3")
    assert str(r) == "127.0.0.1:5000/lib/python:3"
    assert r.reference == "3"
    rd = r.with_digest(D)
    assert str(rd) == f"127.0.0.1:5000/lib/python:3@{D}" and rd.reference == D
    assert str(rd.with_tag("4")) == "127.0.0.1:5000/lib/python:4"
    assert parse_reference(str(rd)) == rd
    assert Reference("h:1", "a").reference == "latest"


@pytest.mark.parametrize("text", [
    "", " x", "127.0.0.1:5000/UPPER", "127.0.0.1:5000/a//b", "127.0.0.1:5000/a:bad tag",
    "127.0.0.1:5000/a@sha256:abc", "127.0.0.1:5000/a@md5:" + "a" * 32, "127.0.0.1:5000/a:",
    "127.0.0.1:5000/-a", "127.0.0.1:5000/a@sha256:" + "A" * 64, "bad_host:x:1/a",
])
def test_invalid(text):
    with pytest.raises(InvalidReference):
        parse_reference(text)
    with pytest.raises(ValueError):   # InvalidReference is a ValueError for callers that want that
        parse_reference(text)
