"""imgfs-snapshotter's TOML config: defaults, overrides, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from snapshotter import config


def test_defaults_match_the_docs():
    cfg = config.load(None)
    assert cfg.root == Path("/var/lib/imgfs-snapshotter") and cfg.cache == cfg.root / "cache"
    assert cfg.cache_size == 10 << 30 and cfg.log_level == "info"
    assert cfg.registry.plain_http == [] and cfg.fetch.prefetch is True
    assert cfg.cri.listen == "" and cfg.cri.backend == "/run/containerd/containerd.sock"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "snapshotter.md").read_text()
    for key in ("root", "socket", "cache_dir", "cache_size", "log_level", "mount_timeout",
                "supervise_interval", "health_timeout", "imgfs_bin", "access_log", "mount_on_pull", "[registry] plain_http", "[registry] insecure",
                "[registry] credentials", "[registry] timeout", "[registry] retries", "[fetch] prefetch",
                "[fetch] prefetch_all", "[fetch] merge_gap", "[fetch] max_request", "[cri] listen",
                "[cri] backend"):
        assert f"| `{key}` |" in doc, key


def test_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('root = "/r"\ncache_dir = "/c"\ncache_size = 5\n[registry]\nplain_http = ["h:1"]\n'
                 "[fetch]\nprefetch = false\n")
    cfg = config.load(f)
    assert (cfg.root, cfg.cache, cfg.cache_size) == (Path("/r"), Path("/c"), 5)
    assert cfg.registry.plain_http == ["h:1"] and cfg.fetch.prefetch is False


@pytest.mark.parametrize("text, msg", [
    ("roots = '/x'", "unknown key 'roots'"),
    ("cache_size = -1", "non-negative integer"),
    ("cache_size = true", "non-negative integer"),
    ("log_level = 'loud'", "log_level must be one of"),
    ("[fetch]\nprefetch = 1", "true or false"),
    ("[registry]\nbogus = 1", "unknown key 'bogus'"),
    ("registry = 1", "must be a table"),
    ("root = ", "not valid TOML"),
    ("[registry]\ncredentials = '/nonexistent/auth.json'", "credentials /nonexistent/auth.json is not a file"),
    ("[cri]\nlisten = 1", "must be a string"),
    ("[cri]\nproxy = '/x'", "unknown key 'proxy'"),
    ("[cri]\nlisten = '/run/c.sock'\nbackend = '/run/c.sock'", "listen and backend are the same socket"),
])
def test_errors(tmp_path, text, msg):
    f = tmp_path / "c.toml"
    f.write_text(text + "\n")
    with pytest.raises(config.ConfigError, match=msg):
        config.load(f)


def test_daemon_argv_access_log_and_credentials(tmp_path):
    """access_log adds --access-log per daemon; credentials reach `imgfs mount` as --authfile."""
    from snapshotter.remote import RemoteLayers
    from snapshotter.store import Store

    creds = tmp_path / "auth.json"
    creds.write_text('{"auths": {"reg.example:5000": {"auth": "dTpw"}}}')
    f = tmp_path / "c.toml"
    f.write_text(f'root = "{tmp_path / "root"}"\naccess_log = true\nmount_on_pull = true\n'
                 f'[registry]\ncredentials = "{creds}"\nplain_http = ["reg.example:5000"]\n')
    cfg = config.load(f)
    assert cfg.access_log is True and cfg.mount_on_pull is True
    (tmp_path / "root").mkdir()
    store = Store(tmp_path / "root" / "metadata.db")
    try:
        remote = RemoteLayers(cfg, store)
        image = {"registry": "reg.example:5000", "repository": "a/b", "manifest": "sha256:" + "0" * 64}
        mp = remote.mountpoint(remote.image_key(image))
        argv = remote._argv(image, mp)
        ddir = cfg.root / "daemons" / mp.name
        assert argv[argv.index("--access-log") + 1] == str(ddir / "access.jsonl")
        assert "--plain-http" in argv
        assert argv[argv.index("--authfile") + 1] == str(creds)
        remote.cfg.access_log = False
        remote.cfg.registry.credentials = ""
        argv = remote._argv(image, mp)
        assert "--access-log" not in argv and "--authfile" not in argv
    finally:
        store.close()
