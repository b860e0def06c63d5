"""Session fixtures for the shared test images (import them into tests/conftest.py).

The image is built once per machine under <repo>/.cache/testimages and reused
by later sessions; several pytest processes may ask at once (see images.cached_build).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import debian_image as _build_debian_image
from tests.support.images import debian_rootfs as _debian_rootfs

CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "testimages"


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """OCI layout dir of the two-layer Debian bookworm image (tag "latest"). Do not modify."""
    return _build_debian_image(CACHE_DIR)


@pytest.fixture(scope="session")
def debian_rootfs(debian_image: Path) -> Path:
    """The merged rootfs of `debian_image`, unpacked, for tree comparisons. Do not modify."""
    return _debian_rootfs(CACHE_DIR)
