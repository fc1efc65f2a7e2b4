"""The catalog's concurrent writes: detected from the writer's parent, decided by its policy, never lost."""

from __future__ import annotations

import json

import pytest

from dwcp.consensus.catalog import MAX_KEY_CONFLICTS, Catalog

A, B, C, D = ("aa" * 16, "bb" * 16, "cc" * 16, "dd" * 16)


def _apply(cat: Catalog, **cmd) -> dict:
    cat.applied_index += 1
    return cat.apply(cat.applied_index, json.dumps({"op": "version", "size": 10, "at": 1.0, **cmd}).encode())


def test_a_writer_that_saw_the_latest_is_no_conflict():
    cat = Catalog()
    assert _apply(cat, key="k", digest=A, holder="n1", writer="w1", hlc=10, parent="")["ok"]
    r = _apply(cat, key="k", digest=B, holder="n1", writer="w1", hlc=20, parent=A, policy="reject")
    assert r == {"ok": True, "version": 2} and cat.latest("k")["digest"] == B and cat.conflicts == {}
    # another home of the same version: a holder more, no new version
    assert _apply(cat, key="k", digest=B, holder="n2", writer="w1", hlc=20, parent=A, policy="reject")["ok"]
    assert cat.latest("k")["holders"] == ["n1", "n2"] and len(cat.versions("k")) == 2
    # a write that says nothing of its parent (an older client) is taken as the new latest, as before
    assert _apply(cat, key="k", digest=C, holder="n3")["ok"] and cat.latest("k")["digest"] == C


@pytest.mark.parametrize("later_hlc, wins", [(30, True), (15, False)])
def test_lww_keeps_both_and_the_later_clock_is_the_latest(later_hlc, wins):
    cat = Catalog()
    _apply(cat, key="k", digest=A, holder="n1", writer="w1", hlc=10, parent="")
    _apply(cat, key="k", digest=B, holder="n1", writer="eu", hlc=20, parent=A)  # across a partition:
    r = _apply(cat, key="k", digest=C, holder="n4", writer="us", hlc=later_hlc, parent=A)  # both replaced A
    assert r["ok"] and r["conflict"] and r["version"] == 3
    assert cat.latest("k")["digest"] == (C if wins else B)
    assert {v["digest"] for v in cat.versions("k")} == {A, B, C}  # nothing lost
    (c,) = cat.history("k")["conflicts"]
    assert (c["digest"], c["latest"], c["outcome"], c["writer"], c["latest_writer"], c["policy"]) == (
        C, B, "won" if wins else "lost", "us", "eu", "lww")  # fmt: skip
    assert cat.conflicts_total == 1


def test_reject_keeps_the_first_committed_and_refuses_the_second_with_who_and_what():
    cat = Catalog()
    _apply(cat, key="k", digest=A, holder="n1", writer="w1", hlc=10, parent="")
    _apply(cat, key="k", digest=B, holder="n1", writer="eu", hlc=20, parent=A, policy="reject")
    r = _apply(cat, key="k", digest=C, holder="n4", writer="us", hlc=30, parent=A, policy="reject")
    assert r["ok"] is False and r["conflict"] and r["version"] == 3
    assert f"version {C} by us replaces {A}, but the latest is {B} by eu" in r["error"]
    assert cat.latest("k")["digest"] == B and {v["digest"] for v in cat.versions("k")} == {A, B}
    # its other homes record it too: each gets the refusal, and the record lists every holder
    r2 = _apply(cat, key="k", digest=C, holder="n5", writer="us", hlc=30, parent=A, policy="reject")
    assert r2["ok"] is False and r2["error"] == r["error"]
    (c,) = cat.history("k")["conflicts"]
    assert c["outcome"] == "rejected" and c["holders"] == ["n4", "n5"] and c["digest"] == C
    # a key created concurrently: the writer saw none ("") but one was committed meanwhile
    _apply(cat, key="new", digest=A, holder="n1", writer="w1", hlc=1, parent="")
    assert _apply(cat, key="new", digest=D, holder="n2", writer="w2", hlc=2, parent="", policy="reject")[
        "conflict"
    ]


def test_conflicts_survive_a_snapshot_and_are_bounded():
    cat = Catalog()
    _apply(cat, key="k", digest=A, holder="n1", writer="w", hlc=1, parent="")
    for i in range(MAX_KEY_CONFLICTS + 5):
        _apply(cat, key="k", digest=f"{i:032x}", holder="n1", writer="w", hlc=0, parent="ff" * 16)
    assert (
        len(cat.history("k")["conflicts"]) == MAX_KEY_CONFLICTS
        and cat.conflicts_total == MAX_KEY_CONFLICTS + 5
    )
    back = Catalog.restore(json.loads(json.dumps(cat.snapshot())))
    assert back.history("k") == cat.history("k") and back.conflicts_total == cat.conflicts_total
    # an old snapshot without conflicts restores as none
    old = cat.snapshot()
    del old["conflicts"], old["conflicts_total"]
    assert Catalog.restore(json.loads(json.dumps(old))).conflicts == {}


def test_bad_conflict_fields_are_refused_the_same_everywhere():
    cat = Catalog()
    assert (
        _apply(cat, key="k", digest=A, holder="n1", policy="first")["error"]
        == "unknown conflict policy 'first'"
    )
    assert _apply(cat, key="k", digest=A, holder="n1", hlc="x")["ok"] is False


def _member(cat: Catalog, **cmd) -> dict:
    cat.applied_index += 1
    return cat.apply(cat.applied_index, json.dumps({"op": "member", "at": 1.0, **cmd}).encode())


def test_member_records_change_the_membership_and_survive_a_snapshot():
    cat = Catalog()
    boot = {"a": {"address": "h:1", "region": "eu"}, "b": {"address": "h:2", "region": "eu"}}
    assert _member(cat, action="add", node="c", address="h:3", region="us")["ok"]
    assert _member(cat, action="remove", node="a")["ok"]
    assert _member(cat, action="add", node="b", address="h:22")["ok"]  # moved: its region stays
    assert cat.membership(boot) == {
        "b": {"address": "h:22", "region": "eu"},
        "c": {"address": "h:3", "region": "us"},
    }
    assert cat.members_rev == 3
    back = Catalog.restore(json.loads(json.dumps(cat.snapshot())))
    assert back.membership(boot) == cat.membership(boot) and back.members_rev == 3
    # refused the same everywhere, changing nothing
    for bad, why in ((dict(action="join", node="d"), "add or remove"), (dict(action="add", node="", address="h:1"),
                     "member node"), (dict(action="add", node="d", address="nowhere"), "not HOST:PORT")):  # fmt: skip
        r = _member(cat, **bad)
        assert r["ok"] is False and why in r["error"]
    assert cat.members_rev == 3
