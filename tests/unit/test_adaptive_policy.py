"""Adaptive consensus, sans-IO: the fault detector, envelope signatures and the switch policy
(dwcp.consensus.adaptive), the no-op switches they rely on (dwcp.consensus.epochs), and the settings."""

from __future__ import annotations

import itertools
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dwcp.config import from_dict
from dwcp.consensus.adaptive import (
    CAUSE_EVIDENCE,
    CAUSE_OPERATOR,
    CAUSE_QUIET,
    Adaptive,
    AdaptiveSettings,
    FaultDetector,
    SwitchPolicy,
    envelope_signer,
    sign_envelope,
)
from dwcp.consensus.epochs import Envelope, EpochNode
from dwcp.consensus.raft import Entry
from dwcp.consensus.raft import Msg as RaftMsg
from dwcp.consensus.raft import MsgType as RaftType
from dwcp.consensus.wire import epoch_to_wire
from dwcp.errors import ConfigError, RemoteProtocolError

IDS = ["n0", "n1", "n2", "n3"]
ME = "n0"
S = AdaptiveSettings(auto_switch=True, byzantine_evidence_min=3, evidence_window_s=30.0, quiet_period_s=600.0,
                     switch_cooldown_s=120.0)  # fmt: skip


def _policy(settings: AdaptiveSettings = S, **kw) -> tuple[SwitchPolicy, FaultDetector]:
    det = FaultDetector(ME, IDS)
    return SwitchPolicy(settings, det, **kw), det


_ids = itertools.count()


def _id() -> str:
    return f"p{next(_ids)}"


def _apply(p: SwitchPolicy, cmd: dict, now: float, before: str, epoch: int = 0) -> dict:
    """What EpochNode does with ``cmd`` (a switch), told to the policy; returns the result."""
    alg = cmd["algorithm"]
    ok = alg != before and cmd.get("if_epoch", epoch) == epoch
    res = {"ok": ok, "epoch": epoch + ok}
    p.on_applied(now, 1e9 + now, cmd, res, before, alg if ok else before)
    return res


# -- the policy: Raft -> BFT --------------------------------------------------------------------------------
def test_one_sample_never_switches():
    for n_min in (2, 3, 10):
        p, det = _policy(AdaptiveSettings(byzantine_evidence_min=n_min))
        det.record("n3", "bad_signature", 10.0)
        for t in (10.0, 11.0, 1000.0, 10_000.0):
            assert p.poll(t, "raft", 0, _id) is None
    with pytest.raises(ConfigError, match="byzantine_evidence_min 1"):
        from_dict({"security": {"plaintext": True}, "consensus": {"byzantine_evidence_min": 1}})


def test_n_events_within_the_window_switch_to_bft_with_the_evidence_as_reason():
    p, det = _policy()
    det.record("n3", "bad_signature", 10.0)
    det.record("n3", "equivocation", 11.0)
    assert p.poll(11.0, "raft", 4, _id) is None  # 2 < 3
    det.record("n3", "bad_signature", 12.0)
    cmd = p.poll(12.0, "raft", 4, _id)
    assert cmd is not None
    assert cmd["op"] == "switch" and cmd["algorithm"] == "bft" and cmd["cause"] == CAUSE_EVIDENCE
    assert cmd["if_epoch"] == 4 and isinstance(cmd["id"], str)
    assert "n3: bad_signature x2, equivocation x1" in cmd["reason"]
    assert p.poll(12.5, "raft", 4, _id) is None  # one proposal in flight at a time
    _apply(p, cmd, 13.0, "raft", 4)
    assert p.outstanding is None
    assert p.counts == {(CAUSE_EVIDENCE, "bft"): 1}
    assert (
        p.history[-1]["from"] == "raft" and p.history[-1]["to"] == "bft" and "n3" in p.history[-1]["reason"]
    )


