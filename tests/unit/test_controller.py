"""The stream-count controller against synthetic goodput models (recorded-trace style).

A model maps (stream count, interval index) to goodput; ``run`` plays it
through a controller at a fixed cadence and returns the per-interval trace.
No clocks, no sockets: the controller is sans-IO and deterministic.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.errors import ConfigError, InternalError
from dwcp.transport import controller as ctl
from dwcp.transport.controller import (
    ERROR,
    HOLD,
    PROBE_DOWN,
    PROBE_UP,
    START,
    Decision,
    StreamController,
    initial_streams,
)

Model = Callable[[int, int], float]  # (streams, interval index) -> goodput bytes/s


def capped(per: float, cap: float) -> Model:
    """Each stream moves ``per`` until the link's ``cap``."""
    return lambda n, k: min(n * per, cap)


def run(
    c: StreamController, model: Model, steps: int, *, noise: float = 0.0, seed: int = 0, dt: float = 0.5,
    rr: Callable[[int], float | None] = lambda n: None,
) -> tuple[list[int], list[str]]:  # fmt: skip
    """Play ``steps`` intervals; return the target and the state after each."""
    rng = random.Random(seed)
    counts, states = [], []
    for k in range(steps):
        g = model(c.n, k) * (1 + rng.uniform(-noise, noise))
        d = c.observe(k * dt, g, rr(c.n))
        assert isinstance(d, Decision) and d.target_streams == c.n
        assert c.min_streams <= d.target_streams <= c.max_streams
        counts.append(d.target_streams)
        states.append(c.state)
    return counts, states


def changes(counts: list[int]) -> int:
    return sum(a != b for a, b in zip(counts, counts[1:]))


def settled_at(counts: list[int], lo: int, hi: int) -> int:
    """The first index from which every count is in [lo, hi] (len(counts) if never)."""
    i = len(counts)
    while i > 0 and lo <= counts[i - 1] <= hi:
        i -= 1
    return i


def no_back_to_back_changes(counts: list[int]) -> bool:
    """Hysteresis: a change is always followed by at least one interval without one."""
    ch = [a != b for a, b in zip(counts, counts[1:])]
    return not any(x and y for x, y in zip(ch, ch[1:]))


# -- initial_streams ------------------------------------------------------------


def test_initial_streams_from_the_bdp():
    n, why = initial_streams(1.25e9, 0.05, 4 << 20, 1, 64)
    assert (n, why) == (15, "BDP 62.5 MB = 10 Gbit/s x 50 ms over 4 MiB windows -> 15 streams")
    n, why = initial_streams(1.25e9, 0.5, 4 << 20, 1, 16)
    assert n == 16 and why.endswith("-> 150 streams, clamped to max_streams=16")
    n, why = initial_streams(125e6, 0.0002, 4 << 20, 2, 16)
    assert n == 2 and why.endswith("-> 1 stream, clamped to min_streams=2")
    assert initial_streams(1.25e9, 0.0, 4 << 20, 3, 16)[0] == 3  # a zero RTT gives BDP 0


@pytest.mark.parametrize("link", [None, 0, 0.0])
def test_initial_streams_with_unknown_link_speed_starts_at_min(link):
    n, why = initial_streams(link, 0.05, 4 << 20, 2, 16)
    assert n == 2 and "unknown" in why and "min_streams=2" in why


@pytest.mark.parametrize(
    "args",
    [
        (1e9, 0.01, 1 << 20, 5, 4),  # min > max
        (1e9, 0.01, 1 << 20, 0, 4),  # min < 1
        (1e9, 0.01, 0, 1, 4),  # no window
        (1e9, -0.01, 1 << 20, 1, 4),
        (1e9, math.nan, 1 << 20, 1, 4),
        (-1e9, 0.01, 1 << 20, 1, 4),
        (math.inf, 0.01, 1 << 20, 1, 4),
        (1e9, 0.01, 1 << 20, 1.5, 4),
    ],
)
def test_initial_streams_rejects_bad_arguments(args):
    with pytest.raises(ConfigError):
        initial_streams(*args)


# -- the transition table ---------------------------------------------------------


