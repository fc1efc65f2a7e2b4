"""The PBFT core, message by message (sans-IO: no clock, no sockets; real Ed25519 keys)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from dwcp.consensus.catalog import Catalog
from dwcp.consensus.pbft import (
    NULL_DIGEST,
    Committed,
    Envelope,
    Msg,
    MsgType,
    PbftNode,
    Status,
    chain_next,
    proofs_digest,
    request_digest,
)
from dwcp.consensus.pbft_storage import FilePbftStorage, MemoryPbftStorage
from dwcp.errors import InternalError, LocalProtocolError, RemoteProtocolError, StorageError

KW = {"checkpoint_interval": 4, "view_change_ticks": 10}


def make(n: int = 4, **kw) -> tuple[dict[str, PbftNode], dict[str, Ed25519PrivateKey]]:
    rng = random.Random(7)
    ids = [f"n{i}" for i in range(n)]
    sk = {i: Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for i in ids}
    pk = {i: k.public_key() for i, k in sk.items()}
    kw = {**KW, **kw}
    return {i: PbftNode(i, ids, sk[i], pk, **kw) for i in ids}, sk


def reborn(node: PbftNode, storage, **kw) -> PbftNode:
    """A new node object (a restarted process) from ``storage``, with ``node``'s identity and keys."""
    return PbftNode(node.id, node.ids, node.signer, node.keys, storage=storage, **{**KW, **kw})


Drop = Callable[[str, Envelope], bool]


def pump(
    nodes: dict[str, PbftNode], drop: Drop | None = None, rounds: int = 200
) -> dict[str, list[Committed]]:
    """Deliver every message at once until the network is quiet; the executed entries per node."""
    out: dict[str, list[Committed]] = {i: [] for i in nodes}
    for _ in range(rounds):
        moved = False
        for i, nd in nodes.items():
            r = nd.ready()
            out[i] += r.committed
            for e in r.messages:
                if drop is None or not drop(i, e):
                    nodes[e.dst].step(e.msg, i)
                    moved = True
        if not moved:
            break
    return out


def tick_all(nodes: dict[str, PbftNode], k: int, drop: Drop | None = None) -> dict[str, list[Committed]]:
    out: dict[str, list[Committed]] = {i: [] for i in nodes}
    for _ in range(k):
        for nd in nodes.values():
            nd.tick()
        for i, cs in pump(nodes, drop).items():
            out[i] += cs
    return out


def signed(sk: dict[str, Ed25519PrivateKey], m: Msg, signer: str | None = None) -> Msg:
    return replace(m, sig=sk[signer or m.sender].sign(m.body()))


def request(sk, origin: str, rid: int, data: bytes) -> Msg:
    return signed(
        sk, Msg(MsgType.REQUEST, origin, seq=rid, data=data, digest=request_digest(origin, rid, data))
    )


def faults(node: PbftNode, kind: str) -> dict[str, int]:
    return node.faults.get(kind, {})


# -- the normal case ---------------------------------------------------------------------------------------
def test_a_proposal_at_a_backup_commits_everywhere_in_sequence_order():
    nodes, _ = make()
    nodes["n2"].propose(b"a")
    nodes["n3"].propose(b"b")
    out = pump(nodes)
    for i, cs in out.items():
        assert [c.seq for c in cs] == [1, 2], i
        assert sorted(c.data for c in cs) == [b"a", b"b"] and all(c.kind == "data" for c in cs)
    assert len({tuple(cs) for cs in out.values()}) == 1
    assert all(not nd.faults for nd in nodes.values())
    # the catalog applies them
    cat = Catalog()
    for c in out["n0"]:
        cat.apply(c.seq, c.data)
    assert cat.applied_index == 2


def test_every_message_is_signed_by_its_sender_and_a_request_is_ordered_once():
    nodes, _ = make()
    d = nodes["n1"].propose(b"x")
    msgs = nodes["n1"].ready().messages
    assert {e.dst for e in msgs} == {"n0", "n2", "n3"} and all(e.msg.digest == d for e in msgs)
    nodes["n1"].step(msgs[0].msg, "n1")  # its own message back: ignored
    for e in msgs:
        nodes[e.dst].step(e.msg, "n1")
        nodes[e.dst].step(e.msg, "n1")  # a duplicate changes nothing
    out = pump(nodes)
    assert [c.seq for c in out["n0"]] == [1]


