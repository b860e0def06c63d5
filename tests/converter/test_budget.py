"""A compression bomb is stopped by the layer's disk budget (converter/budget.py) with a
clear error and the documented exit code, and leaves nothing behind."""
from __future__ import annotations

import hashlib
import tarfile
import zlib

import pytest

from converter.budget import free_bytes
from tests.converter.conftest import imgconv
from tests.converter.test_bad_input import GOOD
from tests.support.ocilayout import RawLayer, write_oci_layout

BOMB_SIZE = 256 << 20


@pytest.fixture(scope="module")
def bomb() -> RawLayer:
    """A gzip layer of one file of 256 MiB zeros (~250 KB compressed), made in 1 MiB steps."""
    header = tarfile.TarInfo("zeros")
    header.size = BOMB_SIZE
    head = header.tobuf(format=tarfile.GNU_FORMAT)
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    digest = hashlib.sha256()
    out = []
    block = b"\0" * (1 << 20)
    for piece in [head] + [block] * (BOMB_SIZE >> 20) + [b"\0" * 1024]:
        digest.update(piece)
        out.append(gz.compress(piece))
    out.append(gz.flush())
    return RawLayer(b"".join(out), "sha256:" + digest.hexdigest())


def _left_behind(tmp_path) -> list[str]:
    """Top-level entries plus anything inside the work dir (which must be empty)."""
    return sorted([p.name for p in tmp_path.iterdir()] + [str(p) for p in (tmp_path / "work").rglob("*")])


def test_layer_over_max_layer_size_is_bad_input(bomb, tmp_path):
    src = write_oci_layout(tmp_path / "src", [bomb])
    work = tmp_path / "work"
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"oci:{tmp_path}/out:v1", "--workdir", work,
                   "--max-layer-size", "64M")
    assert proc.returncode == 3, proc.stderr
    assert "--max-layer-size 64.0 MiB" in proc.stderr and "Traceback" not in proc.stderr
    assert _left_behind(tmp_path) == ["src", "work"]


def test_spool_stops_above_min_free(bomb, tmp_path):
    """The reserve is set 32 MiB below what is free now: the 256 MiB spool must stop
    (other writers on the disk only make it stop earlier)."""
    src = write_oci_layout(tmp_path / "src", [bomb])
    work = tmp_path / "work"
    work.mkdir()
    reserve = free_bytes(work) - (32 << 20)
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"oci:{tmp_path}/out:v1", "--workdir", work,
                   "--min-free", str(reserve))
    assert proc.returncode == 4, proc.stderr
    assert "below --min-free" in proc.stderr and "Traceback" not in proc.stderr
    assert _left_behind(tmp_path) == ["src", "work"]


def test_normal_layer_within_budget_converts(tmp_path):
    src = write_oci_layout(tmp_path / "src", [GOOD])
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"oci:{tmp_path}/out:v1",
                   "--max-layer-size", "1M", "--min-free", "1M")
    assert proc.returncode == 0, proc.stderr
