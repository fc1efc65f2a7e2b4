"""The Raft core, message by message (sans-IO: no clock, no sockets)."""

from __future__ import annotations

import random

import pytest

from dwcp.consensus.raft import Entry, MemoryStorage, Msg, MsgType, NotLeaderError, RaftNode, Role
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