def test_quorums_are_2f_plus_1_of_3f_plus_1():
    assert make(4)[0]["n0"].quorum == 3 and make(7)[0]["n0"].quorum == 5 and make(7)[0]["n0"].f == 2
    nodes, _ = make(7)
    nodes["n3"].propose(b"seven")
    out = pump(nodes, drop=lambda src, e: src in ("n5", "n6") or e.dst in ("n5", "n6"))  # f = 2 silent
    assert all(out[i] for i in ("n0", "n1", "n2", "n3", "n4"))


def test_no_commit_without_a_quorum():
    nodes, _ = make()
    nodes["n1"].propose(b"x")
    out = pump(nodes, drop=lambda src, e: src in ("n2", "n3") or e.dst in ("n2", "n3"))
    assert not any(out.values())


# -- fault detection, one by one -------------------------------------------------------------------------
def _first(nodes: dict[str, PbftNode], src: str, t: MsgType) -> Msg:
    return next(e.msg for e in nodes[src].ready().messages if e.msg.type is t)


def test_a_tampered_payload_is_a_bad_signature():
    nodes, _ = make()
    nodes["n1"].propose(b"x")
    m = _first(nodes, "n1", MsgType.REQUEST)
    nodes["n2"].step(replace(m, digest="ab" * 32), "n1")
    assert faults(nodes["n2"], "bad_signature") == {"n1": 1}
    nodes["n2"].step(replace(m, sig=bytes(64)), "n1")  # forged
    assert faults(nodes["n2"], "bad_signature") == {"n1": 2}
    assert not nodes["n2"].requests


def test_a_message_claiming_another_sender():
    nodes, sk = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    nodes["n2"].step(pp, "n3")  # n3 relays the primary's genuine pre-prepare as its own
    assert faults(nodes["n2"], "wrong_sender") == {"n3": 1}
    nodes["n2"].step(signed(sk, replace(pp, sender="n0"), signer="n3"), "n3")
    assert faults(nodes["n2"], "wrong_sender") == {"n3": 2}
    nodes["n2"].step(signed(sk, replace(pp, sender="n0"), signer="n3"), "n0")  # signed by the wrong key
    assert faults(nodes["n2"], "bad_signature") == {"n0": 1}
    assert not nodes["n2"].pps


def test_a_digest_that_does_not_match_the_payload():
    nodes, sk = make()
    req = request(sk, "n1", 1, b"x")
    bad = signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, "cd" * 32, proofs=(req,)))
    nodes["n2"].step(bad, "n0")
    assert faults(nodes["n2"], "bad_payload") == {"n0": 1}


def test_a_pre_prepare_from_a_node_that_is_not_the_primary():
    nodes, sk = make()
    req = request(sk, "n3", 1, b"x")
    pp = signed(sk, Msg(MsgType.PRE_PREPARE, "n3", 0, 1, req.digest, proofs=(req,)))
    nodes["n1"].step(pp, "n3")
    assert faults(nodes["n1"], "not_primary") == {"n3": 1}
    assert not nodes["n1"].pps and not nodes["n1"].ready().messages


def test_a_primary_that_sends_two_pre_prepares_for_one_slot_is_caught_and_voted_out():
    nodes, sk = make()
    r1, r2 = request(sk, "n1", 1, b"x"), request(sk, "n1", 2, b"y")
    for r in (r1, r2):
        nodes["n1"].step(signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, r.digest, proofs=(r,))), "n0")
    assert faults(nodes["n1"], "equivocation") == {"n0": 1}
    assert nodes["n1"].status is Status.VIEW_CHANGE and nodes["n1"].view == 1


