"""One mount's lifetime: resolve the image, fetch bootstraps, serve FUSE, prefetch, unmount.

Order (stargz's fs.Mount, adapted): resolve the manifest -> fetch every layer's bootstrap
with one range request each, all in parallel (none for those in the node's bootstrap
cache, ``fusefs.bootcache``: the snapshotter leaves them there at pull) -> merge them (whiteouts applied) -> open
the chunk store -> ``pyfuse3.init`` -> serve; the mount is *ready* once a first request
(open/close of the root, see below) went through, and only then does prefetch start and
the caller hear "ready". SIGTERM/SIGINT/SIGHUP, or an external ``fusermount3 -u``, end
``pyfuse3.main``; the nursery is then cancelled and the mount closed and unmounted.

Why the root is opened once right after init: a fresh mount may get its first FLUSH
from the kernel while nobody has opened anything yet, and we have seen that block the
first real caller; one open/close from a worker thread settles the session first.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from fusefs.accesslog import AccessLog
from fusefs.bootcache import BootstrapCache
from fusefs.control import serve_control, state_json
from fusefs.fetcher import DEFAULT_GAP_BYTES, DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_REQUEST, Fetcher
from fusefs.metrics import Metrics
from fusefs.ops import Operations
from fusefs.prefetch import Prefetcher, kernel_readahead_kib, reader_readahead
from fusefs.reader import DEFAULT_READAHEAD, DEFAULT_SMALL_FILE, FileReader, ReaderConfig
from fusefs.source import ImageError, LayerRef, SourceError, open_image
from fusefs.store import ChunkStore
from fusefs.view import SingleLayerView

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "/var/lib/imgfs/cache"
#: How often a daemon waiting for a bootstrap (``bootstrap_wait``) looks into the cache.
BOOTSTRAP_POLL = 0.02


@dataclass
class MountConfig:
    """Everything ``imgfs mount`` can be told (CLI flags, or a TOML file with these keys)."""

    image: str
    mountpoint: str
    cache_dir: str = DEFAULT_CACHE_DIR
    cache_size: int | None = None
    plain_http: bool = False
    insecure: bool = False
    auth_file: str | None = None     # docker config.json with the registry's credentials (must exist)
    control_socket: str | None = None
    prefetch: str = "table"          # "none" | "table" | "all"
    access_log: str | None = None
    layer: int | None = None
    layer_count: int | None = None   # only the bottom N layers (the image's upper ones are plain)
    gap_bytes: int = DEFAULT_GAP_BYTES
    max_request: int = DEFAULT_MAX_REQUEST
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    prefetch_slots: int = 2
    small_file: int = DEFAULT_SMALL_FILE
    readahead: int = DEFAULT_READAHEAD
    kernel_readahead_kib: int = 4096
    retries: int = 4
    timeout: float = 30.0
    fd_store: str | None = None      # fusefs.fdstore socket: survive daemon restarts (takeover)
    # seconds to wait for each layer's bootstrap to appear in the node's bootstrap cache before
    # fetching it: a daemon started during a pull (the snapshotter's mount_on_pull) finds there
    # the bootstraps the snapshotter is verifying, instead of fetching them a second time
    bootstrap_wait: float = 0.0
    # containers run as other users; a non-root user may only use it with user_allow_other
    allow_other: bool = os.geteuid() == 0

    def __post_init__(self) -> None:
        if self.prefetch not in ("none", "table", "all"):
            raise ValueError(f"prefetch must be none, table or all, not {self.prefetch!r}")
        if self.cache_size is not None and self.cache_size <= 0:
            raise ValueError("cache_size must be positive")
        if self.layer is not None and self.layer < 0:
            raise ValueError("layer must be >= 0")
        if self.layer_count is not None and (self.layer_count <= 0 or self.layer is not None):
            raise ValueError("layer_count must be positive, and not combined with layer")
        for name in ("gap_bytes", "max_request", "max_inflight", "prefetch_slots", "small_file",
                     "readahead", "retries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        if self.max_request <= 0 or self.max_inflight <= 0 or self.prefetch_slots <= 0:
            raise ValueError("max_request, max_inflight and prefetch_slots must be positive")
        if not isinstance(self.bootstrap_wait, (int, float)) or self.bootstrap_wait < 0:
            raise ValueError("bootstrap_wait must be a non-negative number of seconds")


def _fetch_bootstrap(source: Any, layer: LayerRef, attempts: int = 3, cache: BootstrapCache | None = None,
                     wait: float = 0.0) -> Any:
    """One range request for the layer's bootstrap (two if the annotations lack its place).

    Bytes that do not match the pinned digest are fetched again (``attempts`` in all): a
    byte flipped in transit is a fault of the link, not of the image; only a mismatch that
    persists is a bad image.
    """
    from imgformat.errors import ImgFormatError

    if wait > 0 and cache is not None and layer.bootstrap_digest:
        _await_cached(cache, layer.bootstrap_digest, wait)
    for attempt in range(1, attempts + 1):
        try:
            return _fetch_bootstrap_once(source, layer, cache)
        except (ImageError, ImgFormatError) as exc:
            if attempt == attempts:
                raise
            log.warning("layer %s: bootstrap fetch %d/%d gave bad bytes (%s), fetching again",
                        layer.digest, attempt, attempts, exc)
    raise AssertionError("unreachable")


def _await_cached(cache: BootstrapCache, digest: str, wait: float) -> None:
    """Up to ``wait`` seconds until ``digest`` is in the bootstrap cache (a cheap stat while
    it is absent); the caller then reads it there, or fetches it after all."""
    deadline = time.monotonic() + wait
    while not cache.has(digest) and time.monotonic() < deadline:
        time.sleep(BOOTSTRAP_POLL)


def _fetch_bootstrap_once(source: Any, layer: LayerRef, cache: BootstrapCache | None = None) -> Any:
    """The layer's bootstrap: from the node's bootstrap cache when its pinned digest is there
    (the snapshotter verified it at pull), else one range request (verified, then cached)."""
    from imgformat.bootstrap import Bootstrap
    from imgformat.footer import FOOTER_SIZE, parse_footer

    cached = cache.get(layer.bootstrap_digest) if cache is not None else None
    if cached is not None:
        return Bootstrap.from_blob_bytes(cached, blob_digest=layer.digest)
    off, size = layer.bootstrap_offset, layer.bootstrap_size
    if off is None or size is None:
        off, size = parse_footer(source.get_range(layer.digest, layer.size - FOOTER_SIZE, layer.size))
    payload = source.get_range(layer.digest, off, off + size)
    if layer.bootstrap_digest:
        got = "sha256:" + hashlib.sha256(payload).hexdigest()
        if got != layer.bootstrap_digest:
            raise ImageError(f"layer {layer.digest}: bootstrap digest {got} does not match "
                             f"the pinned {layer.bootstrap_digest}")
    bootstrap = Bootstrap.from_blob_bytes(payload, blob_digest=layer.digest)
    if cache is not None and layer.bootstrap_digest:
        cache.put(layer.bootstrap_digest, payload)
    return bootstrap


async def load_image(cfg: MountConfig) -> tuple[list[LayerRef], Any, list[Any], Any]:
    """Resolve IMAGE and fetch + merge its bootstraps; returns (layers, source, bootstraps, view)."""
    from imgformat.errors import ImgFormatError

    layers, source, _digest = await trio.to_thread.run_sync(
        lambda: open_image(cfg.image, plain_http=cfg.plain_http, insecure=cfg.insecure,
                           auth_file=cfg.auth_file, retries=cfg.retries, timeout=cfg.timeout, layer_count=cfg.layer_count))
    if cfg.layer is not None:
        if not 0 <= cfg.layer < len(layers):
            raise ImageError(f"--layer {cfg.layer}: the image has {len(layers)} layers")
        layers = [layers[cfg.layer]]
    bootstraps: list[Any] = [None] * len(layers)
    cache = BootstrapCache(cfg.cache_dir)

    async def one(i: int) -> None:
        try:
            bootstraps[i] = await trio.to_thread.run_sync(_fetch_bootstrap, source, layers[i], 3, cache,
                                                          cfg.bootstrap_wait)
        except ImgFormatError as exc:
            raise ImageError(f"layer {i} ({layers[i].digest}): {exc}") from exc
        except (ImageError, SourceError):
            raise
        except Exception as exc:  # registry errors
            raise SourceError(f"layer {i} ({layers[i].digest}): bootstrap fetch failed: {exc}") from exc

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(layers)):
                nursery.start_soon(one, i)
    except BaseExceptionGroup as group:  # one clear error (exit 3 or 4), not "ExceptionGroup"
        first = _first_leaf(group)
        raise first from first.__cause__
    try:
        if len(bootstraps) == 1:
            view = SingleLayerView(bootstraps[0], layers[0].digest)
        else:
            from imgformat.merge import MergedView

            view = MergedView(bootstraps, blob_digests=[lr.digest for lr in layers])
    except ImgFormatError as exc:
        raise ImageError(f"cannot merge the layers: {exc}") from exc
    return layers, source, bootstraps, view


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first non-group exception (an ImageError before a SourceError if both occur)."""
    leaves: list[BaseException] = []

    def collect(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                collect(sub)
        else:
            leaves.append(e)

    collect(group)
    return next((e for e in leaves if isinstance(e, ImageError)), leaves[0])


def private_dir(path: str) -> None:
    """Create the cache dir 0700, or take group/other access away from an existing one: its
    chunks are the file data of images that may be private to this node's users."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        log.warning("cache dir %s was mode %04o: now 0700", path, mode)
        os.chmod(path, mode & 0o700)


def _touch_root(mountpoint: str) -> None:
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)


def _tune_kernel_readahead(mountpoint: str, kib: int) -> None:
    """Raise the mount's kernel readahead (its bdi's read_ahead_kb; root only).

    The kernel offers FUSE a 128 KiB readahead, so a sequential reader costs one FUSE
    round trip per 128 KiB; libfuse already allows 1 MiB requests (max_pages 256), and
    a 4 MiB window lets the kernel keep several of them in flight: measured here, warm
    sequential reads go from ~120 to ~430 MB/s. Readahead only grows on sequential
    access, so random small reads are not inflated. Best effort: without root (or
    sysfs) the mount works with the default.
    """
    if kib <= 0:
        return
    st = os.stat(mountpoint)
    path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.info("kernel readahead left at its default (%s: %s)", path, exc)


async def run_mount(cfg: MountConfig, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount and serve until a signal or an external unmount; always unmounts on the way out.

    Raises ImageError (bad image), SourceError (registry/IO) or OSError (mount failed)
    before ``on_ready`` is called; after it, errors of single reads are EIO and logged.
    """
    t0 = time.monotonic()
    await trio.to_thread.run_sync(private_dir, cfg.cache_dir)
    layers, source, bootstraps, view = await load_image(cfg)
    store = await trio.to_thread.run_sync(ChunkStore, cfg.cache_dir, cfg.cache_size)
    from imgformat.chunk import decode_chunk

    fetcher = Fetcher(source, store, decode_chunk, gap_bytes=cfg.gap_bytes, max_request=cfg.max_request,
                      max_inflight=cfg.max_inflight, prefetch_slots=cfg.prefetch_slots)
    prefetcher = None
    if cfg.prefetch != "none":
        prefetcher = Prefetcher(fetcher, bootstraps, [lr.digest for lr in layers],
                                all_after=cfg.prefetch == "all")
    metrics = Metrics(lambda: {"store": store.statistics(), "fetcher": fetcher.statistics(),
                               "prefetch": prefetcher.statistics() if prefetcher else None})
    access_log = AccessLog(cfg.access_log) if cfg.access_log else None
    readahead = cfg.readahead if prefetcher is None else reader_readahead(bootstraps, cfg.readahead)
    reader = FileReader(view, fetcher, store, ReaderConfig(small_file=cfg.small_file, readahead=readahead))
    ops = Operations(view, reader, metrics, access_log)
    if cfg.fd_store:  # a restarted daemon must answer in the kernel's inode numbers
        from fusefs import takeover

        ops.view = reader.view = takeover.stable_view(view, cfg.mountpoint, cfg.fd_store)
    started = {"mount_seconds": None}

    async def control(method: str, path: str) -> tuple[int, str, bytes]:
        if method == "GET" and path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()
        if method == "GET" and path == "/state":
            return 200, "application/json", state_json({
                "pid": os.getpid(), "image": cfg.image, "mountpoint": cfg.mountpoint,
                "layers": [lr.digest for lr in layers], "cache_dir": cfg.cache_dir,
                "mount_seconds": started["mount_seconds"],
                "store": store.statistics().__dict__, "fetcher": fetcher.statistics().__dict__,
                "prefetch": prefetcher.statistics().__dict__ if prefetcher else None,
                "access_log": cfg.access_log})
        if method == "POST" and path == "/access-log/flush":
            if access_log is None:
                return 404, "text/plain", b"no --access-log\n"
            n = access_log.flush()
            return 200, "application/json", state_json({"records": n, "path": cfg.access_log})
        return 404, "text/plain", b"not found\n"

    options = {"fsname=imgfs", "subtype=imgfs", "ro", "default_permissions"}
    if cfg.allow_other:
        options.add("allow_other")
    # the handlers are in place before the mount exists: a SIGTERM at any point after it
    # unmounts cleanly instead of killing the process and leaving a dead mount behind
    conn = None
    handover = {"on": False}
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) + ((signal.SIGUSR1,) if cfg.fd_store else ())
    with trio.open_signal_receiver(*sigs) as signals:
        if cfg.fd_store:
            from fusefs import takeover

            fd, init, adopted = await trio.to_thread.run_sync(
                takeover.open_connection, cfg.mountpoint, options, cfg.fd_store)
            try:
                conn = takeover.Connection(fd, init, adopted)
                pyfuse3.init(ops, conn.mountpoint_arg, options)
            except BaseException:
                os.close(fd)
                takeover.release(cfg.mountpoint, cfg.fd_store, adopted)
                raise
        else:
            pyfuse3.init(ops, cfg.mountpoint, options)
        log.info("mounted %s on %s (%d layers)", cfg.image, cfg.mountpoint, len(layers))
        try:
            async with trio.open_nursery() as nursery:
                async def fuse_main() -> None:
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(fuse_main)
                nursery.start_soon(_watch_signals, signals, handover)
                if conn is not None:
                    await conn.attach()
                reader.spawn = nursery.start_soon
                await trio.to_thread.run_sync(_touch_root, cfg.mountpoint)
                kib = cfg.kernel_readahead_kib          # smaller for a prefetch table: fusefs.prefetch
                kib = kernel_readahead_kib(bootstraps, kib) if prefetcher is not None else kib
                await trio.to_thread.run_sync(_tune_kernel_readahead, cfg.mountpoint, kib)
                if cfg.control_socket:
                    await nursery.start(serve_control, cfg.control_socket, control)
                started["mount_seconds"] = round(time.monotonic() - t0, 4)
                on_ready()
                if prefetcher is not None:
                    nursery.start_soon(prefetcher.run)
        finally:
            if access_log is not None:
                try:
                    access_log.flush()
                except OSError as exc:
                    log.error("cannot write the access log %s: %s", cfg.access_log, exc)
            if conn is None:
                pyfuse3.close(unmount=True)
            else:
                pyfuse3.close(unmount=False)
                # a fresh mount that never served is removed; an adopted one is left to the next try
                keep = handover["on"] or (conn.adopted and not conn.attached)
                takeover.release(cfg.mountpoint, cfg.fd_store, keep)
            log.info("%s %s", "handed over" if handover["on"] else "unmounted", cfg.mountpoint)


async def _watch_signals(signals: Any, handover: dict) -> None:
    async for signum in signals:
        # SIGUSR1 (only with an fd store): exit for an upgrade, the mount stays for the next daemon
        handover["on"] = signum == signal.SIGUSR1
        log.info("signal %d: %s", signum, "handing over" if handover["on"] else "unmounting")
        pyfuse3.terminate()
        return
