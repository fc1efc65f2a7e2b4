"""dwcp.transport.anomaly under arbitrary input: observe never raises and returns Anomaly lists,
replay is deterministic, and no alarm comes within warmup_s of a segment's start."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.transport.anomaly import Anomaly, AnomalySettings, PathWatch, replay

values = st.one_of(
    st.none(),
    st.just(0.0),
    st.floats(min_value=-1e3, max_value=1e15, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e6, max_value=2e8),  # a plausible goodput, so that alarms do happen
)
small = st.one_of(st.none(), st.just(0.0), st.floats(min_value=-1.0, max_value=5.0, allow_nan=False))
steps = st.one_of(st.just(0.5), st.floats(min_value=-10.0, max_value=12.0, allow_nan=False))
rows = st.lists(
    st.tuples(steps, values, small, small, st.one_of(st.none(), st.integers(0, 64))),
    min_size=1,
    max_size=300,
)
# Runs of a level, so that steps (and alarms) happen: (repeat, dt, goodput, rtt, retrans, streams).
runs = st.lists(
    st.tuples(
        st.integers(1, 40),
        st.sampled_from([0.5, 0.5, 0.5, 0.25, -3.0, 7.0]),
        st.sampled_from([1e8, 1e8, 2e7, 0.0, None]),
        st.sampled_from([0.03, 0.03, 0.09, None]),
        st.sampled_from([0.0, 0.0, 0.001, 0.05, None]),
        st.one_of(st.none(), st.integers(1, 8)),
    ),
    min_size=1,
    max_size=12,
).map(lambda rs: [(dt if i == 0 else 0.5, g, r, x, n) for k, dt, g, r, x, n in rs for i in range(k)])
cfg = st.builds(
    AnomalySettings,
    warmup_s=st.sampled_from([0.0, 1.0, 5.0]),
    min_baseline=st.integers(1, 8),
    recent=st.integers(1, 8),
    clear_after=st.integers(1, 6),
    holdoff_s=st.sampled_from([0.0, 3.0]),
    relearn_after_s=st.sampled_from([2.0, 60.0]),
)


def _table(steps_rows):
    t, out = 0.0, []
    for dt, g, rtt, rx, n in steps_rows:
        t += dt
        out.append([t, g, rtt, rx, n, 1 << 20])
    return out


@settings(max_examples=200, deadline=None)
@given(st.one_of(rows, runs), cfg)
def test_observe_never_raises_and_returns_anomalies(steps_rows, s):
    w = PathWatch(s)
    for t, g, rtt, rx, n, _ in _table(steps_rows):
        if n is not None:
            w.note_streams(t, n)
        out = w.observe(t, goodput=g, rtt_s=rtt, retrans=rx)
        assert isinstance(out, list) and all(isinstance(a, Anomaly) for a in out)
        assert set(w.active) <= {"goodput", "rtt", "retrans"}
        assert len({a.signal for a in out}) == len(out)  # one raise per signal per sample
    state = w.state()
    assert set(state["signals"]) == {"goodput", "rtt", "retrans"}


@settings(max_examples=200, deadline=None)
@given(st.one_of(rows, runs), cfg)
def test_replay_is_deterministic_and_quiet_during_warmup(steps_rows, s):
    table = _table(steps_rows)
    first = replay(table, s)
    assert first == replay([list(r) for r in table], s)
    segs, last = [], None  # the sends the replay makes of the table: time backwards or a gap starts one
    for r in table:
        if last is None or r[0] < last or r[0] - last > s.max_gap_s:
            segs.append([])
        segs[-1].append(r)
        last = r[0]
    per = [replay(seg, s) for seg in segs]
    assert first == [a for got in per for a in got]  # each send on a fresh watch
    for seg, got in zip(segs, per, strict=True):
        for a in got:
            assert a.at - seg[0][0] >= s.warmup_s
            assert a.since <= a.at and a.signal in ("goodput", "rtt", "retrans")
