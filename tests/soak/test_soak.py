"""The soak's short form (the long one: ``make soak``, results in tests/soak/results/)."""
from __future__ import annotations

import pytest

from tests.soak.soak import Soak

pytestmark = pytest.mark.e2e


def test_short_soak_under_faults(registry, tmp_path):
    r = Soak(registry.host, tmp_path / "work", seed=1).run(seconds=30)
    assert r["failures"] == []
    assert r["reads_wrong"] == 0 and r["reads_other_error"] == 0
    assert r["reads_ok"] > 50 and r["bytes_verified"] > 0
    assert r["takeovers"] >= 1 and r["cycles"] >= 1
    assert sum(r["faults_injected"].values()) > 10
    assert r["leaked_mounts"] == 0 and r["leaked_daemons"] == 0 and r["leaked_fds"] <= 0
    assert 0 < r["max_daemon_rss"] < 512 << 20
    assert r["max_daemon_fds"] < 256
