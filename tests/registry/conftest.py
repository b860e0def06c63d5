"""Fixtures of the registry tests: the fake registry for faults and auth flows."""
from __future__ import annotations

import pytest

from tests.registry.fakeregistry import FakeRegistry


@pytest.fixture
def fake():
    reg = FakeRegistry()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def no_docker_config(tmp_path):
    """A docker config path that does not exist: anonymous unless a test passes credentials."""
    return tmp_path / "no-docker-config.json"
