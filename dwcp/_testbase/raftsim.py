"""A deterministic simulator for the Raft core: every failure reproducible from one seed.

N ``RaftNode``s exchange messages over a simulated network with random
delays (so reordering), drops, duplicates, replays of old messages, slow
nodes and partitions; nodes crash and restart from their (simulated) disk,
or from an empty one; nodes snapshot their state machine and compact their
logs at random points (``compact``); a node's disk can fill up
(``FullDisk``), which stops the node.  Time is ticks.

Each node's state machine is the list of entries it applied plus a
``Catalog`` fed with those entries; its snapshot is both, as bytes.  Safety
is checked on every apply and every snapshot restore:

* no two different entries are ever committed at one index, on any nodes;
* a node's applied entries form a prefix of the one committed history (so
  committed entries are never lost, and state machines agree), and a
  snapshot never takes a node's state backwards;
* ``check_catalogs``: every node's catalog equals the catalog replayed from
  the committed history up to that node's applied index.

Liveness is for the tests to ask: once a quorum is connected for long
enough, a proposal commits everywhere connected (``wait_commit``).
"""

from __future__ import annotations

import collections
import json
import random

from dwcp.consensus.catalog import Catalog
from dwcp.consensus.raft import (
    Entry,
    HardState,
    MemoryStorage,
    NotLeaderError,
    RaftNode,
    Role,
    SnapshotMeta,
)
from dwcp.errors import StorageError

from .simnet import SimNet

__all__ = ["Sim", "SafetyViolation", "FullDisk"]


class SafetyViolation(AssertionError):
    pass


