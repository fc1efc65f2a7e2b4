"""Consistent-hash ring: a key's replicas, stable as peers come and go.

Each peer owns ``vnodes`` points on a 64-bit ring (xxh3-64 of
``"<peer>#<i>"``); a key's replicas are the first ``replicas`` distinct
peers clockwise from xxh3-64 of the key.  Adding or removing one of n peers
moves only the keys whose arc it takes or gives up: about 1/n of them.
Lookups are a binary search, O(log(n x vnodes)).  Not thread-safe for
mutation: build a new ring (``with_peers``) and swap the reference, which
readers see atomically.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import xxhash

from dwcp.errors import ConfigError

__all__ = ["HashRing", "DEFAULT_VNODES"]

DEFAULT_VNODES = 150


def _h(s: str) -> int:
    return xxhash.xxh3_64_intdigest(s.encode())


class HashRing:
    def __init__(self, peers: Iterable[str] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if not 1 <= vnodes <= 10_000:
            raise ConfigError(f"vnodes must be in [1, 10000], got {vnodes}")
        self.vnodes = vnodes
        self._peers: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._build(peers)

    def _build(self, peers: Iterable[str]) -> None:
        ps = frozenset(peers)
        for p in ps:
            if not p:
                raise ConfigError("peer names must be non-empty")
        pts = sorted((_h(f"{p}#{i}"), p) for p in ps for i in range(self.vnodes))
        self._peers = ps
        self._points = [h for h, _ in pts]
        self._owners = [p for _, p in pts]

    @property
    def peers(self) -> frozenset[str]:
        return self._peers

    def with_peers(self, peers: Iterable[str]) -> HashRing:
        return HashRing(peers, vnodes=self.vnodes)

    def replicas(self, key: str, n: int = 1, *, exclude: Iterable[str] = ()) -> list[str]:
        """The first ``n`` distinct peers clockwise from ``key`` (fewer if the ring has fewer),
        skipping ``exclude`` (unhealthy or open-breaker peers) without moving anyone else's keys."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        skip = set(exclude)
        want = min(n, len(self._peers - skip))
        out: list[str] = []
        if not want:
            return out
        i = bisect.bisect_left(self._points, _h(key))
        m = len(self._points)
        for k in range(m):
            p = self._owners[(i + k) % m]
            if p not in skip and p not in out:
                out.append(p)
                if len(out) == want:
                    break
        return out

    def primary(self, key: str, *, exclude: Iterable[str] = ()) -> str | None:
        r = self.replicas(key, 1, exclude=exclude)
        return r[0] if r else None

    def load(self, keys: Iterable[str]) -> dict[str, int]:
        """Primary owner counts of ``keys`` (for balance checks)."""
        out = dict.fromkeys(self._peers, 0)
        for k in keys:
            p = self.primary(k)
            if p is not None:
                out[p] += 1
        return out