def test_evidence_window_decides_what_accumulates():
    events = [("n3", "forged", t) for t in (0.0, 40.0, 80.0)]  # one every 40 s
    for window, switches in ((30.0, False), (100.0, True)):
        p, det = _policy(AdaptiveSettings(evidence_window_s=window, quiet_period_s=600.0))
        for peer, kind, t in events:
            det.record(peer, kind, t)
        assert (p.poll(80.0, "raft", 0, _id) is not None) is switches, window


def test_byzantine_evidence_min_is_the_threshold():
    for n_min, switches in ((5, False), (4, True)):
        p, det = _policy(AdaptiveSettings(byzantine_evidence_min=n_min))
        for k in range(4):
            det.record("n2", "malformed", 1.0 + k)
        assert (p.poll(5.0, "raft", 0, _id) is not None) is switches, n_min


def test_pbft_counters_count_by_how_much_they_grew():
    p, det = _policy()
    det.observe_pbft_faults(1, {"equivocation": {"n1": 2}, "too_many_faulty": {"*": 1}}, 5.0)
    assert det.counts == {"n1": {"equivocation": 2}}
    det.observe_pbft_faults(1, {"equivocation": {"n1": 2}}, 6.0)  # unchanged: nothing new
    det.observe_pbft_faults(1, {"equivocation": {"n1": 3}}, 7.0)
    assert det.counts == {"n1": {"equivocation": 3}}
    assert p.poll(7.0, "raft", 1, _id) is not None  # 3 events within the window


def test_a_pbft_fault_seen_again_is_not_new_evidence():
    from dwcp.consensus.pbft import FaultEvent

    det = FaultDetector(ME, IDS)
    log: list[FaultEvent] = []
    n = 0
    for rep in range(5):  # the same equivocation, shown again by every resend of the vote
        log.append(FaultEvent("equivocation", "n3", 2, 17, "two commits for one slot"))
        n += 1
        det.observe_pbft_faults(1, {"equivocation": {"n3": n}}, float(rep), log)
    assert det.counts == {"n3": {"equivocation": 1}}
    log.append(
        FaultEvent("equivocation", "n3", 2, 18, "two commits for one slot")
    )  # a new slot: new evidence
    det.observe_pbft_faults(1, {"equivocation": {"n3": n + 1}}, 6.0, log)
    assert det.counts == {"n3": {"equivocation": 2}}


def test_auto_switch_off_counts_but_never_proposes():
    p, det = _policy(AdaptiveSettings(auto_switch=False))
    for k in range(50):
        det.record("n3", "bad_signature", float(k))
    assert p.poll(50.0, "raft", 0, _id) is None
    assert p.poll(10_000.0, "bft", 1, _id) is None
    assert det.counts["n3"]["bad_signature"] == 50


def test_without_bft_keys_no_switch_to_bft_is_proposed():
    p, det = _policy(can_bft=False)
    for k in range(5):
        det.record("n3", "forged", float(k))
    assert p.poll(5.0, "raft", 0, _id) is None


# -- BFT -> Raft: the quiet period, notes, hysteresis, cool-down ------------------------------------------------------
def _in_bft(settings: AdaptiveSettings = S, at: float = 100.0) -> tuple[SwitchPolicy, FaultDetector]:
    p, det = _policy(settings)
    for k in range(3):
        det.record("n3", "bad_signature", at - 3 + k)
    cmd = p.poll(at, "raft", 0, _id)
    assert cmd is not None
    _apply(p, cmd, at, "raft", 0)
    return p, det


@pytest.mark.parametrize("quiet", [60.0, 600.0])
def test_back_to_raft_after_the_quiet_period(quiet):
    s = AdaptiveSettings(quiet_period_s=quiet, switch_cooldown_s=10.0)
    p, det = _in_bft(s, at=100.0)
    assert p.poll(100.0 + quiet - 1, "bft", 1, _id) is None
    cmd = p.poll(100.0 + quiet, "bft", 1, _id, gidx=77)
    assert cmd is not None and cmd["if_gidx"] == 77  # a no-op if evidence was noted after what we applied
    assert (
        cmd is not None
        and cmd["algorithm"] == "raft"
        and cmd["cause"] == CAUSE_QUIET
        and cmd["if_epoch"] == 1
    )
    _apply(p, cmd, 100.0 + quiet, "bft", 1)
    assert p.counts[(CAUSE_QUIET, "raft")] == 1 and p.history[-1]["to"] == "raft"


