"""/metrics, /healthz and /readyz of a real daemon, and a real Prometheus scraping it (slow)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dwcp._testbase.daemons import start_daemon
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.transport.sender import Sender


@pytest.fixture
def daemon(tmp_path):
    proc, _cfg, st = start_daemon(tmp_path)
    sock = str(tmp_path / "rx" / "control.sock")
    yield {
        "url": st["metrics_endpoint"],
        "port": int(st["data_port"].rsplit(":", 1)[1]),
        "proc": proc,
        "sock": sock,
    }
    proc.terminate()
    proc.wait(20)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_endpoints_and_counters_follow_a_transfer(daemon):
    base = daemon["url"]
    code, body = get(base + "healthz")
    assert code == 200 and set(json.loads(body)["checks"]) == {"amst", "hde", "error_rate", "paths"}
    assert json.loads(body)["checks"]["hde"]["status"] == "healthy"  # no baselines, nor any transfer yet
    code, body = get(base + "readyz")
    assert code == 200 and json.loads(body) == {
        "ready": True,
        "started": True,
        "serving": True,
        "draining": False,
    }
    assert get(base + "nope")[0] == 404
    data = np.random.default_rng(2).integers(0, 256, 3 << 20, dtype=np.uint8)
    Sender(TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True)).send(
        data, "127.0.0.1", daemon["port"], "m/obj"
    )
    # the receiver counts a transfer as completed after it has answered the sender: scrape until it has
    deadline = time.monotonic() + 10
    while True:
        code, text = get(base + "metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        done = [
            s
            for s in fams["dwcp_transfer_completed"].samples
            if s.labels == {"direction": "rx", "outcome": "ok"}
        ]
        if (done and done[0].value >= 1) or time.monotonic() > deadline:  # its series is there from the start
            break
        time.sleep(0.05)
    raw = sum(s.value for s in fams["dwcp_transfer_raw_bytes"].samples if s.labels["direction"] == "rx")
    assert code == 200 and raw == data.nbytes
    assert done and done[0].value == 1
    assert fams["dwcp_codec_baselines"].samples[0].value == 1
    assert {s.labels["check"] for s in fams["dwcp_health_status"].samples} == {
        "amst",
        "hde",
        "error_rate",
        "paths",
    }
    hde = json.loads(get(base + "healthz")[1])["checks"]["hde"]
    # a baseline is held now; random bytes do not compress, which is what HDE reports
    assert hde["detail"]["baselines"] == 1 and hde["status"] == "degraded"
    assert hde["message"].startswith("compression ratio 1 below 1.1")
    # junk on the HTTP port: answered (400) or dropped, the endpoint keeps serving
    host, port = base.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\x00\xff garbage \r\n\r\n")
        s.recv(4096)
    assert get(base + "readyz")[0] == 200


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)"
)
def test_a_real_prometheus_scrapes_it(daemon, tmp_path):
    from dwcp._testbase.prom import prometheus

    with prometheus(tmp_path, [daemon["url"].split("//")[1].strip("/")]) as query:
        res = query("dwcp_build_info")["data"]["result"]
        assert res[0]["metric"]["job"] == "dwcp" and res[0]["value"][1] == "1"
        assert query("up")["data"]["result"][0]["value"][1] == "1"
    assert os.path.isdir(tmp_path / "tsdb")


# -- the endpoint on its own: probes, errors and junk, without a daemon -----------------------------------------


@pytest.fixture
def ops_server():
    from prometheus_client import CollectorRegistry, Counter

    from dwcp.daemon.http import OpsHTTPServer

    reg = CollectorRegistry()
    Counter("dwcp_test_things", "things", registry=reg).inc(3)
    probes = {"healthz": lambda: (200, {"status": "healthy"}), "readyz": lambda: (503, {"ready": False})}
    srv = OpsHTTPServer("127.0.0.1", 0, reg, lambda: probes["healthz"](), lambda: probes["readyz"]())
    srv.start()
    host, port = srv.address
    yield f"http://{host}:{port}/", probes, srv
    srv.close()


def raw_request(url: str, data: bytes) -> bytes:
    host, port = url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def test_server_serves_metrics_and_probe_answers(ops_server):
    base, probes, _ = ops_server
    with urllib.request.urlopen(base + "metrics?x=1", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
        fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    assert fams["dwcp_test_things"].samples[0].value == 3
    assert get(base + "healthz") == (200, '{"status": "healthy"}\n')
    assert get(base + "readyz") == (503, '{"ready": false}\n')  # the probe's status is passed through
    probes["readyz"] = lambda: (200, {"ready": True})
    assert get(base + "readyz") == (200, '{"ready": true}\n')
    assert get(base + "metricsx")[0] == 404 and get(base)[0] == 404


def test_server_survives_a_raising_probe_bad_methods_and_junk(ops_server):
    base, probes, _ = ops_server
    probes["healthz"] = lambda: 1 / 0  # type: ignore[assignment]
    assert get(base + "healthz")[0] == 500
    req = urllib.request.Request(base + "metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    head = raw_request(base, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] and head.endswith(b"\r\n\r\n")
    # a request line http.server cannot parse is answered with its HTML error page (HTTP/0.9 style: no status line)
    junk = raw_request(base, b"\x00\xff garbage \r\n\r\n")
    assert b"Error response" in junk and b"400" in junk
    assert raw_request(base, b"GARBAGE / HTTP/1.1\r\n\r\n").split()[1] == b"501"
    assert b"400" in raw_request(
        base, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40)
    )  # TLS hello
    assert raw_request(base, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").split()[1] == b"414"
    assert raw_request(base, b"") == b""  # a connection closed at once
    assert get(base + "readyz")[0] == 503  # still serving after all of it


def test_server_close_frees_the_port(ops_server):
    _, _, srv = ops_server
    host, port = srv.address
    srv.close()
    with socket.socket() as s:  # nothing listens any more
        assert s.connect_ex((host, port)) != 0


def test_server_closed_before_it_started_does_not_hang():
    import threading

    from prometheus_client import CollectorRegistry

    from dwcp.daemon.http import OpsHTTPServer

    srv = OpsHTTPServer("127.0.0.1", 0, CollectorRegistry(), lambda: (200, {}), lambda: (200, {}))
    t = threading.Thread(target=srv.close, daemon=True)  # a hang stays in this thread, not the test run
    t.start()
    t.join(5)
    assert not t.is_alive(), "close() before start() hangs"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
def test_a_real_daemons_exposition_passes_promtool(daemon):
    """The whole catalogue as the daemon serves it, its registered sources included, not only Metrics' own."""
    code, text = get(daemon["url"] + "metrics")
    assert code == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "dwcp_health_status",
        "dwcp_codec_baselines",
        "dwcp_build_info",
        "dwcp_transfer_duration_seconds",
    } <= names
    assert all(n.startswith(("dwcp_", "process_", "python_")) for n in names), names
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)


