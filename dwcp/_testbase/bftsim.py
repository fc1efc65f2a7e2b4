"""A deterministic simulator for the PBFT core: every run reproducible from one seed.

N ``PbftNode``s (real Ed25519 keys, derived from the seed; Ed25519 signing is
deterministic) exchange messages over a simulated network with random delays
(so reordering), drops, duplicates and partitions.  Time is ticks.  Nodes can
crash and restart:

* ``restart(i)`` (disk kept): a *new* ``PbftNode`` built from the node's
  ``MemoryPbftStorage`` (what PBFT requires to be durable before a message is
  sent: view, its own votes, certificates, checkpoints, executed entries; the
  simulator syncs it after ``ready()`` and before sending, as a driver does).
  Messages in flight, timers and everything volatile are lost; the node
  re-emits its executed entries, which rebuild its catalog from empty (as the
  daemon rebuilds its catalog from the epoch's start);
* ``restart(i, keep_state=False)`` (disk lost): a fresh node with an empty log
  and an empty catalog.  It recovers by state transfer: FETCH from its peers,
  ENTRIES proven by the stable checkpoint (2f + 1 signatures over the execution
  hash chain) and commit certificates, replayed from sequence 1 into a new
  catalog.  Until it has caught up it is amnesic, so it counts against f;
  tests never combine it with f Byzantine nodes.

Byzantine behaviours are pluggable per node (``Behaviour`` subclasses): they
rewrite what the node's own (honest) core sends, and may inject messages
signed with the node's own key; they never hold another node's key.

Safety is checked on every commit by a *correct* node (one without a
behaviour): no two different entries at one sequence number; every node's
executed entries are contiguous and equal the one committed history (so
committed entries are never lost); ``check_agreement`` compares the catalogs
of nodes at equal heights.  With ``strict=False`` a violation is recorded in
``violations`` instead of raised (the more-than-f scenario, where safety is
not promised and the test asserts that the nodes *report* it).

Liveness is for the tests to ask: ``wait_commit`` proposes and steps until
the wanted nodes have executed the proposal.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import time
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dwcp._testbase.simnet import SimNet
from dwcp.consensus.catalog import Catalog
from dwcp.consensus.pbft import Committed, Envelope, Msg, MsgType, PbftNode, request_digest
from dwcp.consensus.pbft_storage import MemoryPbftStorage

__all__ = [
    "Behaviour",
    "Collude",
    "DoubleVote",
    "EquivocatingPrimary",
    "FakePrimary",
    "SafetyViolation",
    "Silent",
    "Sim",
    "Slow",
    "Storm",
    "Tamper",
    "bench",
    "cmd",
]


class SafetyViolation(AssertionError):
    pass


def cmd(k: int | str, holder: str = "h") -> bytes:
    """A catalog command (a new version of key ``k``)."""
    return json.dumps(
        {"op": "version", "key": f"k{k}", "digest": f"d{k}", "size": 1, "holder": holder}
    ).encode()


# -- Byzantine behaviours -------------------------------------------------------------------------------
class Behaviour:
    """A correct node's network behaviour; subclasses misbehave."""

    extra_delay = 0

    def attach(self, sim: Sim, me: str) -> None:
        self.sim, self.me = sim, me
        self.key = sim.signers[me]
        self.rng = random.Random(sim.rng.random())

    def sign(self, m: Msg, **changes: Any) -> Msg:
        m = replace(m, **changes)
        return replace(m, sig=self.key.sign(m.body()))

    def outgoing(self, env: Envelope) -> list[Envelope]:
        return [env]

    def tick(self) -> list[Envelope]:
        return []

    def others(self) -> list[str]:
        return [i for i in self.sim.ids if i != self.me]

    def half_b(self, dst: str) -> bool:
        return self.sim.ids.index(dst) % 2 == 1

    def fake_request(self, tag: str, origin: str | None = None) -> Msg:
        """A request signed by ``origin`` (itself or a colluder, whose key the colluders share)."""
        origin = origin or self.me
        data = cmd(f"evil-{tag}", holder=origin)
        rid = 10**12 + int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16)
        m = Msg(MsgType.REQUEST, origin, seq=rid, data=data, digest=request_digest(origin, rid, data))
        return replace(m, sig=self.sim.signers[origin].sign(m.body()))


class Silent(Behaviour):
    """Sends nothing (a crashed-but-connected node, or a silent primary with ``only_as_primary``)."""

    def __init__(self, only_as_primary: bool = False) -> None:
        self.only_as_primary = only_as_primary

    def outgoing(self, env: Envelope) -> list[Envelope]:
        if self.only_as_primary and not self.sim.nodes[self.me].is_primary:
            return [env]
        return []


