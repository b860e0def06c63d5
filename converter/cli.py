"""`imgconv`: argument parsing and the one place errors become exit codes.

Exit codes (docs/internals.md, docs/imgconv.md): 0 ok, 1 check found
differences, 2 usage error, 3 bad input, 4 registry/IO failure.
Subcommand modules are imported lazily so `imgconv --help` stays fast and a
usage error never needs registry/ or imgformat/.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from converter.budget import DEFAULT_MIN_FREE
from converter.errors import EXIT_USAGE, UsageError, exit_code_for
from converter.location import parse_location

log = logging.getLogger("imgconv")
_SIZE_RE = re.compile(r"^(\d+)([KkMmGgTt]i?[Bb]?)?$")


def parse_size(text: str) -> int:
    """`1048576`, `1M`, `1MiB`, `64K`, `2G` (binary units: 1K = 1024)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 1M, 256K or a byte count")
    n = int(m.group(1))
    unit = (m.group(2) or "").lower()[:1]
    return n * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]


def parse_compression(text: str) -> int:
    """`zstd` or `zstd:LEVEL` -> zstd level (only zstd: chunks must be independently decodable)."""
    algo, _, level = text.partition(":")
    if algo != "zstd":
        raise argparse.ArgumentTypeError(f"unsupported compression {algo!r}: only zstd[:LEVEL]")
    if not level:
        return 3
    if not re.fullmatch(r"-?\d+", level) or not -7 <= int(level) <= 22:
        raise argparse.ArgumentTypeError(f"bad zstd level {level!r}: -7..22")
    return int(level)


