"""Fixtures of the dedup tests: the FUSE mount factory of the fusefs tests, reused as is."""
from __future__ import annotations

from tests.fusefs.conftest import mount_image  # noqa: F401  (a fixture, used by name)