def test_a_primary_that_tells_two_backups_two_things_is_caught_through_the_prepares():
    nodes, sk = make()
    r1, r2 = request(sk, "n1", 1, b"x"), request(sk, "n1", 2, b"y")
    nodes["n1"].step(signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, r1.digest, proofs=(r1,))), "n0")
    nodes["n2"].step(signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, r2.digest, proofs=(r2,))), "n0")
    prep2 = _first(nodes, "n2", MsgType.PREPARE)  # carries the primary's signature on its pre-prepare
    nodes["n1"].ready()
    nodes["n1"].step(prep2, "n2")
    assert faults(nodes["n1"], "equivocation") == {"n0": 1}
    assert nodes["n1"].status is Status.VIEW_CHANGE


@pytest.mark.parametrize("t", [MsgType.PREPARE, MsgType.COMMIT])
def test_double_voting_in_prepare_and_commit(t):
    nodes, sk = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    nodes["n1"].step(pp, "n0")
    nodes["n1"].ready()
    for d in (pp.digest, "ee" * 32):
        nodes["n1"].step(signed(sk, Msg(t, "n2", 0, 1, d)), "n2")
    assert faults(nodes["n1"], "equivocation") == {"n2": 1}


def test_a_commit_for_another_digest_than_the_prepared_one():
    nodes, sk = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    for i in ("n2", "n3"):
        nodes["n1"].step(signed(sk, Msg(MsgType.PREPARE, i, 0, 1, pp.digest)), i)
    nodes["n1"].step(pp, "n0")
    assert (0, 1) in nodes["n1"].sent_commit
    nodes["n1"].step(signed(sk, Msg(MsgType.COMMIT, "n3", 0, 1, "ee" * 32)), "n3")
    assert faults(nodes["n1"], "conflicting_commit") == {"n3": 1}


def test_evidence_against_more_than_f_nodes_is_reported_as_too_many_faulty():
    nodes, sk = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    nodes["n1"].step(pp, "n0")
    for i in ("n2", "n3"):  # two of four equivocate: f = 1 is exceeded
        for d in (pp.digest, "ee" * 32):
            nodes["n1"].step(signed(sk, Msg(MsgType.PREPARE, i, 0, 1, d)), i)
    assert faults(nodes["n1"], "too_many_faulty") == {"*": 1}
    assert nodes["n1"].suspects == {"n2", "n3"}
    assert any(e.kind == "too_many_faulty" for e in nodes["n1"].fault_events)


def test_a_certified_checkpoint_that_differs_from_our_history_is_too_many_faulty():
    nodes, sk = make()
    for k in range(4):
        nodes["n1"].propose(b"%d" % k)
    # n1 never hears the others' checkpoints
    pump(nodes, drop=lambda src, e: e.msg.type is MsgType.CHECKPOINT and e.dst == "n1")
    n1 = nodes["n1"]
    assert n1.last_exec == 4 and n1.h == 0
    for i in ("n0", "n2", "n3"):  # 2f+1 sign another history
        n1.step(signed(sk, Msg(MsgType.CHECKPOINT, i, seq=4, digest="ab" * 32)), i)
    assert faults(n1, "too_many_faulty") == {"*": 1} and n1.h == 0  # reported, not adopted


def test_a_view_change_with_a_certificate_that_does_not_hold():
    nodes, sk = make()
    r = request(sk, "n1", 1, b"x")
    pp = signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, r.digest, proofs=(r,)))
    prep = signed(sk, Msg(MsgType.PREPARE, "n2", 0, 1, r.digest))  # one prepare: 2f = 2 are needed
    proofs = (pp, prep)
    vc = signed(sk, Msg(MsgType.VIEW_CHANGE, "n3", 1, 0, proofs_digest(proofs), proofs=proofs))
    nodes["n1"].step(vc, "n3")
    assert faults(nodes["n1"], "bad_view_change") == {"n3": 1}
    assert "n3" not in nodes["n1"].vcs