class Slow(Behaviour):
    def __init__(self, extra_delay: int = 8) -> None:
        self.extra_delay = extra_delay


class Tamper(Behaviour):
    """Alters what it sends: ``payload`` (digest changed, old signature), ``sig`` (forged signature),
    ``sender`` (claims another node's id, signed with its own key) or ``relay`` (sends another node's
    genuine message as if it were that node)."""

    def __init__(self, mode: str = "payload", p: float = 0.5) -> None:
        self.mode, self.p = mode, p

    def outgoing(self, env: Envelope) -> list[Envelope]:
        if self.rng.random() >= self.p:
            return [env]
        m = env.msg
        if self.mode == "payload":
            m = replace(m, digest=self.rng.randbytes(32).hex())
        elif self.mode == "sig":
            m = replace(m, sig=self.rng.randbytes(64))
        elif self.mode == "sender":
            m = self.sign(m, sender=self.rng.choice(self.others()))
        elif self.mode == "relay":
            seen = self.sim.seen.get(self.me)
            if seen:
                return [env, Envelope(env.dst, self.rng.choice(seen))]
        return [Envelope(env.dst, m)]


class DoubleVote(Behaviour):
    """Votes twice: every PREPARE / COMMIT / CHECKPOINT also goes out with another digest, to everyone
    (``split=False``: detectable by each receiver) or the other digest to half of the nodes only."""

    def __init__(self, split: bool = False) -> None:
        self.split = split

    def outgoing(self, env: Envelope) -> list[Envelope]:
        m = env.msg
        if m.type not in (MsgType.PREPARE, MsgType.COMMIT, MsgType.CHECKPOINT):
            return [env]
        other = self.sign(m, digest=self.fake_request(f"{m.view}-{m.seq}").digest)
        if self.split:
            return [Envelope(env.dst, other if self.half_b(env.dst) else m)]
        return [env, Envelope(env.dst, other)]


class FakePrimary(Behaviour):
    """Every few ticks, pre-prepares a request of its own though it is not the primary."""

    def __init__(self, every: int = 7) -> None:
        self.every = every

    def tick(self) -> list[Envelope]:
        node = self.sim.nodes[self.me]
        if self.sim.now % self.every or node.is_primary:
            return []
        req = self.fake_request(f"fake-{self.sim.now}")
        pp = self.sign(
            Msg(MsgType.PRE_PREPARE, self.me, node.view, node.last_exec + 1, req.digest, proofs=(req,))
        )
        return [Envelope(d, pp) for d in self.others()]


class EquivocatingPrimary(Behaviour):
    """As primary, pre-prepares another request for the same seq to half of the nodes."""

    def outgoing(self, env: Envelope) -> list[Envelope]:
        m = env.msg
        if m.type is not MsgType.PRE_PREPARE or not m.proofs or not self.half_b(env.dst):
            return [env]
        req = self.fake_request(f"eq-{m.view}-{m.seq}")
        return [Envelope(env.dst, self.sign(m, digest=req.digest, proofs=(req,)))]


class Collude(Behaviour):
    """Several faulty nodes push one conflicting value: as primary, the evil request goes to half B;
    every PREPARE/COMMIT/CHECKPOINT goes out honest to half A and for the evil digest to half B."""

    def __init__(self, leader: str) -> None:
        self.leader = leader  # the colluder whose id signs the evil requests

    def evil(self, m: Msg) -> Msg:
        return self.fake_request(f"collude-{m.seq}", origin=self.leader)

    def outgoing(self, env: Envelope) -> list[Envelope]:
        m = env.msg
        if not self.half_b(env.dst) or env.dst in self.sim.byzantine:
            return [env]
        if m.type is MsgType.PRE_PREPARE and m.proofs:
            req = self.evil(m)
            return [Envelope(env.dst, self.sign(m, digest=req.digest, proofs=(req,)))]
        if m.type in (MsgType.PREPARE, MsgType.COMMIT):
            return [Envelope(env.dst, self.sign(m, digest=self.evil(m).digest, aux=b""))]
        return [env]


class Storm(Behaviour):
    """Replays: every tick, ``burst`` copies of messages it has seen (its own and others') to everyone."""

    def __init__(self, burst: int = 20) -> None:
        self.burst = burst

    def tick(self) -> list[Envelope]:
        seen = self.sim.seen.get(self.me)
        if not seen:
            return []
        return [Envelope(self.rng.choice(self.others()), self.rng.choice(seen)) for _ in range(self.burst)]