def test_new_evidence_restarts_the_quiet_period():
    s = AdaptiveSettings(quiet_period_s=60.0, switch_cooldown_s=10.0)
    p, det = _in_bft(s, at=100.0)
    det.record("n3", "equivocation", 150.0)  # one event: below the threshold, yet BFT stays
    assert p.poll(165.0, "bft", 1, _id) is None
    assert p.poll(209.0, "bft", 1, _id) is None
    assert p.poll(210.0, "bft", 1, _id)["algorithm"] == "raft"


def test_hysteresis_a_trickle_neither_enters_nor_leaves_bft():
    """2 events per window: not enough to switch to BFT, but enough to stay there."""
    s = AdaptiveSettings(byzantine_evidence_min=3, evidence_window_s=30.0, quiet_period_s=60.0,
                         switch_cooldown_s=10.0)  # fmt: skip
    raft_p, raft_det = _policy(s)
    bft_p, bft_det = _in_bft(s, at=100.0)
    for t in range(110, 1000, 20):  # one event every 20 s: at most 2 in any 30 s window
        for det in (raft_det, bft_det):
            det.record("n3", "malformed", float(t))
        assert raft_p.poll(t + 0.5, "raft", 0, _id) is None
        cmd = bft_p.poll(t + 0.5, "bft", 1, _id)
        assert cmd is None or cmd["algorithm"] == "bft"  # never back to raft (a note, at most)
        if cmd is not None:
            _apply(bft_p, cmd, t + 0.6, "bft", 1)
    assert bft_p.poll(990 + 59, "bft", 1, _id) is None
    assert bft_p.poll(990 + 61, "bft", 1, _id)["algorithm"] == "raft"  # the trickle stopped at 990


def test_evidence_in_bft_is_noted_cluster_wide_at_most_once_per_window():
    s = AdaptiveSettings(evidence_window_s=30.0, quiet_period_s=60.0, switch_cooldown_s=10.0)
    p, det = _in_bft(s, at=100.0)
    for k in range(3):
        det.record("n3", "equivocation", 140.0 + k)
    note = p.poll(143.0, "bft", 1, _id)
    assert note is not None and note["algorithm"] == "bft" and note["cause"] == CAUSE_EVIDENCE
    _apply(p, note, 144.0, "bft", 1)  # a no-op where bft runs
    assert p.counts == {(CAUSE_EVIDENCE, "bft"): 1}  # not a switch
    for k in range(3):
        det.record("n3", "equivocation", 150.0 + k)
    assert p.poll(153.0, "bft", 1, _id) is None  # within the window of the last note
    assert p.poll(174.0, "bft", 1, _id)["algorithm"] == "bft"
    # another node that saw nothing: the note restarts its quiet period
    other, _ = _in_bft(s, at=100.0)
    other.on_applied(155.0, 0.0, {**note, "id": "elsewhere"}, {"ok": False, "epoch": 1}, "bft", "bft")
    assert other.poll(200.0, "bft", 1, _id) is None
    assert other.poll(215.0, "bft", 1, _id)["algorithm"] == "raft"


@pytest.mark.parametrize("cooldown", [5.0, 300.0])
def test_cooldown_spaces_switches_so_nothing_flaps(cooldown):
    s = AdaptiveSettings(evidence_window_s=30.0, quiet_period_s=60.0, switch_cooldown_s=cooldown)
    p, det = _in_bft(s, at=100.0)
    back = 100.0 + max(60.0, cooldown)
    assert p.poll(back - 0.5, "bft", 1, _id) is None  # the quiet period, and the cool-down, both count
    cmd = p.poll(back, "bft", 1, _id)
    assert cmd is not None and cmd["algorithm"] == "raft"
    _apply(p, cmd, back, "bft", 1)
    for k in range(5):  # the Byzantine node at once again
        det.record("n3", "bad_signature", back + 1 + k)
    early = p.poll(back + 6, "raft", 2, _id)
    if cooldown <= 6:
        assert early is not None and early["algorithm"] == "bft"
        return
    assert early is None
    assert p.poll(back + cooldown - 0.5, "raft", 2, _id) is None
    for _ in range(3):
        det.record("n3", "bad_signature", back + cooldown - 1)
    again = p.poll(back + cooldown, "raft", 2, _id)
    assert again is not None and again["algorithm"] == "bft"


