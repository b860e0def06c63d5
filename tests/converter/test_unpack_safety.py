"""unpack never writes outside DIR, whatever symlinks the image holds; prefetch lists reach the format."""
from __future__ import annotations

import json
import os

from tests.converter.conftest import imgconv
from tests.support.ocilayout import TarBuilder, write_oci_layout


def test_symlink_escapes_stay_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    l1 = (TarBuilder().symlink("escape", str(outside)).symlink("rel", "../../outside")
          .dir("d").symlink("d/up", "..").bytes())
    l2 = TarBuilder().dir("escape").file("escape/pwned", b"x").file("d/up/also", b"y").bytes()
    src = write_oci_layout(tmp_path / "src", [l1, l2])
    conv = f"oci:{tmp_path}/conv:v1"
    imgconv("convert", f"oci:{src.dir}:latest", conv, check=True)
    # an upper directory (even an implicit parent) replaces a lower symlink of the same name
    proc = imgconv("check", f"oci:{src.dir}:latest", conv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "rootfs"
    imgconv("unpack", conv, out, check=True)
    assert (out / "escape").is_dir() and not (out / "escape").is_symlink()
    assert (out / "escape/pwned").read_bytes() == b"x"
    assert (out / "d/up").is_dir() and not (out / "d/up").is_symlink()
    assert (out / "d/up/also").read_bytes() == b"y"
    assert os.readlink(out / "rel") == "../../outside"
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "also").exists() and not (tmp_path / "pwned").exists()


def test_prefetch_list_orders_the_layer(tmp_path):
    t = TarBuilder().dir("a")
    for i in range(8):
        t.file(f"a/f{i}", os.urandom(300_000))
    src = write_oci_layout(tmp_path / "src", [t.bytes()])
    plist = tmp_path / "prefetch.json"
    plist.write_text(json.dumps([{"path": "/a/f7", "ranges": [[0, 4096]]}, {"path": "/a/f3", "ranges": None}]))
    conv = f"oci:{tmp_path}/conv:v1"
    imgconv("convert", f"oci:{src.dir}:latest", conv, "--prefetch-list", plist, "--chunk-size", "64K",
            check=True)
    report = json.loads(imgconv("inspect", conv, "--json", check=True).stdout)
    table = report["layers"][0]["prefetch_table"]
    assert table and table == sorted(table) and table[0] == 0        # laid out first, in order
    assert report["layers"][0]["prefetch_chunks"] >= 1 + 300_000 // 65536
    assert imgconv("check", f"oci:{src.dir}:latest", conv).returncode == 0
    plist.write_text("/a/f1\t9-3\n")
    proc = imgconv("convert", f"oci:{src.dir}:latest", f"oci:{tmp_path}/conv2:v1", "--prefetch-list", plist)
    assert proc.returncode == 3 and "bad range" in proc.stderr
    assert not (tmp_path / "conv2").exists()