def test_rules_header_and_transition_table_agree():
    doc = ctl.__doc__ or ""
    drawn = {(a, ev): b for a, ev, b in re.findall(r"^\s+([A-Z_]+)\s+--([A-Z_]+)-*>\s+([A-Z_]+)", doc, re.M)}
    table = {(str(s), str(e)): str(t) for (s, e), t in ctl._TRANSITIONS.items()}
    assert drawn == table
    states = {START, PROBE_UP, HOLD, PROBE_DOWN}
    assert {s for s, _ in ctl._TRANSITIONS} == states  # every live state has a way out
    assert set(ctl._TRANSITIONS.values()) <= states  # and nothing goes to ERROR by an event


# -- settling on a capped link ------------------------------------------------------


@pytest.mark.parametrize(
    "per,cap,lo,hi,initial",
    [
        (1.5e8, 1e9, 1, 16, 1),  # optimum 7 (6.7)
        (4e8, 1e9, 1, 16, 1),  # optimum 3 (2.5)
        (1e8, 2e9, 1, 32, 1),  # optimum 20: +1 stream is < 5% there, probes step by 2
        (2e8, 2.96e9, 2, 32, 24),  # optimum 15 (14.8) from a BDP guess too high
        (1e8, 1.79e9, 1, 32, 1),  # optimum 18 (17.9): reached by a jump back from an overshoot
        (1e8, 1e12, 1, 12, 1),  # optimum beyond max: max
    ],
)
def test_settles_within_one_of_the_optimum_and_stays(per, cap, lo, hi, initial):
    best = max(lo, min(hi, math.ceil(cap / per)))
    c = StreamController(initial, lo, hi)
    counts, states = run(c, capped(per, cap), 200)
    # probes up from a held count add ceil(10%) streams (so that a gain can show above the 5%
    # threshold): for 20 streams that is 2, a visit to best + 2 for an interval or two
    reach = max(1, math.ceil(best * 2 * c.gain_threshold))
    t = settled_at(counts, best - 1, best + reach)
    assert t <= 50, counts
    assert all(abs(n - best) <= 1 for n, s in zip(counts[t:], states[t:]) if s == HOLD)
    assert changes(counts[100:]) <= 12
    assert no_back_to_back_changes(counts)


def test_held_count_stays_within_one_when_probes_reach_further():
    # optimum 13 (12.5); 12 streams give 96%, within the 5% threshold, so the
    # controller may hold 12 and its probes down then visit 11 for an interval or two
    c = StreamController(1, 1, 32)
    counts, states = run(c, capped(1e8, 1.25e9), 200)
    tail = list(zip(counts, states))[60:]
    assert all(12 <= n <= 14 for n, s in tail if s == HOLD)
    assert all(11 <= n <= 15 for n, _ in tail)
    assert sum(12 <= n <= 14 for n, _ in tail) >= 0.9 * len(tail)


def test_flat_link_stays_at_min():
    c = StreamController(1, 1, 16)
    counts, _ = run(c, lambda n, k: 1e9, 120)
    assert max(counts) <= 2
    assert counts[40:].count(1) >= 0.85 * len(counts[40:])
    # one probe (out and back) per longest hold (16 intervals + probe + settle)
    assert changes(counts[40:]) <= 2 * math.ceil(80 / 19)


def test_flat_link_returns_to_min_from_a_high_guess():
    c = StreamController(12, 2, 16)
    counts, _ = run(c, lambda n, k: 1e9, 120)
    assert settled_at(counts, 2, 3) <= 30, counts
    assert counts[30:].count(2) >= 0.85 * len(counts[30:])


@pytest.mark.parametrize("seed", range(5))
def test_noise_does_not_make_it_oscillate(seed):
    c = StreamController(1, 1, 16)
    counts, states = run(c, capped(2e8, 1e9), 240, noise=0.05, seed=seed)  # optimum 5
    assert changes(counts[40:]) <= 30  # ~one probe (out and back) per hold period
    assert no_back_to_back_changes(counts)
    held = [n for n, s in zip(counts[60:], states[60:]) if s == HOLD]
    assert sum(4 <= n <= 6 for n in held) >= 0.9 * len(held)


