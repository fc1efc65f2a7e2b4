"""dwcp.transport.trace: the path trace file (bounded, atomic, forgiving), the forecast, the egress NIC."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.transport import trace as tr
from dwcp.transport.trace import PathTrace, PathTraces, SendRecord, path_id, route_nic, settle_time

NOW = 1_800_000_000.0


def _rec(at=NOW, goodput=100e6, rtt=0.05, loss=0.0, streams=4, chunk=1 << 20) -> SendRecord:
    return SendRecord(at=at, seconds=10.0, bytes=int(goodput * 10), goodput=goodput,
                      stream_bytes_per_s=goodput / streams, rtt_s=rtt, retrans_fraction=loss, streams=streams,
                      streams_initial=2, chunk_size=chunk, settle_s=1.5)  # fmt: skip


def test_a_trace_round_trips_atomically_and_is_per_peer_and_nic(tmp_path):
    traces = PathTraces(str(tmp_path))
    assert traces.load("h:1", "eth0").sends == []  # no file yet: an empty trace
    t = PathTrace(
        "h:1", "eth0", [_rec()], [[NOW, 1e8, 0.05, 0.0, 4, 1 << 20]], [{"signal": "rtt", "at": NOW}]
    )
    assert traces.save(t)
    got = traces.load("h:1", "eth0")
    assert (got.sends, got.samples, got.anomalies) == (t.sends, t.samples, t.anomalies)
    assert traces.load("h:1", "eth1").sends == []  # the same peer over another NIC is another path
    assert not [f for f in os.listdir(traces.dir) if not f.endswith(".json")]  # no temporary left
    assert oct(os.stat(traces.dir).st_mode & 0o777) == "0o700"


def test_every_part_of_a_trace_and_the_number_of_paths_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "MAX_PATHS", 5)
    traces = PathTraces(str(tmp_path))
    t = PathTrace("h:1", "eth0", [_rec(at=NOW + i) for i in range(tr.MAX_SENDS + 7)],
                  [[NOW + i, 1.0, None, None, 1, 1] for i in range(tr.MAX_SAMPLES + 9)],
                  [{"at": NOW + i} for i in range(tr.MAX_ANOMALIES + 3)])  # fmt: skip
    traces.save(t)
    got = traces.load("h:1", "eth0")
    assert len(got.sends) == tr.MAX_SENDS and got.sends[-1].at == NOW + tr.MAX_SENDS + 6  # the newest kept
    assert len(got.samples) == tr.MAX_SAMPLES and len(got.anomalies) == tr.MAX_ANOMALIES
    old = time.time() - 1000  # written in this order, seconds apart (file times can be coarser than a save)
    os.utime(os.path.join(traces.dir, path_id("h:1", "eth0") + ".json"), (old - 1, old - 1))
    for i in range(7):
        traces.save(PathTrace(f"p:{i}", "eth0", [_rec()]))
        os.utime(os.path.join(traces.dir, path_id(f"p:{i}", "eth0") + ".json"), (old + i, old + i))
    traces.save(PathTrace("p:7", "eth0", [_rec()]))
    left = {t.peer for t, _ in traces.all(now=NOW)}
    assert len(left) == 5 and "p:7" in left and "h:1" not in left and "p:0" not in left  # the oldest went


@pytest.mark.parametrize("doc", [[], {"version": 1}, {"version": 2, "sends": []}, {"sends": "x"}, "sends"])
def test_a_trace_of_the_wrong_shape_is_an_empty_trace(tmp_path, caplog, doc):
    traces = PathTraces(str(tmp_path))
    os.makedirs(traces.dir)
    f = os.path.join(traces.dir, path_id("b:7700", "lo") + ".json")
    with open(f, "w") as fh:
        json.dump(doc, fh)
    with caplog.at_level(logging.WARNING, logger="dwcp.transport"):
        assert traces.load("b:7700", "lo").sends == []
    assert "not a path trace" in caplog.text
    traces.save(PathTrace("b:7700", "lo", [_rec()]))  # and the next write replaces the damaged file
    assert traces.load("b:7700", "lo").sends == [_rec()]


def test_a_damaged_record_costs_only_itself_and_a_damaged_file_is_empty(tmp_path):
    traces = PathTraces(str(tmp_path))
    traces.save(PathTrace("h:1", "eth0", [_rec(at=NOW), _rec(at=NOW + 1)]))
    f = os.path.join(traces.dir, path_id("h:1", "eth0") + ".json")
    doc = json.load(open(f))
    doc["sends"][0]["streams"] = -3
    doc["sends"].append({"at": "yesterday"})
    doc["samples"] = [[1, 2, 3], "x", [NOW, 1.0, None, None, 2, 1]]
    json.dump(doc, open(f, "w"))
    got = traces.load("h:1", "eth0")
    assert [s.at for s in got.sends] == [NOW + 1] and got.samples == [[NOW, 1.0, None, None, 2, 1]]
    open(f, "w").write("{not json")
    assert traces.load("h:1", "eth0").sends == []
    open(f, "wb").write(b" " * (tr.MAX_FILE_BYTES + 1))  # never read whole: bounded before parsing
    assert traces.load("h:1", "eth0").sends == []


def test_a_trace_that_cannot_be_written_does_not_fail_the_caller(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    traces = PathTraces(str(blocker / "sub"))  # a directory under a regular file cannot exist
    with caplog.at_level(logging.WARNING, logger="dwcp.transport"):
        assert traces.save(PathTrace("h:1", "eth0", [_rec()])) is False
    assert "could not write the trace of the path to h:1 via eth0" in caplog.text
    assert traces.load("h:1", "eth0").sends == [] and traces.all(now=NOW) == []


def test_all_rereads_only_what_changed(tmp_path, monkeypatch):
    traces = PathTraces(str(tmp_path))
    traces.save(PathTrace("a:1", "eth0", [_rec()]))
    traces.save(PathTrace("b:1", "eth0", [_rec()]))
    assert sorted(t.peer for t, _ in traces.all(now=NOW)) == ["a:1", "b:1"]
    reads = []
    real = PathTraces._read
    monkeypatch.setattr(PathTraces, "_read", staticmethod(lambda p, *a: reads.append(p) or real(p, *a)))
    traces.all(now=NOW)
    assert reads == []  # nothing changed: no file read, no forecast made
    traces.save(PathTrace("b:1", "eth0", [_rec(), _rec(at=NOW + 5, goodput=50e6)]))
    got = {t.peer: fc for t, fc in traces.all(now=NOW + 5)}
    assert len(reads) == 1 and got["b:1"] is not None and got["b:1"].n == 2


# -- the forecast (rule 4) ---------------------------------------------------------------------------


def test_one_send_forecasts_itself_and_old_sends_none():
    t = PathTrace("h:1", "eth0", [_rec(goodput=80e6, streams=6)])
    fc = t.forecast(now=NOW + 60)
    assert fc is not None and fc.n == 1 and fc.value("goodput") == 80e6 and fc.streams(1, 16) == 6
    assert fc.streams(1, 4) == 4 and fc.streams(8, 16) == 8  # within the caller's bounds
    assert fc.stats().stream_bytes_per_s == pytest.approx(80e6 / 6) and fc.stats().at == NOW
    assert "last of 1 send" in fc.why("streams")
    assert t.forecast(now=NOW + 8 * 86400) is None  # a week-old measurement says nothing of today


def test_the_forecast_of_each_series_is_the_backtest_winner_and_reports_the_naive_error():
    # goodput falls steadily send after send (a path filling up): a trend model beats "same as last time"
    sends = [_rec(at=NOW + i, goodput=200e6 - 5e6 * i, streams=4) for i in range(20)]
    fc = PathTrace("h:1", "eth0", sends).forecast(now=NOW + 30)
    g = fc.by["goodput"]
    assert g.model == "holt" and g.mae < g.naive_mae and fc.value("goodput") == pytest.approx(100e6, rel=0.02)
    doc = fc.to_json()
    assert doc["sends"] == 20 and doc["goodput"]["model"] == "holt" and doc["goodput"]["naive_mae"] > 0
    assert "backtest MAE" in fc.why("goodput") and "vs last-value" in fc.why("goodput")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e10), st.floats(0, 2), st.floats(0, 1), st.integers(1, 256)),
                min_size=1, max_size=20))  # fmt: skip
def test_a_forecast_is_always_a_valid_path(rows):
    sends = [_rec(at=NOW + i, goodput=g, rtt=r, loss=lo, streams=n) for i, (g, r, lo, n) in enumerate(rows)]
    fc = PathTrace("h:1", "eth0", sends).forecast(now=NOW + len(rows))
    ps = fc.stats()  # PathStats validates: finite, >= 0, streams in [1, 256]
    assert 0 <= ps.retrans_fraction <= 1 and 1 <= fc.streams(1, 256) <= 256


# -- settling, the path id, the egress NIC -----------------------------------------------------------


def test_settle_time_is_when_goodput_first_holds_ninety_percent_of_the_rest():
    ramp = [[100.0 + 0.5 * i, g, None, None, 4, 1] for i, g in enumerate([10, 40, 70, 95, 100, 98, 101, 99])]
    assert settle_time(ramp, start=100.0) == 1.5  # 95 >= 0.9 x 99 and the next holds
    spike = [[0.5 * i, g, None, None, 4, 1] for i, g in enumerate([10, 100, 20, 30, 95, 96, 97, 98])]
    assert settle_time(spike, start=0.0) == 2.0  # one fast interval is not settled
    assert settle_time(ramp[:3], start=100.0) is None


def test_path_ids_are_safe_file_names_and_unique():
    a, b = path_id("[fe80::1%eth0]:7070", "eth0"), path_id("[fe80::1_eth0]:7070", "eth0")
    assert a != b and "/" not in a and all(c.isalnum() or c in "._-@" for c in a)
    assert path_id("h:1", "../../etc") != path_id("h:1", "etc") and "/" not in path_id("h:1", "../../etc")


def test_the_egress_nic_is_the_longest_matching_route(tmp_path):
    (tmp_path / "route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default via eth0
        "wan1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"  # 10.0.0.0/8 on wan1
        "wan2\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"  # 10.1.0.0/16 on wan2
        "down\t0002010A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 10.1.2.0/24, not up
    )
    (tmp_path / "ipv6_route").write_text(
        "20010db8000000000000000000000000 20 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000100 00000001 00000000 00000001     v6net\n"
    )
    assert route_nic("10.1.2.3", str(tmp_path)) == "wan2"
    assert route_nic("10.9.0.1", str(tmp_path)) == "wan1"
    assert route_nic("192.0.2.9", str(tmp_path)) == "eth0"
    assert route_nic("2001:db8::7", str(tmp_path)) == "v6net"
    assert route_nic("2001:db9::7", str(tmp_path)) == "?"
    assert route_nic("127.0.0.1", str(tmp_path)) == route_nic("::1", str(tmp_path)) == "lo"
    assert route_nic("no.such.host.invalid", str(tmp_path)) == "?"
    assert route_nic("10.0.0.1", str(tmp_path / "missing")) == "?"


def test_the_send_summary_says_what_the_path_said():
    from dwcp.cli.main import _path_text

    assert _path_text(None) == "" and _path_text({"used": {}, "anomalies": [], "nic": "lo"}) == ""
    doc = {"nic": "eth0", "used": {"streams_initial": 2},
           "anomalies": [{"detail": "rtt rose 196% (24 ms -> 72 ms) over 0.5 s"}]}  # fmt: skip
    assert _path_text(doc) == ("; started from the forecast of the path via eth0"
                               "; path anomaly: rtt rose 196% (24 ms -> 72 ms) over 0.5 s")  # fmt: skip
