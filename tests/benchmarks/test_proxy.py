"""The shaping/fault proxy against a real docker-registry: exact bytes, ranges, counts, faults, pacing."""
from __future__ import annotations

import hashlib
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from benchmarks.proxy import ShapingProxy, parse_bandwidth, parse_duration
from tests.support.registry import free_port

REPO = "proxytest/big"
BIG = 10_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(base: str, repo: str, data: bytes | None = None, chunks=None) -> str:
    """Monolithic upload (POST + PUT); `chunks` (an iterable) sends the PUT body chunked."""
    digest = _digest(data if data is not None else b"".join(chunks))
    with requests.Session() as s:
        r = s.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=60)
        assert r.status_code == 202, r.text
        body = data if data is not None else iter(chunks)
        r = s.put(urljoin(base, r.headers["Location"]), params={"digest": digest}, data=body, timeout=60,
                  headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    return digest


def _push_manifest(base: str, repo: str, tag: str, config: str, layer: str, layer_size: int) -> bytes:
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer,
                    "size": layer_size}]}).encode()
    r = requests.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest, timeout=60,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 201, r.text
    return manifest


@pytest.fixture(scope="module")
def content(registry):
    """A 10 MB blob, a config and a manifest pushed straight to the registry (not via the proxy)."""
    big = random.Random(7).randbytes(BIG)
    big_digest = _push_blob(registry.url, REPO, big)
    cfg = _push_blob(registry.url, REPO, b"{}")
    manifest = _push_manifest(registry.url, REPO, "v1", cfg, big_digest, BIG)
    return {"big": big, "digest": big_digest, "manifest": manifest}


@pytest.fixture
def proxy(registry):
    with ShapingProxy(registry.host) as p:
        yield p


