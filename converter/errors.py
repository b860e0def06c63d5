"""Typed errors of imgconv and the one table that maps them to exit codes.

Everything below the CLI raises one of these (or a library error that
`exit_code_for` knows); only `converter.cli.main` turns them into a message
and an exit status, so the codes stay documented in one place
(docs/internals.md: 0 ok, 1 differences, 2 usage, 3 bad input, 4 registry/IO).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_IO = 4


class ImgconvError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_IO


class UsageError(ImgconvError):
    """The command line itself is wrong (unknown location scheme, bad flag value)."""

    exit_code = EXIT_USAGE


class BadInput(ImgconvError):
    """The image is malformed: manifest/config/tar/compression/digest is not what it claims."""

    exit_code = EXIT_BAD_INPUT


class IOFailure(ImgconvError):
    """The registry or the local filesystem failed; the input itself may be fine."""

    exit_code = EXIT_IO


def exit_code_for(exc: BaseException) -> int:
    """Exit code for any exception reaching the CLI edge.

    Library errors are looked up by class name so that this module does not
    import registry/ or imgformat/ (and so works even if one fails to import).
    """
    if isinstance(exc, ImgconvError):
        return exc.exit_code
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"DigestMismatch", "FormatError", "BootstrapError", "ChunkError"}:
        return EXIT_BAD_INPUT
    if names & {"RegistryError", "OSError"}:
        return EXIT_IO
    return EXIT_IO
