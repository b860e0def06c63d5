"""The container soak's short form (the long one: ``make soak``, tests/soak/results/containers.json)."""
from __future__ import annotations

import pytest

from tests.soak.soak_containers import ContainerSoak

pytestmark = pytest.mark.e2e


def test_short_container_soak_under_faults(registry, tmp_path):
    r = ContainerSoak(registry.host, tmp_path / "work", seed=1, per_cycle=6, parallel=3).run(
        seconds=0, min_cycles=2)
    assert r["failures"] == [] and r["digests_wrong"] == 0
    # per cycle: 2 batches of 3 containers under faults, then 3 at once after them
    assert r["cycles"] == 2 and r["recovered_cycles"] == 2 and r["containers_run"] == 18
    assert r["containers_ok"] >= 1 and r["digests_ok"] >= 1 and r["bytes_verified"] > 0
    assert sum(r["faults_injected"].values()) > 0
    assert r["leaked_mounts"] == 0 and not r["fd_store_leaked"]
    assert 0 < r["max_daemon_rss"] < 512 << 20
