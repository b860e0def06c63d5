"""Fixtures of the converter tests: the generated images (built once per session) and a CLI runner."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.converter.images import rich_layers
from tests.support.ocilayout import OCIImage, write_oci_layout

ROOT = Path(__file__).resolve().parents[2]


def imgconv(*args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process (exit codes and stderr are part of the contract)."""
    proc = subprocess.run([sys.executable, "-m", "converter.cli", *map(str, args)], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"imgconv {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def manifest_status(host: str, repo: str, tag: str) -> int:
    """HTTP status of the tag's manifest in the registry (404: nothing was pushed)."""
    return requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", timeout=30, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,"
                  "application/vnd.docker.distribution.manifest.v2+json"}).status_code


@pytest.fixture(scope="session")
def rich_layers_bytes() -> list[bytes]:
    return rich_layers()


@pytest.fixture(scope="session")
def rich_oci(tmp_path_factory, rich_layers_bytes) -> OCIImage:
    """The rich two-layer image as an OCI layout (gzip base layer, zstd top layer)."""
    return write_oci_layout(tmp_path_factory.mktemp("rich") / "oci", rich_layers_bytes,
                            compression=["gzip", "zstd"])


@pytest.fixture(scope="session")
def rich_converted(tmp_path_factory, rich_oci) -> Path:
    """rich_oci converted once to an OCI layout (tag v1), shared by check/unpack/inspect tests."""
    out = tmp_path_factory.mktemp("rich-conv") / "oci"
    imgconv("convert", f"oci:{rich_oci.dir}:latest", f"oci:{out}:v1", check=True)
    return out
