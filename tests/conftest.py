"""Session-wide fixtures: the real parts, started on loopback with private dirs."""
from __future__ import annotations

import pytest

from tests.support.registry import Registry, start_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    """A real docker-registry on 127.0.0.1 shared by the session (tests use distinct repos)."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def fresh_registry(tmp_path) -> Registry:
    """A registry of the test's own, for tests that stop, restart or garbage-collect it."""
    reg = start_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()
