"""The emulated WAN testbed: it builds, holds its settings, carries a dwcp transfer, and cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dwcp._testbase.wan import Link, Testbed
from dwcp.digest import object_digest

pytestmark = pytest.mark.skipif(
    Testbed.unavailable() is not None, reason=f"WAN testbed: {Testbed.unavailable()}"
)

PERF = os.path.join(os.path.dirname(__file__), "..", "..", "perf")


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_builds_pings_with_the_delay_and_cleans_up():
    with Testbed(Link(rtt_ms=20)) as tb:
        assert tb.ns["a"] in _netns() and tb.ns["b"] in _netns()
        r = tb.run("a", ["ping", "-c", "3", "-i", "0.1", "-q", tb.addr["b"]])
        avg = float(r.stdout.rsplit("=", 1)[-1].split("/")[1])
        assert 19.5 < avg < 23, avg
    assert tb.ns["a"] not in _netns() and tb.ns["b"] not in _netns()


def test_cleans_up_when_the_body_raises():
    with pytest.raises(ZeroDivisionError):
        with Testbed(Link()) as tb:
            raise ZeroDivisionError("boom")
    assert tb.ns["a"] not in _netns()


@pytest.mark.slow
def test_one_emulated_cell_end_to_end(tmp_path):
    """200 Mbit/s, 20 ms RTT, 1% loss: the emulator within 10%, then a dwcp transfer across it."""
    sys.path.insert(0, PERF)
    from wan import check

    with Testbed(Link(rate_bit_s=200e6, rtt_ms=20, loss=0.01)) as tb:
        m = tb.measure(seconds=3)
        assert check(m) == [], m
        data = np.random.default_rng(9).integers(0, 256, 24 << 20, dtype=np.uint8)
        src = tmp_path / "obj"
        data.tofile(src)
        cfg = tmp_path / "b.toml"
        cfg.write_text(f'[node]\nid = "b"\n[listen]\nhost = "{tb.addr["b"]}"\ndata_port = 7700\nmetrics_port = -1\n'
                       f'[security]\nplaintext = true\n[storage]\ndata_dir = "{tmp_path / "b"}"\n')  # fmt: skip
        d = tb.popen("b", [sys.executable, "-m", "dwcp", "daemon", "--config", str(cfg)], cwd=str(tmp_path),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(1.5)
            r = tb.run("a", [sys.executable, "-m", "dwcp", "send", str(src), "--to", f"{tb.addr['b']}:7700",
                             "--key", "wan/obj", "--plaintext", "--json", "--state-dir", str(tmp_path / "st")],
                       cwd=str(tmp_path), timeout=120)  # fmt: skip
            out = json.loads(r.stdout)
            assert out["digest"] == object_digest(data).hex() and out["verified"]
            assert out["rtt_ms"] > 15  # the sender measured the emulated path
        finally:
            d.terminate()
            d.wait(30)
