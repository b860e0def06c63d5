"""`imgfs`: mount an imgfs image lazily, unmount it, inspect the node's chunk cache.

Exit codes (same meaning as imgconv's):
    0 ok   1 runtime failure (mount refused, unmount failed, cache verify found damage)
    2 usage error   3 bad image (not imgfs, malformed)   4 registry / IO failure

``--daemon``: the parent forks before any thread or trio run exists; the child does
everything (resolve, fetch bootstraps, mount) and writes one line on a pipe: ``ok PID``
once the mount answers requests, or ``error CODE MESSAGE``. The parent prints the
daemon's PID on stdout and exits 0, or prints the message and exits with CODE; it never
returns before the mount is usable. The child's stdout/stderr go to --log-file (default
/dev/null) so that a caller reading the parent's pipes sees EOF when the parent exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tomllib
from dataclasses import fields

from fusefs.mount import DEFAULT_CACHE_DIR, MountConfig

log = logging.getLogger("imgfs")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_IMAGE, EXIT_IO = 0, 1, 2, 3, 4


class QuietError(Exception):
    """Print one line, exit with ``code`` (s3ql style): expected failures need no traceback."""

    def __init__(self, msg: str, code: int = EXIT_FAIL) -> None:
        super().__init__(msg)
        self.code = code


def _size(text: str) -> int:
    """Bytes, or a number with a binary unit: 512M, 10G, 1.5GiB."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use bytes or 10G, 512M, ...)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgfs", description="Lazy-loading container image filesystem")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("mount", help="mount IMAGE (docker://HOST/REPO:TAG[@digest] or oci:DIR[:TAG])")
    m.add_argument("image")
    m.add_argument("mountpoint")
    m.add_argument("--cache-dir", default=None, help=f"chunk cache (default {DEFAULT_CACHE_DIR})")
    m.add_argument("--cache-size", type=_size, default=None, help="cache cap in bytes (10G, ...)")
    m.add_argument("--plain-http", action="store_true", default=None)
    m.add_argument("--insecure", action="store_true", default=None, help="skip TLS verification")
    m.add_argument("--authfile", dest="auth_file", default=None, metavar="FILE",
                   help="docker config.json with the registry's credentials (default: "
                        "$DOCKER_CONFIG/config.json, else ~/.docker/config.json)")
    m.add_argument("--daemon", action="store_true", help="detach once the mount is ready")
    m.add_argument("--control-socket", default=None, help="HTTP-over-unix socket for /metrics, /state")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--no-prefetch", dest="prefetch", action="store_const", const="none", default=None)
    g.add_argument("--prefetch-all", dest="prefetch", action="store_const", const="all",
                   help="after the prefetch table, fetch every chunk")
    m.add_argument("--access-log", default=None, help="write per-file accesses (JSON lines) here")
    m.add_argument("--layer", type=int, default=None, help="mount only layer N (0 = bottom), debugging")
    m.add_argument("--layer-count", type=int, default=None, metavar="N",
                   help="mount only the bottom N layers (an image whose upper layers are plain: "
                        "the snapshotter stacks them above this mount)")
    m.add_argument("--config", default=None, help="TOML file with MountConfig keys (flags win)")
    m.add_argument("--log-file", default=None, help="daemon log (default: stderr; /dev/null with --daemon)")
    m.add_argument("--pid-file", default=None)
    m.add_argument("--fd-store", default=None,
                   help="fd store socket (imgfs fd-store): a restarted daemon takes over the mount")

    fs = sub.add_parser("fd-store", help="hold mounts' /dev/fuse fds across daemon restarts")
    fs.add_argument("socket")

    u = sub.add_parser("umount", help="unmount MOUNTPOINT (fusermount3 -u, lazy umount as fallback)")
    u.add_argument("mountpoint")

    c = sub.add_parser("cache", help="inspect the node's chunk cache")
    c.add_argument("action", choices=["stats", "verify"])
    c.add_argument("--image", action="append", default=[], metavar="IMAGE",
                   help="stats: also logical vs stored bytes of these images' chunks (repeatable)")
    c.add_argument("--plain-http", action="store_true")
    c.add_argument("--insecure", action="store_true")
    c.add_argument("--authfile", dest="auth_file", default=None, metavar="FILE",
                   help="docker config.json with the registry's credentials")
    c.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    return p


