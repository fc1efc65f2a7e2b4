"""Peer choice among candidates (sans-IO apart from an injectable RNG and clock).

Policies: ``round_robin``, ``least_connections``, ``p2c`` (power of two
choices: two distinct random candidates, the less loaded wins), ``geo``
(nearest by haversine; peers without a location last), ``region``
(``region_priority`` order, failing over to the next region that has a
healthy candidate; P2C within the region).  A candidate is healthy when
the health view says so and its circuit breaker allows a call.  No
healthy candidate is a ``NoHealthyPeerError`` naming what was tried.

``SessionAffinity`` pins a key to the peer its transfer started on, until
the entry expires (in-flight resumption and baseline locality).
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dwcp.errors import ConfigError, NoHealthyPeerError  # NoHealthyPeerError: re-exported

from .geo import Location, PrefixTable, haversine_km

__all__ = ["Peer", "Balancer", "POLICIES", "NoHealthyPeerError", "SessionAffinity"]

POLICIES = ("round_robin", "least_connections", "p2c", "geo", "region")
PICK_BUCKETS_S = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    1e-3,
    1e-2,
)  # the pick latency histogram


@dataclass
class Peer:
    id: str
    address: str  # host:port of its data port
    region: str = "default"
    location: Location | None = None
    active: int = 0  # transfers in flight to it (least-connections, P2C)
    healthy: bool = True
    latency_ewma_s: float = 0.0
    picks: int = field(default=0, compare=False)


class Balancer:
    def __init__(
        self,
        peers: Sequence[Peer],
        *,
        policy: str = "p2c",
        here: Location | None = None,
        region_priority: Sequence[str] = (),
        prefixes: PrefixTable | None = None,
        allow: Callable[[str], bool] = lambda peer_id: True,
        rng: random.Random | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown balancing policy {policy!r}; one of {', '.join(POLICIES)}")
        if policy == "geo" and here is None:
            raise ConfigError(
                "the geo policy needs this node's coordinates (node.latitude_deg/longitude_deg)"
            )
        self.peers = {p.id: p for p in peers}
        self.policy = policy
        self.here = here
        self.region_priority = list(region_priority)
        self.prefixes = prefixes or PrefixTable()
        self.allow = allow
        self.rng = rng or random.Random()
        self._rr = 0
        self._lock = threading.Lock()
        self.decisions: Counter[str] = Counter()
        self.by_region: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._pick_ns: deque[int] = deque(maxlen=4096)
        # the pick latency as a Prometheus histogram: cumulative counts per PICK_BUCKETS_S bucket, sum
        self.pick_buckets = [0] * (len(PICK_BUCKETS_S) + 1)
        self.pick_sum_s = 0.0
        self._rate_mark = (time.monotonic(), 0)  # picks per second: since the previous stats() call
        self._ids: list[str] = list(self.peers)
        self._dist: dict[str, float | None] = {}  # geo: km from here (None: unknown), per peer

    # -- membership --------------------------------------------------------
    def add(self, peer: Peer) -> None:
        with self._lock:
            self.peers[peer.id] = peer
            self._ids = list(self.peers)
            self._dist.pop(peer.id, None)

    def remove(self, peer_id: str) -> None:
        with self._lock:
            self.peers.pop(peer_id, None)
            self._ids = list(self.peers)
            self._dist.pop(peer_id, None)

    def location(self, p: Peer) -> Location | None:
        if p.location is not None:
            return p.location
        return self.prefixes.lookup(p.address.rsplit(":", 1)[0].strip("[]"))

    # -- picking -------------------------------------------------------------
    def pick(self, candidates: Sequence[str] | None = None, *, exclude: Sequence[str] = ()) -> Peer:
        """Choose a healthy peer among ``candidates`` (peer ids; default all) minus ``exclude``."""
        t0 = time.perf_counter_ns()
        with self._lock:
            if self.policy == "p2c" and candidates is None and not exclude:
                fast = self._p2c_any()
                if fast is not None:
                    fast.picks += 1
                    self.decisions["p2c"] += 1
                    self.by_region[fast.region] += 1
                    self._timed(t0)
                    return fast
            ids = self.peers.keys() if candidates is None else candidates
            skip = set(exclude)
            pool = [p for i in ids if i not in skip and (p := self.peers.get(i)) is not None and p.healthy]
            pool = [p for p in pool if self.allow(p.id)] if pool else pool
            if not pool:
                self.failures[self.policy] += 1
                tried = ", ".join(sorted(set(ids) - skip)) or "none"
                raise NoHealthyPeerError(
                    f"no healthy peer to send to (policy {self.policy}; candidates: {tried})"
                )
            choice = getattr(self, f"_{self.policy}")(pool)
            choice.picks += 1
            self.decisions[self.policy] += 1
            self.by_region[choice.region] += 1
        self._timed(t0)
        return choice

    def _timed(self, t0: int) -> None:
        ns = time.perf_counter_ns() - t0
        self._pick_ns.append(ns)
        s = ns / 1e9
        self.pick_sum_s += s
        self.pick_buckets[bisect.bisect_left(PICK_BUCKETS_S, s)] += 1

    def _p2c_any(self) -> Peer | None:
        """P2C over all peers in O(1): two distinct random peers, both healthy, or None (take the slow path)."""
        ids = self._ids
        n = len(ids)
        if n < 2:
            return None
        r = self.rng.random
        i = int(r() * n)
        j = int(r() * (n - 1))
        j += j >= i
        a, b = self.peers[ids[i]], self.peers[ids[j]]
        if not (a.healthy and b.healthy and self.allow(a.id) and self.allow(b.id)):
            return None
        return a if (a.active, a.latency_ewma_s) <= (b.active, b.latency_ewma_s) else b

    def _round_robin(self, pool: list[Peer]) -> Peer:
        pool.sort(key=lambda p: p.id)
        p = pool[self._rr % len(pool)]
        self._rr += 1
        return p

    @staticmethod
    def _least_connections(pool: list[Peer]) -> Peer:
        return min(pool, key=lambda p: (p.active, p.latency_ewma_s, p.id))

    def _p2c(self, pool: list[Peer]) -> Peer:
        if len(pool) == 1:
            return pool[0]
        a, b = self.rng.sample(pool, 2)
        return a if (a.active, a.latency_ewma_s) <= (b.active, b.latency_ewma_s) else b

    def _geo(self, pool: list[Peer]) -> Peer:
        assert self.here is not None
        here = self.here

        def dist(p: Peer) -> tuple[int, float, int, str]:
            if p.id not in self._dist:  # locations are static: compute each distance once
                loc = self.location(p)
                self._dist[p.id] = haversine_km(here, loc) if loc is not None else None
            d = self._dist[p.id]
            return (0, d, p.active, p.id) if d is not None else (1, 0.0, p.active, p.id)

        return min(pool, key=dist)

    def _region(self, pool: list[Peer]) -> Peer:
        for r in self.region_priority:
            inr = [p for p in pool if p.region == r]
            if inr:
                return self._p2c(inr)
        return self._p2c(pool)  # none of the listed regions has a healthy peer: any region

    # -- reporting -------------------------------------------------------------
    def stats(self) -> dict:
        ns = sorted(self._pick_ns)
        now = time.monotonic()
        total = sum(self.decisions.values())
        rate = (total - self._rate_mark[1]) / (now - self._rate_mark[0]) if now > self._rate_mark[0] else 0.0
        self._rate_mark = (now, total)

        def q(f: float) -> float | None:
            return ns[min(len(ns) - 1, int(f * len(ns)))] / 1e3 if ns else None

        return {"policy": self.policy, "decisions": dict(self.decisions), "by_region": dict(self.by_region),
                "no_healthy_peer": dict(self.failures), "pick_us_p50": q(0.5), "pick_us_p99": q(0.99),
                "picks_per_s": rate}  # fmt: skip


class SessionAffinity:
    """key -> peer, for ``ttl_s`` after the last use (thread-safe; time is a parameter)."""

    def __init__(self, ttl_s: float = 600.0, max_entries: int = 100_000) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ConfigError("affinity: ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._m: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> str | None:
        with self._lock:
            e = self._m.get(key)
            if e is None:
                return None
            if now - e[1] >= self.ttl_s:
                del self._m[key]
                return None
            self._m[key] = (e[0], now)
            return e[0]

    def set(self, key: str, peer_id: str, now: float) -> None:
        with self._lock:
            self._m.pop(key, None)
            self._m[key] = (peer_id, now)
            while len(self._m) > self.max_entries:  # dicts keep insertion order: the oldest go first
                del self._m[next(iter(self._m))]

    def forget_peer(self, peer_id: str) -> int:
        with self._lock:
            gone = [k for k, (p, _) in self._m.items() if p == peer_id]
            for k in gone:
                del self._m[k]
            return len(gone)

    def expire(self, now: float) -> int:
        with self._lock:
            gone = [k for k, (_, t) in self._m.items() if now - t >= self.ttl_s]
            for k in gone:
                del self._m[k]
            return len(gone)

    def __len__(self) -> int:
        return len(self._m)