def _view_change_to_1(nodes, sk, prepared: bool) -> tuple[list[Msg], Msg]:
    """n0 (primary of view 0) is silent; a request is prepared (or not); n1..n3 vote for view 1."""
    nodes["n1"].propose(b"x")
    pump(nodes, drop=lambda src, e: src == "n0" or e.dst == "n0" or (not prepared and e.msg.type is MsgType.PREPARE)
         or e.msg.type is MsgType.COMMIT)  # fmt: skip
    vcs = []
    for i in ("n1", "n2", "n3"):
        nodes[i]._start_view_change(1, "test")
        vcs.append(next(e.msg for e in nodes[i].ready().messages if e.msg.type is MsgType.VIEW_CHANGE))
    return vcs, vcs[0]


def test_a_new_view_whose_proofs_do_not_justify_it():
    nodes, sk = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    for i in ("n1", "n2", "n3"):
        nodes[i].step(pp, "n0")
    pump(nodes, drop=lambda src, e: e.msg.type is MsgType.COMMIT)  # prepared everywhere, committed nowhere
    vcs = []
    for i in ("n1", "n2", "n3"):
        nodes[i]._start_view_change(1, "test")
        vcs.append(next(e.msg for e in nodes[i].ready().messages if e.msg.type is MsgType.VIEW_CHANGE))
    assert all(any(p.type is MsgType.PRE_PREPARE for p in vc.proofs) for vc in vcs)
    # the new primary (n1) drops the prepared request: a null pre-prepare instead
    null = signed(sk, Msg(MsgType.PRE_PREPARE, "n1", 1, 1, NULL_DIGEST))
    proofs = (*vcs, null)
    nv = signed(sk, Msg(MsgType.NEW_VIEW, "n1", 1, 0, proofs_digest(proofs), proofs=proofs))
    nodes["n2"].step(nv, "n1")
    assert faults(nodes["n2"], "bad_new_view") == {"n1": 1}
    assert nodes["n2"].status is Status.VIEW_CHANGE and nodes["n2"].view == 2  # on to the next primary
    # too few view changes
    proofs = (*vcs[:2],)
    nv = signed(sk, Msg(MsgType.NEW_VIEW, "n1", 1, 0, proofs_digest(proofs), proofs=proofs))
    nodes["n3"].step(nv, "n1")
    assert faults(nodes["n3"], "bad_new_view") == {"n1": 1}
    # from a node that is not the new primary
    nv = signed(sk, Msg(MsgType.NEW_VIEW, "n3", 1, 0, proofs_digest(proofs), proofs=proofs))
    nodes["n1"].step(nv, "n3")  # n1, still waiting in view 1
    assert faults(nodes["n1"], "not_primary") == {"n3": 1}


def test_the_honest_new_view_re_issues_the_prepared_request_and_it_commits():
    nodes, _ = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    for i in ("n1", "n2", "n3"):
        nodes[i].step(pp, "n0")
    pump(nodes, drop=lambda src, e: e.msg.type is MsgType.COMMIT)
    for i in ("n1", "n2", "n3"):
        nodes[i]._start_view_change(1, "test")
    out = pump(nodes, drop=lambda src, e: src == "n0" or e.dst == "n0")
    for i in ("n1", "n2", "n3"):
        assert nodes[i].view == 1 and nodes[i].status is Status.NORMAL
        assert [(c.seq, c.data) for c in out[i]] == [(1, b"x")]  # the same seq as in view 0
    assert not any(nd.faults for nd in nodes.values())


def test_view_change_after_a_silent_primary():
    nodes, _ = make()
    silent = lambda src, e: src == "n0" or e.dst == "n0"  # noqa: E731
    nodes["n2"].propose(b"x")
    out = tick_all(nodes, 9, silent)
    assert not any(out.values()) and all(nodes[i].view == 0 for i in ("n1", "n2", "n3"))
    out = tick_all(nodes, 5, silent)
    for i in ("n1", "n2", "n3"):
        assert nodes[i].view == 1 and nodes[i].status is Status.NORMAL and nodes[i].primary() == "n1"
        assert [c.data for c in out[i]] == [b"x"]
    # the old primary catches up with the new view and the entry when it is back
    out = tick_all(nodes, 45)
    assert [c.data for c in out["n0"]] == [b"x"] and nodes["n0"].view == 1
    nodes["n0"].propose(b"y")
    out = tick_all(nodes, 5)
    assert all([c.data for c in out[i]] == [b"y"] for i in nodes)


