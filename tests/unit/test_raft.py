"""The Raft core, message by message (sans-IO: no clock, no sockets)."""

from __future__ import annotations

import random

import pytest

from dwcp.consensus.raft import (
    Entry,
    HardState,
    MemoryStorage,
    Msg,
    MsgType,
    NotLeaderError,
    RaftNode,
    ReadState,
    Role,
    SnapshotMeta,
)
from dwcp.errors import InternalError

IDS = ["a", "b", "c"]


def node(i="a", **kw) -> RaftNode:
    kw.setdefault("pre_vote", False)  # the classic election, message by message (PreVote has its own tests)
    return RaftNode(i, IDS, rng=random.Random(1), **kw)


def elect(n: RaftNode) -> list[Msg]:
    while n.role is not Role.CANDIDATE:
        n.tick()
    return [m for m in n.ready().messages if m.type is MsgType.VOTE]


def test_a_follower_campaigns_after_its_randomized_timeout_and_wins_with_a_majority():
    n = node()
    votes = elect(n)
    assert n.term == 1 and n.vote == "a" and n.storage.hard.vote == "a"  # durable before it is sent
    assert sorted(m.dst for m in votes) == ["b", "c"] and all(m.last_index == 0 for m in votes)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    assert n.role is Role.LEADER and n.log[-1].kind == "noop" and n.log[-1].term == 1
    apps = [m for m in n.ready().messages if m.type is MsgType.APPEND]
    assert {m.dst for m in apps} == {"b", "c"} and apps[0].entries[0].kind == "noop"


def test_timeouts_are_randomized_within_one_to_two_election_timeouts():
    ticks = set()
    for seed in range(40):
        n = RaftNode("a", IDS, rng=random.Random(seed), election_ticks=10, pre_vote=False)
        t = 0
        while n.role is not Role.CANDIDATE:
            n.tick()
            t += 1
        ticks.add(t)
    assert min(ticks) >= 10 and max(ticks) <= 19 and len(ticks) > 5


def test_one_vote_per_term_and_only_for_an_up_to_date_log():
    n = node("b")
    n.storage.append([Entry(1, 1), Entry(2, 2)])
    n.step(Msg(MsgType.VOTE, "a", "b", 3, last_index=5, last_term=1))  # longer but older last term
    n.step(Msg(MsgType.VOTE, "c", "b", 3, last_index=2, last_term=2))  # as up to date: granted
    n.step(Msg(MsgType.VOTE, "a", "b", 3, last_index=9, last_term=3))  # already voted this term
    resp = [(m.dst, m.granted) for m in n.ready().messages]
    assert resp == [("a", False), ("c", True), ("a", False)] and n.storage.hard.vote == "c"


def test_append_truncates_a_conflicting_suffix_and_follows_the_commit():
    n = node("b")
    n.storage.append([Entry(1, 1), Entry(1, 2), Entry(2, 3), Entry(2, 4)])
    n.step(Msg(MsgType.APPEND, "a", "b", 3, prev_index=2, prev_term=1, entries=(Entry(3, 3), Entry(3, 4), Entry(3, 5)),
               commit=4))  # fmt: skip
    assert [e.term for e in n.log[1:]] == [1, 1, 3, 3, 3] and n.commit == 4 and n.leader == "a"
    assert [e.index for e in n.ready().committed] == [1, 2, 3, 4]
    # a prev entry we do not have: refused with a hint where to back off to
    n.step(Msg(MsgType.APPEND, "a", "b", 3, prev_index=9, prev_term=3, commit=4))
    r = n.ready().messages[-1]
    assert (r.success, r.match) == (False, 5)


def test_never_overwrites_a_committed_entry():
    n = node("b")
    n.storage.append([Entry(1, 1), Entry(1, 2)])
    n.commit = 2
    with pytest.raises(InternalError, match="overwrite committed entry 2"):
        n.step(Msg(MsgType.APPEND, "a", "b", 2, prev_index=1, prev_term=1, entries=(Entry(2, 2),)))


def test_leader_commits_only_its_own_term_by_counting():
    n = node()
    n.storage.append([Entry(0, 1, "data", b"old")])  # an entry of an earlier term
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "c", "a", 1, granted=True))
    n.ready()
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=1))
    assert n.commit == 0  # index 1 is held by a majority but is of term 0
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=2))  # the no-op of term 1
    assert n.commit == 2