class FullDisk(MemoryStorage):
    """A disk that holds ``budget`` more bytes, then refuses every write (StorageError), writing nothing."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def _spend(self, n: int) -> None:
        if n > self.budget:
            raise StorageError("no space left on device (simulated)")
        self.budget -= n

    def set_hard(self, hs: HardState) -> None:
        self._spend(32)
        super().set_hard(hs)

    def append(self, entries: list[Entry]) -> None:
        self._spend(sum(24 + len(e.data) for e in entries))
        super().append(entries)

    def compact(self, meta: SnapshotMeta, data: bytes) -> None:
        self._spend(64 + len(data))
        super().compact(meta, data)

    def install(self, meta: SnapshotMeta, data: bytes) -> None:
        self._spend(64 + len(data))
        super().install(meta, data)


def _snapshot_bytes(entries: list[Entry], catalog: Catalog) -> bytes:
    return json.dumps({"entries": [[e.term, e.index, e.kind, e.data.hex()] for e in entries],
                       "catalog": catalog.snapshot()}, separators=(",", ":")).encode()  # fmt: skip


def _from_snapshot(data: bytes) -> tuple[list[Entry], Catalog]:
    d = json.loads(data)
    entries = [Entry(t, i, k, bytes.fromhex(x)) for t, i, k, x in d["entries"]]
    return entries, Catalog.restore(d["catalog"])


class Sim(SimNet):
    def __init__(self, n: int = 5, seed: int = 0, *, drop: float = 0.0, dup: float = 0.0, min_delay: int = 1,
                 max_delay: int = 3, election_ticks: int = 10, compact: float = 0.0, replay: float = 0.0,
                 pre_vote: bool = True) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.ids = [f"n{i}" for i in range(n)]
        self.drop, self.dup, self.min_delay, self.max_delay = drop, dup, min_delay, max_delay
        self.compact_p = compact
        self._init_net(replay)
        self.election_ticks, self.pre_vote = election_ticks, pre_vote
        self.disks: dict[str, MemoryStorage] = {i: MemoryStorage() for i in self.ids}
        self.alive = set(self.ids)
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.ids}
        self.catalogs: dict[str, Catalog] = {i: Catalog() for i in self.ids}
        self.nodes = {i: self._boot(i) for i in self.ids}
        self.now = 0
        self.history: dict[int, Entry] = {}  # index -> the entry committed there (first applied anywhere)
        self.delivered = 0
        self.snapshots_taken = 0
        self.snapshots_installed: collections.Counter[str] = collections.Counter()  # node -> restores
        self.storage_failures: list[tuple[str, str]] = []  # (node, error) for nodes their disk stopped

    def _boot(self, i: str) -> RaftNode:
        return RaftNode(i, self.ids, self.disks[i], election_ticks=self.election_ticks, pre_vote=self.pre_vote,
                        rng=random.Random(self.rng.random()))  # fmt: skip

    # -- faults (and partition/heal/slow from SimNet) ---------------------------------
    def crash(self, i: str) -> None:
        self.alive.discard(i)

    def restart(self, i: str, *, wipe: bool = False, disk: MemoryStorage | None = None) -> None:
        """Back from its disk (or, ``wipe``, from an empty one; or from ``disk``): hard state, snapshot and
        log survive, volatile state (role, commit view, the state machine) does not."""
        if wipe or disk is not None:
            self.disks[i] = disk if disk is not None else MemoryStorage()
        self.applied[i] = []  # rebuilt from the snapshot on disk, then by replaying the committed log
        self.catalogs[i] = Catalog()
        self.nodes[i] = self._boot(i)
        self.alive.add(i)

    # -- running ------------------------------------------------------------------------
    def _call(self, i: str, fn, *args) -> bool:
        """Into node i's core; a full disk stops the node (as the driver does), anything else is a bug."""
        try:
            fn(*args)
            return True
        except StorageError as exc:
            self.storage_failures.append((i, str(exc)))
            self.alive.discard(i)
            return False

    def step(self) -> None:
        self.now += 1
        for m in self._due():
            if m.dst in self.alive and m.src in self.alive and self.connected(m.src, m.dst):
                self._call(m.dst, self.nodes[m.dst].step, m)
                self.delivered += 1
        for i in sorted(self.alive):
            node = self.nodes[i]
            if not self._call(i, node.tick):
                continue
            r = node.ready()
            for m in r.messages:
                self._schedule(m)
            if r.snapshot is not None:
                self._restore(i, *r.snapshot)
            for e in r.committed:
                self._apply(i, e)
            if (
                self.compact_p
                and self.rng.random() < self.compact_p
                and node.applied > node.storage.snap.index
            ):
                if self._call(
                    i, node.compact, node.applied, _snapshot_bytes(self.applied[i], self.catalogs[i])
                ):
                    self.snapshots_taken += 1

    def _restore(self, i: str, meta: SnapshotMeta, data: bytes) -> None:
        entries, catalog = _from_snapshot(data)
        if len(entries) != meta.index or (entries and entries[-1].index != meta.index):
            raise SafetyViolation(f"{i}: snapshot at {meta.index} holds {len(entries)} entries")
        if meta.index < len(self.applied[i]):
            raise SafetyViolation(
                f"{i}: a snapshot at {meta.index} took its state back from {len(self.applied[i])}"
            )
        for e in entries:
            got = self.history.setdefault(e.index, e)
            if got != e:
                raise SafetyViolation(f"{i}: snapshot holds {e} at {e.index}, {got} is committed")
        self.applied[i], self.catalogs[i] = entries, catalog
        self.snapshots_installed[i] += 1

    def _apply(self, i: str, e: Entry) -> None:
        got = self.history.setdefault(e.index, e)
        if got != e:
            raise SafetyViolation(f"index {e.index}: {i} committed {e}, another node committed {got}")
        applied = self.applied[i]
        if e.index != len(applied) + 1:
            raise SafetyViolation(f"{i} applied {e.index} after {len(applied)}")
        applied.append(e)
        if e.kind == "data":
            self.catalogs[i].apply(e.index, e.data)

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
        except StorageError as exc:
            self.storage_failures.append((lead, str(exc)))
            self.alive.discard(lead)
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
            for k, e in enumerate(log, 1):
                if e.index != k or self.history.get(e.index) != e:
                    raise SafetyViolation(f"{i} applied {e} but {self.history.get(e.index)} is committed")

    def check_catalogs(self) -> None:
        """Every node's catalog is the catalog of the committed history up to its applied index."""
        for i in self.ids:
            want = Catalog()
            for k in range(1, len(self.applied[i]) + 1):
                e = self.history[k]
                if e.kind == "data":
                    want.apply(e.index, e.data)
            got = json.loads(json.dumps(self.catalogs[i].snapshot()))
            if got != json.loads(json.dumps(want.snapshot())):
                raise SafetyViolation(
                    f"{i}: its catalog differs from the history's at {len(self.applied[i])}"
                )