# -- checkpoints and garbage collection -------------------------------------------------------------------
def test_checkpoints_become_stable_and_the_log_is_collected():
    nodes, sk = make(checkpoint_interval=4)
    for k in range(10):
        nodes[f"n{k % 4}"].propose(b"%d" % k)
        pump(nodes)
    for nd in nodes.values():
        assert nd.last_exec == 10 and nd.h == 8 and len(nd.stable_proof) == 3
        assert all(n > 8 for (_, n) in [*nd.pps, *nd.prepares, *nd.commits])
        assert all(s > 8 for s in [*nd.pcerts, *nd.ckpts, *nd.ccerts])
    n1 = nodes["n1"]
    # below h and above H = h + L: ignored
    for seq in (8, 8 + n1.L + 1):
        n1.step(signed(sk, Msg(MsgType.PREPARE, "n2", 0, seq, "ab" * 32)), "n2")
        assert (0, seq) not in n1.prepares
    # the chain digest goes on from the certified one
    d9, d10 = n1.history[9].digest, n1.history[10].digest
    assert n1.chain == chain_next(chain_next(n1.stable_digest, 9, d9), 10, d10)


def test_the_primary_stops_at_the_high_watermark_until_a_checkpoint_is_stable():
    nodes, _ = make(checkpoint_interval=2, log_window=4)
    for k in range(6):
        nodes["n1"].propose(b"%d" % k)
    pump(nodes, drop=lambda src, e: e.msg.type is MsgType.CHECKPOINT)
    assert nodes["n0"].next_seq == 4 and nodes["n1"].last_exec == 4
    out = tick_all(nodes, 6)  # checkpoints are resent and get through now
    assert nodes["n1"].last_exec == 6 and nodes["n1"].h >= 4 and len(out["n1"]) == 2


def test_a_node_that_missed_everything_catches_up_by_state_transfer():
    nodes, _ = make(checkpoint_interval=4)
    cut = lambda src, e: src == "n3" or e.dst == "n3"  # noqa: E731
    for k in range(10):
        nodes["n1"].propose(b"%d" % k)
        pump(nodes, cut)
    assert nodes["n3"].last_exec == 0 and nodes["n1"].h == 8
    out = tick_all(nodes, 45)  # the idle poll (every 4 x fetch_ticks) finds the gap
    n3 = nodes["n3"]
    assert n3.last_exec == 10 and n3.h == 8 and [c.seq for c in out["n3"]] == list(range(1, 11))
    assert n3.chain == nodes["n1"].chain and not n3.faults


def test_entries_that_do_not_hash_to_the_certified_checkpoint_are_refused():
    nodes, sk = make(checkpoint_interval=4)
    cut = lambda src, e: src == "n3" or e.dst == "n3"  # noqa: E731
    for k in range(5):
        nodes["n1"].propose(b"%d" % k)
        pump(nodes, cut)
    good = nodes["n1"]
    entries = [good.history[s] for s in range(1, 5)]
    r = request(sk, "n2", 99, b"evil")
    entries[1] = Msg(MsgType.PRE_PREPARE, "n0", 0, 2, r.digest, proofs=(r,))
    proofs = (*good.stable_proof, *entries)
    m = signed(sk, Msg(MsgType.ENTRIES, "n2", 0, 0, proofs_digest(proofs), proofs=proofs))
    nodes["n3"].step(m, "n2")
    assert faults(nodes["n3"], "bad_proof") == {"n2": 1} and nodes["n3"].last_exec == 0


