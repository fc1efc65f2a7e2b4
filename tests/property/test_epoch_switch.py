"""Adaptive consensus: switching the algorithm by a committed command, under load and faults.

Every scenario runs over seeds (bounded by default, many with --run-slow); a
failure prints its seed and ``EpochSim(..., seed=N)`` replays it exactly.
Checked in every run: one history of applied commands across epochs
(``EpochSim`` raises on any divergence as it happens), equal catalogs at
the end, and every command any node applied is in the final catalog.
"""

from __future__ import annotations

import json

import pytest

from dwcp._testbase.epochsim import EpochSim, SafetyViolation, mixed_factory
from dwcp.consensus.epochs import Envelope, EpochNode, switch_command

SEEDS = {  # (default, --run-slow) seed counts; tests/conftest.py parametrizes `seed` from it
    "test_switch_under_load_loses_nothing": (10, 500),
    "test_switch_in_a_partition_and_the_minority_catches_up_by_state_transfer": (8, 300),
    "test_back_and_forth_switches_under_drops_and_duplicates": (6, 200),
    "test_switch_proposed_on_the_minority_side_waits_for_the_heal": (4, 100),
}


def _sim(n: int, seed: int, **kw) -> EpochSim:
    """Real engines: Raft epochs and PBFT epochs (Ed25519-signed) from the seed."""
    return EpochSim(n, seed, factory=mixed_factory([f"n{i}" for i in range(n)], seed), **kw)


def _all_switched(s: EpochSim, epoch: int):
    return lambda: all(n.epoch == epoch for n in s.nodes.values())


def _drained(s: EpochSim):
    return lambda: (
        len({n._snap() for n in s.nodes.values()}) == 1 and not any(n._pending for n in s.nodes.values())
    )


def test_switch_under_load_loses_nothing(seed):
    s = _sim(5, seed, drop=0.02)
    s.run(150, load=0.4)
    before = dict(s.acked)
    s.switch("bft")
    s.wait(_all_switched(s, 1), load=0.4)
    assert all(n.algorithm == "bft" for n in s.nodes.values())
    s.run(200, load=0.4)
    s.wait(_drained(s), max_ticks=3000)
    s.check_converged()
    assert set(before) <= set(s.acked)  # what was applied before the switch is still there
    assert len(s.acked) == s._cid  # and every proposal, retried across the switch, was applied once


def test_switch_in_a_partition_and_the_minority_catches_up_by_state_transfer(seed):
    s = _sim(5, seed, drop=0.03, dup=0.03)
    s.run(120, load=0.3)
    s.partition({"n0", "n1", "n2"}, {"n3", "n4"})
    s.switch("bft", at="n0")
    s.wait(lambda: all(s.nodes[i].epoch == 1 for i in ("n0", "n1", "n2")), load=0.3)
    s.switch("raft", at="n1")
    s.wait(lambda: all(s.nodes[i].epoch == 2 for i in ("n0", "n1", "n2")), load=0.3)
    s.run(100, load=0.3)
    assert s.nodes["n3"].epoch == 0 and s.nodes["n4"].epoch == 0  # cut off: they saw neither switch
    s.heal()
    s.wait(_all_switched(s, 2))
    assert s.nodes["n3"].switches == 1  # one state transfer straight to epoch 2's start
    s.wait(_drained(s), max_ticks=3000)
    s.check_converged()


def test_back_and_forth_switches_under_drops_and_duplicates(seed):
    s = _sim(4, seed, drop=0.08, dup=0.08, max_delay=6)
    for k, alg in enumerate(["bft", "raft", "bft", "raft"], start=1):
        s.run(80, load=0.3)
        s.switch(alg)
        s.wait(lambda k=k: max(n.epoch for n in s.nodes.values()) == k, load=0.3)
    s.wait(_all_switched(s, 4), max_ticks=5000)
    s.wait(_drained(s), max_ticks=5000)
    s.check_converged()
    assert len(s.acked) == s._cid