def test_higher_term_makes_anyone_a_follower_and_proposals_go_to_the_leader():
    n = node()
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    n.step(Msg(MsgType.APPEND, "c", "a", 5, prev_index=0, prev_term=0))
    assert n.role is Role.FOLLOWER and n.term == 5 and n.leader == "c"
    with pytest.raises(NotLeaderError) as ei:
        n.propose(b"x")
    assert ei.value.leader == "c"


def test_check_quorum_steps_a_cut_off_leader_down():
    n = node(election_ticks=10)
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    for _ in range(10):
        n.tick()
    assert n.role is Role.FOLLOWER  # nobody answered for an election timeout


def test_membership_changes_one_node_at_a_time():
    n = node()
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    with pytest.raises(ValueError):
        n.propose_conf({"a", "b", "c", "d", "e"})
    n.propose_conf({"a", "b", "c", "d"})
    assert n.voters == {"a", "b", "c", "d"} and n.quorum == 3
    with pytest.raises(NotLeaderError, match="still in flight"):
        n.propose_conf({"a", "b", "c"})


def test_restart_from_disk_keeps_term_vote_log_and_configuration():
    disk = MemoryStorage()
    n = RaftNode("a", IDS, disk, rng=random.Random(2), pre_vote=False)
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    n.propose_conf({"a", "b", "c", "d"})
    again = RaftNode("a", IDS, disk, rng=random.Random(3))
    assert (again.term, again.vote, again.last_index) == (1, "a", 2) and again.voters == {"a", "b", "c", "d"}
    assert again.role is Role.FOLLOWER


# -- snapshots and compaction ------------------------------------------------------------------
def leader_of_three(**kw) -> RaftNode:
    n = node(**kw)
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    n.ready()
    return n


def test_compaction_keeps_the_term_at_the_snapshot_index_and_the_entries_after_it():
    n = leader_of_three()
    idx = n.propose_batch([b"x", b"y", b"z"])
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=idx[-1]))
    n.ready()
    with pytest.raises(ValueError, match="only 4 is applied"):
        n.compact(5, b"too far")
    n.compact(3, b"state@3")
    assert n.storage.snap.index == 3 and n.storage.snap.voters == ("a", "b", "c")
    assert n._term_at(3) == 1 and n._term_at(2) is None and [e.index for e in n.log[1:]] == [4]
    assert n.first_index == 4 and n.last_index == 4
    n.compact(2, b"older")  # an older snapshot than ours: nothing happens
    assert n.storage.snap_data == b"state@3"


def test_a_follower_behind_the_snapshot_gets_it_in_chunks_and_applies_it_before_later_entries(monkeypatch):
    import dwcp.consensus.raft as raft

    monkeypatch.setattr(raft, "SNAP_CHUNK_BYTES", 4)
    lead = leader_of_three()
    lead.propose_batch([b"x", b"y"])
    lead.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=3))
    lead.ready()
    lead.compact(3, b"0123456789")  # 10 bytes: 3 chunks
    f = node("c")
    f.storage.set_hard(HardState(1, None, 0))
    lead.step(Msg(MsgType.APPEND_RESP, "c", "a", 1, success=False, match=0))  # c has nothing
    msgs = [m for m in lead.ready().messages if m.dst == "c"]
    got = None
    for _ in range(10):  # ping-pong until installed
        assert msgs and all(m.type is MsgType.SNAP for m in msgs)
        for m in msgs:
            f.step(m)
        r = f.ready()
        if r.snapshot is not None:
            got = r
            break
        for m in r.messages:
            lead.step(m)
        msgs = [m for m in lead.ready().messages if m.dst == "c"]
    assert got is not None and got.snapshot == (lead.storage.snap, b"0123456789") and got.committed == []
    assert f.commit == 3 and f.last_index == 3 and f.applied == 3 and f.voters == {"a", "b", "c"}
    ok = [m for m in got.messages if m.type is MsgType.APPEND_RESP]
    assert ok and ok[-1].success and ok[-1].match == 3
    lead.step(ok[-1])
    lead.propose(b"after")
    for m in lead.ready().messages:
        if m.dst == "c":
            f.step(m)
    assert f.log[-1].data == b"after"


