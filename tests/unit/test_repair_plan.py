"""dwcp.cluster.repair's pure parts: which versions a node must pull, and a key's scope."""

from __future__ import annotations

from dwcp.cluster.repair import Repairer, key_scope, plan_repairs, unlisted
from dwcp.cluster.ring import HashRing

MEMBERS = {"a": "eu", "b": "eu", "c": "eu", "d": "us", "e": "us"}


def _v(n: int, digest: str, holders, at: float = 0.0) -> dict:
    return {"version": n, "digest": digest, "size": 10, "holders": list(holders), "at": at}


def test_scope_is_every_member_unless_the_key_lives_in_one_region():
    assert sorted(key_scope(["a", "d"], MEMBERS)) == sorted(MEMBERS)
    assert sorted(key_scope(["a", "b"], MEMBERS)) == ["a", "b", "c"]  # sent to region:eu: stays there
    assert sorted(key_scope(["zz"], MEMBERS)) == sorted(MEMBERS)  # holders unknown here: everyone
    assert sorted(key_scope(["a"], {"a": "x", "b": "x"})) == ["a", "b"]  # one region in all: everyone


def test_a_home_that_lacks_the_latest_version_pulls_it_with_its_newest_as_base():
    ring = HashRing(["a", "b", "c"], vnodes=150)
    key = "vm/1"
    homes = ring.replicas(key, 2)
    other = next(m for m in ("a", "b", "c") if m not in homes)
    keys = {key: [_v(1, "11" * 16, homes), _v(2, "22" * 16, [homes[1]], at=5.0)]}
    members = {m: "eu" for m in ("a", "b", "c")}
    held = {(key, "11" * 16)}
    got = plan_repairs(keys, homes[0], members, replicas=2, vnodes=150, held=lambda k, d: (k, d) in held)
    assert [(r.key, r.digest, r.version, r.base, r.holders, r.at) for r in got] == [
        (key, "22" * 16, 2, "11" * 16, (homes[1],), 5.0)]  # fmt: skip
    # not a home: nothing to pull; holding it already: nothing; only another key asked for: nothing
    assert plan_repairs(keys, other, members, replicas=2, vnodes=150, held=lambda k, d: False) == []
    assert plan_repairs(keys, homes[0], members, replicas=2, vnodes=150, held=lambda k, d: True) == []
    assert (
        plan_repairs(keys, homes[0], members, replicas=2, vnodes=150, held=lambda k, d: False, only="vm/2")
        == []
    )
    # a version nobody holds any more cannot be pulled
    gone = {key: [_v(1, "11" * 16, [])]}
    assert plan_repairs(gone, homes[0], members, replicas=2, vnodes=150, held=lambda k, d: False) == []


def test_a_pass_fails_over_between_holders_and_counts():
    ring = HashRing(["a", "b", "c"], vnodes=150)
    me = ring.replicas("k", 3)[2]
    keys = {"k": [_v(1, "11" * 16, [m for m in "abc" if m != me], at=100.0)]}
    calls = []

    def pull(host, port, rep):
        calls.append(port)
        if port == 1:
            raise OSError("refused")
        return {"ok": True, "forwarded": {"to": "x", "seconds": 1, "wire_bytes": 7, "mode": "full"}}

    holders = [m for m in "abc" if m != me]
    r = Repairer(me=me, keys=lambda: keys, members=lambda: dict.fromkeys("abc", "eu"), replicas=lambda: 3,
                 vnodes=lambda: 150, held=lambda k, d: False,
                 order=lambda hs: [(h, f"127.0.0.1:{i + 1}") for i, h in enumerate(hs)],
                 pull=pull, local=dict, announce=None, clock=lambda: 130.0)  # fmt: skip
    out = r.run_once()
    assert calls == [1, 2] and out["repaired"][0]["from"] == holders[1] and out["behind_s"] == 0.0
    assert r.status()["repaired_total"] == 1 and r.status()["wire_bytes_total"] == 7
    # every holder fails: counted, said, and how far behind this node is
    r.pull = lambda host, port, rep: (_ for _ in ()).throw(OSError("down"))
    out = r.run_once()
    assert out["failed"][0]["error"].count("OSError: down") == 2 and out["behind_s"] == 30.0
    assert r.status()["failed_total"] == 1 and r.status()["passes"] == 2