def test_a_cap_that_widens_is_followed():
    c = StreamController(1, 1, 16)
    model = lambda n, k: min(n * 1.5e8, 1e9 if k < 120 else 2.1e9)  # noqa: E731  optimum 7, then 14
    counts, states = run(c, model, 240)
    assert all(6 <= n <= 8 for n in counts[60:120])
    # at 7 streams the wider link shows only +5%: the next timed probe up finds it
    t = settled_at(counts, 13, 16)  # probes up from 14 add 2
    assert t <= 120 + 60, counts[120:]
    assert all(13 <= n <= 15 for n, s in zip(counts[t:], states[t:]) if s == HOLD)


def test_a_cap_that_narrows_is_followed_quickly():
    c = StreamController(1, 1, 16)
    model = lambda n, k: min(n * 1.5e8, 2e9 if k < 100 else 1e9)  # noqa: E731  optimum 14, then 7
    counts, _ = run(c, model, 200)
    assert all(12 <= n <= 15 for n in counts[60:100])
    # the drop is two samples beyond 2x the threshold: probing down starts at once
    assert settled_at(counts, 6, 8) <= 100 + 25, counts[100:]


def test_a_transient_dip_does_not_shed_streams_that_matter():
    c = StreamController(10, 1, 16)
    model = lambda n, k: min(n * 1e8, 1e9) * (0.4 if 80 <= k < 83 else 1.0)  # noqa: E731  optimum 10
    counts, _ = run(c, model, 160)
    assert all(9 <= n <= 11 for n in counts[60:])


def test_retransmits_rising_refuse_a_probe_up():
    # streams above 4 still add goodput (+7.5% each at first), but only by overflowing the
    # bottleneck queue: the retransmit rate jumps from 0.1% to 5%
    model = lambda n, k: min(n, 4) * 1e8 + max(0, n - 4) * 0.3e8  # noqa: E731
    rr = lambda n: 0.001 if n <= 4 else 0.05  # noqa: E731
    c = StreamController(4, 1, 16)
    counts, _ = run(c, model, 80, rr=rr)
    assert max(counts[10:]) <= 5 and counts[10:].count(4) >= 0.85 * len(counts[10:])
    c = StreamController(4, 1, 16)  # the same link without the retransmit signal grows
    counts, _ = run(c, model, 80)
    assert max(counts) > 5


def test_min_equals_max_is_pinned():
    c = StreamController(5, 3, 3)
    counts, states = run(c, capped(1e8, 1e9), 60)
    assert set(counts) == {3} and states[-1] == HOLD


def test_initial_outside_the_bounds_is_clamped():
    assert StreamController(0, 2, 8).n == 2
    assert StreamController(99, 2, 8).n == 8


def test_zero_goodput_is_not_judged():
    c = StreamController(6, 1, 16)
    counts, _ = run(c, lambda n, k: 0.0, 60)
    assert set(counts) == {6}
    assert c.state == START


def test_deterministic():
    a, b = StreamController(3, 1, 16), StreamController(3, 1, 16)
    ra = run(a, capped(2e8, 1e9), 150, noise=0.05, seed=11)
    rb = run(b, capped(2e8, 1e9), 150, noise=0.05, seed=11)
    assert ra == rb and list(a.history) == list(b.history)


def test_observations_faster_than_the_interval_are_averaged():
    fast = StreamController(1, 1, 16)
    counts, _ = run(fast, capped(1.5e8, 1e9), 1000, dt=0.1)  # five calls per interval
    assert settled_at(counts, 6, 8) <= 300
    # a decision is made once per measured interval, so changes are far apart in calls
    change_at = [i for i, (a, b) in enumerate(zip(counts, counts[1:])) if a != b]
    assert all(b - a >= 6 for a, b in zip(change_at, change_at[1:]))
    assert sum("measuring" in e.reason for e in fast.history) > 500


def test_history_is_bounded_and_serialisable():
    c = StreamController(1, 1, 16, history_len=50)
    run(c, capped(1.5e8, 1e9), 120)
    assert len(c.history) == 50
    e = c.history[-1]
    assert e.now == 119 * 0.5 and e.streams == c.n and e.goodput_bytes_per_s > 0 and e.reason and e.state
    assert tuple(e)[:4] == (e.now, e.streams, e.goodput_bytes_per_s, e.reason)
    json.dumps(c.history_as_dicts())


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        (1.0, math.nan, None),
        (1.0, -1.0, None),
        (1.0, math.inf, None),
        (1.0, 1e9, -0.1),
        (math.nan, 1e9, None),
        (-5.0, 1e9, None),  # before the previous observation at t=0
    ],
)
def test_bad_input_is_sticky_error(bad):
    c = StreamController(2, 1, 8)
    c.observe(0.0, 1e9)
    with pytest.raises(InternalError):
        c.observe(*bad)
    assert c.state == ERROR
    with pytest.raises(InternalError, match="ERROR"):
        c.observe(1.0, 1e9)  # a valid observation is refused too


