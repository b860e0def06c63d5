"""Run a workload chrooted into a root dir, in its own mount and PID namespaces.

The workload sees the image as a container would: a private /proc (its PID namespace's),
a minimal /dev (a tmpfs with null, zero, full, random, urandom, tty and /dev/shm), and
nothing of the host's filesystem. ``unshare --mount --pid --fork --kill-child`` makes
the namespaces; a small host shell script mounts /proc and /dev inside the new mount
namespace (so they vanish with it, nothing to clean up on the host) and execs chroot.
No network namespace: a readiness port is then reachable on the host's loopback.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

DEFAULT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": "C.UTF-8"}

_SETUP = r"""
set -e
root=$1; shift
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,mode=755,size=64k tmpfs "$root/dev"
mk() { mknod -m 666 "$root/dev/$1" c "$2" "$3"; }
mk null 1 3; mk zero 1 5; mk full 1 7; mk random 1 8; mk urandom 1 9; mk tty 5 0
mkdir "$root/dev/shm" "$root/dev/pts"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
exec chroot "$root" "$@"
"""


def start(root: Path, command: list[str], *, env: dict[str, str] | None = None,
          stdout=subprocess.PIPE, stderr=None) -> subprocess.Popen:
    """Start ``command`` chrooted into ``root`` (its /proc and /dev dirs are made if missing).

    The process leads a new session, so ``stop`` reaches every process it started.
    """
    for d in ("proc", "dev"):
        if not (root / d).is_dir():
            (root / d).mkdir(mode=0o755)
    argv = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--",
            "/bin/sh", "-c", _SETUP, "setup", str(root), *command]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            env=dict(env if env is not None else DEFAULT_ENV), start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Kill the workload and everything in its namespace; returns its exit code (None if
    it had to be killed).

    SIGKILL straight away: the startup is over (the trace is flushed before this), the
    workload's process is its PID namespace's init, which ignores SIGTERM, and unshare
    --fork ignores it while it waits. Killing the group reaches unshare and that init; the
    kernel then kills every other process of the namespace (``--kill-child`` covers a
    child that left the group).
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout)
    return None