def _mount_config(args: argparse.Namespace) -> MountConfig:
    values: dict = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise QuietError(f"--config {args.config}: {exc}", EXIT_USAGE) from None
        known = {f.name for f in fields(MountConfig)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = set(values) - known
        if unknown:
            raise QuietError(f"--config {args.config}: unknown keys {sorted(unknown)}", EXIT_USAGE)
    for key in ("cache_dir", "cache_size", "plain_http", "insecure", "auth_file", "control_socket", "prefetch",
                "access_log", "layer", "layer_count", "fd_store"):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
    values["image"] = args.image
    values["mountpoint"] = os.path.abspath(args.mountpoint)
    if not os.path.isdir(values["mountpoint"]):
        raise QuietError(f"mountpoint {args.mountpoint} is not a directory", EXIT_USAGE)
    try:
        return MountConfig(**values)
    except (TypeError, ValueError) as exc:
        raise QuietError(f"bad configuration: {exc}", EXIT_USAGE) from None


def _setup_logging(verbose: bool, log_file: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _run_mount(cfg: MountConfig, on_ready) -> int:
    import trio

    from fusefs.mount import run_mount
    from fusefs.source import ImageError, SourceError

    try:
        trio.run(run_mount, cfg, on_ready)
    except ImageError as exc:
        raise QuietError(str(exc), EXIT_IMAGE) from None
    except SourceError as exc:
        raise QuietError(str(exc), EXIT_IO) from None
    except (RuntimeError, OSError) as exc:
        raise QuietError(f"mount failed: {exc}", EXIT_FAIL) from None
    return EXIT_OK


def cmd_mount(args: argparse.Namespace) -> int:
    cfg = _mount_config(args)
    if not args.daemon:
        _setup_logging(args.verbose, args.log_file)

        def ready() -> None:
            if args.pid_file:
                _write_pid(args.pid_file)
            log.info("ready")
        return _run_mount(cfg, ready)
    r, w = os.pipe()
    pid = os.fork()
    if pid:  # parent: wait for the child's verdict
        os.close(w)
        with os.fdopen(r, "rb") as f:
            line = f.readline().decode(errors="replace").strip()
        if line.startswith("ok "):
            print(line[3:], flush=True)
            return EXIT_OK
        if line.startswith("error "):
            _, code, msg = line.split(" ", 2)
            raise QuietError(msg, int(code))
        os.waitpid(pid, 0)
        raise QuietError("the daemon died before the mount was ready", EXIT_FAIL)
    # child
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if args.log_file else devnull
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    _setup_logging(args.verbose, None)
    pipe = os.fdopen(w, "wb", buffering=0)

    def ready() -> None:
        if args.pid_file:
            _write_pid(args.pid_file)
        log.info("ready")
        pipe.write(f"ok {os.getpid()}\n".encode())
        pipe.close()

    code = EXIT_OK
    try:
        _run_mount(cfg, ready)
    except QuietError as exc:
        log.error("%s", exc)
        code = exc.code
        if not pipe.closed:
            pipe.write(f"error {exc.code} {exc}\n".encode().replace(b"\n", b" ").strip() + b"\n")
    except BaseException as exc:
        log.exception("daemon failed")
        code = EXIT_FAIL
        if not pipe.closed:
            pipe.write(f"error 1 {type(exc).__name__}: {exc}".replace("\n", " ").encode() + b"\n")
    logging.shutdown()
    os._exit(code)


def _write_pid(path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def cmd_umount(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    r = subprocess.run(["fusermount3", "-u", mp], check=False, capture_output=True, text=True)
    if r.returncode == 0:
        return EXIT_OK
    r2 = subprocess.run(["umount", "-l", mp], check=False, capture_output=True, text=True)
    if r2.returncode == 0:
        return EXIT_OK
    raise QuietError(f"cannot unmount {mp}: {r.stderr.strip() or r2.stderr.strip()}", EXIT_FAIL)


def cmd_cache(args: argparse.Namespace) -> int:
    import json

    from fusefs.store import ChunkStore

    if not os.path.isdir(args.cache_dir):
        raise QuietError(f"no cache at {args.cache_dir}", EXIT_USAGE)
    store = ChunkStore(args.cache_dir)
    if args.action == "stats":
        out = {**store.statistics().__dict__, "stored_bytes": store.statistics().bytes}
        if args.image:
            out["usage"] = store.usage({i: _image_chunks(i, args) for i in args.image})
        print(json.dumps(out, indent=1))
        return EXIT_OK
    total, bad = store.verify_all()
    print(json.dumps({"checked": total, "corrupted_removed": bad}, indent=1))
    return EXIT_FAIL if bad else EXIT_OK


def _image_chunks(image: str, args: argparse.Namespace) -> dict[bytes, int]:
    """chunk digest -> decoded size for every chunk of IMAGE (its bootstraps only)."""
    from fusefs.mount import _fetch_bootstrap
    from fusefs.source import ImageError, SourceError, open_image

    try:
        layers, source, _digest = open_image(image, plain_http=args.plain_http, insecure=args.insecure,
                                             auth_file=args.auth_file)
    except (ImageError, SourceError) as exc:
        raise QuietError(f"{image}: {exc}", EXIT_IMAGE if isinstance(exc, ImageError) else EXIT_IO) from None
    out: dict[bytes, int] = {}
    try:
        for layer in layers:
            bs = _fetch_bootstrap(source, layer)
            for i in range(bs.chunk_count):
                info = bs.chunk(i)
                out[info.digest] = info.uncomp_size
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "mount":
            return cmd_mount(args)
        if args.cmd == "umount":
            return cmd_umount(args)
        if args.cmd == "fd-store":
            from fusefs.fdstore import serve

            _setup_logging(args.verbose, None)
            serve(args.socket, lambda: print("ready", flush=True))
            return EXIT_OK
        return cmd_cache(args)
    except QuietError as exc:
        print(f"imgfs: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