def test_a_fresh_node_is_healthy_and_its_metrics_follow_conventions(daemon):
    """Before any transfer: /healthz is 200 and healthy; /metrics has the process and platform
    collectors, every known transfer outcome as a 0 series, the pick latency as a histogram; it
    negotiates OpenMetrics and gzip."""
    import gzip

    code, body = get(daemon["url"] + "healthz")
    assert code == 200 and json.loads(body)["status"] == "healthy", body
    code, text = get(daemon["url"] + "metrics")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds",
                 "python_info", "dwcp_transfer_raw_bytes", "dwcp_transfer_completed"):  # fmt: skip
        assert name in fams or name in text, name
    done = {(s.labels["direction"], s.labels["outcome"]): s.value for s in fams["dwcp_transfer_completed"].samples
            if s.name.endswith("_total")}  # fmt: skip
    assert done[("rx", "integrity")] == 0 and done[("tx", "refused")] == 0 and len(done) == 10
    start = next(s.value for s in fams["process_start_time_seconds"].samples)
    assert abs(start - time.time()) < 600  # wall clock, not monotonic
    req = urllib.request.Request(daemon["url"] + "metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        om = gzip.decompress(r.read()).decode()
    assert om.rstrip().endswith("# EOF") and "dwcp_transfer_completed_total" in om
