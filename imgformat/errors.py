"""Errors of imgformat: one base class so callers can map "bad image" to one exit code / errno."""
from __future__ import annotations


class ImgFormatError(Exception):
    """Base: the input is not a valid imgfs image or source layer."""


class FormatError(ImgFormatError):
    """A source layer (tar) is malformed or unsupported; the message says what and where."""


class BootstrapError(ImgFormatError):
    """A bootstrap or footer is malformed: a record or offset points outside its table."""


class ChunkError(ImgFormatError):
    """A chunk frame does not decode to exactly the bytes its digest promises."""
