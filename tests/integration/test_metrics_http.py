"""/metrics, /healthz and /readyz of a real daemon, and a real Prometheus scraping it (slow)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dwcp.cli.demo import same_dwcp_env
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.daemon.control import request
from dwcp.transport.sender import Sender


@pytest.fixture
def daemon(tmp_path):
    data = tmp_path / "rx"
    cfg = tmp_path / "rx.toml"
    cfg.write_text(f'[node]\nid = "rx"\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = 0\n'
                   f'[security]\nplaintext = true\n[storage]\ndata_dir = "{data}"\n')  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", str(cfg)], env=same_dwcp_env(),
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    sock = str(data / "control.sock")
    deadline = time.monotonic() + 20
    while True:
        try:
            st = request(sock, {"op": "status"}, timeout_s=5)
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "daemon did not start"
            time.sleep(0.1)
    yield {"url": st["metrics_endpoint"], "port": int(st["data_port"].rsplit(":", 1)[1]), "proc": proc, "sock": sock}
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
    assert code == 200 and set(json.loads(body)["checks"]) == {"amst", "hde", "error_rate"}
    assert json.loads(body)["checks"]["hde"]["status"] == "degraded"  # no baselines yet
    assert get(base + "readyz") == (200, json.dumps({"ready": True}) + "\n")
    assert get(base + "nope")[0] == 404
    data = np.random.default_rng(2).integers(0, 256, 3 << 20, dtype=np.uint8)
    Sender(TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True)).send(
        data, "127.0.0.1", daemon["port"], "m/obj")
    code, text = get(base + "metrics")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    raw = sum(s.value for s in fams["dwcp_transfer_bytes_raw"].samples if s.labels["direction"] == "rx")
    assert code == 200 and raw == data.nbytes
    done = [s for s in fams["dwcp_transfer_completed"].samples if s.labels == {"direction": "rx", "outcome": "ok"}]
    assert done and done[0].value == 1
    assert fams["dwcp_codec_baselines"].samples[0].value == 1
    assert {s.labels["check"] for s in fams["dwcp_health_status"].samples} == {"amst", "hde", "error_rate"}
    hde = json.loads(get(base + "healthz")[1])["checks"]["hde"]
    # a baseline is held now; random bytes do not compress, which is what HDE reports
    assert hde["baselines"] == 1 and hde["status"] == "degraded" and hde["message"].startswith("compression ratio 1.00")
    # junk on the HTTP port: answered (400) or dropped, the endpoint keeps serving
    host, port = base.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\x00\xff garbage \r\n\r\n")
        s.recv(4096)
    assert get(base + "readyz")[0] == 200


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)")
def test_a_real_prometheus_scrapes_it(daemon, tmp_path):
    target = daemon["url"].split("//")[1].strip("/")
    cfg = tmp_path / "prom.yml"
    cfg.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dwcp\n"
                   f"    static_configs:\n      - targets: ['{target}']\n")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        pport = s.getsockname()[1]
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{pport}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "prometheus never scraped dwcp"
            try:
                code, body = get(f"http://127.0.0.1:{pport}/api/v1/query?query=dwcp_build_info")
                res = json.loads(body)["data"]["result"] if code == 200 else []
            except (OSError, ValueError, KeyError):
                res = []
            if res:
                break
            time.sleep(1)
        assert res[0]["metric"]["job"] == "dwcp" and res[0]["value"][1] == "1"
        code, body = get(f"http://127.0.0.1:{pport}/api/v1/query?query=up")
        assert json.loads(body)["data"]["result"][0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(30)
    assert os.path.isdir(tmp_path / "tsdb")
