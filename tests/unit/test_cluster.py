"""The cluster's sans-IO pieces: ring, breaker, balancer, affinity, geo, routing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp._testbase.transfer import transfer_report
from dwcp.cluster.balancer import Balancer, NoHealthyPeerError, Peer, SessionAffinity
from dwcp.cluster.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker
from dwcp.cluster.geo import Location, PrefixTable, haversine_km
from dwcp.cluster.ring import HashRing
from dwcp.cluster.routing import RegionGraph
from dwcp.errors import ConfigError, ReplicationError

KEYS = [f"vm/{i}/disk" for i in range(20_000)]


# -- ring -------------------------------------------------------------------------------


def test_replicas_are_distinct_deterministic_and_skip_excluded():
    r = HashRing([f"n{i}" for i in range(5)])
    a = r.replicas("k", 3)
    assert len(set(a)) == 3 and a == HashRing([f"n{i}" for i in reversed(range(5))]).replicas("k", 3)
    assert r.replicas("k", 9) == r.replicas("k", 5) and len(r.replicas("k", 9)) == 5
    b = r.replicas("k", 3, exclude=[a[0]])
    assert b == [x for x in r.replicas("k", 4) if x != a[0]][:3]  # the others keep their order
    assert HashRing().replicas("k", 2) == [] and HashRing().primary("k") is None


def test_balance_with_150_vnodes():
    load = HashRing([f"n{i}" for i in range(10)]).load(KEYS)
    mean = len(KEYS) / 10
    assert max(load.values()) < 1.25 * mean and min(load.values()) > 0.75 * mean, load


@settings(max_examples=20, deadline=None)
@given(st.integers(3, 12), st.integers(0, 10_000))
def test_adding_or_removing_a_peer_moves_about_one_nth(n, salt):
    peers = [f"p{salt}-{i}" for i in range(n)]
    r1 = HashRing(peers)
    r2 = r1.with_peers([*peers, "new"])
    before = {k: r1.primary(k) for k in KEYS[:5000]}
    after = {k: r2.primary(k) for k in KEYS[:5000]}
    moved = [k for k in before if before[k] != after[k]]
    assert all(after[k] == "new" for k in moved)  # only onto the new peer
    assert len(moved) / len(before) < 2.0 / (n + 1)
    r3 = r1.with_peers(peers[1:])  # remove one: only its keys move
    assert all(r3.primary(k) == before[k] for k in before if before[k] != peers[0])


def test_ring_config_errors():
    with pytest.raises(ConfigError):
        HashRing(["a"], vnodes=0)
    with pytest.raises(ConfigError):
        HashRing([""])
    with pytest.raises(ValueError):
        HashRing(["a"]).replicas("k", 0)


# -- breaker ----------------------------------------------------------------------------

CFG = BreakerConfig(consecutive_failures=3, failure_rate=0.5, min_calls=6, window_s=10, open_s=5, max_open_s=20,
                    half_open_calls=2)  # fmt: skip


def test_consecutive_failures_open_then_half_open_then_close():
    b = CircuitBreaker(CFG)
    for t in range(3):
        assert b.allow(t)
        b.record(False, t)
    assert b.current(2.5) == OPEN and not b.allow(4)
    assert b.current(7.0) == HALF_OPEN
    assert b.allow(7.0) and b.allow(7.1) and not b.allow(7.2)  # two trial slots
    b.record(True, 7.3)
    b.record(True, 7.4)
    assert b.current(7.5) == CLOSED and b.snapshot(7.5)["calls_in_window"] == 0


def test_failure_in_half_open_reopens_with_doubled_backoff_up_to_the_max():
    b = CircuitBreaker(CFG)
    for t in range(3):
        b.record(False, t)
    opened = 2.0
    for expect in (10, 20, 20):  # 5 -> 10 -> 20 (max) -> 20
        t = opened + b.snapshot(opened)["open_remaining_s"]
        assert b.current(t - 0.01) == OPEN and b.current(t) == HALF_OPEN
        assert b.allow(t)
        b.record(False, t)
        opened = t
        assert b.snapshot(t)["open_remaining_s"] == expect
    assert b.opened_total == 4


def test_failure_rate_over_the_window_opens():
    b = CircuitBreaker(CFG)
    for t, ok in enumerate([True, False, True, False, True, False]):  # never 3 in a row
        b.record(ok, float(t))
    assert b.current(6) == OPEN  # 3 of 6 = 50%
    b2 = CircuitBreaker(CFG)
    for t, ok in enumerate([False, True, False, True, True, True, False, True]):
        b2.record(ok, float(t))
    assert b2.current(8) == CLOSED  # 3 of 8 < 50%
    b3 = CircuitBreaker(CFG)
    for t, ok in enumerate([False, True, False, True, False]):
        b3.record(ok, float(t) * 4)  # spread over 16 s: the window (10 s) never holds min_calls
    assert b3.current(17) == CLOSED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=60))
def test_breaker_never_lets_calls_through_while_open(events):
    b, t = CircuitBreaker(CFG), 0.0
    for ok, dt in events:
        t += dt
        state = b.current(t)
        allowed = b.allow(t)
        assert allowed == (state == CLOSED) or state == HALF_OPEN
        if allowed:
            b.record(ok, t)
        assert b.current(t) in (CLOSED, OPEN, HALF_OPEN)


def test_breaker_config_is_validated():
    with pytest.raises(ConfigError):
        BreakerConfig(failure_rate=0)
    with pytest.raises(ConfigError):
        BreakerConfig(open_s=10, max_open_s=5)


# -- balancer ---------------------------------------------------------------------------


def peers() -> list[Peer]:
    return [Peer("a", "10.0.0.1:7700", "eu", Location(52.5, 13.4)), Peer("b", "10.0.0.2:7700", "eu", Location(48.9, 2.35)),
            Peer("c", "10.1.0.1:7700", "us", Location(40.7, -74.0)), Peer("d", "10.2.0.1:7700", "ap")]  # fmt: skip


def test_round_robin_and_least_connections():
    lb = Balancer(peers(), policy="round_robin")
    assert [lb.pick().id for _ in range(8)] == list("abcdabcd")
    lb = Balancer(peers(), policy="least_connections")
    lb.peers["a"].active, lb.peers["b"].active, lb.peers["c"].active, lb.peers["d"].active = 3, 1, 2, 1
    assert lb.pick().id == "b"  # ties broken by latency then id
    assert lb.pick(exclude=["b"]).id == "d"


@given(st.lists(st.integers(0, 50), min_size=2, max_size=10, unique=True), st.integers(0, 2**32))
def test_p2c_never_picks_the_most_loaded(loads, seed):
    ps = [Peer(f"p{i}", f"10.9.0.{i}:1") for i in range(len(loads))]
    for p, ld in zip(ps, loads):
        p.active = ld
    lb = Balancer(ps, policy="p2c", rng=random.Random(seed))
    worst = max(ps, key=lambda p: p.active).id
    assert all(lb.pick().id != worst for _ in range(20))


def test_no_healthy_peer_is_a_clear_error_and_breakers_exclude():
    ps = peers()
    for p in ps:
        p.healthy = False
    lb = Balancer(ps, policy="p2c")
    with pytest.raises(NoHealthyPeerError, match="no healthy peer.*candidates: a, b, c, d"):
        lb.pick()
    ps[2].healthy = True
    assert lb.pick().id == "c"
    lb2 = Balancer(peers(), policy="round_robin", allow=lambda pid: pid in ("b", "d"))
    assert {lb2.pick().id for _ in range(6)} == {"b", "d"}
    lb2.remove("b")
    lb2.remove("d")
    with pytest.raises(NoHealthyPeerError):
        lb2.pick()
    assert lb2.stats()["no_healthy_peer"] == {"round_robin": 1}


def test_geo_picks_the_nearest_and_uses_the_prefix_table_for_unknown_peers():
    here = Location(50.1, 8.7)  # Frankfurt
    lb = Balancer(peers(), policy="geo", here=here)
    dist = {p.id: haversine_km(here, p.location) for p in peers() if p.location}
    assert lb.pick().id == min(dist, key=dist.get) == "a"  # Berlin ~420 km, Paris ~480 km, NYC ~6200 km
    # "d" has no coordinates: last, unless a prefix says where it is
    lb = Balancer(peers(), policy="geo", here=Location(35.7, 139.7),
                  prefixes=PrefixTable([("10.2.0.0/16", Location(35.6, 139.6, "ap"))]))  # fmt: skip
    assert lb.pick().id == "d"
    with pytest.raises(ConfigError):
        Balancer(peers(), policy="geo")


def test_region_priority_fails_over_to_the_next_region():
    ps = peers()
    lb = Balancer(ps, policy="region", region_priority=["us", "eu", "ap"])
    assert {lb.pick().id for _ in range(10)} == {"c"}
    ps[2].healthy = False
    assert {lb.pick().id for _ in range(20)} == {"a", "b"}
    st_ = lb.stats()
    assert st_["decisions"] == {"region": 30} and st_["by_region"] == {"us": 10, "eu": 20}
    assert st_["pick_us_p50"] is not None and st_["pick_us_p50"] <= st_["pick_us_p99"]


def test_haversine_and_prefix_table():
    assert haversine_km(Location(0, 0), Location(0, 0)) == 0
    assert (
        abs(haversine_km(Location(51.5074, -0.1278), Location(40.7128, -74.0060)) - 5570) < 15
    )  # London-NYC
    t = PrefixTable([("10.0.0.0/8", Location(1, 1, "wide")), ("10.1.0.0/16", Location(2, 2, "narrow")),
                     ("2001:db8::/32", Location(3, 3, "v6"))])  # fmt: skip
    assert t.lookup("10.1.2.3").region == "narrow" and t.lookup("10.9.9.9").region == "wide"
    assert (
        t.lookup("2001:db8::1").region == "v6" and t.lookup("192.0.2.1") is None and t.lookup("junk") is None
    )
    with pytest.raises(ConfigError):
        PrefixTable([("10.0.0.0/33", Location(0, 0))])
    with pytest.raises(ConfigError):
        Location(91, 0)


def test_session_affinity_expires_and_forgets_removed_peers():
    a = SessionAffinity(ttl_s=10, max_entries=3)
    a.set("k1", "a", 0)
    assert a.get("k1", 5) == "a" and a.get("k1", 14) == "a"  # a use refreshes it
    assert a.get("k1", 24.5) is None
    for i in range(5):
        a.set(f"k{i}", "b" if i % 2 else "c", 100)
    assert len(a) == 3 and a.get("k0", 100) is None  # the oldest went first
    assert a.forget_peer("c") == 2 and a.get("k4", 100) is None and a.get("k3", 100) == "b"
    assert a.expire(200) == 1 and len(a) == 0


# -- routing ----------------------------------------------------------------------------


def graph() -> RegionGraph:
    g = RegionGraph(alpha=1.0)
    for a, b, rtt, bw in [("eu", "us", 0.080, 50e6), ("us", "ap", 0.100, 1e9), ("eu", "ap", 0.150, 20e6),
                          ("eu", "me", 0.040, 1e9), ("me", "ap", 0.120, 1e9)]:  # fmt: skip
        g.observe(a, b, rtt_s=rtt, bandwidth_bytes_per_s=bw)
        g.observe(b, a, rtt_s=rtt, bandwidth_bytes_per_s=bw)
    return g


def test_shortest_and_widest_paths():
    g = graph()
    s = g.shortest("eu", "ap")
    assert s.regions == ("eu", "ap") and s.latency_s == pytest.approx(0.075)  # vs 0.02 + 0.06 via me
    w = g.widest("eu", "ap")
    assert w.regions == ("eu", "me", "ap") and w.bandwidth_bytes_per_s == 1e9 and w.relays == ("me",)
    assert g.shortest("eu", "mars") is None and g.widest("eu", "eu").regions == ("eu",)


def test_plan_relays_only_when_the_measured_numbers_say_it_is_faster():
    g = graph()
    big = g.plan("eu", "ap", 10 << 30)
    assert big.regions == ("eu", "me", "ap") and big.estimated_s < 20
    tiny = g.plan("eu", "ap", 1000)  # latency dominates: the direct link
    assert tiny.regions == ("eu", "ap")
    g.forget("me")
    assert g.plan("eu", "ap", 10 << 30).regions in {("eu", "ap"), ("eu", "us", "ap")}
    assert g.plan("eu", "nowhere", 1) is None


def test_routing_smooths_measurements_and_rejects_nonsense():
    g = RegionGraph(alpha=0.5)
    g.observe("a", "b", rtt_s=0.1, bandwidth_bytes_per_s=100.0)
    g.observe("a", "b", rtt_s=0.3, bandwidth_bytes_per_s=300.0)
    r = g.link("a", "b")
    assert r.latency_s == pytest.approx(0.1) and r.bandwidth_bytes_per_s == pytest.approx(200.0)
    for bad in ({"rtt_s": -1}, {"bandwidth_bytes_per_s": 0}, {"rtt_s": float("nan")}):
        with pytest.raises(ValueError):
            g.observe("a", "b", **bad)
    with pytest.raises(ValueError):
        g.observe("a", "a", rtt_s=0.1)


# -- the node's view ---------------------------------------------------------------------


def view(**cluster):
    from dwcp.cluster.node import ClusterView
    from dwcp.config import from_dict

    peers = [
        {"id": f"n{i}", "address": f"127.0.0.1:{7700 + i}", "region": "r1" if i < 3 else "r2"}
        for i in range(5)
    ]
    cfg = from_dict({"security": {"plaintext": True}, "cluster": {"peers": peers, **cluster}})
    t = [0.0]
    return ClusterView(cfg.cluster, cfg.node, clock=lambda: t[0]), t


def test_candidates_put_the_keys_homes_first_then_failover_order():
    v, _ = view(replicas=2)
    c = [p.id for p in v.candidates("vm/1", "region:r1")]
    assert sorted(c) == ["n0", "n1", "n2"] and set(c[:2]) == set(
        v.ring.with_peers(["n0", "n1", "n2"]).replicas("vm/1", 2)
    )
    assert {p.id for p in v.candidates("vm/1", "cluster")} == {f"n{i}" for i in range(5)}
    assert [p.id for p in v.candidates("vm/1", "n4")] == ["n4"]
    v.affinity.set("vm/1", c[2], 0.0)
    assert v.candidates("vm/1", "region:r1")[0].id == c[2]  # affinity wins


def test_open_breakers_and_unknown_targets():
    from dwcp.cluster.node import parse_target

    v, t = view(breaker_consecutive_failures=2, breaker_open_s=10.0)
    for _ in range(2):
        v.record("n3", False)
    assert [p.id for p in v.candidates("k", "region:r2")] == ["n4"]
    v.record("n4", False)
    v.record("n4", False)
    with pytest.raises(NoHealthyPeerError, match=r"n3 \(open\).*n4 \(open\)|n4 \(open\).*n3 \(open\)"):
        v.candidates("k", "region:r2")
    v.peers["n3"].healthy = v.peers["n4"].healthy = False  # the probes' view alone refuses nobody
    t[0] = 10.0  # half-open: candidates again
    assert {p.id for p in v.candidates("k", "region:r2")} == {"n3", "n4"}
    assert v.breaker_states()["n3"] == 1 and v.status()["peers"]["n0"]["breaker"]["state"] == "closed"
    with pytest.raises(ConfigError, match="no peer in that region"):
        v.candidates("k", "region:mars")
    with pytest.raises(ConfigError, match="no such peer"):
        v.candidates("k", "n9")
    assert parse_target("10.0.0.1:7700") == ("addr", "10.0.0.1:7700") and parse_target("[::1]:7") == (
        "addr",
        "[::1]:7",
    )
    assert parse_target("region:eu") == ("region", "eu") and parse_target("cluster") == ("cluster", "")
    with pytest.raises(ConfigError):
        parse_target("region:")


def test_cluster_config_problems():
    from dwcp.config import from_dict

    with pytest.raises(ConfigError) as ei:
        from_dict({"security": {"plaintext": True}, "cluster": {
            "peers": [{"id": "a", "address": "x"}, {"id": "a", "address": "h:1", "latitude_deg": 1.0}],
            "policy": "best", "replicas": 0}})  # fmt: skip
    probs = "\n".join(ei.value.problems)
    for want in ("duplicate ids", "'x' is not HOST:PORT", "both latitude_deg and longitude_deg", "policy 'best'",
                 "replicas 0"):  # fmt: skip
        assert want in probs, probs
    with pytest.raises(ConfigError, match=r"peers\[0\]"):
        from_dict({"security": {"plaintext": True}, "cluster": {"peers": [{"id": "a"}]}})


class FakeSender:
    def __init__(self, fail_hosts=()):
        self.calls, self.fail = [], set(fail_hosts)

    def send(self, data, host, port, key, **kw):
        self.calls.append((f"{host}:{port}", kw.get("forward_to")))
        if f"{host}:{port}" in self.fail:
            raise OSError("connection refused")
        return transfer_report(seconds=1.0, size=len(data), rtt_ms=1.0)


class ChainSender:
    """A first home that stores and forwards down the chain it is given (HELLO's forward): a hop in
    ``down`` fails and is skipped, as dwcp.transport.server._Forwarder does; ``ack`` 0 leaves the
    hops pending."""

    def __init__(self, down=()):
        self.calls, self.down = [], set(down)

    def send(self, data, host, port, key, *, forward_to=None, **kw):
        self.calls.append((f"{host}:{port}", forward_to))
        if f"{host}:{port}" in self.down:
            raise OSError("connection refused")
        hops = []
        chain = [forward_to.to, *forward_to.then] if forward_to is not None else []
        for a in chain:
            if forward_to.ack == 0:
                hops.append({"to": a, "state": "pending"})
            elif a in self.down:
                hops.append({"to": a, "state": "failed", "error": "ConnectionRefusedError"})
            else:
                hops.append({"to": a, "state": "stored"})
        relayed = (
            {"to": chain[0], "seconds": 1, "wire_bytes": 1, "mode": "full", "hops": hops} if chain else None
        )
        return transfer_report(seconds=1.0, size=len(data), rtt_ms=1.0, relayed=relayed)


def _chain(v, key, first):
    """The homes of ``key`` as a chain starting at ``first`` (the balancer's pick): the rest in ring order."""
    ring = v.ring.replicas(key, v.config.replicas)
    return [first] + [h for h in ring if h != first]


@pytest.mark.parametrize("ack, need", [("one", 1), ("quorum", 2), ("all", 3)])
def test_a_replicated_send_goes_once_down_a_chain_of_the_keys_homes(ack, need):
    from dwcp.config import acks_needed

    assert acks_needed(ack, 3) == need and acks_needed("quorum", 5) == 3 and acks_needed("quorum", 4) == 3
    v, _ = view(replicas=3, ack=ack)
    assert sorted(v.homes("vm/7", "cluster")) == sorted(v.ring.replicas("vm/7", 3))
    s = ChainSender()
    r = v.send(s, b"x" * 100, "vm/7", "cluster")
    homes = _chain(v, "vm/7", r.peer)
    addr = {pid: v.peers[pid].address for pid in homes}
    # one send, to the first home, naming the other two in order and how many of them must verify it
    assert len(s.calls) == 1 and s.calls[0][0] == addr[homes[0]]
    fwd = s.calls[0][1]
    assert (fwd.to, fwd.then, fwd.ack) == (addr[homes[1]], (addr[homes[2]],), need - 1)
    want = "pending" if ack == "one" else "stored"
    assert [(x["peer"], x["state"]) for x in r.replicas] == [
        (homes[0], "stored"), (homes[1], want), (homes[2], want)]  # fmt: skip
    assert r.ack == {"policy": ack, "needed": need, "verified": 1 if ack == "one" else 3}
    doc = r.to_json()
    assert doc["ack"] == r.ack and doc["replicas"][0] == {"peer": homes[0], "state": "stored"}
    v.affinity.set("vm/7", homes[2], 0.0)  # the key's affinity peer starts the chain
    assert v.homes("vm/7", "cluster")[0] == homes[2]


def test_a_replicated_send_skips_failed_homes_and_fails_short_of_its_ack():
    v, _ = view(replicas=3, ack="quorum")
    addr = {pid: p.address for pid, p in v.peers.items()}
    ring = v.ring.replicas("vm/8", 3)
    v.affinity.set("vm/8", ring[0], 0.0)  # pin the first home, so the order is the ring's
    # the first home refuses: the chain starts at the second, and quorum (2) is still met
    s = ChainSender(down={addr[ring[0]]})
    r = v.send(s, b"x", "vm/8", "cluster")
    assert [c[0] for c in s.calls] == [addr[ring[0]], addr[ring[1]]] and r.peer == ring[1]
    assert s.calls[1][1].to == addr[ring[2]] and s.calls[1][1].then == () and s.calls[1][1].ack == 1
    assert {x["peer"]: x["state"] for x in r.replicas} == {ring[0]: "failed", ring[1]: "stored",
                                                           ring[2]: "stored"}  # fmt: skip
    assert r.failover[0]["peer"] == ring[0] and v.breakers[ring[0]].snapshot(0.0)["consecutive_failures"] == 1
    # two homes down (one of them mid-chain): 1 of 3 verified, short of quorum: an error naming both
    v, _ = view(replicas=3, ack="quorum")
    v.affinity.set("vm/8", ring[0], 0.0)
    s = ChainSender(down={addr[ring[0]], addr[ring[2]]})
    with pytest.raises(
        ReplicationError, match=r"1 of 3 replicas verified, cluster.ack = 'quorum' needs 2"
    ) as ei:
        v.send(s, b"x", "vm/8", "cluster")
    assert ring[0] in str(ei.value) and ring[2] in str(ei.value)
    assert [o["state"] for o in ei.value.replicas] == ["failed", "stored", "failed"]
    # a home the probes call unhealthy is left out while the healthy ones meet the ack, and counts as failed
    v, _ = view(replicas=3, ack="quorum")
    v.affinity.set("vm/8", ring[0], 0.0)
    v.peers[ring[1]].healthy = False
    s = ChainSender()
    r = v.send(s, b"x", "vm/8", "cluster")
    assert s.calls[0][1].to == addr[ring[2]] and s.calls[0][1].then == ()
    assert {x["peer"]: x.get("error") for x in r.replicas}[ring[1]] == "unhealthy"
    # ... and tried last when they do not (the probes' view is advisory: a cluster that just started)
    v, _ = view(replicas=3, ack="all")
    v.affinity.set("vm/8", ring[0], 0.0)
    v.peers[ring[1]].healthy = False
    s = ChainSender()
    r = v.send(s, b"x", "vm/8", "cluster")
    assert (s.calls[0][1].to, s.calls[0][1].then) == (addr[ring[2]], (addr[ring[1]],))
    assert r.ack["verified"] == 3
    # one replica: no chain, the failover path of before
    v, _ = view(replicas=1)
    s = ChainSender()
    r = v.send(s, b"x", "vm/8", "cluster")
    assert s.calls[0][1] is None and r.ack is None and "replicas" not in r.to_json()


def test_fetch_by_key_tries_itself_then_the_policys_pick_then_the_rest():
    v, _ = view(breaker_consecutive_failures=1)
    addresses = {p: a.address for p, a in v.peers.items()}  # n1 at 127.0.0.1:7701
    v.node = type(v.node)(id="n1")  # this node is a holder too
    order = [pid for pid, _ in v.fetch_order(["n0", "n1", "n2", "zz"], addresses)]
    assert order[0] == "n1" and sorted(order[1:]) == ["n0", "n2"]  # itself first; "zz" has no address
    calls = []

    def fetcher(host, port):
        calls.append(port)
        if port == 7701:
            raise OSError("connection refused")
        return {"from": f"{host}:{port}", "size": 1}

    r = v.fetch(fetcher, "vm/1", ["n0", "n1"], addresses)
    assert calls == [7701, 7700] and r["peer"] == "n0" and r["failover"][0]["peer"] == "n1"
    assert "connection refused" in r["failover"][0]["error"]
    # the failed holder's breaker opened (one failure here): it goes last next time
    assert [pid for pid, _ in v.fetch_order(["n0", "n2"], addresses)][0] in ("n0", "n2")
    v.record("n2", False)
    assert [pid for pid, _ in v.fetch_order(["n2", "n0"], addresses)] == ["n0", "n2"]
    with pytest.raises(NoHealthyPeerError, match="every holder failed: n0: OSError"):
        v.fetch(lambda h, p: (_ for _ in ()).throw(OSError("down")), "vm/1", ["n0"], addresses)
    with pytest.raises(NoHealthyPeerError, match="no holder has a known address"):
        v.fetch(fetcher, "vm/1", ["zz"], addresses)


def test_cluster_ack_and_replicas_are_checked():
    from dwcp.config import from_dict

    with pytest.raises(ConfigError) as ei:
        from_dict({"security": {"plaintext": True}, "cluster": {"ack": "most", "replicas": 10}})
    probs = "\n".join(ei.value.problems)
    assert "ack 'most': one of one, quorum, all" in probs and "replicas 10 must be in [1, 9]" in probs


def test_relay_is_chosen_by_measured_numbers_and_falls_back_to_direct():
    v, _ = view()  # n0-n2 in r1, n3-n4 in r2; this node is in region "default"
    v.graph.observe("default", "r2", rtt_s=0.1, bandwidth_bytes_per_s=10e6)  # a thin direct link
    v.graph.observe("default", "r1", rtt_s=0.08, bandwidth_bytes_per_s=1e9)  # longer, but wide
    v.graph.observe("r1", "r2", rtt_s=0.08, bandwidth_bytes_per_s=1e9)
    relay = v.relay_for("k", "region:r2", 1 << 30)
    assert relay is not None and relay.region == "r1"
    assert v.relay_for("k", "region:r2", 1000) is None  # tiny: latency rules, direct
    s = FakeSender()
    r = v.send(s, b"x" * 100, "k", "region:r2", via="n1")
    final = v.candidates("k", "region:r2")[0]
    assert s.calls == [("127.0.0.1:7701", final.address)] and r.via == "n1" and r.peer == final.id
    s = FakeSender(fail_hosts={"127.0.0.1:7701"})
    r = v.send(s, b"x" * 100, "k2", "region:r2", via="n1")
    assert s.calls[0][1] is not None and s.calls[1][1] is None  # relay failed: direct
    assert r.via is None and "via" not in r.to_json() and r.failover[0]["peer"] == "n1"
    with pytest.raises(ConfigError):
        v.relay_for("k", "region:r2", 1, via="1.2.3.4:5")


def test_graph_links_and_merging_a_peers_measurements():
    g = RegionGraph(alpha=1.0)
    g.observe("a", "b", rtt_s=0.02, bandwidth_bytes_per_s=1e9)
    g.observe("a", "c", rtt_s=0.2)  # no bandwidth yet: not a usable link
    assert g.links() == [["a", "b", 0.01, 1e9]] and g.links(origin="b") == []
    n = g.merge(
        [["b", "c", 0.01, 1e9], ["x", "c", 0.0, 1e9], ["b", "b", 0.0, 1.0], ["b", "d", 0.01, 0]], origin="b"
    )
    assert n == 1 and g.widest("a", "c").regions == ("a", "b", "c")
