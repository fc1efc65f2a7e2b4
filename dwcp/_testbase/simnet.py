"""The simulated network the consensus simulators share: delays (so reordering), drops, duplicates,
partitions, all drawn from the simulator's seeded ``rng``."""

from __future__ import annotations

import heapq
import random
from typing import Any

__all__ = ["SimNet"]


class SimNet:
    rng: random.Random
    now: int
    drop: float
    dup: float
    min_delay: int
    max_delay: int

    def _init_net(self) -> None:
        self._net: list[tuple[int, int, Any]] = []
        self._seq = 0
        self.groups: list[set[str]] | None = None

    def partition(self, *groups: set[str]) -> None:
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def connected(self, a: str, b: str) -> bool:
        return self.groups is None or any(a in g and b in g for g in self.groups)

    def _schedule(self, m: Any) -> None:
        """Put ``m`` on the wire: maybe dropped, maybe twice, each copy after a random delay."""
        if self.rng.random() < self.drop:
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            self._seq += 1
            heapq.heappush(self._net, (self.now + self.rng.randint(self.min_delay, self.max_delay), self._seq, m))

    def _due(self) -> list[Any]:
        """The messages whose delivery time has come, in order."""
        out = []
        while self._net and self._net[0][0] <= self.now:
            out.append(heapq.heappop(self._net)[2])
        return out
