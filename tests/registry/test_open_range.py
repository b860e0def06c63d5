"""``RegistryClient.open_range``: a range body handed out as it arrives, through the real
registry (and benchmarks.proxy for a slow link and a cut body)."""
from __future__ import annotations

import hashlib
import random
import uuid

import pytest

from benchmarks.proxy import ShapingProxy
from registry.client import RegistryClient, RegistryError
from registry.errors import RangeError

SIZE = 3 << 20


@pytest.fixture(scope="module")
def blob(registry, tmp_path_factory) -> tuple[str, str, bytes]:
    data = random.Random(7).randbytes(SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo = f"openrange/{uuid.uuid4().hex[:8]}"
    cfg = tmp_path_factory.mktemp("openrange") / "no-config.json"
    with RegistryClient(registry.host, plain_http=True, docker_config=cfg) as c:
        c.push_blob(repo, digest, data)
    return repo, digest, data


def client(host: str, tmp_path) -> RegistryClient:
    return RegistryClient(host, plain_http=True, docker_config=tmp_path / "none.json", retries=1, backoff=0.01)


def test_exact_pieces_in_order(registry, blob, tmp_path):
    repo, digest, data = blob
    with client(registry.host, tmp_path) as c, c.open_range(repo, digest, 1000, 1000 + (1 << 20)) as body:
        assert body.length == 1 << 20
        first = body.read(10)
        rest = body.read(1 << 21)            # capped at the range's end
        assert body.read(5) == b""
        assert first + rest == data[1000:1000 + (1 << 20)]
        assert c.statistics().blob_bytes == 1 << 20


def test_first_piece_before_the_body_is_sent(registry, blob, tmp_path):
    """On a slow link the first bytes are usable while the proxy is still sending: the
    proxy's counter at that moment is far below the range."""
    repo, digest, data = blob
    with (ShapingProxy(registry.host, bandwidth=1e6) as proxy, client(proxy.host, tmp_path) as c,
          c.open_range(repo, digest, 0, SIZE) as body):
        assert body.read(64 << 10) == data[:64 << 10]
        sent = proxy.blob_gets(digest)[-1].bytes
        assert sent < SIZE // 2
        proxy.set_link(bandwidth=0)
        assert body.read(SIZE) == data[64 << 10:]


def test_past_the_end_is_a_range_error(registry, blob, tmp_path):
    repo, digest, _ = blob
    with client(registry.host, tmp_path) as c, pytest.raises(RangeError):
        c.open_range(repo, digest, SIZE - 10, SIZE + 10)


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_cut_body_raises_never_short_data(registry, blob, tmp_path, fault):
    """The proxy cuts the body at its middle (FIN or RST). Every piece handed out is exact
    and the cut is an error; with FIN the half before it arrives in full (an RST may make
    the kernel drop what was received but not yet read)."""
    repo, digest, data = blob
    want = 1 << 20
    with ShapingProxy(registry.host) as proxy, client(proxy.host, tmp_path) as c:
        proxy.inject(fault, match=digest)
        got = b""
        with c.open_range(repo, digest, 0, want) as body, pytest.raises(RegistryError, match="broke|ended"):
            while len(got) < want:
                got += body.read(64 << 10)
        assert got == data[:len(got)] and len(got) < want
        if fault == "truncate":
            assert len(got) == want // 2