# -- the driver's interface -------------------------------------------------------------------------------------
def test_propose_is_bounded_and_errors_are_sticky():
    nodes, _ = make(max_pending=2)
    nodes["n1"].propose(b"a")
    nodes["n1"].propose(b"b")
    with pytest.raises(LocalProtocolError):
        nodes["n1"].propose(b"c")
    with pytest.raises(LocalProtocolError):
        nodes["n2"].propose(b"x" * (64 * 1024 + 1))
    nodes["n1"].status = Status.ERROR
    for call in (
        nodes["n1"].tick,
        lambda: nodes["n1"].propose(b"d"),
        lambda: nodes["n1"].step(Msg(MsgType.FETCH, "n2"), "n2"),
    ):
        with pytest.raises(LocalProtocolError):
            call()


def test_constructor_checks():
    nodes, sk = make()
    pk = {i: k.public_key() for i, k in sk.items()}
    with pytest.raises(ValueError):
        PbftNode("zz", list(sk), sk["n0"], pk)
    with pytest.raises(ValueError):
        PbftNode("n0", list(sk), sk["n0"], {"n0": pk["n0"]})


# -- the wire ---------------------------------------------------------------------------------------------------------
def _sample_wire() -> list[dict]:
    nodes, sk = make()
    nodes["n0"].propose(b"x")
    pp = _first(nodes, "n0", MsgType.PRE_PREPARE)
    for i in ("n1", "n2", "n3"):
        nodes[i].step(pp, "n0")
    pump(nodes, drop=lambda src, e: e.msg.type is MsgType.COMMIT)
    nodes["n1"]._start_view_change(1, "test")
    vc = next(e.msg for e in nodes["n1"].ready().messages if e.msg.type is MsgType.VIEW_CHANGE)
    return [pp.to_wire(), vc.to_wire(), Msg(MsgType.FETCH, "n1", 0, 3).to_wire()]


SAMPLES = _sample_wire()


def test_to_wire_and_back():
    for w in SAMPLES:
        assert Msg.from_wire(w).to_wire() == w
        assert Msg.from_wire(copy.deepcopy(w)) == Msg.from_wire(w)


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=80)
    | st.binary(max_size=8)
)
json_any = st.recursive(json_leaf, lambda ch: st.lists(ch, max_size=5) | st.dictionaries(st.text(max_size=5), ch, max_size=6),
                        max_leaves=30)  # fmt: skip
field = st.sampled_from(["t", "s", "v", "n", "d", "sig", "data", "aux", "p", "zz"])


def _parse(w: object) -> None:
    try:
        m = Msg.from_wire(w)
    except RemoteProtocolError:
        return
    assert isinstance(m, Msg)
    assert Msg.from_wire(m.to_wire()) == m


@given(json_any)
def test_from_wire_of_junk_gives_a_message_or_remote_protocol_error(w):
    _parse(w)


@given(
    st.sampled_from(range(len(SAMPLES))), st.lists(st.tuples(st.integers(0, 3), field, json_any), max_size=4)
)
def test_from_wire_of_a_mutated_message_gives_a_message_or_remote_protocol_error(k, muts):
    w = copy.deepcopy(SAMPLES[k])
    for depth, f, v in muts:
        target = w
        for _ in range(depth):  # go down into the proofs
            if isinstance(target, dict) and isinstance(target.get("p"), list) and target["p"]:
                target = target["p"][0]
        if isinstance(target, dict):
            if v is None:
                target.pop(f, None)
            else:
                target[f] = v
    _parse(w)


def test_from_wire_bounds():
    bomb: dict = SAMPLES[2]
    for _ in range(10):
        bomb = {**SAMPLES[2], "p": [bomb]}
    with pytest.raises(RemoteProtocolError):
        Msg.from_wire(bomb)
    with pytest.raises(RemoteProtocolError):
        Msg.from_wire({**SAMPLES[2], "p": [SAMPLES[2]] * 9000})
    with pytest.raises(RemoteProtocolError):
        Msg.from_wire({**SAMPLES[2], "data": "A" * 200_000})
    with pytest.raises(RemoteProtocolError):
        Msg.from_wire({**SAMPLES[2], "v": True})
    with pytest.raises(RemoteProtocolError):
        Msg.from_wire({**SAMPLES[2], "sig": "ab cd" * 26})
    with pytest.raises(RemoteProtocolError):
        Msg.from_wire({**SAMPLES[2], "n": 2**63})