@pytest.mark.parametrize(
    "args,kw",
    [
        ((1, 0, 4), {}),
        ((1, 5, 4), {}),
        ((1.5, 1, 4), {}),
        ((1, 1, 4), {"interval_s": 0}),
        ((1, 1, 4), {"interval_s": "fast"}),
        ((1, 1, 4), {"gain_threshold": 0}),
        ((1, 1, 4), {"gain_threshold": 1.5}),
        ((1, 1, 4), {"hold_intervals": 0}),
        ((1, 1, 4), {"hold_intervals": 9, "max_hold_intervals": 8}),
        ((1, 1, 4), {"settle_intervals": -1}),
        ((1, 1, 4), {"knee_efficiency": 2}),
        ((1, 1, 4), {"max_retransmit_rate": -1}),
        ((1, 1, 4), {"history_len": 0}),
    ],
)
def test_bad_configuration_is_a_config_error(args, kw):
    with pytest.raises(ConfigError):
        StreamController(*args, **kw)


# -- properties ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    per=st.floats(5e7, 2e9),
    ratio=st.floats(0.2, 20.0),
    lo=st.integers(1, 4),
    span=st.integers(0, 16),
    start=st.floats(0, 1),
)
def test_property_bounded_and_eventually_within_one(per, ratio, lo, span, start):
    # up to 20 streams: there, one stream more is worth >= 5% while below the
    # knee, so the threshold cannot hide the optimum by more than one stream
    hi = lo + span
    cap = per * ratio
    best = max(lo, min(hi, math.ceil(cap / per - 1e-9)))
    c = StreamController(lo + round(start * span), lo, hi)
    counts, states = run(c, capped(per, cap), 150)  # run() asserts [min, max] at every step
    tail = list(zip(counts, states))[90:]
    held = [n for n, s in tail if s == HOLD]
    assert held and all(abs(n - best) <= 1 for n in held), (best, counts)
    assert all(abs(n - best) <= 2 for n, _ in tail)
    assert no_back_to_back_changes(counts)


@settings(max_examples=60, deadline=None)
@given(per=st.floats(5e7, 2e9), ratio=st.floats(0.2, 80.0), hi=st.integers(4, 64), seed=st.integers(0, 3))
def test_property_many_streams_keep_the_goodput(per, ratio, hi, seed):
    # beyond ~20 streams the 5% threshold can leave a few streams unused: what
    # must hold is that the goodput is within the threshold of the best
    cap = per * ratio
    best = min(hi, math.ceil(cap / per - 1e-9))
    model = capped(per, cap)
    c = StreamController(1, 1, hi)
    counts, states = run(c, model, 200, noise=0.02, seed=seed)
    tail = list(zip(counts, states))[120:]
    held = [n for n, s in tail if s == HOLD]
    assert held
    # noise near the threshold can walk the held count a stream further down for a
    # while (each probe is judged against the level held just before it); probes
    # up bring it back, and on average the goodput stays within the threshold
    assert all(model(n, 0) >= model(best, 0) / 1.05**3 for n in held)
    assert sum(model(n, 0) for n, _ in tail) / len(tail) >= 0.92 * model(best, 0)
    # above ~20 streams a probe adds ceil(10%) of them, and under noise one such step can be held
    assert all(n <= best + max(2, math.ceil(0.1 * best)) for n in held)


@pytest.mark.parametrize("start,lo,hi,want", [(4, 1, 16, 4), (4, 6, 16, 6), (4, 1, 3, 3)])
def test_unknown_link_can_start_elsewhere_than_min(start, lo, hi, want):
    n, why = initial_streams(None, 0.05, 4 << 20, lo, hi, unknown_start=start)
    assert n == want and why == f"link speed unknown: start at {want} streams and probe"
    assert initial_streams(1.25e8, 0.05, 4 << 20, lo, hi, unknown_start=start)[0] == max(lo, min(hi, 2))