def test_versions_held_but_not_listed_are_announced():
    keys = {"a": [_v(1, "11" * 16, ["x"]), _v(2, "22" * 16, ["x", "me"])], "b": [_v(1, "33" * 16, ["x"])]}
    local = {"a": ("22" * 16, 10), "b": ("33" * 16, 10), "c": ("44" * 16, 5), "d": ("55" * 16, 1)}
    keys["d"] = [_v(7, "66" * 16, ["me"])]  # a digest the catalog does not list (trimmed?): left alone
    assert unlisted(keys, "me", local) == [("b", "33" * 16, 10), ("c", "44" * 16, 5)]
    said = []
    r = Repairer(me="me", keys=lambda: keys, members=lambda: {"me": "eu", "x": "eu"}, replicas=lambda: 2,
                 vnodes=lambda: 150, held=lambda k, d: True, order=lambda hs: [], pull=None,
                 local=lambda: local, announce=lambda *a: said.append(a))  # fmt: skip
    r.run_once(key="c")
    assert said == [("c", "44" * 16, 5)] and r.status()["announced_total"] == 1


def test_a_partial_seeded_from_leaf_hashes_holds_exactly_the_matching_leaves(tmp_path):
    import numpy as np

    from dwcp._testbase.store import put
    from dwcp.cluster.repair import Repair, leaf_hashes, seed_partial
    from dwcp.digest import LEAF_BYTES, object_digest
    from dwcp.storage import ObjectStore

    store = ObjectStore(tmp_path)
    old = np.random.default_rng(1).integers(0, 256, 3 * LEAF_BYTES + 10, dtype=np.uint8)
    new = old.copy()
    new[LEAF_BYTES + 7] ^= 1  # leaf 1 differs
    base = put(store, "k", old.tobytes(), chunk=LEAF_BYTES)
    theirs = leaf_hashes_of(new)
    rep = Repair("k", object_digest(new).hex(), new.nbytes, 2, 0.0, ("h",), base.digest.hex())
    assert seed_partial(store, rep, base, theirs) == (3, 4)
    p = store.begin("k", object_digest(new), new.nbytes, LEAF_BYTES)  # what a push then resumes
    try:
        assert p.resumed and [p.is_done(i) for i in range(4)] == [True, False, True, True]
        assert p.verify_resumed() == []  # the seeded leaves hash as the new version's
    finally:
        p.abort(keep=True)
    assert seed_partial(store, rep, base, theirs) == (0, 4)  # a partial exists: the push resumes that one
    assert seed_partial(store, rep, base, theirs[:-16]) == (0, 4)  # a short answer: nothing seeded
    assert leaf_hashes(base.path, base.size) == leaf_hashes_of(old)
    # every leaf differs (pages changed all over the object): no partial, so no copy of the base for
    # nothing; the push starts afresh (a delta against the base, where the holder has it)
    spread = old.copy()
    spread[:: LEAF_BYTES // 2] ^= 1
    rep2 = Repair("k", object_digest(spread).hex(), spread.nbytes, 2, 0.0, ("h",), base.digest.hex())
    assert seed_partial(store, rep2, base, leaf_hashes_of(spread)) == (0, 4)
    assert store.partial_chunk_size("k", object_digest(spread), spread.nbytes) is None


def leaf_hashes_of(a) -> bytes:
    from dwcp._backend import impl as _k
    from dwcp.digest import LEAF_BYTES

    return bytes(_k.block_hashes(a.tobytes(), LEAF_BYTES))