@given(st.sampled_from(range(len(SAMPLES))), st.integers(0, 63), st.integers(1, 255))
def test_a_flipped_bit_in_a_signed_field_is_caught(k, pos, x):
    nodes, _ = make()
    m = Msg.from_wire(SAMPLES[k])
    if not m.sig:
        return
    d = bytearray(bytes.fromhex(m.digest))
    d[pos % 32] ^= x
    nodes["n2"].step(replace(m, digest=bytes(d).hex()), m.sender)
    assert sum(nodes["n2"].faults.get("bad_signature", {}).values()) == 1


# -- durability: a node restarted from its storage never contradicts itself ------------------------------------
def durable(
    n: int = 4, **kw
) -> tuple[dict[str, PbftNode], dict[str, Ed25519PrivateKey], dict[str, MemoryPbftStorage]]:
    nodes, sk = make(n, **kw)
    disks = {i: MemoryPbftStorage() for i in nodes}
    nodes = {i: reborn(nd, disks[i], **kw) for i, nd in nodes.items()}
    return nodes, sk, disks


def test_a_node_restarted_from_storage_refuses_to_prepare_another_digest_for_a_slot_it_prepared():
    nodes, sk, disks = durable()
    r1, r2 = request(sk, "n2", 1, b"x"), request(sk, "n2", 2, b"y")
    pp1 = signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, r1.digest, proofs=(r1,)))
    pp2 = signed(sk, Msg(MsgType.PRE_PREPARE, "n0", 0, 1, r2.digest, proofs=(r2,)))  # the primary lies
    nodes["n1"].step(pp1, "n0")
    prep1 = _first(nodes, "n1", MsgType.PREPARE)
    assert prep1.digest == r1.digest
    disks["n1"].sync()  # what the driver does before it sends prep1
    disks["n1"].crash()
    n1 = reborn(nodes["n1"], disks["n1"])
    assert (0, 1) in n1.pps and n1.prepares[(0, 1)]["n1"] == prep1
    n1.step(pp2, "n0")
    assert not [e for e in n1.ready().messages if e.msg.type is MsgType.PREPARE and e.msg.digest == r2.digest]
    assert faults(n1, "equivocation") == {"n0": 1}  # the second pre-prepare is the primary's fault, not ours
    # and even if a bug tried, the signing guard refuses (the node goes to ERROR rather than sign)
    with pytest.raises(InternalError, match="refusing to sign"):
        n1._new(MsgType.PREPARE, view=0, seq=1, digest=r2.digest)
    # without its storage (amnesic) the same node would have prepared the other digest
    amnesic = reborn(nodes["n1"], None)
    amnesic.step(pp2, "n0")
    assert [e.msg.digest for e in amnesic.ready().messages if e.msg.type is MsgType.PREPARE][0] == r2.digest


def test_a_restarted_node_sends_its_votes_again_and_the_slot_commits():
    nodes, sk, disks = durable()
    nodes["n2"].propose(b"x")
    # everything goes through except n1's votes, then n1 restarts: the others wait for its vote
    pump(nodes, drop=lambda src, e: src == "n1" and e.msg.type in (MsgType.PREPARE, MsgType.COMMIT)
         or (src, e.dst) == ("n0", "n3"))  # fmt: skip
    assert nodes["n1"].last_exec == 0 and nodes["n3"].last_exec == 0
    for d in disks.values():
        d.sync()
    nodes["n1"] = reborn(nodes["n1"], disks["n1"])
    out = tick_all(nodes, 10)
    assert all([c.data for c in out[i]] == [b"x"] for i in ("n0", "n2", "n3")), out
    assert not any(nd.faults for nd in nodes.values())


