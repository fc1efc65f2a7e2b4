"""perf/bench_consensus.py's harness: the Raft cluster it measures, in this process or one process per node."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

PERF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "perf")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(
        PERF
    )  # the node processes import the script by name (spawned: sys.path goes along)
    mod = importlib.import_module("bench_consensus")
    yield mod
    sys.modules.pop("bench_consensus", None)


@pytest.mark.parametrize("processes", [False, True], ids=["in-process", "processes"])
def test_every_proposal_commits_and_a_new_leader_takes_over_when_the_leader_crashes(
    tmp_path, bench, processes
):
    out = bench.run(3, str(tmp_path), rate=100, seconds=0.3, failover=True, processes=processes)
    assert out["nodes"] == 3
    assert out["latency_ms"]["n"] == 30  # every proposal at the fixed rate was applied on the leader
    assert out["max_ops_s"] > 0
    assert out["failover_s"] > 0  # a surviving node became leader and committed a proposal


def test_a_node_process_reports_its_failures_to_the_caller(tmp_path, bench):
    c = bench.Cluster(1, str(tmp_path), processes=True)
    try:
        lead = c.wait_leader()
        c.nodes[lead].propose(1, 5)
        with pytest.raises(RuntimeError, match="no_such_method"):
            c.nodes[lead].no_such_method()
        assert c.nodes[lead].leads()  # the node serves on after a failed call
    finally:
        c.close()