def test_an_operator_switch_is_recorded_and_cools_down_too():
    p, det = _policy(AdaptiveSettings(switch_cooldown_s=50.0))
    p.on_applied(10.0, 123.0, {"op": "switch", "algorithm": "bft", "id": "x"}, {"ok": True, "epoch": 1}, "raft",
                 "bft")  # fmt: skip
    assert p.counts == {(CAUSE_OPERATOR, "bft"): 1} and p.history[-1]["at"] == 123.0
    p.on_applied(20.0, 124.0, {"op": "switch", "algorithm": "raft", "id": "y"}, {"ok": True, "epoch": 2}, "bft",
                 "raft")  # fmt: skip
    for k in range(5):
        det.record("n1", "forged", 21.0 + k)
    assert p.poll(30.0, "raft", 2, _id) is None  # 10 s after the operator's switch: cooling down
    assert p.poll(70.0, "raft", 2, _id) is None  # cooled down, but that evidence is out of the window now
    for _ in range(3):
        det.record("n1", "forged", 69.0)
    assert p.poll(70.0, "raft", 2, _id) is not None


def test_a_stale_proposal_of_ours_is_cleared_by_its_no_op():
    p, det = _policy()
    for k in range(3):
        det.record("n3", "forged", float(k))
    cmd = p.poll(3.0, "raft", 0, _id)
    assert p.poll(4.0, "raft", 0, _id) is None
    res = _apply(p, cmd, 5.0, "bft", 1)  # somebody else's switch came first: ours is applied in epoch 1
    assert res["ok"] is False and p.outstanding is None and not p.counts


# -- the detector ---------------------------------------------------------------------------------------------------
def test_raft_vote_equivocation_is_caught_by_the_node_voted_for():
    det = FaultDetector(ME, IDS)
    vote = RaftMsg(RaftType.VOTE, "n2", ME, 7, last_index=3, last_term=2)
    grant = RaftMsg(RaftType.VOTE_RESP, "n2", ME, 7, granted=True)
    det.observe_raft(0, "n2", vote, 1.0)
    assert not det.counts
    det.observe_raft(0, "n2", RaftMsg(RaftType.VOTE_RESP, "n2", ME, 7, granted=False), 1.5)
    det.observe_raft(0, "n2", grant, 2.0)
    assert det.counts == {"n2": {"equivocation": 1}}
    det.observe_raft(1, "n2", grant, 3.0)  # another epoch: another Raft, terms start again
    det.observe_raft(0, "n2", RaftMsg(RaftType.VOTE_RESP, "n2", ME, 8, granted=True), 3.0)  # another term
    assert det.counts == {"n2": {"equivocation": 1}}
    # a leader of term 9 (APPEND) that also grants us its vote in term 9
    det.observe_raft(0, "n1", RaftMsg(RaftType.APPEND, "n1", ME, 9), 4.0)
    det.observe_raft(0, "n1", RaftMsg(RaftType.VOTE_RESP, "n1", ME, 9, granted=True), 4.0)
    assert det.counts["n1"] == {"equivocation": 1}


