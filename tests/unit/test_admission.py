"""The data port's admission core (dwcp.transport.admission): its rules, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.transport.admission import Admission, Limits, Verdict, source_key


def core(total: int = 8, pool: int = 4, per_source: int = 2) -> Admission:
    return Admission(Limits(total, pool, per_source))


def admit_spoken(a: Admission, source: str) -> int:
    v = a.admit(source)
    assert v.conn is not None and a.spoke(v.conn)
    return v.conn


def test_per_source_limit_evicts_the_oldest_silent_of_that_source_else_refuses():
    a = core()
    c0, c1 = a.admit("x").conn, a.admit("x").conn
    assert a.admit("y").reason == ""  # another source is not touched by x's limit
    v = a.admit("x")
    assert v.conn is not None and (v.reason, v.evicted) == ("per_source", c0)
    assert not a.spoke(c0)  # evicted: its driver closes it
    assert a.spoke(c1) and a.spoke(v.conn)
    a.closed(c0)  # its thread closing later changes nothing
    assert (a.pending, a.total) == (3, 3)
    assert a.admit("x") == Verdict(None, "per_source")  # both of x's pending ones spoke
    assert (a.pending, a.total) == (3, 3)


def test_a_source_with_an_authenticated_connection_is_bounded_by_the_pool_only():
    a = core(total=8, pool=4, per_source=1)
    c = admit_spoken(a, "peer")
    assert a.admit("peer") == Verdict(None, "per_source")
    a.authenticated(c)
    streams = [admit_spoken(a, "peer") for _ in range(4)]  # a sender's data streams, opened together
    assert a.admit("peer") == Verdict(None, "unauthenticated")  # rule 2 still holds
    a.closed(c)  # its authenticated connection is gone: the per-source limit is back
    a.closed(streams[0])
    assert a.admit("peer") == Verdict(None, "per_source")


def test_a_full_pool_evicts_the_oldest_silent_of_the_most_crowded_source():
    a = core(total=8, pool=4, per_source=3)
    y = a.admit("y").conn
    x = [a.admit("x").conn for _ in range(3)]
    v = a.admit("z")
    assert (v.reason, v.evicted) == ("unauthenticated", x[0])  # x holds 3, y 1 (y's is older)
    a.spoke(x[1])
    v = a.admit("w")
    assert v.evicted == x[2]  # x still holds the most (2) and one of them is silent
    v = a.admit("w")
    assert v.evicted == y  # 1 each now: the oldest silent one
    for c in a.silent():
        a.spoke(c)
    assert a.admit("v") == Verdict(None, "unauthenticated")


def test_strangers_never_take_the_slots_outside_the_pool():
    a = core(total=6, pool=2, per_source=2)
    for i in range(6):
        assert a.admit(f"s{i}").conn is not None  # silent ones evict one another
    assert (a.pending, a.total) == (2, 2)
    for c in a.silent():
        a.spoke(c)
    assert [a.admit(f"t{i}") for i in range(3)] == [Verdict(None, "unauthenticated")] * 3
    assert (a.pending, a.total) == (2, 2)  # 4 slots stay free: only authenticating reaches them
    # peers that authenticated before keep theirs, whatever strangers do
    a = core(total=6, pool=2, per_source=2)
    peers = [admit_spoken(a, "p") for _ in range(2)]
    for c in peers:
        a.authenticated(c)
    for i in range(10):
        a.admit(f"s{i}")
    assert (a.pending, a.total) == (2, 4) and all(a.spoke(c) for c in peers)


def test_rule_one_full_evicts_a_silent_pending_one_else_refuses():
    a = core(total=3, pool=2, per_source=2)
    p = admit_spoken(a, "p")
    a.authenticated(p)
    s1 = a.admit("a").conn
    admit_spoken(a, "b")
    v = a.admit("c")
    assert v.conn is not None and v.evicted == s1
    a.spoke(v.conn)
    a.limits = Limits(3, 3, 2)  # a reload: applies from the next admission
    assert a.admit("d") == Verdict(None, "max_connections")


def test_limits_are_checked():
    with pytest.raises(ValueError):
        Limits(4, 0, 1)


@pytest.mark.parametrize(
    ("host", "key"),
    [("127.0.0.2", "127.0.0.2"), ("::ffff:10.0.0.1", "10.0.0.1"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
     ("fe80::1%eth0", "fe80::/64"), ("not-an-ip", "not-an-ip")],
)  # fmt: skip
def test_source_key(host, key):
    assert source_key(host) == key


_ops = st.lists(
    st.tuples(st.sampled_from(["admit", "spoke", "auth", "close"]), st.integers(0, 5)), max_size=200
)


@settings(max_examples=300, deadline=None)
@given(_ops, st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_invariants_under_any_sequence(ops, total, pool, per_source):
    """A driver's any order of events keeps rules 1-5; only silent connections are ever evicted."""
    a = Admission(Limits(total, pool, per_source))
    live: list[int] = []  # admitted and not closed by the driver yet
    spoken: set[int] = set()
    authed: set[int] = set()
    for op, n in ops:
        if op == "admit":
            silent = set(a.silent())
            v = a.admit(f"s{n % 3}")
            if v.conn is None:
                assert v.reason and v.evicted is None
            else:
                live.append(v.conn)
            if v.evicted is not None:
                assert v.evicted in silent and v.evicted not in spoken
        elif live:
            c = live[n % len(live)]
            if op == "spoke" and c not in authed:
                if a.spoke(c):
                    spoken.add(c)
                else:  # evicted: the driver closes it
                    a.closed(c)
                    live.remove(c)
            elif op == "auth" and c in spoken and c not in authed:
                a.authenticated(c)
                authed.add(c)
            elif op == "close":
                a.closed(c)
                live.remove(c)
        assert a.total <= total and a.pending <= pool
        assert a.total - a.pending == len(authed & set(live))
        assert set(a.silent()) <= set(live) - spoken