# -- the simulator ----------------------------------------------------------------------------------------
class Sim(SimNet):
    def __init__(self, n: int = 4, seed: int = 0, *, drop: float = 0.0, dup: float = 0.0, min_delay: int = 1,
                 max_delay: int = 3, behaviours: dict[str, Behaviour] | None = None, strict: bool = True,
                 durable: bool = True, **node_kw: Any) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.ids = [f"n{i}" for i in range(n)]
        self.signers = {i: Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32)) for i in self.ids}
        self.pubs = {i: k.public_key() for i, k in self.signers.items()}
        self.drop, self.dup, self.min_delay, self.max_delay = drop, dup, min_delay, max_delay
        self.node_kw = {"view_change_ticks": 40, "checkpoint_interval": 8, **node_kw}
        self.durable = durable  # False: no storage at all (the bench measures the core alone)
        self.disks = {i: MemoryPbftStorage() for i in self.ids}
        self.nodes = {i: self._boot(i) for i in self.ids}
        self.behaviours: dict[str, Behaviour] = {}
        for i, b in (behaviours or {}).items():
            b.attach(self, i)
            self.behaviours[i] = b
        self.byzantine = set(self.behaviours)
        self.alive = set(self.ids)
        self.now = 0
        self._wire: list[tuple[int, int, str, Envelope]] = []
        self._seq = 0
        self.groups: list[set[str]] | None = None
        self.strict = strict
        self.violations: list[str] = []
        self.history: dict[int, Committed] = {}  # seq -> what correct nodes executed there
        self.applied: dict[str, list[Committed]] = {i: [] for i in self.ids}
        self.catalogs = {i: Catalog() for i in self.ids}
        self.seen: dict[str, list[Msg]] = {i: [] for i in self.behaviours}  # for replaying behaviours
        self.delivered = 0
        self._incarnation = dict.fromkeys(self.ids, 0)

    def _boot(self, i: str, incarnation: int = 0) -> PbftNode:
        return PbftNode(i, self.ids, self.signers[i], self.pubs, incarnation=incarnation,
                        storage=self.disks[i] if self.durable else None, **self.node_kw)  # fmt: skip

    @property
    def correct(self) -> list[str]:
        return [i for i in self.ids if i not in self.byzantine]

    # -- faults (partition/heal/connected from SimNet; messages are (sender, envelope) here, scheduled below) --
    def crash(self, i: str) -> None:
        self.alive.discard(i)
        self.disks[i].crash()  # what was not synced is gone (nothing the node sent: it syncs first)

    def restart(self, i: str, keep_state: bool = True) -> None:
        """A new node object: from its disk (``keep_state``; without ``durable`` the old object reboots), or
        amnesic with a new incarnation (fresh request ids)."""
        if keep_state and not self.durable:
            self.nodes[i].reboot()
            self.alive.add(i)
            return
        if not keep_state:
            self._incarnation[i] += 1
            self.disks[i] = MemoryPbftStorage()
        self.nodes[i] = self._boot(i, self._incarnation[i])
        self.applied[i] = []  # the catalog is rebuilt from the executed entries the node re-emits
        self.catalogs[i] = Catalog()
        self.alive.add(i)

    # -- running ----------------------------------------------------------------------------------------
    def _post(self, frm: str, env: Envelope) -> None:
        if self.rng.random() < self.drop:
            return
        extra = self.behaviours[frm].extra_delay if frm in self.behaviours else 0
        for _ in range(2 if self.rng.random() < self.dup else 1):
            self._seq += 1
            due = self.now + self.rng.randint(self.min_delay, self.max_delay) + extra
            heapq.heappush(self._wire, (due, self._seq, frm, env))

    def step(self) -> None:
        self.now += 1
        while self._wire and self._wire[0][0] <= self.now:
            _, _, frm, env = heapq.heappop(self._wire)
            if env.dst in self.alive and frm in self.alive and self.connected(frm, env.dst):
                if env.dst in self.seen and len(self.seen[env.dst]) < 2000:
                    self.seen[env.dst].append(env.msg)
                self.nodes[env.dst].step(env.msg, frm)
                self.delivered += 1
        for i in self.ids:
            if i not in self.alive:
                continue
            node, b = self.nodes[i], self.behaviours.get(i)
            node.tick()
            r = node.ready()
            self.disks[i].sync()  # durable before anything is sent
            out = r.messages
            if b is not None:
                out = [e2 for e in out for e2 in b.outgoing(e)] + b.tick()
            for env in out:
                self._post(i, env)
            for c in r.committed:
                self._apply(i, c)

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step()

    def _violation(self, what: str) -> None:
        if self.strict:
            raise SafetyViolation(f"t={self.now}: {what}")
        self.violations.append(what)

    def _apply(self, i: str, c: Committed) -> None:
        if i in self.byzantine:
            return
        applied = self.applied[i]
        if c.seq != len(applied) + 1:
            self._violation(f"{i} executed seq {c.seq} after {len(applied)}")
        got = self.history.setdefault(c.seq, c)
        if (got.kind, got.data) != (c.kind, c.data):
            self._violation(f"seq {c.seq}: {i} executed {c}, another correct node executed {got}")
        applied.append(c)
        if c.kind == "data":
            self.catalogs[i].apply(c.seq, c.data)

    # -- asking -------------------------------------------------------------------------------------------
    def propose(self, data: bytes, at: str | None = None) -> str:
        at = at or self.rng.choice(sorted(set(self.correct) & self.alive))
        self.nodes[at].propose(data)
        return at

    def executed(self, i: str, data: bytes) -> bool:
        return any(c.data == data and c.kind == "data" for c in self.applied[i])

    def wait_commit(self, data: bytes, nodes: set[str] | None = None, max_ticks: int = 3000,
                    at: str | None = None) -> int:  # fmt: skip
        """Propose ``data`` once (at a correct node of ``nodes``) and step until every node in ``nodes``
        (default: the correct alive ones) has executed it; its sequence number."""
        want = nodes or (set(self.correct) & self.alive)
        self.propose(data, at or self.rng.choice(sorted(want & set(self.correct))))
        for _ in range(max_ticks):
            if all(self.executed(i, data) for i in want):
                return next(c.seq for c in self.applied[sorted(want)[0]] if c.data == data)
            self.step()
        views = {
            i: (self.nodes[i].view, self.nodes[i].status.value, self.nodes[i].last_exec) for i in self.ids
        }
        raise AssertionError(f"{data!r} not executed on {sorted(want)} within {max_ticks} ticks; {views}")

    def check_agreement(self) -> None:
        """Every correct node's executed entries are a prefix of the history; equal heights, equal catalogs."""
        for i in self.correct:
            for c in self.applied[i]:
                h = self.history.get(c.seq)
                if h is None or (h.kind, h.data) != (c.kind, c.data):
                    self._violation(f"{i} executed {c} but {h} is committed")
        by_height: dict[int, str] = {}
        for i in self.correct:
            snap = json.dumps(self.catalogs[i].snapshot(), sort_keys=True)
            prev = by_height.setdefault(len(self.applied[i]), snap)
            if prev != snap:
                self._violation(f"{i}: catalog differs from another node's at height {len(self.applied[i])}")

    def faults(self, kind: str | None = None, among: list[str] | None = None) -> dict[str, int]:
        """Fault counts by offending node, summed over ``among`` (default: the correct nodes)."""
        out: dict[str, int] = {}
        for i in among or self.correct:
            for k, by in self.nodes[i].faults.items():
                if kind is None or k == kind:
                    for node, c in by.items():
                        out[node] = out.get(node, 0) + c
        return out