def test_raft_entry_equivocation_and_what_is_not_evidence():
    det = FaultDetector(ME, IDS)

    def append(src: str, term: int, *entries: Entry) -> RaftMsg:
        return RaftMsg(RaftType.APPEND, src, ME, term, entries=entries)

    det.observe_raft(0, "n1", append("n1", 3, Entry(3, 5, "data", b"a")), 1.0)
    det.observe_raft(0, "n1", append("n1", 3, Entry(3, 5, "data", b"a")), 1.1)  # a resend: the same entry
    det.observe_raft(0, "n2", append("n2", 4, Entry(3, 5, "data", b"b"), Entry(4, 6, "noop", b"")), 1.2)
    assert not det.counts  # n2 relays term 3's entry: n1's word, not n2's
    det.observe_raft(0, "n1", append("n1", 3, Entry(3, 5, "data", b"X")), 2.0)
    assert det.counts == {"n1": {"equivocation": 1}}
    # a Raft message whose sender is not its envelope's: forged, by the envelope's (authenticated) sender
    det.observe_raft(0, "n3", append("n1", 3), 3.0)
    assert det.counts["n3"] == {"forged": 1}


def test_the_detector_is_bounded_and_ignores_non_members():
    det = FaultDetector(ME, IDS, max_events=10)
    assert not det.record("n9", "forged", 1.0)
    assert not det.record(ME, "forged", 1.0)
    assert not det.record("n1", "made_up_kind", 1.0)
    assert not det.record(None, "forged", 1.0)
    for k in range(100):
        det.record("n1", "forged", float(k))
    assert len(det.events) == 10 and det.counts == {"n1": {"forged": 100}}
    for t in range(20_000):
        det.observe_raft(0, "n2", RaftMsg(RaftType.VOTE, "n2", ME, t), 1.0)
    assert len(det._claims) <= 4096


# -- envelope signatures and Adaptive.incoming -------------------------------------------------------------------------
def _keys():
    rng = random.Random(1)
    sk = {i: Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for i in IDS}
    return sk, {i: k.public_key() for i, k in sk.items()}


def _hint(src: str, dst: str = ME, epoch: int = 0) -> dict:
    return epoch_to_wire(Envelope(epoch, src, dst, "hint"))


def test_envelope_signatures_name_their_signer():
    sk, pk = _keys()
    d = sign_envelope(_hint("n1"), sk["n1"])
    assert envelope_signer(d, pk, "n1") == "n1"
    assert envelope_signer({**d, "epoch": 1}, pk, "n1") is None  # tampered
    forged = sign_envelope(_hint("n1"), sk["n3"])  # n3 claims to be n1
    assert envelope_signer(forged, pk, "n1") == "n3"
    assert envelope_signer(_hint("n1"), pk, "n1") is None  # unsigned


def _adaptive(**kw) -> Adaptive:
    sk, pk = _keys()
    return Adaptive(ME, IDS, S, signer=sk[ME], verify_keys=pk, **kw)


def test_incoming_counts_forged_malformed_and_badly_signed_envelopes():
    sk, pk = _keys()
    a = _adaptive()
    assert a.signing

    def alg(_epoch: int) -> str:
        return "raft"

    good = sign_envelope(_hint("n1"), sk["n1"])
    assert a.incoming(good, "n1", 1.0, alg) == Envelope(0, "n1", ME, "hint")
    # TLS says n2, the envelope says n1: refused, and counted against n2
    with pytest.raises(RemoteProtocolError, match="claims to be from n1"):
        a.incoming(good, "n2", 2.0, alg)
    assert a.detector.counts == {"n2": {"forged": 1}}
    # a malformed envelope: refused, counted against the link's identity
    with pytest.raises(RemoteProtocolError):
        a.incoming({**good, "kind": "nonsense"}, "n3", 3.0, alg)
    with pytest.raises(RemoteProtocolError, match="epoch envelopes only"):
        a.incoming({"type": "vote"}, "n3", 3.0, alg)
    assert a.detector.counts["n3"] == {"malformed": 2}
    # plaintext: a bad signature is dropped and counted against the claimed sender...
    assert a.incoming({**good, "sig": "00" * 64}, None, 4.0, alg) is None
    assert a.incoming(_hint("n1"), None, 4.0, alg) is None  # ... as is a missing one
    assert a.detector.counts["n1"] == {"bad_signature": 2}
    # ... and an envelope n3 signed as n1 is counted against n3, the signer
    assert a.incoming(sign_envelope(_hint("n1"), sk["n3"]), None, 5.0, alg) is None
    assert a.detector.counts["n3"] == {"malformed": 2, "forged": 1}
    # not for us: refused, no evidence
    with pytest.raises(RemoteProtocolError, match="not for this cluster node"):
        a.incoming(sign_envelope(_hint("n1", dst="n2"), sk["n1"]), "n1", 6.0, alg)
    st = a.status(6.0)
    assert st["evidence"]["n3"] == {"forged": 1, "malformed": 2} and st["evidence_in_window"] == 6