def _get(proxy: ShapingProxy, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(proxy.host, timeout=60)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


def _blob_path(content) -> str:
    return f"/v2/{REPO}/blobs/{content['digest']}"


def test_manifest_and_blob_pass_through_byte_exact_on_one_connection(proxy, content) -> None:
    with requests.Session() as s:
        m = s.get(f"{proxy.url}/v2/{REPO}/manifests/v1", timeout=60,
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert m.status_code == 200 and m.content == content["manifest"]
        assert m.headers["Docker-Content-Digest"] == _digest(content["manifest"])
        b = s.get(proxy.url + _blob_path(content), timeout=60)
        assert b.status_code == 200 and b.content == content["big"]
        h = s.head(proxy.url + _blob_path(content), timeout=60)
        assert h.status_code == 200 and int(h.headers["Content-Length"]) == BIG and not h.content
        missing = s.get(f"{proxy.url}/v2/{REPO}/blobs/sha256:{'0' * 64}", timeout=60)
        assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    stats = proxy.statistics()
    assert stats.requests == 4 and stats.connections == 1          # keep-alive toward the client
    assert stats.bytes_down == len(content["manifest"]) + BIG + len(missing.content)
    assert proxy.requests_by_path()[_blob_path(content)] == 2
    assert proxy.bytes_by_path()[_blob_path(content)] == BIG
    assert [(r.method, r.status) for r in proxy.records()] == [("GET", 200), ("GET", 200), ("HEAD", 200),
                                                               ("GET", 404)]


def test_push_through_proxy_with_chunked_and_sized_bodies(proxy, registry) -> None:
    data = random.Random(3).randbytes(300_000)
    pieces = [data[i:i + 70_000] for i in range(0, len(data), 70_000)]
    digest = _push_blob(proxy.url, "proxytest/push", chunks=pieces)
    cfg = _push_blob(proxy.url, "proxytest/push", b"{}")
    manifest = _push_manifest(proxy.url, "proxytest/push", "t", cfg, digest, len(data))
    assert requests.get(f"{registry.url}/v2/proxytest/push/blobs/{digest}", timeout=60).content == data
    got = requests.get(f"{registry.url}/v2/proxytest/push/manifests/t", timeout=60,
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert got.content == manifest
    assert proxy.statistics().bytes_up == len(data) + 2 + len(manifest)


def _multipart(resp: requests.Response) -> list[tuple[str, bytes]]:
    boundary = resp.headers["Content-Type"].split("boundary=")[1].encode()
    parts = []
    for part in resp.content.split(b"--" + boundary)[1:-1]:
        assert part.startswith(b"\r\n") and part.endswith(b"\r\n")
        head, _, body = part[2:-2].partition(b"\r\n\r\n")
        ranges = [ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-range")]
        parts.append((ranges[0], body))
    return parts


def test_ranges_pass_through_and_are_recorded(proxy, content) -> None:
    big, url = content["big"], proxy.url + _blob_path(content)
    with requests.Session() as s:
        one = s.get(url, headers={"Range": "bytes=1000-1999"}, timeout=60)
        assert one.status_code == 206 and one.content == big[1000:2000]
        assert one.headers["Content-Range"] == f"bytes 1000-1999/{BIG}"
        multi = s.get(url, headers={"Range": "bytes=0-9,5000000-5000099"}, timeout=60)
        assert multi.status_code == 206
        assert _multipart(multi) == [(f"bytes 0-9/{BIG}", big[:10]),
                                     (f"bytes 5000000-5000099/{BIG}", big[5000000:5000100])]
        s.get(f"{proxy.url}/v2/{REPO}/manifests/v1", timeout=60, headers={"Accept": OCI_MANIFEST})
    gets = proxy.blob_gets(content["digest"])
    assert [r.range for r in gets] == ["bytes=1000-1999", "bytes=0-9,5000000-5000099"]
    assert gets[0].bytes == 1000 and gets[1].bytes == len(multi.content)
    assert len(proxy.blob_gets()) == 2 and proxy.statistics().requests == 3
    proxy.reset_counters()
    assert proxy.records() == [] and proxy.statistics().bytes_down == 0


def test_fault_503_hits_only_matching_requests(proxy, content) -> None:
    proxy.inject("503", 2, match=r"^GET .*/blobs/")
    with requests.Session() as s:
        m = s.get(f"{proxy.url}/v2/{REPO}/manifests/v1", timeout=60, headers={"Accept": OCI_MANIFEST})
        assert m.status_code == 200
        assert [s.get(proxy.url + _blob_path(content), timeout=60).status_code for _ in range(3)] \
            == [503, 503, 200]
    assert [r.fault for r in proxy.records()] == [None, "503", "503", None]
    assert proxy.statistics().faults == 2


def test_fault_reset_mid_body(proxy, content) -> None:
    proxy.inject("reset")
    resp = _get(proxy, _blob_path(content))
    assert resp.status == 200
    with pytest.raises(ConnectionResetError):
        resp.read()
    (rec,) = proxy.records()
    assert rec.fault == "reset" and rec.bytes == BIG // 2
    assert _get(proxy, _blob_path(content)).read() == content["big"]       # next one is fine


def test_fault_truncate_body(proxy, content) -> None:
    proxy.inject("truncate", match="/blobs/")
    resp = _get(proxy, _blob_path(content), {"Range": "bytes=0-99999"})
    assert resp.status == 206
    with pytest.raises(http.client.IncompleteRead) as err:
        resp.read()
    assert err.value.partial == content["big"][:50000]
    assert _get(proxy, _blob_path(content), {"Range": "bytes=0-99999"}).read() == content["big"][:100000]


def test_fault_flip_one_byte(proxy, content) -> None:
    proxy.inject("flip")
    got = _get(proxy, _blob_path(content), {"Range": "bytes=100-1099"}).read()
    want = content["big"][100:1100]
    assert len(got) == len(want) and [i for i in range(len(got)) if got[i] != want[i]] == [500]
    assert got[500] == want[500] ^ 0xFF


def test_fault_delay(proxy, content) -> None:
    proxy.inject("delay", seconds=0.5)
    start = time.monotonic()
    assert _get(proxy, f"/v2/{REPO}/manifests/v1", {"Accept": OCI_MANIFEST}).read() == content["manifest"]
    assert time.monotonic() - start >= 0.5
    assert proxy.records()[0].fault == "delay"


def test_unknown_fault_is_an_error(proxy) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        proxy.inject("explode")


def test_down_refuses_and_cuts_then_recovers_on_same_port(proxy, content) -> None:
    s = requests.Session()
    assert s.get(f"{proxy.url}/v2/", timeout=60).status_code == 200   # an open keep-alive connection
    port = proxy.port
    proxy.set_down(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    with pytest.raises(requests.ConnectionError):
        s.get(f"{proxy.url}/v2/", timeout=60)
    proxy.set_down(False)
    assert proxy.port == port
    assert s.get(proxy.url + _blob_path(content), timeout=60).content == content["big"]
    s.close()


def test_upstream_unreachable_is_502() -> None:
    with ShapingProxy(f"127.0.0.1:{free_port()}") as p:
        r = requests.get(f"{p.url}/v2/", timeout=60)
    assert r.status_code == 502 and "upstream" in r.text


def test_bandwidth_10mb_at_80mbit_takes_about_a_second(proxy, content) -> None:
    proxy.set_link(bandwidth=parse_bandwidth("80mbit"))
    start = time.monotonic()
    body = _get(proxy, _blob_path(content)).read()
    elapsed = time.monotonic() - start
    assert body == content["big"]
    assert 0.85 <= elapsed <= 3.0, elapsed     # lower bound is the point; upper bound loose for CI load


def test_records_time_each_request_from_after_the_round_trip_to_its_last_byte(proxy, content) -> None:
    """imgbench's timeline is built from these times (benchmarks/timeline.py)."""
    proxy.set_link(bandwidth=parse_bandwidth("80mbit"), rtt=parse_duration("200ms"))
    before = time.time()
    body = _get(proxy, _blob_path(content)).read()
    assert body == content["big"]
    deadline = time.monotonic() + 30     # the proxy's thread marks the end after its last send
    while (rec := proxy.blob_gets(content["digest"])[0]).end is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.start >= before + 0.2             # forwarded after the emulated round trip
    assert rec.end is not None
    assert rec.end - rec.start >= 0.85           # 10 MB pumped at 80 Mbit/s before the end mark


def test_bandwidth_is_shared_by_parallel_connections(proxy, content) -> None:
    proxy.set_link(bandwidth=parse_bandwidth("80mbit"))
    half = BIG // 2
    results: list[bytes] = []

    def fetch(rng: str) -> None:
        results.append(_get(proxy, _blob_path(content), {"Range": rng}).read())

    threads = [threading.Thread(target=fetch, args=(r,)) for r in
               (f"bytes=0-{half - 1}", f"bytes={half}-{BIG - 1}")]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert time.monotonic() - start >= 0.85          # not 0.5 s: the cap is aggregate
    assert sorted(results) == sorted([content["big"][:half], content["big"][half:]])


def test_rtt_is_paid_per_request(proxy) -> None:
    proxy.set_link(rtt=parse_duration("100ms"))
    start = time.monotonic()
    with requests.Session() as s:
        for _ in range(5):
            assert s.get(f"{proxy.url}/v2/", timeout=60).status_code == 200
    assert time.monotonic() - start >= 0.5


def test_stop_leaves_no_threads_or_listener_even_mid_transfer(registry, content) -> None:
    before = {t for t in threading.enumerate() if t.name.startswith("proxy-")}
    p = ShapingProxy(registry.host, bandwidth=parse_bandwidth("1mbit")).start()
    idle = requests.Session()
    assert idle.get(f"{p.url}/v2/", timeout=60).status_code == 200       # idle keep-alive connection
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            _get(p, _blob_path(content)).read()          # would take 80 s at 1 Mbit/s
        except (OSError, http.client.HTTPException) as e:
            errors.append(e)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 60
    while p.statistics().connections < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)                                      # (either way, the transfer must end in an error)
    p.stop()
    t.join(60)
    assert not t.is_alive() and errors, "the in-flight transfer must be cut"
    assert {t for t in threading.enumerate() if t.name.startswith("proxy-")} == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=10).close()
    idle.close()


@pytest.mark.parametrize(("text", "value"), [("100mbit", 12.5e6), ("80Mbit", 10e6), ("5mb", 5e6),
                                              ("1gbit", 125e6), ("2MiB", 2 * 2**20), ("1000", 1000.0)])
def test_parse_bandwidth(text: str, value: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(value)


def test_parse_errors_and_durations() -> None:
    assert parse_duration("20ms") == pytest.approx(0.02) and parse_duration("1.5") == 1.5
    for bad in ("fast", "10 parsecs", ""):
        with pytest.raises(ValueError):
            parse_bandwidth(bad)
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_runs_as_a_process_until_terminated(registry) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.proxy", "--upstream", registry.host,
                             "--bandwidth", "100mbit", "--rtt", "1ms"], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        host = proc.stdout.readline().strip()
        assert host.startswith("127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else host
        assert requests.get(f"http://{host}/v2/", timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0
