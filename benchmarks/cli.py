"""`imgbench`: cold-start benchmarks of container images over an emulated link.

    imgbench images build [--images python,node,...]
    imgbench run [--images ...] [--modes oci,imgfs,imgfs-prefetch,estargz] [--bandwidth 100mbit]
                 [--rtt 20ms] [--repeat N] [--out DIR] [--quick] [--no-drop-caches]
                 [--no-mount-on-pull]
    imgbench report DIR

Exit codes: 0 ok, 1 some runs failed, 2 usage error, 3 environment missing (not root, a
tool not installed), 4 a build or the harness itself failed.
Method and caveats: docs/imgbench.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from benchmarks.images import ROOT, build_images
from benchmarks.proxy import parse_bandwidth, parse_duration
from benchmarks.runner import ALL_MODES
from benchmarks.workloads import WORKLOADS, select

QUICK = {"images": "python,node", "repeat": 1}
TOOLS = ("containerd", "ctr", "ctr-remote", "runc", "docker-registry", "skopeo", "mmdebstrap")


class QuietError(Exception):
    """One line to stderr and an exit code; no traceback (s3ql style)."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.code = code


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgbench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    img = sub.add_parser("images", help="workload images")
    isub = img.add_subparsers(dest="images_command", required=True)
    b = isub.add_parser("build", help="build the workload images (cached under .cache/benchimages)")
    b.add_argument("--images", type=_csv, default=None, help=f"comma list of {','.join(WORKLOADS)} (all)")
    r = sub.add_parser("run", help="run the benchmark; writes one JSON per run, then the report")
    r.add_argument("--images", type=_csv, default=None, help=f"comma list of {','.join(WORKLOADS)} (all)")
    r.add_argument("--modes", type=_csv, default=list(ALL_MODES), help=f"comma list of {','.join(ALL_MODES)}")
    r.add_argument("--bandwidth", default="100mbit", help="link bandwidth (100mbit, 5mb, 1gbit)")
    r.add_argument("--rtt", default="20ms", help="delay added to every request (20ms)")
    r.add_argument("--repeat", type=int, default=None, help="runs per image and mode (3)")
    r.add_argument("--out", type=Path, default=None, help="results dir (benchmarks/results/DATE)")
    r.add_argument("--mount-on-pull", action=argparse.BooleanOptionalAction, default=True,
                   help="the snapshotter starts the fusefs daemon when the image is pulled (default), "
                        "not at the container's Prepare")
    r.add_argument("--quick", action="store_true", help="python,node once each (what `make bench` runs)")
    r.add_argument("--no-drop-caches", action="store_true",
                   help="keep the page cache between runs (not cold; for tests on shared machines)")
    rep = sub.add_parser("report", help="Markdown table + PNG plots of a results dir")
    rep.add_argument("dir", type=Path)
    return p


def _check_env() -> None:
    if os.geteuid() != 0:
        raise QuietError("imgbench: needs root (containerd, FUSE, overlay mounts, drop_caches)", 3)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise QuietError(f"imgbench: missing {', '.join(missing)}: run `make sysdeps`", 3)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks.bench import run_benchmark
    from benchmarks.report import report

    if args.quick:
        args.images = args.images or _csv(QUICK["images"])
        args.repeat = args.repeat or QUICK["repeat"]
    repeat = args.repeat or 3
    if repeat < 1:
        raise QuietError("imgbench: --repeat must be at least 1", 2)
    try:
        workloads = select(args.images)
        bandwidth, rtt = parse_bandwidth(args.bandwidth), parse_duration(args.rtt)
    except ValueError as e:
        raise QuietError(f"imgbench: {e}", 2) from None
    bad = [m for m in args.modes if m not in ALL_MODES]
    if bad:
        raise QuietError(f"imgbench: unknown mode(s) {', '.join(bad)}; known: {', '.join(ALL_MODES)}", 2)
    _check_env()
    out = args.out or ROOT / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    from benchmarks.benchlock import exclusive

    with exclusive():                # after the usage checks: a typo waits for nobody
        layouts = build_images(workloads)
        paths = run_benchmark(workloads, layouts, args.modes, bandwidth, rtt, repeat, out,
                              drop=not args.no_drop_caches, command=["imgbench", *argv],
                              mount_on_pull=args.mount_on_pull)
    md, _ = report(out)
    print(md)
    print(f"imgbench: results in {out}")
    failed = sum(1 for p in paths if '"ok": false' in p.read_text() and "skipped" not in p.read_text())
    return 1 if failed else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    # `kill PID` (a CI timeout, a user) must run the harness's cleanup like Ctrl-C does: the
    # registry, containerd, snapshotter and daemons it started are stopped in `finally` blocks
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.command == "images":
            try:
                workloads = select(args.images)
            except ValueError as e:
                raise QuietError(f"imgbench: {e}", 2) from None
            _check_env()
            for name, layout in build_images(workloads).items():
                print(f"{name}: {layout}")
            return 0
        if args.command == "report":
            from benchmarks.report import report
            if not args.dir.is_dir():
                raise QuietError(f"imgbench: {args.dir} is not a directory", 2)
            try:
                md, plots = report(args.dir)
            except ValueError as e:
                raise QuietError(f"imgbench: {e}", 1) from None
            print(md)
            print("plots: " + ", ".join(str(p) for p in plots))
            return 0
        return _run(args, argv)
    except QuietError as e:
        print(e, file=sys.stderr)
        return e.code
    except RuntimeError as e:
        print(f"imgbench: {e}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
