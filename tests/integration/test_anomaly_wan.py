"""On the emulated WAN: a rate drop, a loss spike and an RTT step injected mid-send are each found by
the send's detectors within 5 s, with the evidence in its report and its path trace; a clean send
raises nothing (slow: three ~25 s sends and a clean one)."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from dwcp._testbase.pathevents import EVENTS, Receiver, send
from dwcp._testbase.wan import Link, Testbed
from dwcp.transport.trace import PathTraces

pytestmark = pytest.mark.skipif(
    Testbed.unavailable() is not None, reason=f"WAN testbed: {Testbed.unavailable()}"
)

SIGNAL = {"rate_drop": "goodput", "loss_spike": "retrans", "rtt_step": "rtt"}


@pytest.fixture(scope="module")
def bed():
    root = tempfile.mkdtemp(prefix="dwcp-anom-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        src = os.path.join(root, "obj")
        with open(src, "wb") as f:  # ~17 s at 500 Mbit/s: an event at 11 s has 5 s of transfer after it
            for i in range(2):
                f.write(np.random.default_rng(i).integers(0, 256, 512 << 20, dtype=np.uint8).tobytes())
        with Testbed(Link(rate_bit_s=500e6, rtt_ms=20)) as tb, Receiver(tb, root) as rx:
            yield tb, rx, src, root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("event", sorted(EVENTS))
def test_an_event_mid_send_is_found_within_5_s(bed, event):
    tb, rx, src, root = bed
    state = os.path.join(root, f"state-{event}")
    r = send(tb, rx, src, f"anom/{event}", state, event=event, at_s=11.0, timeout_s=240)
    assert r.report is not None, r.error
    delay = r.delay_s(SIGNAL[event])
    assert delay is not None and delay <= 5.0, (event, r.anomalies())
    a = next(a for a in r.anomalies(SIGNAL[event]) if a["at"] >= r.injected_at)
    assert a["since"] >= r.injected_at - 1.0 and a["detail"]  # the onset is the change
    # the evidence is in the path's trace too, where the daemon's "paths" check reads it
    (trace,) = [t for t, _ in PathTraces(state).all(now=a["at"])]
    assert any(x["at"] == a["at"] and x["signal"] == a["signal"] for x in trace.anomalies)


@pytest.mark.slow
def test_a_clean_send_raises_nothing(bed):
    tb, rx, src, root = bed
    r = send(tb, rx, src, "anom/clean", os.path.join(root, "state-clean"))
    assert r.report is not None, r.error
    assert r.anomalies() == [] and r.report["path"]["samples"] >= 20
