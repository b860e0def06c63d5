"""Range helpers: header building, Content-Range and multipart/byteranges parsing."""
from __future__ import annotations

import pytest

from registry.errors import RangeError
from registry.ranges import (
    coalesce,
    multipart_boundary,
    parse_content_range,
    parse_multipart,
    range_header,
    slice_from,
)


def test_coalesce_and_header():
    assert coalesce([(10, 20), (0, 5), (5, 7), (15, 30)]) == [(0, 7), (10, 30)]
    assert coalesce([(0, 5), (8, 9)], gap=3) == [(0, 9)]
    assert range_header([(0, 7), (10, 30)]) == "bytes=0-6,10-29"


def test_content_range():
    assert parse_content_range("bytes 10-19/100") == (10, 20, 100)
    assert parse_content_range("bytes 0-0/*") == (0, 1, None)
    for bad in (None, "", "bytes 5-4/10", "items 0-1/2", "bytes */10"):
        with pytest.raises(RangeError):
            parse_content_range(bad)


def test_multipart_with_boundary_inside_data():
    b = "XYZ"
    data1 = b"--XYZ\r\n\r\n evil"        # the boundary inside the payload must not cut the part
    body = (b"\r\n--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-13/100\r\n\r\n"
            + data1 + b"\r\n--XYZ\r\ncontent-range: bytes 50-52/100\r\n\r\nabc\r\n--XYZ--\r\n")
    parts = parse_multipart(body, b)
    assert parts == [(0, 14, data1), (50, 53, b"abc")]
    assert slice_from(parts, (51, 53)) == b"bc"
    with pytest.raises(RangeError):
        slice_from(parts, (10, 60))


@pytest.mark.parametrize("body", [
    b"no boundary here",
    b"--XYZ\r\nContent-Range: bytes 0-9/100\r\n\r\nshort",
    b"--XYZ\r\nContent-Range: bytes 0-2/100\r\n\r\nabc",          # no closing boundary
    b"--XYZ\r\nContent-Type: x\r\n\r\nabc\r\n--XYZ--",            # part without Content-Range
])
def test_multipart_malformed(body):
    with pytest.raises(RangeError):
        parse_multipart(body, "XYZ")


def test_boundary():
    assert multipart_boundary('multipart/byteranges; boundary="a b"') == "a b"
    assert multipart_boundary("multipart/byteranges; boundary=3d6b6a416f9b5") == "3d6b6a416f9b5"
    assert multipart_boundary("application/octet-stream") is None
    with pytest.raises(RangeError):
        multipart_boundary("multipart/byteranges")