def test_switch_proposed_on_the_minority_side_waits_for_the_heal(seed):
    s = _sim(5, seed)
    s.run(100, load=0.3)
    s.partition({"n0", "n1", "n2"}, {"n3", "n4"})
    s.switch("bft", at="n4")
    s.run(400, load=0.3)
    assert all(n.epoch == 0 for n in s.nodes.values())  # no quorum on n4's side: nothing switched
    s.heal()
    s.wait(_all_switched(s, 1))
    s.wait(_drained(s), max_ticks=3000)
    s.check_converged()


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        s = _sim(5, 7, drop=0.05)
        s.run(100, load=0.3)
        s.switch("bft")
        s.run(300, load=0.3)
        runs.append((s.history, s.state()))
    assert runs[0] == runs[1]


def test_a_command_retried_across_the_switch_is_applied_once():
    s = _sim(4, 1)
    s.run(60)
    node = s.nodes["n1"]
    cmd = {"op": "version", "key": "k", "digest": "d1", "size": 1, "holder": "n1", "at": 0.0, "id": "dup-1"}
    node.propose(cmd)
    node.propose(cmd)  # proposing the same id again is a no-op while queued
    s.switch("bft", at="n2")
    s.wait(_all_switched(s, 1))
    s.wait(_drained(s))
    assert [h for h in s.history.values() if '"dup-1"' in h] == [json.dumps(cmd, sort_keys=True)]
    s.nodes["n0"].propose(cmd)  # and after it was applied, a late retry is dropped at once
    assert not s.nodes["n0"]._pending


def test_unknown_algorithm_is_refused_deterministically():
    with pytest.raises(ValueError):
        switch_command("paxos")
    s = EpochSim(3, 2)
    s.run(60)
    s.nodes["n0"].propose({"op": "switch", "algorithm": "paxos", "id": "x"})
    s.wait(_drained(s))
    assert all(n.epoch == 0 and n.algorithm == "raft" for n in s.nodes.values())


def test_a_forged_state_answer_needs_f_plus_1_identical_ones_in_bft():
    # 4 nodes, BFT involved: f = 1, so a laggard installs a later epoch only on 2 identical answers
    made = []

    def factory(i, ids, rng):
        from dwcp._testbase.epochsim import raft_factory

        made.append(i)
        return raft_factory(i, ids, rng)

    node = EpochNode("n3", ["n0", "n1", "n2", "n3"], factory("n3", ["n0", "n1", "n2", "n3"], __import__("random").Random(1)),
                     algorithm="bft")  # fmt: skip
    forged = json.dumps({"epoch": 5, "gidx": 99, "algorithm": "raft", "previous": "bft", "ids": [],
                         "catalog": json.dumps({"keys": {"evil": []}, "leases": {}, "applied_index": 99})},
                        sort_keys=True).encode()  # fmt: skip
    node.step(Envelope(5, "n0", "n3", "state", forged))
    assert node.epoch == 0 and node.gidx == 0  # one answer is not enough
    node.step(Envelope(5, "n0", "n3", "state", forged))  # nor the same node twice
    assert node.epoch == 0
    node.step(Envelope(5, "n1", "n3", "state", forged))  # two distinct nodes agree: f + 1
    assert node.epoch == 5 and node.gidx == 99
    # junk never raises
    for junk in (b"", b"{", b"[]", json.dumps({"epoch": "x"}).encode(), b"\xff" * 10):
        node.step(Envelope(6, "n2", "n3", "state", junk))
    node.step(Envelope(6, "n9", "n3", "state", forged))  # not a cluster member: ignored
    assert node.epoch == 5


def test_safety_violation_is_detected():
    # the checker itself: two different commands at one global index must raise
    s = EpochSim(3, 0)
    s._applied("n0", 1, {"id": "a"})
    with pytest.raises(SafetyViolation):
        s._applied("n1", 1, {"id": "b"})
