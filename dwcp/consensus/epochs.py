"""Adaptive consensus: the catalog's log as a sequence of epochs, each run by one algorithm.

Sans-IO, in the shape of the engines it hosts: ``tick()``, ``step(envelope)``,
``propose(data)``, ``ready()``.  An ``EpochNode`` owns the catalog state
machine and one consensus *engine* for the current epoch (Raft or PBFT,
built by a factory); switching the algorithm is itself a committed command.

Rules:

1. The catalog applies data entries in one global order: epoch by epoch, and
   within an epoch in the engine's commit order.  ``gidx`` numbers them.
2. A command ``{"op": "switch", "algorithm": A}`` committed in epoch e ends
   epoch e at that entry: it is applied (so every correct node ends epoch e
   at the same gidx with the same catalog), entries the old engine commits
   after it are ignored by every node (their proposers were never told they
   were applied, and propose them again), and epoch e+1 starts with a fresh
   engine running A.  Nothing applied is ever lost: the catalog carries over.
   The old engine is kept, retired, for one epoch: it ticks and steps its
   epoch's envelopes (its commits are ignored), so the nodes that have not
   yet learnt that the switch committed learn it from it (a Raft leader's
   next heartbeat carries the commit index) instead of waiting for a state
   transfer that needs several nodes to have switched already.
   A switch to the algorithm that runs already, one carrying ``"if_epoch"``
   applied in another epoch, or one carrying ``"if_gidx"`` applied after
   another switch command (no-ops included) committed beyond that global
   index (``last_switch_gidx``), is applied as a no-op (``{"ok": false}``, no
   new epoch): so duplicates, from several nodes proposing the same switch,
   and proposals made before news their proposer had not seen yet
   (``adaptive``), change nothing.
3. Every envelope carries its epoch.  An engine only sees envelopes of its
   own epoch.  A node that receives one from a later epoch has missed a
   switch: it asks the sender for the state at that epoch's start (the
   catalog snapshot, its gidx, the algorithm) and installs it once ``trust``
   identical answers came from distinct nodes -- 1 when only crash faults
   are assumed, f+1 when either side of the switch is Byzantine (f of them
   could lie; f+1 identical answers include a correct one).  A node that
   receives an envelope from an earlier epoch answers with a hint (its
   epoch), so the laggard asks.
4. ``propose`` is accepted on any node: it is queued and offered to the
   current engine (a Raft follower forwards it to the leader it knows; PBFT
   takes it anywhere), and offered again after ``retry_ticks`` or a switch
   until it is applied.  Commands carry an ``id``; an id applied once is not
   applied again (the catalog is deterministic, so every node skips the same
   duplicates): at-most-once by id within the remembered window, at-least-once
   by the retries.
5. Bounded: queued proposals, remembered ids, pending state answers and the
   size of a state snapshot all have limits; beyond them input is refused
   (``propose`` raises) or dropped (the network may drop anyway).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dwcp.errors import DWCPError

from .catalog import Catalog

__all__ = [
    "Engine",
    "Envelope",
    "EpochNode",
    "EpochReady",
    "PbftEngine",
    "RaftEngine",
    "switch_command",
    "ALGORITHMS",
]

ALGORITHMS = ("raft", "bft")
MAX_PENDING = 10_000  # queued proposals per node
MAX_REMEMBERED_IDS = 100_000  # applied command ids kept for de-duplication
MAX_STATE_BYTES = 64 << 20  # a state answer larger than this is not accepted


class Engine(Protocol):
    """What a consensus core offers the epoch host (adapters below wrap RaftNode and PbftNode)."""

    def tick(self) -> None: ...

    def step(self, msg: Any, frm: str) -> None:
        """One engine message from the authenticated node ``frm``."""
        ...

    def offer(self, data: bytes) -> Any:
        """Take ``data`` for ordering, or return (dst, payload) to forward it, or None to wait (no leader)."""
        ...

    def ready(self) -> tuple[list[tuple[str, Any]], list[bytes]]:
        """(messages as (dst, payload), data of newly committed entries in commit order)."""
        ...


@dataclass(frozen=True)
class Envelope:
    epoch: int
    src: str
    dst: str
    kind: str  # "engine" | "forward" | "hint" | "state_req" | "state"
    body: Any = None


@dataclass
class EpochReady:
    messages: list[Envelope] = field(default_factory=list)
    applied: list[tuple[int, dict, dict]] = field(default_factory=list)  # (gidx, command, result)


def switch_command(algorithm: str) -> dict:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r}: one of {ALGORITHMS}")
    return {"op": "switch", "algorithm": algorithm}


class RaftEngine:
    """A RaftNode as an epoch engine: proposals go to the leader; only data entries count."""

    def __init__(self, node) -> None:
        self.node = node

    def tick(self) -> None:
        self.node.tick()

    def step(self, msg, frm: str) -> None:
        if msg.src == frm:  # a Raft message names its sender: it must be the link's peer
            self.node.step(msg)

    def offer(self, data: bytes):
        from .raft import NotLeaderError, Role

        if self.node.role is Role.LEADER:
            try:
                self.node.propose(data)
                return True
            except NotLeaderError:
                return None
        return (self.node.leader, data) if self.node.leader else None

    def ready(self):
        r = self.node.ready()
        return [(m.dst, m) for m in r.messages], [e.data for e in r.committed if e.kind == "data"]


class PbftEngine:
    """A PbftNode as an epoch engine: any node takes a proposal (PBFT forwards and retries it itself)."""

    def __init__(self, node) -> None:
        self.node = node
        self._offered: set[bytes] = set()  # data this engine ordered already: the host's retries are no-ops

    def tick(self) -> None:
        self.node.tick()

    def step(self, msg, frm: str) -> None:
        self.node.step(msg, frm)

    def offer(self, data: bytes):
        if data in self._offered:
            return True
        try:
            self.node.propose(data)
        except DWCPError:  # too many pending: offer again later
            return None
        self._offered.add(data)
        return True

    def ready(self):
        r = self.node.ready()
        done = [c.data for c in r.committed if c.kind == "data"]
        self._offered.difference_update(done)
        return [(e.dst, e.msg) for e in r.messages], done


class EpochNode:
    def __init__(self, id: str, ids: list[str], make_engine: Callable[[str, int], Engine], *,
                 algorithm: str = "raft", epoch: int = 0, retry_ticks: int = 40, hint_every: int = 10) -> None:  # fmt: skip
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r}: one of {ALGORITHMS}")
        self.id, self.ids = id, sorted(ids)
        self.make_engine = make_engine
        self.retry_ticks, self.hint_every = retry_ticks, hint_every
        self.catalog = Catalog()
        self.epoch, self.algorithm = epoch, algorithm  # epoch > 0: a restart (the driver restores the rest)
        self.engine: Engine = make_engine(algorithm, epoch)
        self.retired: Engine | None = None  # the previous epoch's engine, still serving its laggards
        self.gidx = 0
        # the state at this epoch's start, for laggards: (gidx, catalog snapshot JSON, algorithm, applied ids)
        self.start_state: tuple[int, bytes, str, list[str]] = (0, self._snap(), algorithm, [])
        self.previous_algorithm = algorithm
        self.last_switch_gidx = 0  # the global index of the last switch command applied (a no-op or not)
        self._ids: OrderedDict[str, None] = OrderedDict()  # applied command ids, oldest first
        self._pending: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # id -> (data, tick last offered)
        self._now = 0
        self._out: list[Envelope] = []
        self._applied: list[tuple[int, dict, dict]] = []
        self._answers: dict[int, dict[str, bytes]] = {}  # epoch -> node -> state answer (raw)
        self._hinted: dict[str, int] = {}  # peer -> tick we last hinted or asked it
        self.switches = 0

    # -- helpers ---------------------------------------------------------------------
    def _snap(self) -> bytes:
        return json.dumps(self.catalog.snapshot(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def byzantine(self) -> bool:
        return "bft" in (self.algorithm, self.previous_algorithm)

    @property
    def trust(self) -> int:
        """Identical state answers needed to install a later epoch (rule 3)."""
        return (len(self.ids) - 1) // 3 + 1 if self.byzantine else 1

    def _send(self, dst: str, kind: str, body: Any = None, epoch: int | None = None) -> None:
        self._out.append(Envelope(self.epoch if epoch is None else epoch, self.id, dst, kind, body))

    # -- the driver's interface ---------------------------------------------------------
    def propose(self, cmd: dict) -> str:
        """Queue ``cmd`` (it must carry a unique ``id``); it is offered until applied.  Returns the id."""
        cid = cmd.get("id")
        if not isinstance(cid, str) or not cid:
            raise ValueError("a command needs a unique string 'id'")
        if len(self._pending) >= MAX_PENDING:
            raise DWCPError(f"{self.id}: {MAX_PENDING} proposals already queued")
        if cid not in self._ids and cid not in self._pending:
            self._pending[cid] = (json.dumps(cmd, sort_keys=True, separators=(",", ":")).encode(), -(10**9))
        return cid

    def tick(self) -> None:
        self._now += 1
        if self.retired is not None:
            self.retired.tick()
        self.engine.tick()
        self._offer_due()

    def step(self, env: Envelope) -> None:
        if env.dst != self.id or env.src not in self.ids:
            return
        if env.kind == "state_req":
            self._answer_state(env)
        elif env.kind == "state":
            self._take_state(env)
        elif env.epoch == self.epoch - 1 and self.retired is not None:
            if env.kind == "engine":
                self.retired.step(
                    env.body, env.src
                )  # rule 2: the old epoch's laggards learn the switch from it
        elif env.epoch < self.epoch:  # the sender missed a switch: tell it (rate-limited)
            if self._now - self._hinted.get(env.src, -(10**9)) >= self.hint_every:
                self._hinted[env.src] = self._now
                self._send(env.src, "hint")
        elif env.epoch > self.epoch:  # we missed one: ask for that epoch's start (rate-limited)
            if self._now - self._hinted.get(env.src, -(10**9)) >= self.hint_every:
                self._hinted[env.src] = self._now
                self._send(env.src, "state_req", env.epoch, epoch=self.epoch)
        elif env.kind == "engine":
            self.engine.step(env.body, env.src)
        elif env.kind == "forward" and isinstance(env.body, bytes):
            self.engine.offer(
                env.body
            )  # a follower's proposal; if we are not the leader (any more) it retries
        self._drain_engine()

    def ready(self) -> EpochReady:
        self._drain_engine()
        r = EpochReady(self._out, self._applied)
        self._out, self._applied = [], []
        return r

    def applied(self, cid: str) -> bool:
        return cid in self._ids

    def algorithm_of(self, epoch: int) -> str | None:
        """The algorithm this node runs in ``epoch`` (the current one, or the retired previous one), or None."""
        if epoch == self.epoch:
            return self.algorithm
        if epoch == self.epoch - 1 and self.retired is not None:
            return self.previous_algorithm
        return None

    # -- internals ------------------------------------------------------------------------
    def _offer_due(self) -> None:
        for cid, (data, last) in list(self._pending.items()):
            if self._now - last < self.retry_ticks:
                continue
            got = self.engine.offer(data)
            if got is None:
                continue  # no leader known: try again next tick
            if isinstance(got, tuple):
                dst, payload = got
                if dst != self.id:
                    self._send(dst, "forward", payload)
            self._pending[cid] = (data, self._now)
        self._drain_engine()

    def _drain_engine(self) -> None:
        if self.retired is not None:
            old, _ = self.retired.ready()  # its commits are applied already or void (rule 2)
            for dst, m in old:
                self._send(dst, "engine", m, epoch=self.epoch - 1)
        msgs, committed = self.engine.ready()
        for dst, m in msgs:
            self._send(dst, "engine", m)
        for data in committed:
            if self._apply(data):  # a switch: the rest of this epoch's entries are void (rule 2)
                break

    def _apply(self, data: bytes) -> bool:
        try:
            cmd = json.loads(data)
            cid = cmd.get("id") if isinstance(cmd, dict) else None
        except ValueError:
            cmd, cid = None, None
        if cid is not None and cid in self._ids:
            return False  # a retried proposal committed twice: applied once
        self.gidx += 1
        switched = False
        if isinstance(cmd, dict) and cmd.get("op") == "switch":
            alg, if_epoch = cmd.get("algorithm"), cmd.get("if_epoch", self.epoch)
            if_gidx = cmd.get("if_gidx", self.last_switch_gidx)
            fresh = type(if_gidx) is int and if_gidx >= self.last_switch_gidx
            switched = alg in ALGORITHMS and alg != self.algorithm and if_epoch == self.epoch and fresh
            res = {"ok": switched, "epoch": self.epoch + switched}
            if alg not in ALGORITHMS:
                res["error"] = f"unknown algorithm {alg!r}"
            elif alg == self.algorithm:
                res["error"] = f"already running {alg}"
            elif if_epoch != self.epoch:
                res["error"] = f"proposed for epoch {if_epoch!r}, applied in epoch {self.epoch}"
            elif not switched:
                res["error"] = (f"proposed at global index {if_gidx!r}, before the switch command applied at "
                                f"{self.last_switch_gidx}")  # fmt: skip
            self.last_switch_gidx = self.gidx
        else:
            res = self.catalog.apply(self.gidx, data)
        self._remember(cid)
        self._applied.append((self.gidx, cmd if isinstance(cmd, dict) else {}, res))
        if switched:
            self._start_epoch(self.epoch + 1, str(cmd["algorithm"]))
        return switched

    def _remember(self, cid: str | None) -> None:
        if cid is None:
            return
        self._pending.pop(cid, None)
        self._ids[cid] = None
        while len(self._ids) > MAX_REMEMBERED_IDS:
            self._ids.popitem(last=False)

    def _start_epoch(
        self, epoch: int, algorithm: str, *, previous: str | None = None, retire: bool = True
    ) -> None:
        """Enter ``epoch`` run by ``algorithm`` from the catalog as it stands now (rule 2 after a switch applied
        here; rule 3 after a state transfer, where the old engine is too far behind to serve anyone)."""
        self.previous_algorithm = self.algorithm if previous is None else previous
        self.algorithm, self.epoch = algorithm, epoch
        self.last_switch_gidx = self.gidx  # an epoch starts at a switch command
        self.retired, self.engine = (self.engine if retire else None), self.make_engine(algorithm, epoch)
        self.start_state = (self.gidx, self._snap(), algorithm, list(self._ids))
        self.switches += 1
        self._answers = {e: a for e, a in self._answers.items() if e > epoch}
        for cid, (data, _) in self._pending.items():  # offer again in the new epoch at once
            self._pending[cid] = (data, -(10**9))

    def _answer_state(self, env: Envelope) -> None:
        want = env.body
        if want != self.epoch:
            return  # only the current epoch's start is kept
        gidx, snap, alg, ids = self.start_state
        body = json.dumps({"epoch": self.epoch, "gidx": gidx, "algorithm": alg, "previous": self.previous_algorithm,
                           "catalog": snap.decode(), "ids": ids}, sort_keys=True).encode()  # fmt: skip
        self._send(env.src, "state", body)

    def _take_state(self, env: Envelope) -> None:
        raw = env.body
        if not isinstance(raw, bytes) or len(raw) > MAX_STATE_BYTES:
            return
        try:
            st = json.loads(raw)
            epoch = int(st["epoch"])
        except (ValueError, KeyError, TypeError):
            return
        if epoch <= self.epoch or epoch != env.epoch:
            return
        answers = self._answers.setdefault(epoch, {})
        answers[env.src] = raw
        if len(self._answers) > 4:  # keep the newest few epochs' answers
            for e in sorted(self._answers)[:-4]:
                del self._answers[e]
        # rule 3: `trust` identical answers from distinct nodes (with the new epoch's algorithms)
        counts: dict[bytes, int] = {}
        for a in answers.values():
            counts[a] = counts.get(a, 0) + 1
        best, n = max(counts.items(), key=lambda kv: kv[1])
        try:
            st = json.loads(best)
            need = (
                (len(self.ids) - 1) // 3 + 1
                if "bft" in (st["algorithm"], st["previous"], self.algorithm)
                else 1
            )
            if n < need:
                return
            cat = Catalog.restore(json.loads(st["catalog"]))
            gidx, alg, ids = int(st["gidx"]), str(st["algorithm"]), [str(i) for i in st["ids"]]
        except (ValueError, KeyError, TypeError):
            return
        if alg not in ALGORITHMS:
            return
        self.catalog, self.gidx = cat, gidx
        self._ids = OrderedDict((i, None) for i in ids[-MAX_REMEMBERED_IDS:])
        for cid in [c for c in self._pending if c in self._ids]:
            del self._pending[cid]
        self._start_epoch(epoch, alg, previous=str(st["previous"]), retire=False)
