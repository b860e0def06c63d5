"""benchmarks.hostmem: the free-page-reporting hold is set for the run and always put back."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.hostmem import held_free_pages


def test_held_during_the_run_and_restored(tmp_path: Path) -> None:
    knob = tmp_path / "min_free_ms"
    knob.write_text("0\n")
    with held_free_pages(knob, 60_000) as held:
        assert knob.read_text() == "60000"
        assert held == {"free_page_reporting": "held 60000 ms during the run (was 0)"}
    assert knob.read_text() == "0"


def test_restored_when_the_benchmark_fails(tmp_path: Path) -> None:
    knob = tmp_path / "min_free_ms"
    knob.write_text("250")
    with pytest.raises(RuntimeError), held_free_pages(knob, 60_000):
        raise RuntimeError("benchmark broke")
    assert knob.read_text() == "250"


def test_absent_knob_changes_nothing(tmp_path: Path) -> None:
    with held_free_pages(tmp_path / "missing") as held:
        assert held["free_page_reporting"].startswith("not present")
    assert not (tmp_path / "missing").exists()


def test_a_longer_hold_is_left_alone(tmp_path: Path) -> None:
    knob = tmp_path / "min_free_ms"
    knob.write_text("120000")
    with held_free_pages(knob, 60_000) as held:
        assert knob.read_text() == "120000"
        assert held["free_page_reporting"] == "already held 120000 ms"


def test_unwritable_knob_is_reported_not_raised() -> None:
    # readable but not writable, even for root (file modes would not stop root)
    knob = Path("/proc/version")
    before = knob.read_text()
    with held_free_pages(knob, 60_000) as held:
        assert "but not held" in held["free_page_reporting"]
    assert knob.read_text() == before

