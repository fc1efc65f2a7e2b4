"""Adaptive mode in the simulator: a Byzantine node makes the cluster switch Raft -> BFT by itself, the
cluster stays in BFT while the node misbehaves, and returns to Raft after the quiet period once it behaves;
a correct cluster on a bad network never switches.  Nothing applied is lost on the way.

``AdaptiveSim`` runs each node's ``Adaptive`` (detector, signatures, policy) on the envelopes' wire form,
as the daemon does; a failure prints its seed and ``AdaptiveSim(..., seed=N)`` replays it exactly.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwcp._testbase.adaptivesim import AdaptiveSim
from dwcp.consensus.adaptive import CAUSE_CAUGHT_UP, CAUSE_EVIDENCE, CAUSE_QUIET, AdaptiveSettings
from dwcp.consensus.byzantine import MODES

SEEDS = {  # (default, --run-slow) seed counts; tests/conftest.py parametrizes `seed` from it
    "test_a_byzantine_node_switches_the_cluster_to_bft_and_quiet_brings_raft_back": (1, 30),
    "test_in_plaintext_the_signature_names_the_byzantine_node": (1, 20),
}

# 50 ms ticks: evidence counts over 2 s (40 ticks), 10 s (200 ticks) without it go back to raft
S = AdaptiveSettings(
    byzantine_evidence_min=3, evidence_window_s=2.0, quiet_period_s=10.0, switch_cooldown_s=3.0
)
CORRECT = ["n0", "n1", "n2"]
BAD = "n3"


def _drained(s: AdaptiveSim):
    return lambda: (
        len({n._snap() for n in s.nodes.values()}) == 1 and not any(n._pending for n in s.nodes.values())
    )


def _versions(s: AdaptiveSim) -> set[str]:
    return {cid for cid, cmd in s.acked.items() if cmd.get("op") == "version"}


def _byzantine_round_trip(s: AdaptiveSim, mode: str) -> None:
    s.run(100, load=0.3)
    assert s.algorithms() == {"raft"} and not s.proposals
    before = _versions(s)
    s.set_byzantine(BAD, mode)
    s.wait(lambda: s.algorithms(CORRECT) == {"bft"}, max_ticks=2000, load=0.3)
    switched_at = s.now
    # it keeps misbehaving for longer than the quiet period: the cluster stays in BFT (no flapping)
    s.run(int(1.5 * S.quiet_period_s / s.tick_s), load=0.3)
    assert all(s.nodes[i].epoch == 1 and s.nodes[i].algorithm == "bft" for i in CORRECT), s.state()
    s.set_byzantine(BAD, None)  # it behaves again
    behaved_at = s.t
    s.wait(lambda: s.algorithms() == {"raft"}, max_ticks=3000, load=0.3)
    last_evidence = max(s.adaptive[i].detector.last_at or 0.0 for i in CORRECT)
    assert last_evidence <= behaved_at + 1.0  # (what was in flight)
    back_at = min(h["at"] for i in CORRECT for h in s.adaptive[i].policy.history if h["to"] == "raft")
    # not before a quiet period after the last evidence (less a window: a node notes evidence cluster-wide once
    # it has byzantine_evidence_min of them in a window), and not much after it
    assert back_at - last_evidence >= S.quiet_period_s - S.evidence_window_s, (back_at, last_evidence)
    assert back_at - behaved_at <= S.quiet_period_s + 15.0
    s.wait(_drained(s), max_ticks=3000)
    s.check_converged()  # equal catalogs, and every version any node applied is in them
    assert before <= _versions(s)
    applied = {CAUSE_EVIDENCE: 0, CAUSE_QUIET: 0}
    for i in CORRECT:
        a = s.adaptive[i]
        hist = [(h["from"], h["to"], h["cause"]) for h in a.policy.history]
        # each correct node switched to bft on evidence and back to raft, applying each switch or -- lagging --
        # installing the new epoch's state from its peers
        assert len(hist) == 2, (i, hist)
        assert hist[0] in (("raft", "bft", CAUSE_EVIDENCE), ("raft", "bft", CAUSE_CAUGHT_UP)), (i, hist)
        assert hist[1] in (("bft", "raft", CAUSE_QUIET), ("bft", "raft", CAUSE_CAUGHT_UP)), (i, hist)
        if hist[0][2] == CAUSE_EVIDENCE:
            assert f"{BAD}:" in a.policy.history[0]["reason"], a.policy.history[0]
        assert set(a.detector.counts) <= {BAD}, (i, a.detector.counts)  # nobody else is blamed
        for (cause, _to), n in a.policy.counts.items():
            applied[cause] += n
        assert s.nodes[i].epoch == 2
    assert applied[CAUSE_EVIDENCE] >= 1 and applied[CAUSE_QUIET] >= 1, applied  # (the others caught up)
    assert any(BAD in a.detector.counts for a in s.adaptive.values())
    # who proposed raft -> bft held evidence against the Byzantine node
    first = [(t, i, c) for t, i, c in s.proposals if c["if_epoch"] == 0 and c["algorithm"] == "bft"]
    assert first and all(i != BAD and t <= switched_at * s.tick_s for t, i, c in first)
    assert all(BAD in c["reason"] for _, _, c in first)


@pytest.mark.parametrize("mode", MODES)
def test_a_byzantine_node_switches_the_cluster_to_bft_and_quiet_brings_raft_back(seed, mode):
    _byzantine_round_trip(AdaptiveSim(4, seed, settings=S, drop=0.02), mode)


@pytest.mark.parametrize("mode", ["badsig", "forge"])
def test_in_plaintext_the_signature_names_the_byzantine_node(seed, mode):
    """No TLS identity on the links: a forged envelope is caught by whose key signed it."""
    _byzantine_round_trip(AdaptiveSim(4, seed, settings=S, authenticated=False), mode)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), drop=st.sampled_from([0.0, 0.05, 0.15]), dup=st.sampled_from([0.0, 0.1]),
       cut=st.booleans())  # fmt: skip
def test_a_correct_cluster_on_a_bad_network_never_switches(seed, drop, dup, cut):
    s = AdaptiveSim(4, seed, settings=S, drop=drop, dup=dup, max_delay=6)
    s.run(150, load=0.3)
    if cut:  # a partition, and a node cut off alone: elections, lagging logs, catching up
        s.partition({"n0", "n1", "n2"}, {"n3"})
        s.run(150, load=0.3)
        s.heal()
    s.run(250, load=0.3)
    assert s.algorithms() == {"raft"} and all(n.epoch == 0 for n in s.nodes.values())
    assert not s.proposals
    assert all(not a.detector.counts for a in s.adaptive.values()), {
        i: a.detector.counts for i, a in s.adaptive.items()
    }


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_a_correct_cluster_in_bft_finds_no_evidence_and_returns_to_raft(seed):
    """The operator switched to BFT; nobody misbehaves: no evidence, and after the quiet period raft again."""
    s = AdaptiveSim(4, seed, settings=S, drop=0.05, dup=0.05)
    s.run(100, load=0.3)
    s.switch("bft")
    s.wait(lambda: s.algorithms() == {"bft"}, max_ticks=2000, load=0.3)
    s.wait(lambda: s.algorithms() == {"raft"}, max_ticks=2000, load=0.3)
    assert all(c["cause"] == CAUSE_QUIET for _, _, c in s.proposals)
    assert all(not a.detector.counts for a in s.adaptive.values())
    s.wait(_drained(s), max_ticks=3000)
    s.check_converged()