def test_a_restarted_primary_goes_on_with_fresh_sequence_numbers_and_re_emits_what_it_executed():
    nodes, sk, disks = durable()
    for k in range(6):
        nodes[f"n{k % 4}"].propose(b"%d" % k)
        pump(nodes)
    for d in disks.values():
        d.sync()
    before = nodes["n0"]
    nodes["n0"] = n0 = reborn(before, disks["n0"])
    assert (n0.view, n0.h, n0.last_exec, n0.chain, n0.next_seq) == (0, 4, 6, before.chain, 6)
    assert n0.replayed == 6 and n0._rid > before._rid  # a fresh request-id block: no digest reused
    again = n0.ready().committed  # the host rebuilds its state machine from these
    assert [c.seq for c in again] == list(range(1, 7)) and sorted(c.data for c in again) == [
        b"%d" % k for k in range(6)
    ]
    nodes["n3"].propose(b"after")
    out = pump(nodes)
    assert all([(c.seq, c.data) for c in out[i]] == [(7, b"after")] for i in ("n1", "n2", "n3"))
    assert [(c.seq, c.data) for c in out["n0"]] == [(7, b"after")]
    assert not any(nd.faults for nd in nodes.values())


def test_a_node_restarted_in_a_view_change_resumes_it():
    nodes, sk, disks = durable()
    silent = lambda src, e: src == "n0" or e.dst == "n0"  # noqa: E731
    nodes["n2"].propose(b"x")
    tick_all(nodes, 12, lambda src, e: silent(src, e) or "n1" in (src, e.dst))  # the next primary away too
    assert nodes["n3"].status is Status.VIEW_CHANGE
    for d in disks.values():
        d.sync()
    vc = nodes["n3"].own_vc
    nodes["n3"] = n3 = reborn(nodes["n3"], disks["n3"])
    assert n3.status is Status.VIEW_CHANGE and n3.view == 1 and n3.own_vc == vc
    out = tick_all(nodes, 10, silent)
    assert all(nodes[i].view == 1 and [c.data for c in out[i]] == [b"x"] for i in ("n1", "n2"))
    assert nodes["n3"].view == 1 and nodes["n3"].status is Status.NORMAL
    assert not any(nd.faults for nd in nodes.values())


def test_file_storage_round_trip_compaction_torn_tail_and_damage(tmp_path):
    nodes, sk = make()
    dirs = {i: str(tmp_path / i) for i in nodes}
    st = {i: FilePbftStorage(dirs[i]) for i in nodes}
    nodes = {i: reborn(nd, st[i]) for i, nd in nodes.items()}
    for k in range(10):
        nodes[f"n{k % 4}"].propose(b"%d" % k)
        pump(nodes)
        for s_ in st.values():
            s_.sync()
    n1 = nodes["n1"]
    assert n1.h == 8 and n1.last_exec == 10
    st["n1"].close()
    log = (tmp_path / "n1" / "pbft.log").read_bytes().splitlines()
    assert log and all(json.loads(x)[1] > 8 for x in log)  # collected at the stable checkpoint
    assert len((tmp_path / "n1" / "pbft.exec").read_bytes().splitlines()) == 10
    # a record a crash cut short is dropped (it was never synced, so never acted on)
    with open(tmp_path / "n1" / "pbft.log", "ab") as f:
        f.write(b'["vote",11,{"t":"prep')
    again = reborn(n1, FilePbftStorage(dirs["n1"]))
    assert (again.view, again.h, again.last_exec, again.chain) == (0, 8, 10, n1.chain)
    assert again.stable_proof == n1.stable_proof and again.pcerts == n1.pcerts and again.ccerts == n1.ccerts
    assert [c.seq for c in again.ready().committed] == list(range(1, 11))
    again.storage.close()
    assert (tmp_path / "n1" / "pbft.log").read_bytes().endswith(b"\n")
    # anything else malformed is a StorageError, never a shorter history
    ex = tmp_path / "n1" / "pbft.exec"
    lines = ex.read_bytes().splitlines(keepends=True)
    ex.write_bytes(b"".join(lines[:3] + lines[4:]))
    with pytest.raises(StorageError, match="executed seq 5 after 3"):
        FilePbftStorage(dirs["n1"])
    ex.write_bytes(b"".join(lines))
    (tmp_path / "n1" / "pbft.state").write_text("{not json")
    with pytest.raises(StorageError, match="pbft.state is damaged"):
        FilePbftStorage(dirs["n1"])
