"""A deterministic simulator for adaptive consensus (``EpochNode``s), every run reproducible from a seed.

N epoch hosts exchange envelopes over a network with random delays
(reordering), drops, duplicates and partitions; a client load proposes
catalog commands at random nodes while the algorithm is switched by
committed commands.  Checked on every apply:

* one history: no two different commands are applied at one global index
  on any nodes (across epochs too);
* a node applies global indexes in order, without gaps -- except that a node
  installing a later epoch's start state jumps to that state's index, which
  must be one the history has (so what it skipped is what the others applied).

``check_converged`` then compares the catalogs, and ``acked`` lists the
commands some node reported applied: none of them may be missing at the end.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from dwcp.consensus.epochs import Envelope, EpochNode, EpochReady, RaftEngine
from dwcp.consensus.raft import MemoryStorage, RaftNode

from .simnet import SimNet

__all__ = ["EpochSim", "SafetyViolation", "mixed_factory", "raft_factory", "sim_keys"]


class SafetyViolation(AssertionError):
    pass


def raft_factory(node_id: str, ids: list[str], rng: random.Random, election_ticks: int = 10) -> Callable:
    def make(algorithm: str, epoch: int):
        return RaftEngine(RaftNode(node_id, ids, MemoryStorage(), election_ticks=election_ticks,
                                   rng=random.Random(rng.random())))  # fmt: skip

    return make


def sim_keys(ids: list[str], seed: int) -> dict:
    """Each node's Ed25519 signing key, drawn from ``seed`` (the keys ``mixed_factory`` gives PBFT)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    krng = random.Random(seed)
    return {i: Ed25519PrivateKey.from_private_bytes(krng.randbytes(32)) for i in ids}


def mixed_factory(ids: list[str], seed: int, election_ticks: int = 10) -> Callable:
    """Real engines for both algorithms: Raft, and PBFT with Ed25519 keys drawn from ``seed``."""
    from dwcp.consensus.epochs import PbftEngine
    from dwcp.consensus.pbft import PbftNode

    keys = sim_keys(ids, seed)
    verify = {i: k.public_key() for i, k in keys.items()}

    def factory(node_id: str, _ids: list[str], rng: random.Random) -> Callable:
        raft = raft_factory(node_id, ids, rng, election_ticks)

        def make(algorithm: str, epoch: int):
            if algorithm == "bft":
                return PbftEngine(PbftNode(node_id, ids, keys[node_id], verify))
            return raft(algorithm, epoch)

        return make

    return factory


class EpochSim(SimNet):
    def __init__(self, n: int = 5, seed: int = 0, *, drop: float = 0.0, dup: float = 0.0, min_delay: int = 1,
                 max_delay: int = 3, algorithm: str = "raft",
                 factory: Callable[[str, list[str], random.Random], Callable] | None = None) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.ids = [f"n{i}" for i in range(n)]
        self.drop, self.dup, self.min_delay, self.max_delay = drop, dup, min_delay, max_delay
        make = factory or raft_factory
        self.nodes = {i: EpochNode(i, self.ids, make(i, self.ids, random.Random(self.rng.random())),
                                   algorithm=algorithm) for i in self.ids}  # fmt: skip
        self.now = 0
        self._init_net()
        self.history: dict[int, str] = {}  # gidx -> canonical command applied there
        self.last: dict[str, int] = {i: 0 for i in self.ids}
        self.acked: dict[str, dict] = {}  # id -> command, applied somewhere
        self._cid = 0

    # -- running -----------------------------------------------------------------------
    def step(self) -> None:
        self.now += 1
        for e in self._due():
            if self.connected(e.src, e.dst):
                self._deliver(e)
        for i in self.ids:
            node = self.nodes[i]
            node.tick()
            r = node.ready()
            for m in r.messages:
                self._send(m)
            for gidx, cmd, _res in r.applied:
                if gidx != self.last[i] + 1:  # installed a later epoch's start state, then applied on
                    self._check_jump(i, self.last[i], gidx - 1)
                self._applied(i, gidx, cmd)
            if node.gidx != self.last[i]:
                self._check_jump(i, self.last[i], node.gidx)
            self._after_ready(i, r)

    # what a subclass may change (``adaptivesim``: envelopes travel in their wire form, signed and checked)
    def _deliver(self, m: Any) -> None:
        """``m`` arrives at ``m.dst``."""
        self.nodes[m.dst].step(m)

    def _send(self, e: Envelope) -> None:
        """``e`` leaves its node."""
        self._schedule(e)

    def _after_ready(self, i: str, r: EpochReady) -> None:
        """Node ``i`` handed out ``r`` (its messages sent, its applied entries checked)."""

    def _check_jump(self, i: str, before: int, to: int) -> None:
        if to < before:
            raise SafetyViolation(f"{i} went back from global index {before} to {to}")
        if to > before and to not in self.history:
            raise SafetyViolation(f"{i} installed a state at global index {to} that no node applied")
        self.last[i] = to

    def _applied(self, i: str, gidx: int, cmd: dict) -> None:
        canon = json.dumps(cmd, sort_keys=True)
        got = self.history.setdefault(gidx, canon)
        if got != canon:
            raise SafetyViolation(f"global index {gidx}: {i} applied {canon}, another node applied {got}")
        if gidx != self.last[i] + 1:
            raise SafetyViolation(f"{i} applied global index {gidx} after {self.last[i]}")
        self.last[i] = gidx
        if isinstance(cmd.get("id"), str):
            self.acked[cmd["id"]] = cmd

    def run(self, ticks: int, load: float = 0.0) -> None:
        """Step ``ticks`` times; each tick a command is proposed at a random node with probability ``load``."""
        for _ in range(ticks):
            if load and self.rng.random() < load:
                self.propose_version()
            self.step()

    # -- load and switching ---------------------------------------------------------------
    def _next_id(self) -> str:
        self._cid += 1
        return f"c{self._cid}"

    def propose_version(self, at: str | None = None) -> str:
        cid = self._next_id()
        key = f"k{self.rng.randrange(16)}"
        cmd = {"op": "version", "key": key, "digest": f"{self.rng.getrandbits(64):016x}", "size": 1,
               "holder": at or "client", "at": 0.0, "id": cid}  # fmt: skip
        self.nodes[at or self.rng.choice(self.ids)].propose(cmd)
        return cid

    def switch(self, algorithm: str, at: str | None = None) -> str:
        cid = self._next_id()
        self.nodes[at or self.rng.choice(self.ids)].propose(
            {"op": "switch", "algorithm": algorithm, "id": cid}
        )
        return cid

    def wait(self, pred: Callable[[], bool], max_ticks: int = 5000, load: float = 0.0) -> None:
        for _ in range(max_ticks):
            if pred():
                return
            self.run(1, load)
        raise AssertionError(f"condition not reached within {max_ticks} ticks (t={self.now})")

    # -- asking ----------------------------------------------------------------------------
    def check_converged(self) -> None:
        snaps = {i: n._snap() for i, n in self.nodes.items()}
        if len(set(snaps.values())) != 1:
            raise SafetyViolation(f"catalogs differ: gidx {[n.gidx for n in self.nodes.values()]}")
        cat = next(iter(self.nodes.values())).catalog
        for cid, cmd in self.acked.items():
            if cmd.get("op") != "version":
                continue
            if not any(v["digest"] == cmd["digest"] for v in cat.keys.get(cmd["key"], [])):
                raise SafetyViolation(f"applied command {cid} is missing from the final catalog")

    def state(self) -> dict[str, Any]:
        return {i: (n.epoch, n.algorithm, n.gidx) for i, n in self.nodes.items()}
