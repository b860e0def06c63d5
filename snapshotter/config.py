"""`imgfs-snapshotter --config FILE`: the TOML settings, each with its default.

Every key is documented in docs/snapshotter.md; a key this module does not know is
an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass
class RegistryConfig:
    plain_http: list[str] = field(default_factory=list)   # hosts spoken to over http://
    insecure: list[str] = field(default_factory=list)     # https hosts whose cert is not verified
    credentials: str = ""                                   # docker config.json with auths
    timeout: float = 30.0
    retries: int = 4


@dataclass
class FetchConfig:
    prefetch: bool = True              # background prefetch of the image's prefetch list
    prefetch_all: bool = False         # fetch every chunk in the background
    merge_gap: int = 256 * 1024        # bridge gaps up to this many bytes in one range request
    max_request: int = 16 << 20        # upper bound of one merged range request


@dataclass
class CriConfig:
    listen: str = ""                   # kubelet's --image-service-endpoint socket; "" = no proxy
    backend: str = "/run/containerd/containerd.sock"   # containerd's CRI, where calls go on to


@dataclass
class Config:
    root: Path = Path("/var/lib/imgfs-snapshotter")
    socket: Path = Path("/run/imgfs-snapshotter/imgfs.sock")
    cache_dir: Path | None = None      # default: ROOT/cache
    cache_size: int = 10 << 30         # bytes of chunk cache the fusefs daemons may keep
    log_level: str = "info"
    mount_timeout: float = 60.0        # seconds an `imgfs mount --daemon` may take to be ready
    supervise_interval: float = 2.0    # seconds between health checks of the fusefs daemons
    health_timeout: float = 10.0       # a mount that does not answer a stat in this time hangs
    imgfs_bin: str = "imgfs"           # the fusefs CLI; looked up next to this Python first
    access_log: bool = False           # each daemon writes ROOT/daemons/<mount>/access.jsonl
    mount_on_pull: bool = True         # start an image's daemon when its top layer is pulled
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    cri: CriConfig = field(default_factory=CriConfig)

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.root / "cache"


_LEVELS = {"debug", "info", "warning", "error"}


def _fill(obj: object, data: dict, where: str) -> None:
    known = {f.name: f for f in fields(obj)}  # type: ignore[arg-type]
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        current = getattr(obj, key)
        if isinstance(current, (RegistryConfig, FetchConfig, CriConfig)):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _fill(current, value, f"{where} [{key}]")
            continue
        if key in ("root", "socket", "cache_dir"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: {key} must be a non-empty path string")
            value = Path(value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false")
        elif isinstance(current, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}: {key} must be a positive number")
            value = float(value)
        elif isinstance(current, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: {key} must be a non-negative integer")
        elif isinstance(current, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of strings")
        elif isinstance(current, str) and not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string")
        setattr(obj, key, value)


def load(path: Path | None) -> Config:
    """Reads FILE (or returns the defaults for None); raises ConfigError with a clear message."""
    cfg = Config()
    if path is None:
        return cfg
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    _fill(cfg, data, str(path))
    if cfg.log_level not in _LEVELS:
        raise ConfigError(f"{path}: log_level must be one of {sorted(_LEVELS)}")
    if cfg.cri.listen and Path(cfg.cri.listen).resolve() == Path(cfg.cri.backend).resolve():
        raise ConfigError(f"{path}: [cri] listen and backend are the same socket ({cfg.cri.listen})")
    if cfg.registry.credentials and not Path(cfg.registry.credentials).is_file():
        # every pull and mount would fail on it later, each with a less obvious message
        raise ConfigError(f"{path}: [registry] credentials {cfg.registry.credentials} is not a file")
    return cfg
