"""The per-stream window: the floor on short paths, grown to the BDP on long ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.transport.window import StreamWindow

MiB = 1 << 20


def simulate(
    w: StreamWindow, link_bytes_per_s: float, rtt_s: float, proc_s: float, seconds: float
) -> list[int]:
    """A stream that is either window-limited (window x chunk per RTT + processing) or link-limited."""
    t, out = 0.0, []
    while t < seconds:
        per_s = min(link_bytes_per_s, w.window * w.chunk_bytes / (rtt_s + proc_s))
        t += 0.05
        w.on_acked(int(per_s * 0.05), t)
        if w.due(t):
            w.update(t, rtt_s)
            out.append(w.window)
    return out


def test_loopback_stays_at_the_floor():
    w = StreamWindow(2, 4 * MiB)
    simulate(w, 1.3e9, 50e-6, 3e-3, 10)
    assert w.window == 2 and w.grown == 0


def test_long_path_grows_to_about_the_bdp_and_stops():
    w = StreamWindow(2, 4 * MiB)
    hist = simulate(w, 125e6, 0.05, 0.004, 20)  # 1 Gbit/s, 50 ms: BDP 6.25 MB = 1.5 chunks
    bdp_chunks = 125e6 * 0.05 / (4 * MiB)
    assert math.ceil(bdp_chunks) + 1 <= w.window <= math.ceil(bdp_chunks) + 2
    assert hist[-1] == hist[len(hist) // 2]  # settled
    w = StreamWindow(2, 1 * MiB)
    simulate(w, 1.25e9, 0.1, 0.001, 30)  # 10 Gbit/s, 100 ms: BDP 119 chunks > max
    assert w.window == w.max_chunks == 64


def test_no_rtt_or_no_acks_means_no_growth():
    w = StreamWindow(3, MiB)
    assert w.update(1.0, 0.1) == 3  # no interval started
    w.on_acked(100 * MiB, 0.0)
    assert not w.due(0.1) and w.due(0.3)
    assert w.update(0.3, None) == 3


@given(st.integers(1, 8), st.floats(1e5, 2e9), st.floats(1e-5, 0.3), st.floats(0, 0.01))
def test_window_is_monotone_and_bounded(floor, rate, rtt, proc):
    w = StreamWindow(floor, MiB, max_chunks=32)
    hist = simulate(w, rate, rtt, proc, 5)
    assert all(floor <= a <= b <= 32 for a, b in zip([floor, *hist], hist))


@pytest.mark.parametrize("args", [(0, MiB), (2, 0), (5, MiB, 4)])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        StreamWindow(*args[:2], max_chunks=args[2] if len(args) > 2 else 64)


def simulate_acks(
    w: StreamWindow, link_bytes_per_s: float, rtt_s: float, verify_s: float, seconds: float
) -> float:
    """A stream whose chunk is acknowledged only once it arrived whole and was verified: a window-limited
    stream waits (stalls) for ``rtt + chunk / link + verify`` per window; returns the last goodput."""
    t, per_s = 0.0, 0.0
    while t < seconds:
        ack_delay = rtt_s + w.chunk_bytes / link_bytes_per_s + verify_s
        per_s = min(link_bytes_per_s, w.window * w.chunk_bytes / ack_delay)
        busy = w.window * w.chunk_bytes / link_bytes_per_s  # sending; the rest of the cycle it waits
        cycle = w.window * w.chunk_bytes / per_s
        t += cycle
        w.on_stalled(max(0.0, cycle - busy))
        w.on_acked(w.window * w.chunk_bytes, t)
        if w.due(t):
            w.update(t, rtt_s)
    return per_s


def test_a_stream_stalled_on_acks_on_a_long_path_grows_until_it_fills_the_link():
    """The measured case: 1 Gbit/s, 50 ms, 4 MiB chunks.  Goodput x RTT alone (3.8 MB < 1 chunk) never
    grew the window; the stalls do, until the link is full."""
    w = StreamWindow(2, 4 * MiB)
    assert simulate_acks(w, 125e6, 0.05, 0.02, 10) >= 0.95 * 125e6  # was 0.77 at the floor
    assert 3 <= w.window <= 5


def test_a_slow_receiver_on_loopback_stalls_the_sender_but_does_not_grow_the_window():
    w = StreamWindow(2, 4 * MiB)
    simulate_acks(w, 1.5e9, 50e-6, 0.01, 5)  # 10 ms to verify a chunk: acks are late, the path holds nothing
    assert w.window == 2 and w.grown == 0
