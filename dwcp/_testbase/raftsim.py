"""A deterministic simulator for the Raft core: every failure reproducible from one seed.

N ``RaftNode``s exchange messages over a simulated network with random
delays (so reordering), drops, duplicates and partitions; nodes crash and
restart from their (simulated) disk.  Time is ticks.  Safety is checked on
every apply:

* no two different entries are ever committed at one index, on any nodes;
* a node's applied entries form a prefix of the one committed history (so
  committed entries are never lost, and state machines agree).

Liveness is for the tests to ask: once a quorum is connected for long
enough, a proposal commits everywhere connected (``wait_commit``).
"""

from __future__ import annotations

import heapq
import random

from dwcp.consensus.raft import Entry, MemoryStorage, Msg, NotLeaderError, RaftNode, Role

__all__ = ["Sim", "SafetyViolation"]


class SafetyViolation(AssertionError):
    pass


class Sim:
    def __init__(self, n: int = 5, seed: int = 0, *, drop: float = 0.0, dup: float = 0.0, min_delay: int = 1,
                 max_delay: int = 3, election_ticks: int = 10) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.ids = [f"n{i}" for i in range(n)]
        self.drop, self.dup, self.min_delay, self.max_delay = drop, dup, min_delay, max_delay
        self.election_ticks = election_ticks
        self.disks = {i: MemoryStorage() for i in self.ids}
        self.nodes = {i: self._boot(i) for i in self.ids}
        self.alive = set(self.ids)
        self.now = 0
        self._net: list[tuple[int, int, Msg]] = []
        self._seq = 0
        self.groups: list[set[str]] | None = None
        self.history: dict[int, Entry] = {}  # index -> the entry committed there (first applied anywhere)
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.ids}
        self.delivered = 0

    def _boot(self, i: str) -> RaftNode:
        return RaftNode(i, self.ids, self.disks[i], election_ticks=self.election_ticks,
                        rng=random.Random(self.rng.random()))  # fmt: skip

    # -- faults ----------------------------------------------------------------------
    def partition(self, *groups: set[str]) -> None:
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def connected(self, a: str, b: str) -> bool:
        return self.groups is None or any(a in g and b in g for g in self.groups)

    def crash(self, i: str) -> None:
        self.alive.discard(i)

    def restart(self, i: str) -> None:
        """Back from its disk: hard state and log survive, volatile state (role, commit view) does not."""
        self.nodes[i] = self._boot(i)
        self.applied[i] = []  # the state machine is rebuilt by replaying the committed log
        self.alive.add(i)

    # -- running ------------------------------------------------------------------------
    def _schedule(self, m: Msg) -> None:
        if self.rng.random() < self.drop:
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            self._seq += 1
            heapq.heappush(self._net, (self.now + self.rng.randint(self.min_delay, self.max_delay), self._seq, m))

    def step(self) -> None:
        self.now += 1
        while self._net and self._net[0][0] <= self.now:
            _, _, m = heapq.heappop(self._net)
            if m.dst in self.alive and m.src in self.alive and self.connected(m.src, m.dst):
                self.nodes[m.dst].step(m)
                self.delivered += 1
        for i in sorted(self.alive):
            node = self.nodes[i]
            node.tick()
            r = node.ready()
            for m in r.messages:
                self._schedule(m)
            for e in r.committed:
                self._apply(i, e)

    def _apply(self, i: str, e: Entry) -> None:
        got = self.history.setdefault(e.index, e)
        if got != e:
            raise SafetyViolation(f"index {e.index}: {i} committed {e}, another node committed {got}")
        applied = self.applied[i]
        if e.index != len(applied) + 1:
            raise SafetyViolation(f"{i} applied {e.index} after {len(applied)}")
        applied.append(e)

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step()

    # -- asking ------------------------------------------------------------------------------
    def leaders(self) -> list[str]:
        return [i for i in sorted(self.alive) if self.nodes[i].role is Role.LEADER]

    def leader(self) -> str | None:
        ls = self.leaders()
        return max(ls, key=lambda i: self.nodes[i].term) if ls else None

    def propose(self, data: bytes) -> tuple[str, int] | None:
        """Propose at the current leader; (leader, index) or None when there is none."""
        lead = self.leader()
        if lead is None:
            return None
        try:
            return lead, self.nodes[lead].propose(data)
        except NotLeaderError:
            return None

    def wait_leader(self, max_ticks: int = 500) -> str:
        for _ in range(max_ticks):
            lead = self.leader()
            if lead is not None and self.nodes[lead].commit >= 1:
                return lead
            self.step()
        raise AssertionError(f"no leader within {max_ticks} ticks (t={self.now})")

    def wait_commit(self, data: bytes, nodes: set[str] | None = None, max_ticks: int = 2000) -> int:
        """Keep proposing ``data`` until every node in ``nodes`` (default: alive) has applied it; its index."""
        want = nodes or set(self.alive)
        for _ in range(max_ticks):
            idx = next((e.index for e in self.history.values() if e.data == data), None)
            if idx is not None and all(len(self.applied[i]) >= idx for i in want):
                return idx
            if idx is None and self.now % (self.election_ticks * 2) == 0:
                self.propose(data)
            self.step()
        raise AssertionError(f"{data!r} not applied on {sorted(want)} within {max_ticks} ticks")

    def check_agreement(self) -> None:
        """Every node's applied log is a prefix of the committed history."""
        for i, log in self.applied.items():
            for e in log:
                if self.history.get(e.index) != e:
                    raise SafetyViolation(f"{i} applied {e} but {self.history.get(e.index)} is committed")
