"""`imgconv record` on a real Debian image, checked against strace of the same workload
run chrooted into the unpacked rootfs (an independent method)."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from prefetch.sandbox import DEFAULT_ENV
from prefetch.trace import load_trace
from tests.prefetch.conftest import WORKLOAD, imgconv
from tests.support.fixtures import CACHE_DIR
from tests.support.images import debian_rootfs

pytestmark = pytest.mark.e2e

SYSCALLS = "chroot,execve,open,openat"
_LINE = re.compile(r'^\d+ +(\w+)\((.*)\) += (-?\d+)')
_PATH = re.compile(r'"((?:[^"\\]|\\.)*)"')
#: read by the trace but named by no syscall of the workload: the container runtime's user
#: lookup (recorded on purpose) and the ELF interpreter, which the kernel opens at execve.
NOT_SYSCALLS = {"etc/passwd", "etc/group", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}


def resolve(root: Path, path: str) -> str | None:
    """``path`` inside ``root`` with symlinks followed as in a chroot; None if missing."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        cur = root.joinpath(*done, name)
        try:
            st = os.lstat(cur)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(cur)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(name)
    return "/".join(done)


@pytest.fixture(scope="module")
def strace_run(tmp_path_factory) -> tuple[list[str], set[str]]:
    """(regular files opened read-only or executed, in first-open order; the same as a set)."""
    base = tmp_path_factory.mktemp("strace")
    rootfs = debian_rootfs(CACHE_DIR)
    upper, work, merged = base / "upper", base / "work", base / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(merged)],
                   check=True, capture_output=True, timeout=60)
    try:
        out = base / "strace.txt"
        r = subprocess.run(["strace", "-f", "-o", str(out), "-e", f"trace={SYSCALLS}",
                            "chroot", str(merged), *WORKLOAD], env=DEFAULT_ENV, capture_output=True,
                           text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr
        lines = out.read_text().splitlines()
    finally:
        subprocess.run(["umount", str(merged)], capture_output=True, check=False, timeout=60)
    order: list[str] = []
    opened: set[str] = set()
    chrooted = False
    for line in lines:
        m = _LINE.match(line)
        if not m or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call == "chroot":
            chrooted = True
            continue
        p = _PATH.search(args)
        if not chrooted or not p or not p.group(1):
            continue
        rel = resolve(rootfs, p.group(1))
        if rel is None or not stat.S_ISREG(os.lstat(rootfs / rel).st_mode):
            continue
        if call == "execve" or (call in ("open", "openat") and "O_WRONLY" not in args
                                and "O_RDWR" not in args and "O_CREAT" not in args):
            if rel not in opened:
                order.append(rel)
            opened.add(rel)
    return order, opened


def test_trace_lists_the_files_the_workload_opened_in_order(python_trace, strace_run):
    trace = load_trace(python_trace)
    assert trace.ready["reason"] == "line"
    read = [f.path for f in sorted(trace.files, key=lambda f: f.needed_at) if not f.stat_only]
    order, opened = strace_run
    nonempty = {p for p in opened if os.path.getsize(debian_rootfs(CACHE_DIR) / p) > 0}
    assert nonempty, "strace saw no file opened"
    assert nonempty - set(read) == set(), "opened by the workload but missing from the trace"
    assert set(read) - opened <= NOT_SYSCALLS, "in the trace but never opened"
    assert {"etc/passwd", "etc/group"} <= set(read[:2])        # the runtime's reads come first
    common = [p for p in read if p in opened]
    assert common == [p for p in order if p in set(common)], "first-access order differs from strace"
    by_path = {f.path: f for f in trace.files}
    assert by_path["usr/bin/python3.11"].size == os.path.getsize(
        debian_rootfs(CACHE_DIR) / "usr/bin/python3.11")
    assert any(p.startswith("usr/lib/python3.11/email/") for p in read)
    assert any("argparse" in p for p in read)


def test_record_usage_errors(lazy_layout, tmp_path):
    from tests.prefetch.conftest import IMGCONV, ROOT

    def run(*args):
        return subprocess.run([*IMGCONV, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                              check=False)

    assert run("record", f"oci:{lazy_layout}:latest", "-o", str(tmp_path / "t")).returncode == 2
    r = run("record", f"oci:{lazy_layout}:latest", "-o", str(tmp_path / "t"), "--ready-port", "0",
            "--", "true")
    assert r.returncode == 2 and "port" in r.stderr
    r = run("record", f"oci:{lazy_layout}:latest", "-o", str(tmp_path / "t"), "--", "/bin/false")
    assert r.returncode == 4 and "exited with code 1" in r.stderr
    assert not (tmp_path / "t").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_by_port_and_by_timeout(lazy_layout, tmp_path):
    port = free_port()
    imgconv("record", f"oci:{lazy_layout}:latest", "-o", str(tmp_path / "port.json"), "--ready-port",
            str(port), "--workdir", str(tmp_path), "--", "python3", "-c",
            f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "time.sleep(600)")
    t = load_trace(tmp_path / "port.json")
    assert t.ready["reason"] == "port"
    assert "usr/lib/python3.11/socket.py" in {f.path for f in t.files if not f.stat_only}
    imgconv("record", f"oci:{lazy_layout}:latest", "-o", str(tmp_path / "timeout.json"), "--timeout", "1",
            "--workdir", str(tmp_path), "--", "sleep", "600")
    t = load_trace(tmp_path / "timeout.json")
    assert t.ready["reason"] == "timeout" and t.ready["seconds"] >= 1
    assert "usr/bin/sleep" in {f.path for f in t.files if not f.stat_only}
    assert list(tmp_path.glob("imgconv-record-*")) == []          # mounts and dirs cleaned up


def test_optimize_records_and_converts_in_one_step(debian_source, python_trace, tmp_path):
    from prefetch.order import plan
    from tests.fusefs.imagekit import layer_bootstraps
    from tests.prefetch.conftest import READY

    r = imgconv("optimize", debian_source, f"oci:{tmp_path / 'out'}:latest", "--ready-line", READY,
                "--trace-dir", str(tmp_path / "traces"), "--workdir", str(tmp_path), "--json", "--", *WORKLOAD)
    summary = json.loads(r.stdout)
    assert summary["prefetch"]["runs"] == 1 and summary["prefetch"]["files"] > 40
    listed = [f["path"] for f in json.loads((tmp_path / "traces/prefetch-list.json").read_text())["files"]]
    assert listed == [e.path for e in plan([load_trace(python_trace)])]   # same workload, same list
    assert layer_bootstraps(tmp_path / "out")[0][1].prefetch
