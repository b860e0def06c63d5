"""Faults a real registry cannot be made to produce: 5xx/429 bursts, ignored or refused ranges,
cut bodies, corrupt bytes, dead or silent servers."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time

import pytest

from registry.client import DigestMismatch, RegistryClient, RegistryError
from registry.errors import InvalidManifest, PlatformNotFound, RangeError
from registry.transport import retry_after
from tests.registry.fakeregistry import FakeRegistry
from tests.registry.images import pattern

DATA = pattern(200_000, 7)


def client_for(host, cfg, **kw) -> RegistryClient:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff", 0.01)
    return RegistryClient(host, plain_http=True, docker_config=cfg, **kw)


def test_503_twice_then_ok(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.faults = [503, 503]
    c = client_for(fake.host, no_docker_config)
    assert c.get_blob("r/x", d) == DATA
    assert c.statistics().retries == 2
    assert fake.count("GET", "/blobs/") == 3


def test_503_outlasting_the_retries_is_an_error(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.faults = [503, 502, 500]
    c = client_for(fake.host, no_docker_config, retries=2)
    with pytest.raises(RegistryError) as ei:
        c.get_range("r/x", d, 0, 10)
    assert ei.value.status == 500 and "r/x" in str(ei.value) and d in str(ei.value)
    assert fake.count("GET", "/blobs/") == 3


def test_429_honours_retry_after(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.faults = [(429, {"Retry-After": "1"})]
    c = client_for(fake.host, no_docker_config, backoff=0)
    t0 = time.monotonic()
    assert c.get_range("r/x", d, 5, 50) == DATA[5:50]
    assert time.monotonic() - t0 >= 0.9
    assert c.statistics().retries == 1


def test_retry_after_parsing():
    class R:
        def __init__(self, v):
            self.headers = {"Retry-After": v} if v is not None else {}

    assert retry_after(R("3")) == 3.0
    assert retry_after(R(None)) is None
    assert retry_after(R("garbage")) is None
    assert retry_after(R("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0   # in the past


def test_404_is_not_retried(fake, no_docker_config):
    c = client_for(fake.host, no_docker_config)
    assert c.blob_exists("r/x", "sha256:" + "0" * 64) is None
    assert fake.count("HEAD", "/blobs/") == 1


def test_range_ignored_whole_body_sliced_locally(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.range_mode = "ignore"
    c = client_for(fake.host, no_docker_config)
    assert c.get_range("r/x", d, 1000, 1010) == DATA[1000:1010]
    wanted = [(150_000, 150_500), (3, 4), (199_000, 200_000)]
    assert c.get_ranges("r/x", d, wanted) == [DATA[s:e] for s, e in wanted]
    with pytest.raises(RangeError):
        c.get_range("r/x", d, 199_999, 200_001)


@pytest.mark.parametrize("mode", ["refuse_multi", "refuse_400", "first_only"])
def test_multi_range_refused_falls_back_to_covering_range(fake, no_docker_config, mode):
    d = fake.add_blob(DATA)
    fake.b.range_mode = mode
    c = client_for(fake.host, no_docker_config)
    wanted = [(100, 200), (50_000, 50_100), (10, 20)]
    assert c.get_ranges("r/x", d, wanted) == [DATA[s:e] for s, e in wanted]
    ranges = [s.headers.get("Range") for s in fake.seen if s.method == "GET"]
    assert ranges == ["bytes=10-19,100-199,50000-50099", "bytes=10-50099"]
    # learnt: the next multi-range read goes straight to one covering range
    assert c.get_ranges("r/x", d, [(0, 1), (10, 11)]) == [DATA[0:1], DATA[10:11]]
    assert [s.headers.get("Range") for s in fake.seen if s.method == "GET"][-1] == "bytes=0-10"
    assert c.statistics().multirange_fallbacks == 2


def test_multipart_answer_is_parsed(fake, no_docker_config):
    d = fake.add_blob(DATA)
    c = client_for(fake.host, no_docker_config)
    wanted = [(0, 3), (100_000, 100_100), (1, 2), (199_990, 200_000)]
    assert c.get_ranges("r/x", d, wanted) == [DATA[s:e] for s, e in wanted]
    assert fake.count("GET", "/blobs/") == 1


def test_cut_stream_resumes_with_range_and_verifies(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.truncate_once = True
    c = client_for(fake.host, no_docker_config)
    with c.open_blob("r/x", d) as f:
        got = f.read()
    assert got == DATA
    gets = [s.headers.get("Range") for s in fake.seen if s.method == "GET"]
    assert gets[0] is None and gets[1].startswith("bytes=") and gets[1] != "bytes=0-"


def test_corrupt_bytes_are_never_returned_as_the_blob(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.corrupt = True
    c = client_for(fake.host, no_docker_config)
    with pytest.raises(DigestMismatch) as ei:
        c.get_blob("r/x", d)
    assert d in str(ei.value) and fake.host in str(ei.value)


def test_connection_refused_is_an_error_after_retries(no_docker_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again: nothing listens there
    c = client_for(f"127.0.0.1:{port}", no_docker_config, retries=2)
    with pytest.raises(RegistryError) as ei:
        c.get_manifest("r/x", "latest")
    assert "ConnectionError" in str(ei.value) and "3 attempt" in str(ei.value)
    assert c.statistics().retries == 2


def test_silent_server_times_out(no_docker_config):
    with socket.socket() as srv:      # accepts connections (backlog) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        c = client_for(f"127.0.0.1:{srv.getsockname()[1]}", no_docker_config, retries=1, timeout=0.3)
        with pytest.raises(RegistryError) as ei:
            c.get_blob("r/x", "sha256:" + "1" * 64)
    assert "Timeout" in str(ei.value)


def test_chunked_upload_restarts_after_a_failed_patch(fake, no_docker_config):
    fake.b.fault_paths, fake.b.fault_methods = "/upload/", ("PATCH",)
    fake.b.faults = [503]
    c = client_for(fake.host, no_docker_config, upload_chunk_size=64 << 10)
    d = "sha256:" + hashlib.sha256(DATA).hexdigest()
    c.push_blob("r/up", d, DATA)
    assert fake.blobs[d] == DATA
    assert fake.count("POST", "/blobs/uploads/") == 2        # the broken session was abandoned
    assert fake.count("PATCH", "/upload/") == 1 + 4          # 1 failed + ceil(200000/65536) chunks


def test_monolithic_upload_restarts_after_a_failed_put(fake, no_docker_config):
    fake.b.fault_paths, fake.b.fault_methods = "/upload/", ("PUT",)
    fake.b.faults = [502]
    c = client_for(fake.host, no_docker_config)
    data = DATA[:1000]
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    c.push_blob("r/up", d, data)
    assert fake.blobs[d] == data and fake.count("PUT", "/upload/") == 2


def test_upload_failing_every_time_is_an_error_and_stores_nothing(fake, no_docker_config, tmp_path):
    fake.b.fault_paths, fake.b.fault_methods = "/upload/", ("PATCH",)
    fake.b.faults = [503] * 10
    c = client_for(fake.host, no_docker_config, upload_chunk_size=64 << 10, retries=2)
    p = tmp_path / "blob"
    p.write_bytes(DATA)
    d = "sha256:" + hashlib.sha256(DATA).hexdigest()
    with pytest.raises(RegistryError) as ei:
        c.push_blob("r/up", d, p)
    assert ei.value.status == 503 and d in str(ei.value)
    assert d not in fake.blobs and fake.count("POST", "/blobs/uploads/") == 3


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_verified_by_default_and_insecure_per_client(self_signed, no_docker_config):
    reg = FakeRegistry(tls=self_signed)
    try:
        d = reg.add_blob(DATA)
        strict = RegistryClient(reg.host, docker_config=no_docker_config, retries=3)
        with pytest.raises(RegistryError) as ei:
            strict.get_blob("r/x", d)
        assert "SSLError" in str(ei.value) and "1 attempt" in str(ei.value)   # not retried
        lax = RegistryClient(reg.host, insecure=True, docker_config=no_docker_config, retries=0)
        assert lax.get_blob("r/x", d) == DATA
        assert repr(lax).startswith("RegistryClient('https://")
    finally:
        reg.stop()


def test_cut_range_body_is_requested_again(fake, no_docker_config):
    d = fake.add_blob(DATA)
    fake.b.truncate_once = True
    c = client_for(fake.host, no_docker_config)
    assert c.get_range("r/x", d, 1000, 101_000) == DATA[1000:101_000]
    assert [s.headers.get("Range") for s in fake.seen] == ["bytes=1000-100999"] * 2
    assert c.statistics().retries == 1


@pytest.mark.parametrize("body, media_type", [
    (b"not json", "application/vnd.oci.image.manifest.v1+json"),
    (b'{"schemaVersion": 1, "fsLayers": []}', "application/vnd.docker.distribution.manifest.v1+prettyjws"),
    (b'{"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": {}}', "application/json"),
])
def test_unusable_manifest_is_invalid_manifest(fake, no_docker_config, body, media_type):
    fake.add_manifest(body, media_type, tag="t")
    c = client_for(fake.host, no_docker_config)
    with pytest.raises(InvalidManifest) as ei:
        c.get_manifest("r/x", "t")
    assert "r/x" in str(ei.value) and fake.host in str(ei.value)


def test_index_without_the_platform(fake, no_docker_config):
    idx = json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "2" * 64,
         "size": 3, "platform": {"os": "windows", "architecture": "amd64"}}]}).encode()
    fake.add_manifest(idx, "application/vnd.oci.image.index.v1+json", tag="t")
    c = client_for(fake.host, no_docker_config)
    with pytest.raises(PlatformNotFound, match="windows/amd64"):
        c.resolve(f"{fake.host}/r/x:t")


def test_http_proxy_per_client(fake, no_docker_config):
    """Requests go through the given proxy (how a P2P agent such as dfdaemon plugs in)."""
    d = fake.add_blob(DATA)
    c = RegistryClient("registry.invalid:5000", plain_http=True, docker_config=no_docker_config,
                       retries=0, proxies={"http": f"http://{fake.host}"})
    assert c.get_range("r/x", d, 10, 20) == DATA[10:20]
    assert fake.seen[-1].headers.get("Host") == "registry.invalid:5000"
