"""Shared inputs for the prefetch tests: the Debian test image converted once without a
prefetch list, and one recorded trace of a Python workload over it (module-expensive
inputs are built once per session)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fixtures import CACHE_DIR
from tests.support.images import debian_image

ROOT = Path(__file__).resolve().parents[2]
IMGCONV = [sys.executable, "-m", "converter.cli"]
WORKLOAD = ["python3", "-c", "import email, argparse; print('ready-' + str(1))"]
READY = "ready-1"


def imgconv(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([*IMGCONV, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       check=False)
    assert r.returncode == 0, f"imgconv {' '.join(args)} failed ({r.returncode}): {r.stderr}"
    return r


@pytest.fixture(scope="session")
def debian_source() -> str:
    return f"oci:{debian_image(CACHE_DIR)}:latest"


@pytest.fixture(scope="session")
def lazy_layout(tmp_path_factory, debian_source) -> Path:
    """The Debian image converted without a prefetch list (what `record` runs over)."""
    out = tmp_path_factory.mktemp("prefetch-lazy") / "oci"
    imgconv("convert", debian_source, f"oci:{out}:latest")
    return out


@pytest.fixture(scope="session")
def python_trace(tmp_path_factory, lazy_layout) -> Path:
    """`imgconv record` of WORKLOAD, ready when it prints READY."""
    out = tmp_path_factory.mktemp("prefetch-trace") / "python.json"
    imgconv("record", f"oci:{lazy_layout}:latest", "-o", str(out), "--ready-line", READY,
            "--workdir", str(out.parent), "--", *WORKLOAD)
    return out


@pytest.fixture(scope="session")
def prefetched_layout(tmp_path_factory, debian_source, python_trace) -> Path:
    """The Debian image converted with the prefetch list planned from the recorded trace."""
    out = tmp_path_factory.mktemp("prefetch-ordered") / "oci"
    imgconv("convert", debian_source, f"oci:{out}:latest", "--prefetch-from-trace", str(python_trace))
    return out