def test_outgoing_envelopes_are_signed_and_unsigned_without_keys():
    a = _adaptive()
    node = EpochNode(ME, IDS, lambda alg, ep: None)  # type: ignore[arg-type,return-value]
    (d,) = a.outgoing(Envelope(0, ME, "n1", "hint"), node)
    _, pk = _keys()
    assert envelope_signer(d, pk, ME) == ME
    b = Adaptive(ME, IDS, S)  # no keys: nothing signed, and no switch to bft either
    (d,) = b.outgoing(Envelope(0, ME, "n1", "hint"), node)
    assert "sig" not in d and not b.signing and not b.policy.can_bft


# -- the epoch node: a switch that changes nothing is a no-op -----------------------------------------------------------
def test_duplicate_and_stale_switches_are_no_ops():
    from dwcp._testbase.epochsim import EpochSim

    s = EpochSim(3, 5)
    s.run(60)
    s.nodes["n0"].propose({"op": "switch", "algorithm": "raft", "id": "same"})  # what runs already
    s.nodes["n1"].propose({"op": "switch", "algorithm": "bft", "if_epoch": 3, "id": "stale"})  # another epoch
    s.wait(lambda: all(n.applied("same") and n.applied("stale") for n in s.nodes.values()))
    assert all(n.epoch == 0 and n.algorithm == "raft" and n.switches == 0 for n in s.nodes.values())
    # proposed at global index g, applied after another switch command (the no-ops above) committed: a no-op
    g = s.nodes["n2"].last_switch_gidx
    assert g > 0
    s.nodes["n2"].propose({"op": "switch", "algorithm": "bft", "if_gidx": g - 1, "id": "late"})
    s.nodes["n2"].propose({"op": "switch", "algorithm": "bft", "if_gidx": "junk", "id": "junk"})
    s.wait(lambda: all(n.applied("late") and n.applied("junk") for n in s.nodes.values()))
    assert all(n.epoch == 0 for n in s.nodes.values())
    for k in range(3):  # three nodes propose the same switch at once: one epoch, not three
        s.nodes[f"n{k}"].propose({"op": "switch", "algorithm": "bft", "if_epoch": 0, "id": f"dup{k}"})
    s.wait(lambda: all(n.applied(f"dup{k}") for n in s.nodes.values() for k in range(3)))
    assert all(n.epoch == 1 and n.algorithm == "bft" for n in s.nodes.values())


# -- the settings ----------------------------------------------------------------------------------------------------------
def test_settings_defaults_and_problems():
    cfg = from_dict({"security": {"plaintext": True}})
    cc = cfg.consensus
    assert AdaptiveSettings.from_config(cc) == AdaptiveSettings()
    assert (cc.auto_switch, cc.byzantine_evidence_min, cc.evidence_window_s, cc.quiet_period_s,
            cc.switch_cooldown_s) == (True, 3, 30.0, 600.0, 120.0)  # fmt: skip
    bad = {"byzantine_evidence_min": 0, "evidence_window_s": 0.0, "quiet_period_s": -1.0,
           "switch_cooldown_s": -5.0}  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        from_dict({"security": {"plaintext": True}, "consensus": bad})
    probs = "\n".join(ei.value.problems)
    for name in bad:
        assert f"consensus.{name}" in probs, probs
    with pytest.raises(ConfigError, match="quiet_period_s 10 is shorter than evidence_window_s 30"):
        from_dict({"security": {"plaintext": True}, "consensus": {"quiet_period_s": 10.0}})
