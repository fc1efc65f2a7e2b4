"""A real daemon reads the paths' traces its data directory holds: the "paths" health check and the
path metrics (forecast, its backtest error against the last-value model's, the newest anomaly)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dwcp._testbase.daemons import start_daemon
from dwcp.cli.demo import same_dwcp_env
from dwcp.transport.trace import PathTrace, PathTraces, SendRecord


def _start(tmp_path, window_s: float):
    return start_daemon(tmp_path, f"[health]\ncheck_interval_s = 0.2\npath_anomaly_window_s = {window_s}\n")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _seed(data_dir, anomaly_age_s: float) -> None:
    now = time.time()
    sends = [SendRecord(at=now - 600 + 60 * i, seconds=9.0, bytes=1 << 30, goodput=100e6 - 4e6 * i,
                        stream_bytes_per_s=25e6, rtt_s=0.05, retrans_fraction=0.001, streams=4, streams_initial=4,
                        chunk_size=4 << 20, settle_s=1.0) for i in range(8)]  # fmt: skip
    anomaly = {"signal": "rtt", "direction": "rise", "at": now - anomaly_age_s, "since": now - anomaly_age_s - 2,
               "detail": "rtt rose 140% (50 ms -> 120 ms) over 2.0 s; CUSUM 10.0 > 5"}  # fmt: skip
    PathTraces(str(data_dir / "sent")).save(PathTrace("10.9.9.9:7700", "wan0", sends, [], [anomaly]))


@pytest.mark.parametrize("window_s", [600.0, 5.0])
def test_the_paths_check_and_metrics_come_from_the_traces(tmp_path, window_s):
    _seed(tmp_path / "rx", anomaly_age_s=30.0)
    proc, cfg, st = _start(tmp_path, window_s)
    try:
        code, body = _get(st["metrics_endpoint"] + "healthz")
        paths = json.loads(body)["checks"]["paths"]
        if window_s == 600.0:  # 30 s old, within the window: degraded, with the evidence
            assert code == 200 and paths["status"] == "degraded"
            assert (
                paths["message"].startswith("10.9.9.9:7700 via wan0, ")
                and "rtt rose 140%" in paths["message"]
            )
            assert paths["detail"]["anomalies"] == 1
        else:  # the same anomaly, older than a 5 s window: healthy
            assert paths["status"] == "healthy" and "no path anomaly in the last 5 s" in paths["message"]
        _, text = _get(st["metrics_endpoint"] + "metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        lab = {"peer": "10.9.9.9:7700", "nic": "wan0"}
        fc = {
            s.labels["series"]: s.value
            for s in fams["dwcp_path_forecast"].samples
            if s.labels.items() >= lab.items()
        }
        assert fc["goodput"] == pytest.approx(
            68e6, rel=0.02
        )  # the trend continued (holt): not the last, 72e6
        mae = {s.labels["which"]: s.value for s in fams["dwcp_path_forecast_mae"].samples
               if s.labels["series"] == "goodput"}  # fmt: skip
        assert mae["chosen"] < mae["last_value"] == pytest.approx(4e6)
        models = {s.labels["series"]: s.labels["model"] for s in fams["dwcp_path_forecast_model"].samples}
        assert models["goodput"] == "holt"
        last = {s.labels["series"]: s.value for s in fams["dwcp_path_last"].samples}
        assert last["goodput"] == 72e6 and last["streams"] == 4
        (an,) = fams["dwcp_path_anomaly_last_timestamp_seconds"].samples
        assert an.labels == {**lab, "signal": "rtt"} and time.time() - an.value == pytest.approx(30, abs=15)
        if window_s == 5.0:
            return
        # a `dwcp send` with the daemon's config keeps its trace in the same data directory: the daemon
        # serves its path at the next scrape
        src = tmp_path / "obj"
        src.write_bytes(np.random.default_rng(1).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes())
        r = subprocess.run([sys.executable, "-m", "dwcp", "send", str(src), "--to", st["data_port"], "--key", "p/k",
                            "--config", str(cfg), "--direct", "--rate", "16MB", "--json"],
                           env=same_dwcp_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["path"]["nic"] == "lo"
        _, text = _get(st["metrics_endpoint"] + "metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        peers = {s.labels["peer"] for s in fams["dwcp_path_last"].samples}
        assert peers == {"10.9.9.9:7700", st["data_port"]}
    finally:
        proc.terminate()
        proc.wait(20)
