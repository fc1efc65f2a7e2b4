"""perf/sla.py's judgement: which fixed counts are the best, and when an SLA is missed."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

PERF = os.path.join(os.path.dirname(__file__), "..", "..", "perf")


@pytest.fixture(scope="module")
def sla():
    sys.path.insert(0, PERF)  # sla.py imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("dwcp_perf_sla", os.path.join(PERF, "sla.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(PERF)


CAP = 125e6


def fixed(**runs: list[float]) -> dict:
    """{count: per-run fractions of the cap} -> perf/sla.py's per-count summaries."""
    out = {}
    for n, fr in runs.items():
        xs = sorted(f * CAP for f in fr)
        out[n.lstrip("n")] = {"bytes_per_s": xs[len(xs) // 2], "runs": [{"bytes_per_s": x} for x in xs]}
    return out


def test_a_count_whose_runs_overlap_the_best_is_tied_with_it(sla):
    # the default-congestion 0.1% cell of session 3: a flat curve within run-to-run noise
    r = sla.rank_fixed(fixed(n1=[0.77, 0.79, 0.80], n2=[0.82, 0.85, 0.88], n4=[0.80, 0.82, 0.86],
                             n8=[0.87, 0.89, 0.90]), CAP)  # fmt: skip
    assert r["best_fixed_streams"] == 8
    # 2's runs reach 8's slowest; 4's do not (0.86 < 0.87): a tie is per count, not a range of counts
    assert r["tied_fixed_streams"] == [2, 8] and r["knee_fixed_streams"] == 2
    assert r["fixed_spread_of_cap"]["2"] == [0.82, 0.88]


def test_a_clearly_better_count_stands_alone(sla):
    # the cubic 1% cell: every count's runs are far apart
    r = sla.rank_fixed(fixed(n4=[0.43, 0.44, 0.45], n8=[0.79, 0.81, 0.83], n16=[0.84, 0.85, 0.88]), CAP)
    assert r["best_fixed_streams"] == 16 and r["tied_fixed_streams"] == [16]
    # ... unless its median is within 2% of the best's
    r = sla.rank_fixed(fixed(n8=[0.860, 0.861, 0.862], n16=[0.870, 0.871, 0.872]), CAP)
    assert r["tied_fixed_streams"] == [8, 16]


def cell(auto_fraction: float, streams: float, settle: float, tied: list[int]) -> dict:
    return {"rtt_ms": 50, "loss": 0.01, "rate_mbit": 1000, "best_fixed_streams": tied[-1],
            "knee_fixed_streams": tied[0], "tied_fixed_streams": tied,
            "fraction_of_cap": {"dwcp_auto": auto_fraction, "python_1_stream": 0.1},
            "dwcp_auto": {"streams_final": streams, "settle_s": settle, "runs": []}}  # fmt: skip


SLA = {"name": "auto, 50 ms RTT, 1% loss", "rtt_ms": 50, "loss": 0.01, "min_fraction_of_cap": 0.70,
       "max_settle_s": 5.0, "max_streams_from_best_fixed": 1}  # fmt: skip


@pytest.mark.parametrize(
    "auto_fraction,streams,settle,tied,missed",
    [
        (0.83, 16, 3.4, [16], []),
        (0.83, 15, 3.4, [16], []),
        (0.83, 11, 3.4, [8, 16], []),  # within the tied range
        (0.83, 4, 3.4, [8, 16], ["auto ended at 4 streams, outside [7, 17]"]),
        (0.69, 16, 3.4, [16], ["goodput 0.69 of the cap < 0.7"]),
        (0.83, 16, 5.1, [16], ["settled after 5.1 s > 5.0 s"]),
        (0.83, None, None, [16], ["settled after None s", "auto ended at None streams"]),
    ],
)
def test_each_clause_is_judged(sla, auto_fraction, streams, settle, tied, missed):
    (got,) = sla.check([cell(auto_fraction, streams, settle, tied)], [SLA])
    assert len(got["missed"]) == len(missed)
    for m, want in zip(got["missed"], missed):
        assert m.startswith(want), (m, want)
    other = dict(SLA, loss=0.001)  # an SLA for a cell that did not run judges nothing
    assert sla.check([cell(auto_fraction, streams, settle, tied)], [other]) == []
