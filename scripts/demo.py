"""`make demo`: run a real Debian image lazily through containerd and the imgfs snapshotter.

Starts, on this machine and only for the demo: a docker-registry on 127.0.0.1, the
imgfs snapshotter and a private containerd (own root, state and socket) using it.
Builds a two-layer Debian image from Debian packages (cached under .cache/), pushes
it, converts it with `imgconv convert`, pulls it lazily with `ctr-remote image rpull`
and runs it with `ctr run --snapshotter imgfs`, printing the program's output, the
time to it and the bytes fetched from the registry against the image size. Then the
same image unconverted, pulled and unpacked in full, for comparison.

Everything it starts is stopped at the end, also on Ctrl-C or an error; running it
again starts from scratch (idempotent). Logs stay in demo-state/ for a look after.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "demo-state"
PROGRAM = ("python3", "-c", ("import sys, platform; print('hello from', platform.python_implementation(), "
           "sys.version.split()[0], 'in a lazily started Debian image', flush=True)"))
_ACCESS = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" \d+ (\d+)')


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def run(argv: list[str], what: str, timeout: float = 600) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"demo: {what} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return r.stdout


def fetched_bytes(log: Path, since: int, digests: set[str]) -> int:
    total = 0
    for ln in log.read_text(errors="replace").splitlines()[since:]:
        m = _ACCESS.search(ln)
        if m and m.group(1) in digests:
            total += int(m.group(2))
    return total


def log_lines(log: Path) -> int:
    return len(log.read_text(errors="replace").splitlines())


def timed_run(ctd, snapshotter: str, ref: str, cid: str) -> tuple[float, str]:
    """`ctr run`; returns (seconds from start to the first output line, the output)."""
    argv = ["ctr", "-a", ctd.address, "-n", ctd.namespace, "run", "--rm", "--snapshotter", snapshotter,
            ref, cid, *PROGRAM]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    t_first = time.monotonic() - t0
    rest, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"demo: ctr run failed ({proc.returncode}): {err[-3000:]}")
    return t_first, (first + rest).strip()


def cleanup_previous() -> None:
    """A previous run that was killed hard may have left mounts under demo-state/: detach them."""
    if not STATE.exists():
        return
    prefix = str(STATE) + "/"
    with open("/proc/self/mountinfo") as f:
        targets = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
    for t in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


def stop_daemons(root: Path) -> None:
    """Stops the fusefs daemons the snapshotter left for adoption (by PID, from its state)."""
    sys.path.insert(0, str(ROOT))
    from snapshotter.leftovers import stop_leftover_daemons

    stop_leftover_daemons(root)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that the ExitStack stops everything."""
    raise KeyboardInterrupt


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("demo: needs root (FUSE, overlay mounts, containerd)")
    for tool in ("containerd", "ctr", "ctr-remote", "runc", "docker-registry", "skopeo", "mmdebstrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"demo: {tool} is missing: run `make sysdeps`")
    sys.path.insert(0, str(ROOT))
    from tests.support.containerd import start_containerd, start_snapshotter, write_snapshotter_config
    from tests.support.fixtures import CACHE_DIR
    from tests.support.images import debian_image, push_oci
    from tests.support.registry import start_registry

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)      # also when started with SIGINT ignored (`&`)
    say("removing the state of a previous run ...")
    cleanup_previous()
    STATE.mkdir(parents=True)
    with ExitStack() as stack:
        say("building the Debian image from Debian packages (cached after the first run) ...")
        layout = debian_image(CACHE_DIR)
        reg = start_registry(STATE / "registry")
        stack.callback(reg.stop)
        say(f"registry on {reg.url}")
        short = Path(tempfile.mkdtemp(prefix="imgfs-demo-", dir="/tmp"))   # short socket paths
        stack.callback(shutil.rmtree, short, True)
        root, sock = STATE / "snapshotter", short / "imgfs.sock"
        root.mkdir()
        cfg = write_snapshotter_config(root, sock, [reg.host])
        snap = start_snapshotter(cfg, root, sock, STATE / "snapshotter.log")
        stack.callback(stop_daemons, root)
        stack.callback(snap.stop)
        ctd = start_containerd(short / "containerd", proxy_plugins={"imgfs": str(sock)})
        stack.callback(ctd.stop)
        say(f"containerd {ctd.address} with the imgfs snapshotter on {sock}")

        repo = f"{reg.host}/demo/debian"
        push_oci(layout, reg.host, "demo/debian", "plain")
        t0 = time.monotonic()
        run([sys.executable, "-m", "converter.cli", "convert", "--plain-http", f"docker://{repo}:plain",
             f"docker://{repo}:imgfs"], "imgconv convert")
        say(f"converted {repo}:plain -> {repo}:imgfs in {time.monotonic() - t0:.1f} s")

        import requests
        manifest = requests.get(f"{reg.url}/v2/demo/debian/manifests/imgfs", timeout=30, headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
        layers = {d["digest"]: d["size"] for d in manifest["layers"]}
        size = sum(layers.values())

        since = log_lines(reg.log)
        t0 = time.monotonic()
        run(["ctr-remote", "-a", ctd.address, "-n", ctd.namespace, "image", "rpull", "--plain-http",
             "--snapshotter", "imgfs", f"{repo}:imgfs"], "ctr-remote image rpull")
        t_pull = time.monotonic() - t0
        t_first, out = timed_run(ctd, "imgfs", f"{repo}:imgfs", "demo-lazy")
        lazy_bytes = fetched_bytes(reg.log, since, set(layers))
        print()
        print(f"  {out}")
        print(f"  lazy:  pull {t_pull:.2f} s + run to first output {t_first:.2f} s = "
              f"{t_pull + t_first:.2f} s; fetched {lazy_bytes / 1e6:.2f} MB of {size / 1e6:.2f} MB "
              f"({100 * lazy_bytes / size:.1f}% of the image)")

        plain_manifest = requests.get(f"{reg.url}/v2/demo/debian/manifests/plain", timeout=30, headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
        plain_layers = {d["digest"]: d["size"] for d in plain_manifest["layers"]}
        since = log_lines(reg.log)
        t0 = time.monotonic()
        run(["ctr", "-a", ctd.address, "-n", ctd.namespace, "images", "pull", "--plain-http",
             "--snapshotter", "imgfs", f"{repo}:plain"], "ctr images pull")
        t_full = time.monotonic() - t0
        t_first_full, _ = timed_run(ctd, "imgfs", f"{repo}:plain", "demo-full")
        full_bytes = fetched_bytes(reg.log, since, set(plain_layers))
        print(f"  full:  pull+unpack {t_full:.2f} s + run to first output {t_first_full:.2f} s = "
              f"{t_full + t_first_full:.2f} s; fetched {full_bytes / 1e6:.2f} MB (gzip image)")
        print()
        say(f"logs in {STATE}; stopping everything the demo started")
    say("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started was stopped", file=sys.stderr)
        sys.exit(130)