def _registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to registries")
    p.add_argument("--insecure", action="store_true", help="do not verify registry TLS certificates")
    p.add_argument("--authfile", dest="auth_file", metavar="FILE", default=None,
                   help="docker config.json with registry credentials, for source and destination "
                        "(default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgconv", description="Convert OCI images to the imgfs lazy-loading format.",
        epilog="Locations: docker://HOST/REPO:TAG, oci:DIR[:TAG], docker-archive:FILE. "
               "Exit codes: 0 ok, 1 differences, 2 usage, 3 bad input, 4 registry/IO failure.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an image and push it or write it as an OCI layout")
    p.add_argument("source")
    p.add_argument("destination")
    _registry_flags(p)
    p.add_argument("--chunk-size", type=parse_size, default=1 << 20, help="64K..16M, default 1M")
    p.add_argument("--compression", type=parse_compression, default=3, metavar="zstd[:LEVEL]")
    plat = p.add_mutually_exclusive_group()
    plat.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick from an index (default linux/amd64)")
    plat.add_argument("--all-platforms", action="store_true", help="convert every platform of an index")
    pf = p.add_mutually_exclusive_group()
    pf.add_argument("--prefetch-list", type=Path, help="file listing paths to place first, in access order")
    pf.add_argument("--prefetch-from-trace", type=Path, nargs="+", metavar="TRACE",
                    help="traces of `imgconv record`: plan the prefetch list from them")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--workdir", type=Path, help="where converted blobs are spooled (default: $TMPDIR)")
    p.add_argument("--jobs", type=int, default=0, help="layers converted at once (default: cores)")
    p.add_argument("--max-layer-size", type=parse_size, default=0, metavar="SIZE",
                   help="fail a layer whose uncompressed tar is larger (e.g. 64G; default 0: no cap)")
    p.add_argument("--min-free", type=parse_size, default=DEFAULT_MIN_FREE, metavar="SIZE",
                   help="fail when the work dir's free space drops below this while spooling "
                        "(default 1G; 0: no check)")
    p.add_argument("--dedup", action="store_true",
                   help="do not store chunks a lower layer already has (upper blobs are then no longer "
                        "complete tar+zstd layers; docs/dedup.md)")
    p.add_argument("--chunk-dict", action="append", metavar="REF|FILE",
                   help="reuse chunks stored in these images or `chunkdict build` files (repeatable)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("inspect", help="show layers, files, chunks, sizes and the prefetch table")
    p.add_argument("image", nargs="+", help="one image (several with --dedup-report)")
    p.add_argument("--dedup-report", action="store_true",
                   help="how much the images share, at file and chunk level")
    _registry_flags(p)
    p.add_argument("--platform")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("check", help="prove a converted image has the same rootfs as the original")
    p.add_argument("original")
    p.add_argument("converted")
    _registry_flags(p)
    p.add_argument("--platform")
    p.add_argument("--json", action="store_true")
    p.add_argument("--workdir", type=Path)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("unpack", help="materialise the merged rootfs of an imgfs image (no FUSE)")
    p.add_argument("image")
    p.add_argument("dir", type=Path)
    _registry_flags(p)
    p.add_argument("--platform")
    p.add_argument("--workdir", type=Path)
    p.set_defaults(func=_cmd_unpack)

    from converter.record import add_commands  # record, optimize (issue 6)

    add_commands(sub, _registry_flags)
    from converter.dedupcli import add_commands as add_dedup_commands  # chunkdict (issue 7)

    add_dedup_commands(sub, _registry_flags)
    return parser


def registry_opts(args: argparse.Namespace) -> dict:
    """The registry flags of a command (``_registry_flags``) as RegistryClient options."""
    opts = {"plain_http": args.plain_http, "insecure": args.insecure}
    if args.auth_file:
        opts["auth_file"] = args.auth_file
    return opts


def _cmd_convert(args: argparse.Namespace) -> int:
    from converter.convert import ConvertOptions, convert
    from converter.prefetchlist import load_prefetch_list

    src, dst = parse_location(args.source), parse_location(args.destination)
    if dst.kind == "docker-archive":
        raise UsageError("docker-archive: is a source only; write to docker:// or oci:")
    if not (64 << 10) <= args.chunk_size <= (16 << 20):
        raise UsageError(f"--chunk-size {args.chunk_size} outside 64K..16M")
    if args.jobs < 0:
        raise UsageError("--jobs must be >= 0")
    prefetch = load_prefetch_list(args.prefetch_list) if args.prefetch_list else None
    if args.prefetch_from_trace:
        from converter.record import prefetch_from_traces

        prefetch = prefetch_from_traces(args.prefetch_from_trace, args.chunk_size)
    opts = ConvertOptions(chunk_size=args.chunk_size, level=args.compression, prefetch=prefetch,
                          workdir=args.workdir, jobs=args.jobs, platform=args.platform,
                          all_platforms=args.all_platforms, max_layer_size=args.max_layer_size or None,
                          min_free=args.min_free)
    if args.dedup or args.chunk_dict:
        from converter.dedupcli import dedup_options

        dedup_options(args, opts, registry_opts(args))
    summary = convert(src, dst, opts, registry_opts(args), show_progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['destination']}: {summary['manifest_digest']} "
              f"({summary['uncompressed_bytes']} bytes in {summary['seconds']} s)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from converter.inspect import inspect_image, render

    if args.dedup_report:
        from converter.dedupcli import cmd_dedup_report

        return cmd_dedup_report(args, registry_opts(args))
    if len(args.image) != 1:
        raise UsageError("inspect takes one image (several only with --dedup-report)")
    report = inspect_image(parse_location(args.image[0]), args.platform, registry_opts(args))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from converter.check import check_images

    diffs, stats = check_images(parse_location(args.original), parse_location(args.converted),
                                args.platform, registry_opts(args), args.workdir)
    if args.json:
        print(json.dumps({"ok": not diffs, "differences": diffs, **stats}, indent=2))
    else:
        for d in diffs:
            print(d)
        print(("OK: " if not diffs else f"DIFFERENT ({len(diffs)} differences): ")
              + f"{stats['paths']} paths, {stats['chunks_verified']} chunks verified")
    return 1 if diffs else 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from converter.unpack import unpack_image

    stats = unpack_image(parse_location(args.image), args.dir, args.platform, registry_opts(args),
                         args.workdir)
    print(f"{args.dir}: {stats['paths']} paths, {stats['bytes']} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)       # argparse exits 2 on usage errors itself
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="imgconv: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("imgconv: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI edge: every error becomes one line and a documented code
        code = exit_code_for(exc)
        if args.verbose:
            log.exception("failed")
        name = "" if code == EXIT_USAGE or type(exc).__module__.startswith("converter") \
            else f"{type(exc).__name__}: "
        print(f"imgconv: error: {name}{exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