def test_a_follower_never_installs_a_snapshot_older_than_its_commit():
    f = node("b")
    f.storage.append([Entry(1, k) for k in range(1, 6)])
    f.step(Msg(MsgType.APPEND, "a", "b", 1, prev_index=5, prev_term=1, commit=5))
    f.ready()
    snap = SnapshotMeta(3, 1, ("a", "b", "c"))
    f.step(Msg(MsgType.SNAP, "a", "b", 1, snap=snap, offset=0, data=b"old", done=True))
    r = f.ready()
    assert r.snapshot is None and f.last_index == 5 and f.commit == 5
    assert (r.messages[-1].type, r.messages[-1].success, r.messages[-1].match) == (
        MsgType.APPEND_RESP,
        True,
        5,
    )


def test_a_snapshot_whose_last_entry_we_hold_commits_without_replacing_the_log():
    f = node("b")
    f.storage.append([Entry(1, k) for k in range(1, 6)])
    f.step(Msg(MsgType.SNAP, "a", "b", 1, snap=SnapshotMeta(4, 1, ("a", "b", "c")), data=b"s", done=True))
    r = f.ready()
    assert (
        r.snapshot is None
        and f.commit == 4
        and f.last_index == 5
        and [e.index for e in r.committed] == [1, 2, 3, 4]
    )


def test_an_append_from_before_our_snapshot_skips_what_the_snapshot_covers():
    f = node("b")
    f.storage.install(SnapshotMeta(5, 2, ("a", "b", "c")), b"s")
    f.commit = f.applied = 5
    f.step(Msg(MsgType.APPEND, "a", "b", 2, prev_index=3, prev_term=1,
               entries=(Entry(1, 4), Entry(2, 5), Entry(2, 6)), commit=6))  # fmt: skip
    r = f.ready().messages[-1]
    assert (r.success, r.match) == (True, 6) and f.last_index == 6 and f.commit == 6


def test_commit_never_moves_back_on_a_late_append():
    f = node("b")
    f.step(
        Msg(
            MsgType.APPEND,
            "a",
            "b",
            1,
            prev_index=0,
            prev_term=0,
            entries=(Entry(1, 1), Entry(1, 2)),
            commit=2,
        )
    )
    assert f.commit == 2 and [e.index for e in f.ready().committed] == [1, 2]
    f.step(
        Msg(MsgType.APPEND, "a", "b", 1, prev_index=1, prev_term=1, commit=3)
    )  # late heartbeat, knows less
    assert f.commit == 2 and f.ready().committed == []


def test_restart_restores_the_snapshot_first():
    disk = MemoryStorage()
    n = RaftNode("a", IDS, disk, rng=random.Random(2), pre_vote=False)
    elect(n)
    n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    n.propose_conf({"a", "b", "c", "d"})
    n.propose(b"x")
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=3))
    n.step(Msg(MsgType.APPEND_RESP, "c", "a", 1, success=True, match=3))
    n.ready()
    n.compact(3, b"S")
    again = RaftNode("a", IDS, disk, rng=random.Random(3))
    r = again.ready()
    assert r.snapshot == (disk.snap, b"S") and again.voters == {"a", "b", "c", "d"} and again.commit == 3


# -- ReadIndex --------------------------------------------------------------------------------------
def test_read_index_on_the_leader_waits_for_a_quorum_heartbeat():
    n = leader_of_three()
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=1))  # the no-op commits: index 1
    n.ready()
    n.read_index(b"r1")
    beats = [m for m in n.ready().messages if m.type is MsgType.APPEND]
    assert {m.dst for m in beats} == {"b", "c"} and all(m.read_seq == 1 for m in beats)
    n.step(
        Msg(MsgType.APPEND_RESP, "c", "a", 1, success=True, match=1, read_seq=0)
    )  # an older heartbeat's answer
    assert n.ready().read_states == []
    n.step(Msg(MsgType.APPEND_RESP, "c", "a", 1, success=True, match=1, read_seq=1))
    assert n.ready().read_states == [ReadState(1, b"r1")]


