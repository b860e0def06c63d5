"""`imgconv record` and `imgconv optimize`, and `convert --prefetch-from-trace`.

record: one run of a workload over a cold imgfs mount -> a trace (prefetch/record.py).
optimize SRC DST: convert SRC without a prefetch list into a private OCI layout, record
``--runs`` runs of the workload over it, plan the prefetch list from those traces
(prefetch/order.py) and convert SRC again into DST with it. Converting twice costs CPU
(~190 MB/s per core) but keeps DST's bytes a function of SRC, the traces and the options
only, as for a plain convert.

Kept out of cli.py (which several people edit) behind ``add_commands``; heavy imports
stay inside the command functions so `imgconv --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from converter.errors import BadInput, IOFailure, UsageError


def _readiness_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ready-line", help="ready when a stdout line contains this text")
    p.add_argument("--ready-port", type=int, help="ready when 127.0.0.1:PORT accepts a connection")
    p.add_argument("--timeout", type=float, help="ready after this many seconds (default: when the "
                   "command exits; a line/port not seen in --max-seconds is an error)")
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    p.add_argument("command", nargs="+", metavar="CMD", help="the workload (put -- before it)")


def add_commands(sub: argparse._SubParsersAction, registry_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `record` and `optimize` to imgconv's subcommands."""
    p = sub.add_parser("record", help="run a workload over a lazy mount of an imgfs image and write "
                       "its access trace")
    p.add_argument("image", help="an imgfs image: docker://HOST/REPO:TAG or oci:DIR[:TAG]")
    p.add_argument("-o", "--output", type=Path, required=True, help="trace file (JSON) to write")
    registry_flags(p)
    p.add_argument("--workdir", type=Path)
    _readiness_flags(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("optimize", help="record a workload on SRC and convert SRC to DST with the "
                       "files it reads at startup first (record + convert)")
    p.add_argument("source")
    p.add_argument("destination")
    registry_flags(p)
    p.add_argument("--runs", type=int, default=1, help="recorded runs (default 1)")
    p.add_argument("--trace-dir", type=Path, help="keep the traces (and the prefetch list) here")
    p.add_argument("--chunk-size", default="1M", help="64K..16M, default 1M")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", action="store_true")
    _readiness_flags(p)
    p.set_defaults(func=cmd_optimize)


def _readiness(args: argparse.Namespace):
    from prefetch.record import Readiness

    if args.ready_port is not None and not 0 < args.ready_port < 65536:
        raise UsageError(f"--ready-port {args.ready_port} is not a port")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise UsageError("no command given after --")
    return Readiness(args.ready_line, args.ready_port, args.timeout), cmd


def _record(image: str, args: argparse.Namespace, cmd: list[str], ready):
    from prefetch.record import RecordError, record

    try:
        return record(image, cmd, ready, plain_http=args.plain_http, insecure=args.insecure,
                      auth_file=args.auth_file, workdir=args.workdir, max_seconds=args.max_seconds,
                      echo=lambda line: print(line, file=sys.stderr))
    except RecordError as e:
        raise IOFailure(f"record: {e}") from None


def cmd_record(args: argparse.Namespace) -> int:
    from converter.location import parse_location

    loc = parse_location(args.image)
    if loc.kind == "docker-archive":
        raise UsageError("record needs an imgfs image in a registry or an OCI layout (use optimize)")
    ready, cmd = _readiness(args)
    trace = _record(args.image, args, cmd, ready)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    trace.save(args.output)
    read = [f for f in trace.files if not f.stat_only]
    print(f"{args.output}: {len(read)} files read, {len(trace.files) - len(read)} only looked up; "
          f"ready by {trace.ready['reason']} after {trace.ready['seconds']} s")
    return 0


def prefetch_from_traces(paths: list[Path], chunk_size: int) -> list:
    """`--prefetch-from-trace`: traces -> planned imgformat PrefetchEntry list."""
    from imgformat.layer import PrefetchEntry
    from prefetch.order import plan
    from prefetch.trace import TraceError, load_trace

    try:
        traces = [load_trace(p) for p in paths]
    except TraceError as e:
        raise BadInput(str(e)) from None
    return [PrefetchEntry(e.path, e.ranges) for e in plan(traces, chunk_size=chunk_size)]


def cmd_optimize(args: argparse.Namespace) -> int:
    from converter.cli import parse_size, registry_opts
    from converter.convert import ConvertOptions, convert
    from converter.location import parse_location
    from prefetch.order import plan, prefetch_list_json

    try:
        chunk_size = parse_size(args.chunk_size)
    except argparse.ArgumentTypeError as e:
        raise UsageError(str(e)) from None
    if args.runs < 1:
        raise UsageError("--runs must be >= 1")
    src, dst = parse_location(args.source), parse_location(args.destination)
    if dst.kind == "docker-archive":
        raise UsageError("docker-archive: is a source only; write to docker:// or oci:")
    ready, cmd = _readiness(args)
    reg = registry_opts(args)
    stage = Path(tempfile.mkdtemp(prefix="imgconv-optimize-", dir=args.workdir))
    try:
        layout = stage / "oci"
        convert(src, parse_location(f"oci:{layout}:latest"),
                ConvertOptions(chunk_size=chunk_size, workdir=args.workdir), reg)
        traces = [_record(f"oci:{layout}:latest", args, cmd, ready) for _ in range(args.runs)]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    from imgformat.layer import PrefetchEntry

    entries = plan(traces, chunk_size=chunk_size)
    if args.trace_dir is not None:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(traces, 1):
            t.save(args.trace_dir / f"trace-{i}.json")
        (args.trace_dir / "prefetch-list.json").write_text(
            json.dumps(prefetch_list_json(entries, len(traces)), indent=1) + "\n")
    opts = ConvertOptions(chunk_size=chunk_size, prefetch=[PrefetchEntry(e.path, e.ranges) for e in entries],
                          workdir=args.workdir)
    summary = convert(src, dst, opts, reg)
    summary["prefetch"] = {"runs": len(traces), "files": len(entries),
                           "partial": sum(e.ranges is not None for e in entries)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['destination']}: {summary['manifest_digest']} ({len(entries)} files first, "
              f"from {len(traces)} recorded run(s))")
    return 0