# -- measured curves (perf/sla.py on the emulated 1 Gbit/s, 50 ms link) --------------
# Goodput as a fraction of the cap for fixed stream counts, two runs of the sweep
# (2026-11-24, `python perf/sla.py --quick`); between counts the curve is linear,
# past the last one flat.
MEASURED = {
    "50ms_0.1pct_a": {1: 0.85, 2: 0.91, 4: 0.91, 8: 0.91},
    "50ms_0.1pct_b": {1: 0.81, 2: 0.86, 4: 0.87, 8: 0.88},
    "50ms_1pct_a": {1: 0.66, 2: 0.85, 4: 0.89, 8: 0.91},
    "50ms_1pct_b": {1: 0.66, 2: 0.80, 4: 0.85, 8: 0.86},
}


def measured(curve: dict[int, float], cap: float = 125e6) -> Model:
    pts = sorted(curve.items())

    def g(n: int, k: int) -> float:
        if n >= pts[-1][0]:
            return pts[-1][1] * cap
        for (a, ga), (b, gb) in zip(pts, pts[1:]):
            if a <= n <= b:
                return (ga + (gb - ga) * (n - a) / (b - a)) * cap
        raise AssertionError(n)

    return g


@pytest.mark.parametrize("name", sorted(MEASURED))
@pytest.mark.parametrize("seed", range(3))
def test_on_measured_wan_curves_it_meets_the_sla_goodput_and_settles(name, seed):
    # perf/sla.toml: >= 85% of the cap at 0.1% loss, >= 70% at 1%, settled within 5 s
    curve = MEASURED[name]
    c = StreamController(4, 1, 16)  # the unknown-link start of --streams auto
    model = measured(curve)
    counts, states = run(c, model, 60, noise=0.02, seed=seed)  # 30 s in 0.5 s samples
    sla = 0.85 if "0.1pct" in name else 0.70
    mean = sum(model(n, 0) for n in counts[10:]) / len(counts[10:]) / 125e6
    assert mean >= sla, (mean, counts)
    held = sorted(n for n, st in zip(counts[10:], states[10:]) if st == HOLD)
    mid = held[len(held) // 2]
    # settled after 5 s: within one stream of its holding count but for brief probes
    assert sum(abs(n - mid) <= 1 for n in counts[10:]) >= 0.9 * len(counts[10:]), counts
    # it does not chase the last 2-5% with 2-4x the streams (gain threshold 5%): on these
    # curves it holds 2-3 streams where 8 fixed streams were best by a few percent
    assert 2 <= mid <= 3


# perf/sla.py --quick --congestion cubic (medians of 3, this machine, session 3): under a loss-based congestion
# control the goodput grows in proportion to the count at 1% loss (Mathis), and 1 s samples are noisy
CUBIC_1PCT = {1: 0.107, 2: 0.234, 4: 0.442, 8: 0.77}


@pytest.mark.parametrize("seed", range(8))
def test_a_loss_limited_path_is_probed_by_doubling_and_reaches_its_knee(seed):
    c = StreamController(4, 1, 16, loss_based=True)
    model = measured(CUBIC_1PCT)  # flat past 8: the knee is 8
    counts, states = run(c, model, 60, noise=0.25, seed=seed, rr=lambda n: 0.012)
    assert counts[2] == 8  # 4 -> 8 in one probe (rule 6), not 4 -> 5
    mean = sum(model(n, 0) for n in counts[10:]) / len(counts[10:]) / 125e6
    assert mean >= 0.70, (mean, counts)  # the 1%-loss SLA
    held = sorted(n for n, st in zip(counts[10:], states[10:]) if st == HOLD)
    assert 7 <= held[len(held) // 2] <= 16, counts  # never walked back below the knee


def test_a_goodput_drop_on_a_loss_limited_path_probes_up_not_down():
    c = StreamController(4, 1, 16, loss_based=True)
    level = {"v": 1.0}

    def model(n: int, k: int) -> float:
        return min(n, 4) * 10e6 * level["v"]  # flat past 4 until the drop

    rr = lambda n: 0.012 if n <= 4 else 0.08  # noqa: E731  past 4 streams the bottleneck queue overflows
    run(c, model, 30, rr=rr)
    assert c.state == HOLD and c.n == 4
    level["v"] = 0.5  # the path lost half its per-stream rate: more streams are the only remedy
    for k in range(30, 36):
        d = c.observe(k * 0.5, model(c.n, k), 0.012)
        if d.target_streams != 4:
            break
    assert d.target_streams == 8 and "loss-limited" in d.reason


def test_without_loss_or_with_bbr_the_probe_steps_stay_small():
    c = StreamController(8, 1, 16, loss_based=False)  # bbr, even at 3% retransmitted
    run(c, capped(10e6, 1e9), 3, rr=lambda n: 0.03)
    assert c.n == 9  # +ceil(8 x 2 x 5%) = +1
    # a loss-based path: the first probe doubles (slow start has not seen enough to tell the loss), but
    # once the loss is known to be low the steps are small again
    c = StreamController(8, 1, 16, loss_based=True)
    counts, _ = run(c, lambda n, k: min(n, 8) * 10e6 * (1.5 if k >= 30 else 1.0), 40, rr=lambda n: 0.001)
    assert counts[1:3] == [16, 16] and counts[3] == 8  # 8 -> 16 gained nothing: back to 8
    assert 9 in counts[30:] and 10 not in counts, counts  # the shift up at 30 probes +1


def test_slow_start_overshoot_on_a_loss_limited_path_does_not_walk_the_count_down():
    # what the emulated 1%-loss link did under cubic: the first ~1.5 s at 4 streams ran at twice the steady
    # rate, so 4 -> 8 read +0% against it; the controller must not conclude "4 may be too many"
    c = StreamController(4, 1, 16, loss_based=True)
    base = measured(CUBIC_1PCT)

    def model(n: int, k: int) -> float:
        return base(n, k) * (2.0 if k < 3 else 1.0)

    counts, _ = run(c, model, 40, rr=lambda n: 0.012)
    assert min(counts) >= 4, counts  # never below the start
    assert counts[-1] >= 8, counts  # and it got to the knee


# perf/sla.py --quick --congestion cubic, session 3: 16 fixed streams gave 0.88 of the cap; auto's samples
# (session 4) at 16 streams: 119-126 MB/s, ~1% retransmitted (single samples up to 22%)
CUBIC_1PCT_16 = {1: 0.107, 2: 0.22, 4: 0.42, 8: 0.80, 16: 0.99}


def overflow_past_8(n: int) -> float:
    """Retransmitted fraction of a link whose bottleneck queue overflows past 8 streams."""
    return 0.012 if n <= 8 else 0.012 + (n - 8) / 8 * 0.09


class Overshoot:
    """A loss-limited link whose streams each run at ``boost`` x their steady rate for their first
    ``samples`` samples (cubic's slow start and its slow decay from there), capped at the link."""

    def __init__(
        self, curve: dict[int, float], boost: float = 2.0, samples: int = 6, cap: float = 125e6
    ) -> None:
        self.base = measured(curve)
        self.boost, self.samples, self.cap = boost, samples, cap
        self.born: list[int] = []  # the sample each live stream started in

    def __call__(self, n: int, k: int) -> float:
        while len(self.born) < n:
            self.born.append(k)
        del self.born[n:]  # the youngest retire first
        per = self.base(n, k) / n
        return min(
            0.98 * self.cap, sum(per * (self.boost if k - b < self.samples else 1.0) for b in self.born)
        )


@pytest.mark.parametrize("seed", range(8))
def test_a_loss_limited_path_doubles_to_its_bottleneck_despite_overshoot_and_noise(seed):
    # what the emulated 1%-loss link did under cubic: every count read ~the cap for the first 2-4 s
    # (4 streams: 116-124 MB/s at 1.4 s, steady 55), so 4 -> 8 read +5..+43%
    c = StreamController(4, 1, 16, loss_based=True)
    model = Overshoot(CUBIC_1PCT_16)
    # the sample noise of the TCP-acknowledged goodput while holding on that link: ~10% per 0.5 s
    counts, states = run(c, model, 60, noise=0.10, seed=seed, rr=lambda n: 0.012)
    # 4 -> 8 -> 16, kept without waiting for the overshoot to end (it cannot lower a path that is not full)
    assert settled_at(counts, 15, 16) <= 10, counts  # settled within 5 s (the SLA)
    steady = measured(CUBIC_1PCT_16)
    mean = sum(steady(n, 0) for n in counts[10:]) / len(counts[10:]) / 125e6
    assert mean >= 0.85, (mean, counts)


def test_a_loss_limited_probe_that_only_overflows_the_bottleneck_is_refused():
    # ... but where 16 streams add 3% and the retransmits jump, 8 is where it holds
    c = StreamController(4, 1, 16, loss_based=True)
    base = measured({1: 0.107, 2: 0.22, 4: 0.42, 8: 0.80, 16: 0.824})
    counts, states = run(c, base, 60, rr=overflow_past_8)
    held = [n for n, st in zip(counts[6:], states[6:]) if st == HOLD]
    assert held and all(n == 8 for n in held), counts
    assert any("only overflow" in e.reason for e in c.history)


# perf/sla.py --quick --congestion cubic, session 4, 0.1% loss (not loss-limited: ~0.1% retransmitted)
CUBIC_01PCT = {1: 0.47, 2: 0.76, 4: 0.90, 8: 0.92, 16: 0.89}


@pytest.mark.parametrize("seed", range(4))
def test_under_a_loss_based_cc_the_start_is_not_explored_downwards_during_the_overshoot(seed):
    # the initial 4 streams run at the cap for their first 3 s, so did 3 and 2 when probed in that time:
    # auto walked down to 2 and held them (0.75 of the cap where 4 fixed streams got 0.90)
    c = StreamController(4, 1, 16, loss_based=True)
    counts, _ = run(c, Overshoot(CUBIC_01PCT), 20, noise=0.02, seed=seed, rr=lambda n: 0.001)
    assert min(counts) >= 3, counts  # a 10 s transfer stays at the knee or above


@pytest.mark.parametrize("seed", range(4))
def test_a_loss_limited_path_whose_loss_reads_low_at_first_and_spikes_still_doubles(seed):
    # the emulated 1%-loss link under cubic: the first samples read 0-0.4% retransmitted (slow start has
    # seen few losses yet), later ones 0.3-2% with single samples up to 22%; once such a start probed
    # 4 -> 5 (not known to be lossy), and once a 2% sample refused 8 -> 16 as "the bottleneck is full"
    k = {"i": 0}

    def rr(n: int) -> float:
        k["i"] += 1
        return 0.003 if k["i"] <= 3 else 0.22 if k["i"] == 7 else 0.012  # 7: the judging of 8 -> 16

    c = StreamController(4, 1, 16, loss_based=True)
    counts, _ = run(c, Overshoot(CUBIC_1PCT_16), 40, noise=0.05, seed=seed, rr=rr)
    assert counts[2] == 8, counts  # the start doubles
    assert settled_at(counts, 15, 16) <= 10, counts
    assert any(
        "retransmits up, one more sample" in e.reason for e in c.history
    )  # the spike was looked at twice


def test_a_forecast_count_is_held_first_and_probed_on_the_hold_timer():
    # the link gives its best at 3 streams; the path's earlier sends ended at 3
    model = capped(4e8, 1e9)
    c = StreamController(3, 1, 16, forecast=True, hold_intervals=8)
    counts, states = run(c, model, 40)
    # no search from the start: held a whole hold (the first sample is judged at the second interval)
    assert states[1] == HOLD and counts[:9] == [3] * 9
    assert any(h.reason.endswith("the path's forecast: hold") for h in c.history)
    assert (
        states[9] == PROBE_UP and counts[9] == 4
    )  # then the timer probes, up first (a bottleneck loses nothing)
    assert all(abs(n - 3) <= 1 for n, s in zip(counts, states) if s == HOLD)
    # without the forecast the same start searches at once
    counts, states = run(StreamController(3, 1, 16), model, 5)
    assert states[1] == PROBE_UP and counts[1:5] == [4, 4, 2, 2]
    # a forecast that was wrong (the path now wants 7): the hold's probes still find it
    c = StreamController(2, 1, 16, forecast=True)
    counts, _ = run(c, capped(1.5e8, 1e9), 200)
    assert settled_at(counts, 6, 8) <= 60, counts
