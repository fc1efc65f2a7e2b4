"""The simulated network the consensus simulators share, all drawn from the simulator's seeded ``rng``:
random delays (so reordering), drops, duplicates, partitions, slow nodes and replays of old messages.
A message is anything with ``src`` and ``dst``."""

from __future__ import annotations

import collections
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

    def _init_net(self, replay_p: float = 0.0) -> None:
        self._net: list[tuple[int, int, Any]] = []
        self._seq = 0
        self.groups: list[set[str]] | None = None
        self.slow: dict[str, int] = {}  # node -> extra ticks on every message to or from it
        self.replay_p = replay_p  # per message sent: an old one shows up again, late
        self._old: collections.deque[Any] = collections.deque(maxlen=512)

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
        extra = self.slow.get(m.src, 0) + self.slow.get(m.dst, 0)
        for _ in range(2 if self.rng.random() < self.dup else 1):
            self._push(m, self.rng.randint(self.min_delay, self.max_delay) + extra)
        self._old.append(m)
        if self.rng.random() < self.replay_p:
            self._push(self._old[self.rng.randrange(len(self._old))], self.rng.randint(1, 4 * self.max_delay))

    def _push(self, m: Any, delay: int) -> None:
        self._seq += 1
        heapq.heappush(self._net, (self.now + delay, self._seq, m))

    def _due(self) -> list[Any]:
        """The messages whose delivery time has come, in order."""
        out = []
        while self._net and self._net[0][0] <= self.now:
            out.append(heapq.heappop(self._net)[2])
        return out