def bench(n: int, ops: int = 300, *, window: int = 32, seed: int = 0) -> dict[str, float]:
    """Throughput and latency of the PBFT core alone (signing and verification included): ``ops``
    proposals at the primary, at most ``window`` in flight, a one-tick network; wall-clock seconds."""
    s = Sim(
        n, seed=seed, min_delay=1, max_delay=1, checkpoint_interval=64, view_change_ticks=10**6, durable=False
    )
    prim = s.nodes[s.ids[0]]
    started: dict[bytes, float] = {}
    lat: list[float] = []
    k = 0
    t0 = time.perf_counter()
    done = 0
    while done < ops:
        while k < ops and k - done < window:
            d = b"%d" % k
            started[d] = time.perf_counter()
            prim.propose(d)
            k += 1
        before = len(s.applied[s.ids[0]])
        s.step()
        now = time.perf_counter()
        for c in s.applied[s.ids[0]][before:]:
            if c.kind == "data":
                lat.append(now - started.pop(c.data))
                done += 1
    wall = time.perf_counter() - t0
    lat.sort()
    return {"n": n, "ops": ops, "seconds": wall, "ops_per_s": ops / wall, "latency_p50_ms": 1e3 * lat[len(lat) // 2],
            "latency_p99_ms": 1e3 * lat[int(len(lat) * 0.99)], "delivered": s.delivered}  # fmt: skip
