"""Multi-region routing over measured links (sans-IO).

A ``RegionGraph`` holds, per directed region pair, the measured one-way
latency (half the RTT, seconds) and bandwidth (bytes/s) -- EWMA-smoothed
``observe`` calls from probes and finished transfers.  Routes:

* ``shortest(a, b)``: least total latency (Dijkstra);
* ``widest(a, b)``: the largest bottleneck bandwidth (a max-min Dijkstra),
  ties broken by latency;
* ``plan(a, b, size)``: the direct link or a relay through intermediate
  regions, whichever moves ``size`` bytes sooner by the measured numbers:
  a pipelined store-and-forward relay takes about size / bottleneck + the
  path's latency + one chunk's time per extra hop.  Never a constant
  preference: with no measurement of a link, it is not used.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from dwcp.errors import ConfigError

__all__ = ["RegionGraph", "Route"]


@dataclass(frozen=True)
class Route:
    regions: tuple[str, ...]  # from source to destination, relays in between
    latency_s: float  # one way, summed
    bandwidth_bytes_per_s: float  # the bottleneck
    estimated_s: float | None = None  # for plan(): the time to move the object

    @property
    def relays(self) -> tuple[str, ...]:
        return self.regions[1:-1]


class RegionGraph:
    def __init__(self, *, alpha: float = 0.3, chunk_bytes: int = 4 << 20) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.chunk_bytes = chunk_bytes
        self._lat: dict[tuple[str, str], float] = {}
        self._bw: dict[tuple[str, str], float] = {}

    def observe(
        self, a: str, b: str, *, rtt_s: float | None = None, bandwidth_bytes_per_s: float | None = None
    ) -> None:
        """A measurement of the link a -> b (EWMA-smoothed)."""
        if a == b:
            raise ValueError("a link joins two different regions")
        if rtt_s is not None:
            if not (rtt_s >= 0 and math.isfinite(rtt_s)):
                raise ValueError(f"rtt_s must be finite and >= 0, got {rtt_s}")
            old = self._lat.get((a, b))
            one_way = rtt_s / 2
            self._lat[(a, b)] = one_way if old is None else old + self.alpha * (one_way - old)
        if bandwidth_bytes_per_s is not None:
            if not (bandwidth_bytes_per_s > 0 and math.isfinite(bandwidth_bytes_per_s)):
                raise ValueError(f"bandwidth must be finite and > 0, got {bandwidth_bytes_per_s}")
            old = self._bw.get((a, b))
            self._bw[(a, b)] = (
                bandwidth_bytes_per_s if old is None else old + self.alpha * (bandwidth_bytes_per_s - old)
            )

    def links(self, *, origin: str | None = None) -> list[list]:
        """Known links as [from, to, one-way latency s, bytes/s] (only those starting at ``origin``)."""
        return [[a, b, self._lat[(a, b)], self._bw[(a, b)]] for (a, b) in sorted(self._lat)
                if (a, b) in self._bw and (origin is None or a == origin)]  # fmt: skip

    def merge(self, links: list[list], *, origin: str) -> int:
        """Take a peer's measurements of links that start at its region ``origin`` (not ours to
        second-guess: the peer measured them); returns how many were taken."""
        n = 0
        for a, b, lat, bw in links:
            if a != origin or a == b or not (lat >= 0 and bw > 0):
                continue
            self._lat[(a, b)], self._bw[(a, b)] = float(lat), float(bw)
            n += 1
        return n

    def forget(self, region: str) -> None:
        for d in (self._lat, self._bw):
            for k in [k for k in d if region in k]:
                del d[k]

    def _edges(self, a: str):
        for (x, y), lat in self._lat.items():
            if x == a and (x, y) in self._bw:
                yield y, lat, self._bw[(x, y)]

    def link(self, a: str, b: str) -> Route | None:
        if (a, b) in self._lat and (a, b) in self._bw:
            return Route((a, b), self._lat[(a, b)], self._bw[(a, b)])
        return None

    def shortest(self, a: str, b: str) -> Route | None:
        best: dict[str, float] = {a: 0.0}
        prev: dict[str, str] = {}
        heap = [(0.0, a)]
        while heap:
            d, u = heapq.heappop(heap)
            if u == b:
                break
            if d > best.get(u, math.inf):
                continue
            for v, lat, _ in self._edges(u):
                if d + lat < best.get(v, math.inf):
                    best[v], prev[v] = d + lat, u
                    heapq.heappush(heap, (d + lat, v))
        return self._route(a, b, prev)

    def widest(self, a: str, b: str) -> Route | None:
        bw: dict[str, float] = {a: math.inf}
        lat: dict[str, float] = {a: 0.0}
        prev: dict[str, str] = {}
        heap = [(-math.inf, 0.0, a)]
        while heap:
            nb, d, u = heapq.heappop(heap)
            if u == b:
                break
            if (-nb, d) != (bw.get(u), lat.get(u)):
                continue
            for v, el, ebw in self._edges(u):
                w, dl = min(-nb, ebw), d + el
                if (w, -dl) > (bw.get(v, 0.0), -lat.get(v, math.inf)):
                    bw[v], lat[v], prev[v] = w, dl, u
                    heapq.heappush(heap, (-w, dl, v))
        return self._route(a, b, prev)

    def _route(self, a: str, b: str, prev: dict[str, str]) -> Route | None:
        if a == b:
            return Route((a,), 0.0, math.inf)
        if b not in prev:
            return None
        path = [b]
        while path[-1] != a:
            path.append(prev[path[-1]])
        path.reverse()
        hops = list(zip(path, path[1:]))
        return Route(tuple(path), sum(self._lat[h] for h in hops), min(self._bw[h] for h in hops))

    def estimate_s(self, route: Route, size: int) -> float:
        """Pipelined store-and-forward: the bottleneck moves the bytes, each relay adds one chunk's delay."""
        extra = len(route.relays) * min(size, self.chunk_bytes) / route.bandwidth_bytes_per_s
        return size / route.bandwidth_bytes_per_s + 2 * route.latency_s + extra

    def plan(self, a: str, b: str, size: int) -> Route | None:
        """The faster of the direct link, the widest path and the shortest path, for ``size`` bytes."""
        options = [r for r in (self.link(a, b), self.widest(a, b), self.shortest(a, b)) if r is not None]
        if not options:
            return None
        timed = [
            Route(r.regions, r.latency_s, r.bandwidth_bytes_per_s, self.estimate_s(r, size)) for r in options
        ]
        return min(timed, key=lambda r: (r.estimated_s, len(r.regions)))