def test_read_index_waits_for_the_leaders_first_commit_in_its_term():
    n = leader_of_three()
    n.read_index(b"r")
    n.step(
        Msg(MsgType.APPEND_RESP, "b", "a", 1, success=False, match=0, read_seq=1)
    )  # confirms, but no commit yet
    assert n.ready().read_states == []
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=1, read_seq=1))
    assert n.ready().read_states == [ReadState(1, b"r")]


def test_a_follower_forwards_a_read_and_serves_it_once_applied():
    f = node("b")
    with pytest.raises(NotLeaderError):
        f.read_index(b"q")  # no leader known
    f.step(
        Msg(
            MsgType.APPEND,
            "a",
            "b",
            1,
            prev_index=0,
            prev_term=0,
            entries=(Entry(1, 1), Entry(1, 2)),
            commit=1,
        )
    )
    f.ready()
    f.read_index(b"q")
    fwd = f.ready().messages
    assert [(m.type, m.dst, m.ctx) for m in fwd] == [(MsgType.READ_INDEX, "a", b"q")]
    f.step(Msg(MsgType.READ_INDEX_RESP, "a", "b", 1, commit=2, ctx=b"q"))
    assert f.ready().read_states == []  # index 2 is not applied here yet
    f.step(Msg(MsgType.APPEND, "a", "b", 1, prev_index=2, prev_term=1, commit=2))
    r = f.ready()
    assert [e.index for e in r.committed] == [2] and r.read_states == [ReadState(2, b"q")]


def test_a_leader_answers_a_forwarded_read_after_confirming():
    n = leader_of_three()
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=1))
    n.ready()
    n.step(Msg(MsgType.READ_INDEX, "c", "a", 1, ctx=b"z"))
    n.ready()
    n.step(Msg(MsgType.APPEND_RESP, "b", "a", 1, success=True, match=1, read_seq=1))
    resp = [m for m in n.ready().messages if m.type is MsgType.READ_INDEX_RESP]
    assert [(m.dst, m.commit, m.ctx) for m in resp] == [("c", 1, b"z")]


# -- PreVote ---------------------------------------------------------------------------------------
def test_prevote_does_not_raise_the_term_until_a_quorum_says_yes():
    n = node(pre_vote=True)
    while n.role is not Role.PRE_CANDIDATE:
        n.tick()
    pv = n.ready().messages
    assert (
        n.term == 0 and n.storage.hard.term == 0 and {(m.type, m.term) for m in pv} == {(MsgType.PREVOTE, 1)}
    )
    n.step(Msg(MsgType.PREVOTE_RESP, "b", "a", 1, granted=True))
    assert n.role is Role.CANDIDATE and n.term == 1


def test_a_node_with_a_live_leader_refuses_prevotes_and_ignores_votes():
    f = node("b", pre_vote=True)
    f.step(Msg(MsgType.APPEND, "a", "b", 1, prev_index=0, prev_term=0))
    f.ready()
    f.step(Msg(MsgType.PREVOTE, "c", "b", 5, last_index=9, last_term=1))
    f.step(Msg(MsgType.VOTE, "c", "b", 5, last_index=9, last_term=1))
    assert f.ready().messages == [] and f.term == 1 and f.leader == "a"
    for _ in range(f.election_ticks):  # the lease runs out
        f.tick()
    f.ready()
    f.step(Msg(MsgType.PREVOTE, "c", "b", 2, last_index=9, last_term=1))
    r = f.ready().messages
    assert [(m.type, m.granted, m.term) for m in r] == [(MsgType.PREVOTE_RESP, True, 2)] and f.term == 1


# -- sticky failures ----------------------------------------------------------------------------------
def test_a_storage_failure_fails_the_node_for_good():
    from dwcp._testbase.raftsim import FullDisk
    from dwcp.errors import StorageError

    n = RaftNode("a", IDS, FullDisk(0), rng=random.Random(1), pre_vote=False)
    with pytest.raises(StorageError):
        elect(n)
    assert n.term == 1 and n.storage.hard.term == 0  # nothing was written, nothing was sent
    assert n.ready().messages == []
    with pytest.raises(StorageError):
        n.step(Msg(MsgType.VOTE_RESP, "b", "a", 1, granted=True))
    with pytest.raises(StorageError):
        n.tick()
