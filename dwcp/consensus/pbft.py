"""PBFT, sans-IO: ``tick()`` and ``step(msg, frm)`` in, ``ready()`` out (the shape of raft.py).

The Byzantine-tolerant counterpart of the Raft core (Castro and Liskov,
"Practical Byzantine Fault Tolerance", OSDI 1999, and the thesis's
checkpoint/state-transfer chapters).  n = len(ids) nodes tolerate
f = (n - 1) // 3 Byzantine ones; every quorum is 2f + 1.  A ``PbftNode``
never reads a clock, a socket or a file.  The driver:

1. calls ``tick()`` at a fixed interval (view-change timers and resends count ticks);
2. feeds every received message to ``step(msg, frm)``, ``frm`` being the
   authenticated peer the message came from (the mTLS link), after
   ``Msg.from_wire`` (which raises ``RemoteProtocolError`` on any junk);
3. calls ``ready()``, sends ``ready.messages`` (``Envelope(dst, msg)``) and
   applies ``ready.committed`` (``Committed(seq, data, kind)``, in sequence
   order, one per sequence number; only ``kind == "data"`` reaches the catalog).

Every message is signed with Ed25519 over ``Msg.body()``: the canonical JSON
of (domain, type, sender, view, seq, digest).  Payloads are bound through the
digest: a REQUEST's digest is the hash of (origin, rid, data); a PRE-PREPARE
carries the digest of the request it orders (the request itself, signed by its
origin, rides along unsigned by the primary, as in the paper); a VIEW-CHANGE,
NEW-VIEW or ENTRIES digest is the hash of its proofs' bodies and signatures.

Rules kept here (what a correct node checks and does):

* a message is accepted only if its sender is the link peer it came from
  (else ``wrong_sender``; REQUEST and NEW-VIEW excepted: they are relayed), its signature verifies under the sender's key (else
  ``bad_signature``) and its digest matches its payload (else ``bad_payload``);
  faults are counted in ``faults[kind][node]`` and logged in ``fault_events``,
  never silently dropped;
* the primary of view v is ``ids[v % n]``; a PRE-PREPARE from anyone else is a
  ``not_primary`` fault; the primary assigns each request one sequence number
  in (h, h + L] (the watermarks: h is the last stable checkpoint, L the log
  window); PRE-PREPARE/PREPARE/COMMIT outside the window or for another view
  are ignored; in VIEW_CHANGE status only CHECKPOINT, VIEW-CHANGE, NEW-VIEW,
  FETCH and ENTRIES are processed;
* a node accepts one PRE-PREPARE per (view, seq); a second one with another
  digest, or two PREPAREs or two COMMITs (or CHECKPOINTs) from one node with
  different digests for one slot, is ``equivocation`` (a PREPARE carries the
  primary's pre-prepare signature in ``aux``, so a primary that told two
  backups two different things is caught by either of them, and a view change
  starts at once); a COMMIT for another digest than the one we prepared in
  that slot is ``conflicting_commit`` (its sender is faulty, or more than f are);
* a node never signs two different digests for one (type, view, seq) (two
  CHECKPOINTs for one seq, two VIEW-CHANGEs for one view): ``_new`` refuses
  with InternalError, and so that this holds across restarts, a node given a
  ``storage`` (``pbft_storage``) writes there, before ``ready()`` hands out
  the message, its view and VIEW-CHANGE in progress, every PRE-PREPARE it
  accepted or issued, its own PREPAREs, COMMITs and CHECKPOINTs, its prepared
  and commit certificates above the stable checkpoint, the stable checkpoint
  and its proof, its request-id reservation and its executed entries; the
  driver syncs the storage before it sends.  Built from a non-empty storage,
  the node resumes: same view (or view change), the same votes (the resend
  timer sends them again), as the primary the next free sequence number, and
  its executed entries re-emitted in ``ready().committed`` from sequence 1
  (the host rebuilds its state machine from them; then FETCH brings the rest);
* a node that restarts without its durable state is amnesic (as the primary it
  may re-issue a sequence number it had used, which its peers report as
  equivocation): it counts against f until it has caught up;
* prepared(v, n, d) = the pre-prepare plus 2f matching PREPAREs from distinct
  backups; a prepared node multicasts COMMIT; decided(n, d) = 2f + 1 matching
  COMMITs from distinct nodes and the request body; decided entries execute in
  sequence order (a request already executed within the last
  ``dedup_window`` executions, or a null request, executes as a no-op);
* two different digests decided for one sequence number, two different stable
  checkpoints for one sequence number, our own checkpoint digest differing from
  a certified one, or fault evidence against more than f distinct nodes, is
  ``too_many_faulty``: the assumption n >= 3f + 1 is broken and is *reported*;
  the node never overwrites a decided entry (no silent fork);
* every K executions a node multicasts CHECKPOINT(seq, chain digest) (the
  chain hashes every (seq, request digest) executed); 2f + 1 matching ones make
  it stable: h moves there and everything at or below h is garbage collected;
* a node with pending requests that sees no execution for
  ``view_change_ticks`` votes for view v + 1 (VIEW-CHANGE with its stable
  checkpoint proof and every prepared certificate above h); in VIEW_CHANGE
  status the timer doubles at each further timeout; f + 1 VIEW-CHANGEs for
  higher views make a node join the smallest; the primary of v + 1, with 2f + 1
  valid VIEW-CHANGEs, multicasts NEW-VIEW whose pre-prepares re-issue, for each
  n in (min_s, max_s], the highest-view prepared request or a null request;
  a receiver recomputes that set from the proofs and accepts nothing else
  (``bad_new_view``, then the next view); an invalid certificate inside a
  VIEW-CHANGE is ``bad_view_change``;
* a node that falls behind (missed messages, partitioned, restarted) sends
  FETCH(last executed seq); the answer (ENTRIES) carries the executed
  pre-prepares plus the stable checkpoint proof (the hash chain must reach the
  certified digest) and commit certificates for entries above it; anything
  unproven is ``bad_proof`` and is dropped.  FETCH goes out when a node has
  seen a sequence number it has not executed and made no progress for
  ``fetch_ticks``, and as an idle poll every 4 x ``fetch_ticks`` (one peer at a
  time, round robin); the answer also carries our NEW-VIEW when the asker is in
  an older view, so a node that was away rejoins the current view.  A node behind by more entries than
  its peers retain (``retain_entries``) would need a catalog snapshot transfer,
  which is not implemented here;
* every table is bounded: per slot at most n votes, slots only inside the
  window, pending requests ``max_pending``, one VIEW-CHANGE per sender, the
  verification cache and fault log by size; wire messages by count, depth
  and bytes (``from_wire``: ``dwcp.consensus.wire``).

Errors are sticky: after an exception inside the core the node is in
``Status.ERROR`` and refuses input (``LocalProtocolError``).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dwcp.errors import InternalError, LocalProtocolError, RemoteProtocolError, StorageError

from .pbft_storage import PbftStorage

__all__ = [
    "Committed",
    "Envelope",
    "FaultEvent",
    "FAULT_KINDS",
    "Msg",
    "MsgType",
    "NULL_DIGEST",
    "PbftNode",
    "Ready",
    "Status",
    "request_digest",
]

DOMAIN = "dwcp-pbft/1"
NULL_DIGEST = "0" * 64
GENESIS = hashlib.sha256(b"dwcp-pbft genesis").hexdigest()

# wire bounds: ``dwcp.consensus.wire`` enforces them on what arrives, the core sizes what it sends by them
MAX_DATA_BYTES = 64 * 1024  # one catalog command
MAX_WIRE_MSGS = 8192  # messages in one wire message, nested ones included
MAX_WIRE_DATA_BYTES = 8 * 1024 * 1024  # request data in one wire message

FAULT_KINDS = (
    "bad_signature",  # the signature does not verify (forged, tampered)
    "wrong_sender",  # a message claiming another node's id
    "bad_payload",  # digest does not match the payload, malformed proofs
    "equivocation",  # two digests signed by one node for one slot
    "not_primary",  # a pre-prepare (or new-view) from a node that is not the primary of that view
    "bad_view_change",  # a VIEW-CHANGE whose certificates do not hold
    "bad_new_view",  # a NEW-VIEW whose proofs do not justify it
    "bad_proof",  # ENTRIES (state transfer) that does not verify
    "conflicting_commit",  # a COMMIT for another digest than the one we prepared in that view and slot
    "too_many_faulty",  # evidence that more than f nodes are faulty: reported, never accepted
)


class MsgType(enum.Enum):
    REQUEST = "request"
    PRE_PREPARE = "pre_prepare"
    PREPARE = "prepare"
    COMMIT = "commit"
    CHECKPOINT = "checkpoint"
    VIEW_CHANGE = "view_change"
    NEW_VIEW = "new_view"
    FETCH = "fetch"
    ENTRIES = "entries"


_TYPES = {t.value: t for t in MsgType}
_PROOF_TYPES = {MsgType.VIEW_CHANGE, MsgType.NEW_VIEW, MsgType.ENTRIES}
# self-certifying messages that a node may pass on: a request (signed by its origin, forwarded to the
# primary) and a NEW-VIEW (signed by the primary, shown to a node that missed it)
_RELAYED = {MsgType.REQUEST, MsgType.NEW_VIEW}
# the votes that bind a node: it never signs two digests for one (type, view, seq)
_BINDING = {MsgType.PRE_PREPARE, MsgType.PREPARE, MsgType.COMMIT, MsgType.CHECKPOINT, MsgType.VIEW_CHANGE}
RID_BLOCK = 1024  # request ids reserved per state write (a restart skips the rest of the block)


def request_digest(origin: str, rid: int, data: bytes) -> str:
    return hashlib.sha256(json.dumps(["req", origin, rid]).encode() + b"|" + data).hexdigest()


def proofs_digest(proofs: tuple[Msg, ...]) -> str:
    h = hashlib.sha256(b"proofs")
    for p in proofs:
        h.update(p.body())
        h.update(p.sig)
    return h.hexdigest()


def chain_next(chain: str, seq: int, digest: str) -> str:
    return hashlib.sha256(f"{chain}|{seq}|{digest}".encode()).hexdigest()


@dataclass(frozen=True)
class Msg:
    """One signed protocol message.  Field use by type:

    * REQUEST: seq = the origin's request id, data, digest = request_digest(sender, seq, data);
    * PRE_PREPARE: view, seq, digest (of the request, or NULL_DIGEST), proofs = (request,) or ();
    * PREPARE / COMMIT: view, seq, digest; a PREPARE's aux = the primary's pre-prepare signature;
    * CHECKPOINT: seq, digest = the execution chain digest at seq;
    * VIEW_CHANGE: view = the new view, seq = stable checkpoint, proofs = its 2f+1 CHECKPOINTs, then
      each prepared certificate (PRE_PREPARE then its PREPAREs);
    * NEW_VIEW: view, proofs = 2f+1 VIEW_CHANGEs then the re-issued PRE_PREPAREs;
    * FETCH: view = the sender's view, seq = its last executed sequence number;
    * ENTRIES: seq = the FETCH's seq, proofs = CHECKPOINTs (optional), executed PRE_PREPAREs, COMMITs.
    """

    type: MsgType
    sender: str
    view: int = 0
    seq: int = 0
    digest: str = ""
    data: bytes = b""
    proofs: tuple[Msg, ...] = ()
    aux: bytes = b""
    sig: bytes = b""

    def body(self) -> bytes:
        """The canonical signed bytes."""
        return json.dumps([DOMAIN, self.type.value, self.sender, self.view, self.seq, self.digest],
                          separators=(",", ":")).encode()  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        w: dict[str, Any] = {"t": self.type.value, "s": self.sender, "v": self.view, "n": self.seq,
                             "d": self.digest, "sig": self.sig.hex()}  # fmt: skip
        if self.data:
            w["data"] = base64.b64encode(self.data).decode()
        if self.aux:
            w["aux"] = self.aux.hex()
        if self.proofs:
            w["p"] = [p.to_wire() for p in self.proofs]
        return w

    @classmethod
    def from_wire(cls, w: object) -> Msg:
        """Parse a JSON-safe dict; any junk raises RemoteProtocolError (and nothing else).  The rules are
        ``dwcp.consensus.wire``'s (imported here: it imports this module)."""
        from .wire import pbft_from_wire

        return pbft_from_wire(w)


@dataclass(frozen=True)
class Envelope:
    dst: str
    msg: Msg


@dataclass(frozen=True)
class Committed:
    """One executed sequence number: kind "data" (apply ``data``), "null" or "dup" (no-ops)."""

    seq: int
    data: bytes
    kind: str = "data"
    origin: str = ""
    rid: int = 0


@dataclass(frozen=True)
class FaultEvent:
    kind: str
    node: str
    view: int
    seq: int
    detail: str


@dataclass
class Ready:
    messages: list[Envelope] = field(default_factory=list)
    committed: list[Committed] = field(default_factory=list)


class Status(enum.Enum):
    NORMAL = "normal"
    VIEW_CHANGE = "view_change"
    ERROR = "error"


# (status, event) -> status; anything else is an InternalError (and the node goes to ERROR)
_TRANSITIONS: dict[tuple[Status, str], Status] = {
    (Status.NORMAL, "vote_view_change"): Status.VIEW_CHANGE,  # timeout, primary caught, f+1 joined
    (Status.VIEW_CHANGE, "vote_view_change"): Status.VIEW_CHANGE,  # the next view (doubled timer)
    (Status.VIEW_CHANGE, "new_view"): Status.NORMAL,  # a valid NEW-VIEW for our target (or later) view
    (Status.NORMAL, "new_view"): Status.NORMAL,  # catching up: a valid NEW-VIEW for a later view
}


Key = tuple[int, int]  # (view, seq)


class PbftNode:
    def __init__(
        self,
        node_id: str,
        ids: list[str],
        signer: Ed25519PrivateKey,
        verify_keys: dict[str, Ed25519PublicKey],
        *,
        view_change_ticks: int = 20,
        checkpoint_interval: int = 16,
        log_window: int | None = None,
        resend_ticks: int = 5,
        fetch_ticks: int = 10,
        max_pending: int = 1024,
        retain_entries: int = 4096,
        dedup_window: int = 65536,
        incarnation: int = 0,
        storage: PbftStorage | None = None,
    ) -> None:
        if node_id not in ids or len(set(ids)) != len(ids):
            raise ValueError("a node is one of the (distinct) ids")
        if set(verify_keys) < set(ids):
            raise ValueError("need a verify key for every node")
        if checkpoint_interval < 1 or view_change_ticks < 1 or resend_ticks < 1 or fetch_ticks < 1:
            raise ValueError("intervals are >= 1 tick")
        self.id = node_id
        self.ids = sorted(ids)
        self.n = len(ids)
        self.f = (self.n - 1) // 3
        self.quorum = 2 * self.f + 1
        self.signer = signer
        self.keys = {i: verify_keys[i] for i in self.ids}
        self.K = checkpoint_interval
        self.L = log_window if log_window is not None else 2 * checkpoint_interval
        if self.L < self.K:
            raise ValueError("log_window >= checkpoint_interval")
        self.base_vc_ticks, self.resend_ticks, self.fetch_ticks = view_change_ticks, resend_ticks, fetch_ticks
        self.max_pending, self.retain, self.dedup_window = max_pending, retain_entries, dedup_window
        self.status = Status.NORMAL
        self.view = 0
        # stable checkpoint (low watermark h) and execution
        self.h = 0
        self.stable_digest = GENESIS
        self.stable_proof: tuple[Msg, ...] = ()
        self.last_exec = 0
        self.chain = GENESIS
        # the message log, per (view, seq), inside (h, h + L]
        self.pps: dict[Key, Msg] = {}
        self.prepares: dict[Key, dict[str, Msg]] = {}
        self.commits: dict[Key, dict[str, Msg]] = {}
        self.sent_commit: set[Key] = set()
        self.pcerts: dict[int, tuple[Msg, ...]] = {}  # seq -> the highest-view prepared certificate
        self.decided: dict[int, Msg] = {}  # seq -> pre-prepare decided but not executed yet
        self.ccerts: dict[int, tuple[Msg, ...]] = {}  # seq (> h) -> its commit certificate
        self.history: OrderedDict[int, Msg] = OrderedDict()  # executed pre-prepares (for FETCH)
        self._dedup: OrderedDict[str, None] = OrderedDict()  # executed request digests
        self.ckpts: dict[int, dict[str, Msg]] = {}
        self.own_ckpts: dict[int, str] = {}
        # requests
        self.requests: OrderedDict[str, Msg] = OrderedDict()  # known, not executed
        self.own_pending: OrderedDict[str, Msg] = OrderedDict()
        self._arrived: dict[str, int] = {}  # request digest -> the tick it arrived (while pending)
        self._rid = incarnation << 32
        self.assigned: dict[str, int] = {}  # (primary) request digest -> seq in this view
        self.next_seq = 0
        # view change
        self.vcs: dict[str, Msg] = {}  # sender -> its latest (highest view) VIEW-CHANGE
        self.own_vc: Msg | None = None
        self.nv_msg: Msg | None = None  # the NEW-VIEW that started our view
        self.vc_timeout = view_change_ticks
        # faults
        self.faults: dict[str, dict[str, int]] = {}
        self.fault_events: deque[FaultEvent] = deque(maxlen=256)
        self.suspects: set[str] = set()
        # volatile
        self.now = 0
        self._vc_elapsed = 0
        self._since_progress = 0
        self._max_seen = 0
        self._fetch_rr = 0
        self._answered: dict[tuple[str, str, int], int] = {}
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._outbox: list[Envelope] = []
        self._out_committed: list[Committed] = []
        # durability
        self._signed: dict[tuple[MsgType, int, int], str] = {}  # (type, view, seq) -> the digest we signed
        self.storage = storage
        self._rid_reserved = 0
        self.replayed = 0  # executed entries re-emitted from storage at construction
        if storage is not None:
            self._restore(storage)

    # -- small helpers -------------------------------------------------------------------------
    def primary(self, view: int | None = None) -> str:
        return self.ids[(self.view if view is None else view) % self.n]

    @property
    def is_primary(self) -> bool:
        return self.primary() == self.id

    def _sign(self, m: Msg) -> Msg:
        return Msg(
            m.type, m.sender, m.view, m.seq, m.digest, m.data, m.proofs, m.aux, self.signer.sign(m.body())
        )

    def _new(self, t: MsgType, **kw: Any) -> Msg:
        m = Msg(t, self.id, **kw)
        if t in _BINDING:
            k = (t, m.view, 0 if t is MsgType.VIEW_CHANGE else m.seq)
            old = self._signed.setdefault(k, m.digest)
            if old != m.digest:
                raise InternalError(f"{self.id}: refusing to sign {t.value} {m.digest[:12]} for view {m.view} "
                                    f"seq {m.seq}: we signed {old[:12]} there")  # fmt: skip
        return self._sign(m)

    def _send(self, dst: str, m: Msg) -> None:
        if dst != self.id:
            self._outbox.append(Envelope(dst, m))

    def _broadcast(self, m: Msg) -> None:
        for p in self.ids:
            self._send(p, m)

    def _transition(self, event: str) -> None:
        new = _TRANSITIONS.get((self.status, event))
        if new is None:
            raise InternalError(f"{self.id}: no transition from {self.status} on {event}")
        self.status = new

    def _fault(self, kind: str, node: str, m: Msg | None, detail: str) -> None:
        by = self.faults.setdefault(kind, {})
        by[node] = by.get(node, 0) + 1
        self.fault_events.append(
            FaultEvent(kind, node, m.view if m else self.view, m.seq if m else 0, detail)
        )
        if kind != "too_many_faulty" and node in self.ids and node not in self.suspects:
            self.suspects.add(node)
            if len(self.suspects) > self.f:
                self._fault("too_many_faulty", "*", m,
                            f"fault evidence against {len(self.suspects)} nodes {sorted(self.suspects)} > f={self.f}")  # fmt: skip

    def _verify(self, m: Msg) -> bool:
        key = self.keys.get(m.sender)
        if key is None or len(m.sig) != 64:
            return False
        body = m.body()
        ck = body + m.sig
        if ck in self._verified:
            return True
        try:
            key.verify(m.sig, body)
        except InvalidSignature:
            return False
        self._verified[ck] = None
        if len(self._verified) > 16384:
            self._verified.popitem(last=False)
        return True

    def _payload_ok(self, m: Msg) -> bool:
        """The digest matches the payload; the payload has the shape its type allows (signatures aside)."""
        t = m.type
        if t is MsgType.REQUEST:
            return not m.proofs and m.digest == request_digest(m.sender, m.seq, m.data)
        if m.data:
            return False
        if t is MsgType.PRE_PREPARE:
            if m.digest == NULL_DIGEST:
                return not m.proofs
            if len(m.proofs) != 1:
                return False
            r = m.proofs[0]
            return (
                r.type is MsgType.REQUEST and r.digest == m.digest and self._payload_ok(r) and self._verify(r)
            )
        if t in _PROOF_TYPES:
            return len(m.digest) == 64 and m.digest == proofs_digest(m.proofs)
        return not m.proofs and (t is MsgType.FETCH or len(m.digest) == 64)

    def _in_window(self, seq: int) -> bool:
        return self.h < seq <= self.h + self.L

    # -- the driver's interface -----------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.status is Status.ERROR:
            raise LocalProtocolError(f"{self.id}: the PBFT core is in ERROR after an earlier exception")

    def propose(self, data: bytes) -> str:
        """Submit ``data`` for ordering (any node); returns the request digest.  Raises
        LocalProtocolError when ``max_pending`` requests are already waiting."""
        self._check_alive()
        if len(data) > MAX_DATA_BYTES:
            raise LocalProtocolError(f"request of {len(data)} bytes > {MAX_DATA_BYTES}")
        if len(self.requests) >= self.max_pending:
            raise LocalProtocolError("too many pending requests")
        try:
            self._rid += 1
            if self.storage is not None and self._rid > self._rid_reserved:
                self._rid_reserved = self._rid + RID_BLOCK
                self._save_state()
            req = self._new(MsgType.REQUEST, seq=self._rid, data=data,
                            digest=request_digest(self.id, self._rid, data))  # fmt: skip
            self.own_pending[req.digest] = req
            self._broadcast(req)  # the primary orders it; the backups start their timers
            self._on_request(req)
            return req.digest
        except Exception:
            self.status = Status.ERROR
            raise

    def tick(self) -> None:
        self._check_alive()
        try:
            self._tick()
        except Exception:
            self.status = Status.ERROR
            raise

    def step(self, m: Msg, frm: str) -> None:
        """One message received from the authenticated peer ``frm``."""
        self._check_alive()
        try:
            self._step(m, frm)
        except Exception:
            self.status = Status.ERROR
            raise

    def ready(self) -> Ready:
        r = Ready(self._outbox, self._out_committed)
        self._outbox, self._out_committed = [], []
        return r

    def reboot(self) -> None:
        """A process restart with the durable state kept: messages in flight and timers are lost."""
        self._outbox, self._answered = [], {}
        self._vc_elapsed = self._since_progress = 0
        if self.status is Status.ERROR:
            raise LocalProtocolError("cannot reboot a node in ERROR")

    # -- durability (pbft_storage) ---------------------------------------------------------------
    def _persist(self, kind: str, seq: int, body: Any) -> None:
        if self.storage is not None:
            self.storage.append([kind, seq, body])

    def _save_state(self) -> None:
        if self.storage is None:
            return
        self.storage.set_state({
            "view": self.view,
            "status": self.status.value,
            "own_vc": None if self.own_vc is None else self.own_vc.to_wire(),
            "nv": None if self.nv_msg is None else self.nv_msg.to_wire(),
            "h": self.h,
            "stable_digest": self.stable_digest,
            "stable_proof": [c.to_wire() for c in self.stable_proof],
            "rid": self._rid_reserved,
        })  # fmt: skip

    def _restore(self, storage: PbftStorage) -> None:
        """Resume from what ``storage`` holds (nothing: a first start).  Our own disk is trusted for
        signatures; its shape is checked, and anything malformed is a StorageError."""
        state, log, execs = storage.load()
        try:
            self._restore_from(state, log, execs)
        except (ValueError, KeyError, TypeError, RemoteProtocolError) as exc:
            raise StorageError(f"{self.id}: the pbft storage does not load: {exc}") from None

    def _restore_from(
        self, state: dict[str, Any] | None, log: list[list[Any]], execs: list[list[Any]]
    ) -> None:
        if state is not None:
            self.view = int(state["view"])
            self.status = Status(state["status"])
            if self.status is Status.ERROR:
                raise ValueError("status error is never stored")
            self.own_vc = None if state["own_vc"] is None else Msg.from_wire(state["own_vc"])
            self.nv_msg = None if state["nv"] is None else Msg.from_wire(state["nv"])
            self.h, self.stable_digest = int(state["h"]), str(state["stable_digest"])
            self.stable_proof = tuple(Msg.from_wire(w) for w in state["stable_proof"])
            self._rid_reserved = int(state["rid"])
            self._rid = max(self._rid, self._rid_reserved)
        if self.own_vc is not None:
            if self.status is Status.VIEW_CHANGE:
                self.vcs[self.id] = self.own_vc
            self._signed[(MsgType.VIEW_CHANGE, self.own_vc.view, 0)] = self.own_vc.digest
        # the executed entries, replayed: chain, history, dedup window, own checkpoints, and re-emitted
        for seq, w in execs:
            pp = Msg.from_wire(w)
            if seq != self.last_exec + 1 or pp.seq != seq or pp.type is not MsgType.PRE_PREPARE:
                raise ValueError(f"executed entry {pp.seq} at {seq} after {self.last_exec}")
            chain = chain_next(self.chain, seq, pp.digest)
            if seq == self.h and chain != self.stable_digest:
                raise ValueError(f"the executed entries do not hash to the stable checkpoint {self.h}")
            self._executed(seq, pp, chain)
        self.replayed = self.last_exec
        floor = self.nv_msg.view if self.nv_msg is not None else 0  # pre-prepares of views we left are void
        for kind, seq, body in log:
            if seq <= self.h:
                continue
            if kind == "pcert":
                cert = tuple(Msg.from_wire(w) for w in body)
                if seq not in self.pcerts or cert[0].view > self.pcerts[seq][0].view:
                    self.pcerts[seq] = cert
                continue
            if kind == "ccert":
                self.ccerts[seq] = tuple(Msg.from_wire(w) for w in body)
                continue
            m = Msg.from_wire(body)
            key = (m.view, m.seq)
            if m.seq != seq:
                raise ValueError(f"{kind} record for seq {seq} holds seq {m.seq}")
            if kind == "pp":
                if m.type is not MsgType.PRE_PREPARE:
                    raise ValueError(f"pp record holds a {m.type.value}")
                if m.sender == self.id:
                    self._signed[(m.type, m.view, m.seq)] = m.digest
                if m.view >= floor:
                    self.pps[key] = m
                continue
            if m.sender != self.id or m.type not in (MsgType.PREPARE, MsgType.COMMIT, MsgType.CHECKPOINT):
                raise ValueError(f"vote record holds a {m.type.value} from {m.sender}")
            self._signed[(m.type, m.view, m.seq)] = m.digest
            if m.type is MsgType.CHECKPOINT:
                self.ckpts.setdefault(m.seq, {})[self.id] = m
            elif m.view >= floor:
                table = self.prepares if m.type is MsgType.PREPARE else self.commits
                table.setdefault(key, {})[self.id] = m
                if m.type is MsgType.COMMIT:
                    self.sent_commit.add(key)
        if self.nv_msg is not None:  # the pre-prepares of the NEW-VIEW that started our view
            for pp in self.nv_msg.proofs:
                if pp.type is MsgType.PRE_PREPARE and self._in_window(pp.seq):
                    self.pps.setdefault((pp.view, pp.seq), pp)
                    if pp.sender == self.id:
                        self._signed[(pp.type, pp.view, pp.seq)] = pp.digest
        mine = [(v, n) for (v, n) in self.pps if v == self.view]
        self.next_seq = max([n for _, n in mine] + [self.h])
        self._max_seen = max([n for _, n in self.pps] + [0])  # slots seen and not executed: FETCH soon
        for key in sorted(mine):
            pp = self.pps[key]
            if pp.proofs:
                self.assigned[pp.digest] = pp.seq
                if (
                    pp.seq > self.last_exec
                    and pp.digest not in self._dedup
                    and len(self.requests) < self.max_pending
                ):
                    self.requests[pp.digest] = pp.proofs[
                        0
                    ]  # pending again: the view-change timer runs for it
                    self._arrived[pp.digest] = self.now
        if self.status is Status.NORMAL and self.nv_msg is not None and self.nv_msg.view == self.view:
            # a NEW-VIEW's pre-prepares we had not prepared yet (the state is written before the votes)
            for key in sorted(mine):
                pp = self.pps[key]
                if (
                    pp.sender != self.id
                    and self.id not in self.prepares.get(key, {})
                    and pp.seq > self.last_exec
                ):
                    self._prepare(pp)

    # -- ticking -----------------------------------------------------------------------------------
    def _tick(self) -> None:
        self.now += 1
        self._since_progress += 1
        if self.status is Status.NORMAL:
            if self.requests:
                self._vc_elapsed += 1
                if self._vc_elapsed >= self.vc_timeout:
                    self._start_view_change(self.view + 1, "timeout")
            else:
                self._vc_elapsed = 0
        else:
            self._vc_elapsed += 1
            if self._vc_elapsed >= self.vc_timeout:
                self.vc_timeout = min(self.vc_timeout * 2, self.base_vc_ticks * 64)
                self._start_view_change(self.view + 1, "view change timeout")
        if self.now % self.resend_ticks == 0:
            self._resend()
        behind = self._max_seen > self.last_exec or self.h > self.last_exec
        if (
            self.now % self.fetch_ticks == 0
            and self._since_progress >= self.fetch_ticks
            and (
                behind
                or self.now % (4 * self.fetch_ticks) == 0  # an idle poll: we may have missed everything
            )
        ):
            others = [p for p in self.ids if p != self.id]
            self._fetch_rr += 1
            self._send(others[self._fetch_rr % len(others)],
                       self._new(MsgType.FETCH, view=self.view, seq=self.last_exec))  # fmt: skip
        if len(self._answered) > 4 * self.n * self.L:
            self._answered.clear()

    def _resend(self) -> None:
        old = self.now - max(self.base_vc_ticks // 2, self.resend_ticks)
        for req in list(self.own_pending.values())[:32]:
            if self._arrived.get(req.digest, 0) <= old:
                self._broadcast(req)
        if self.status is Status.VIEW_CHANGE:
            if self.own_vc is not None:
                self._broadcast(self.own_vc)
            return
        if self.is_primary:
            self._assign_pending()
        else:  # backups forward what they wait for (a client that told only the backups is not a fault)
            for req in list(self.requests.values())[:32]:
                if req.digest not in self.own_pending and self._arrived.get(req.digest, 0) <= old:
                    self._send(self.primary(), req)
        n_sent = 0
        for (v, n), pp in sorted(self.pps.items()):
            if v != self.view or n <= self.last_exec or n in self.decided or n_sent >= 32:
                continue
            n_sent += 1
            if self.is_primary:
                self._broadcast(pp)
            mine = self.prepares.get((v, n), {}).get(self.id)
            if mine is not None:
                self._broadcast(mine)
            mine = self.commits.get((v, n), {}).get(self.id)
            if mine is not None:
                self._broadcast(mine)
        top = max(self.own_ckpts, default=0)
        if top > self.h:
            mine = self.ckpts.get(top, {}).get(self.id)
            if mine is not None:
                self._broadcast(mine)

    # -- receiving ----------------------------------------------------------------------------------
    def _step(self, m: Msg, frm: str) -> None:
        if frm not in self.keys or frm == self.id:
            return
        if m.sender != frm and m.type not in _RELAYED:
            self._fault("wrong_sender", frm, m, f"{m.type.value} from {frm} claims to be from {m.sender}")
            return
        if not self._verify(m):
            self._fault("bad_signature", frm, m, f"{m.type.value} signature does not verify")
            return
        if not self._payload_ok(m):
            self._fault("bad_payload", frm, m, f"{m.type.value} digest or payload malformed")
            return
        t = m.type
        if t in (MsgType.PRE_PREPARE, MsgType.PREPARE, MsgType.COMMIT, MsgType.CHECKPOINT):
            self._max_seen = max(self._max_seen, min(m.seq, self.h + self.L))
        if t is MsgType.REQUEST:
            self._on_request(m)
        elif t is MsgType.CHECKPOINT:
            self._on_checkpoint(m)
        elif t is MsgType.VIEW_CHANGE:
            self._on_view_change(m)
        elif t is MsgType.NEW_VIEW:
            self._on_new_view(m)
        elif t is MsgType.FETCH:
            self._on_fetch(m)
        elif t is MsgType.ENTRIES:
            self._on_entries(m)
        elif self.status is Status.NORMAL:
            if t is MsgType.PRE_PREPARE:
                self._on_pre_prepare(m)
            elif t is MsgType.PREPARE:
                self._on_prepare(m)
            elif t is MsgType.COMMIT:
                self._on_commit(m)

    def _on_request(self, m: Msg) -> None:
        if m.digest in self._dedup or m.digest in self.requests:
            if self.is_primary and self.status is Status.NORMAL and m.digest in self.requests:
                self._assign(self.requests[m.digest])
            return
        if len(self.requests) >= self.max_pending:
            return
        if not self.requests:
            self._vc_elapsed = 0
        self.requests[m.digest] = m
        self._arrived[m.digest] = self.now
        if self.is_primary and self.status is Status.NORMAL:
            self._assign(m)

    # -- normal case ------------------------------------------------------------------------------------
    def _assign(self, req: Msg) -> None:
        if req.digest in self.assigned or req.digest in self._dedup:
            return
        if self.next_seq < self.h:
            self.next_seq = self.h
        if not self._in_window(self.next_seq + 1):
            return  # the window is full: wait for a stable checkpoint
        self.next_seq += 1
        pp = self._new(
            MsgType.PRE_PREPARE, view=self.view, seq=self.next_seq, digest=req.digest, proofs=(req,)
        )
        self.assigned[req.digest] = pp.seq
        self.pps[(self.view, pp.seq)] = pp
        self._persist("pp", pp.seq, pp.to_wire())
        self._broadcast(pp)

    def _assign_pending(self) -> None:
        for req in list(self.requests.values()):
            if req.digest not in self.assigned:
                self._assign(req)
                if not self._in_window(self.next_seq + 1):
                    break

    def _on_pre_prepare(self, m: Msg) -> None:
        if m.view != self.view:
            return
        if m.sender != self.primary(m.view):
            self._fault("not_primary", m.sender, m, f"pre-prepare for view {m.view} seq {m.seq}; "
                        f"the primary is {self.primary(m.view)}")  # fmt: skip
            return
        if not self._in_window(m.seq):
            return
        key = (m.view, m.seq)
        old = self.pps.get(key)
        if old is not None:
            if old.digest != m.digest:
                self._equivocation(m.sender, m, "two pre-prepares for one slot")
            return
        self.pps[key] = m
        self._persist("pp", m.seq, m.to_wire())
        if m.proofs and m.digest not in self._dedup and m.digest not in self.requests:
            if len(self.requests) < self.max_pending:
                self.requests[m.digest] = m.proofs[0]
                self._arrived[m.digest] = self.now
        self._prepare(m)
        # prepares that arrived first, for another digest, with the primary's signature on it?
        for p in list(self.prepares.get(key, {}).values()):
            if p.digest != m.digest and self._aux_proves(p):
                self._equivocation(
                    m.sender, m, f"pre-prepare {m.digest[:12]} vs {p.digest[:12]} shown by {p.sender}"
                )
                break
        self._check_prepared(key)

    def _prepare(self, pp: Msg) -> None:
        prep = self._new(MsgType.PREPARE, view=pp.view, seq=pp.seq, digest=pp.digest, aux=pp.sig)
        self.prepares.setdefault((pp.view, pp.seq), {})[self.id] = prep
        self._persist("vote", pp.seq, prep.to_wire())
        self._broadcast(prep)

    def _aux_proves(self, p: Msg) -> bool:
        """A PREPARE's aux is the primary's signature on PRE-PREPARE(view, seq, p.digest)."""
        if len(p.aux) != 64:
            return False
        pp = Msg(MsgType.PRE_PREPARE, self.primary(p.view), p.view, p.seq, p.digest, sig=p.aux)
        return self._verify(pp)

    def _equivocation(self, node: str, m: Msg, detail: str) -> None:
        self._fault("equivocation", node, m, detail)
        if node == self.primary() and self.status is Status.NORMAL and m.view == self.view:
            self._start_view_change(self.view + 1, f"primary {node} equivocated")

    def _vote(self, table: dict[Key, dict[str, Msg]], m: Msg) -> bool:
        if m.view != self.view or not self._in_window(m.seq):
            return False
        votes = table.setdefault((m.view, m.seq), {})
        old = votes.get(m.sender)
        if old is not None:
            if old.digest != m.digest:
                self._equivocation(m.sender, m, f"two {m.type.value}s for one slot")
            return False
        votes[m.sender] = m
        return True

    def _on_prepare(self, m: Msg) -> None:
        if m.sender == self.primary(m.view):
            return  # the primary's pre-prepare is its prepare
        if not self._vote(self.prepares, m):
            return
        pp = self.pps.get((m.view, m.seq))
        if pp is not None and pp.digest != m.digest and self._aux_proves(m):
            self._equivocation(
                pp.sender, pp, f"pre-prepare {pp.digest[:12]} vs {m.digest[:12]} shown by {m.sender}"
            )
        self._check_prepared((m.view, m.seq))

    def _on_commit(self, m: Msg) -> None:
        key = (m.view, m.seq)
        pp = self.pps.get(key)
        if key in self.sent_commit and pp is not None and pp.digest != m.digest:
            # we hold a prepared certificate for another digest in this view: either the sender is
            # faulty or two prepared certificates exist, which takes more than f faulty nodes
            self._fault(
                "conflicting_commit",
                m.sender,
                m,
                f"commit {m.digest[:12]} where we prepared {pp.digest[:12]}",
            )
        if self._vote(self.commits, m):
            self._check_committed((m.view, m.seq))

    def _check_prepared(self, key: Key) -> None:
        pp = self.pps.get(key)
        if pp is None or key in self.sent_commit:
            return
        prim = self.primary(key[0])
        match = [
            p for s, p in sorted(self.prepares.get(key, {}).items()) if p.digest == pp.digest and s != prim
        ]
        if len(match) < 2 * self.f:
            return
        self.sent_commit.add(key)
        self.pcerts[key[1]] = (pp, *match[: 2 * self.f])
        self._persist("pcert", key[1], [p.to_wire() for p in self.pcerts[key[1]]])
        c = self._new(MsgType.COMMIT, view=key[0], seq=key[1], digest=pp.digest)
        self.commits.setdefault(key, {})[self.id] = c
        self._persist("vote", key[1], c.to_wire())
        self._broadcast(c)
        self._check_committed(key)

    def _check_committed(self, key: Key) -> None:
        votes = self.commits.get(key, {})
        if len(votes) < self.quorum:
            return
        by: dict[str, list[Msg]] = {}
        for _s, c in sorted(votes.items()):
            by.setdefault(c.digest, []).append(c)
        for d, cs in by.items():
            if len(cs) < self.quorum:
                continue
            pp = self.pps.get(key)
            if pp is None or pp.digest != d:
                if d == NULL_DIGEST:
                    pp = Msg(MsgType.PRE_PREPARE, self.primary(key[0]), key[0], key[1], d)
                elif d in self.requests:
                    pp = Msg(
                        MsgType.PRE_PREPARE,
                        self.primary(key[0]),
                        key[0],
                        key[1],
                        d,
                        proofs=(self.requests[d],),
                    )
                else:
                    continue  # no body yet: a FETCH will bring it
            self._decide(key[1], pp, tuple(cs[: self.quorum]))

    def _decide(self, seq: int, pp: Msg, cert: tuple[Msg, ...]) -> None:
        if seq <= self.last_exec:
            old = self.history.get(seq)
            if old is not None and old.digest != pp.digest:
                self._fault("too_many_faulty", "*", pp, f"seq {seq}: {pp.digest[:12]} certified, "
                            f"{old.digest[:12]} executed")  # fmt: skip
            return
        old = self.decided.get(seq)
        if old is not None:
            if old.digest != pp.digest:
                self._fault("too_many_faulty", "*", pp,
                            f"conflicting commit certificates at seq {seq}: {old.digest[:12]} vs {pp.digest[:12]}")  # fmt: skip
            return
        self.decided[seq] = pp
        if cert:
            self.ccerts[seq] = cert
            self._persist("ccert", seq, [c.to_wire() for c in cert])
        self._execute()

    def _execute(self) -> None:
        while self.last_exec + 1 in self.decided:
            n = self.last_exec + 1
            pp = self.decided.pop(n)
            chain = chain_next(self.chain, n, pp.digest)
            if n == self.h and chain != self.stable_digest:
                self.decided[n] = pp
                self._fault(
                    "too_many_faulty", "*", pp, f"our history diverges from the stable checkpoint at {n}"
                )
                return
            if self.storage is not None:
                self.storage.append_exec([n, pp.to_wire()])
            self._executed(n, pp, chain)
            self._vc_elapsed = 0
            self._since_progress = 0
            self.vc_timeout = self.base_vc_ticks
            if n % self.K == 0 and n > self.h:
                ck = self._new(MsgType.CHECKPOINT, seq=n, digest=chain)
                self.ckpts.setdefault(n, {})[self.id] = ck
                self._persist("vote", n, ck.to_wire())
                self._broadcast(ck)
                self._check_stable(n)

    def _executed(self, n: int, pp: Msg, chain: str) -> None:
        """Sequence ``n`` executed (or replayed from storage): the chain, the history, the dedup window and
        the entry for ``ready().committed``."""
        self.chain, self.last_exec = chain, n
        self.history[n] = pp
        while len(self.history) > self.retain:
            self.history.popitem(last=False)
        if pp.digest == NULL_DIGEST or not pp.proofs:
            self._out_committed.append(Committed(n, b"", "null"))
        else:
            req = pp.proofs[0]
            kind = "dup" if pp.digest in self._dedup else "data"
            self._dedup[pp.digest] = None
            while len(self._dedup) > self.dedup_window:
                self._dedup.popitem(last=False)
            self._out_committed.append(
                Committed(n, req.data if kind == "data" else b"", kind, req.sender, req.seq)
            )
            self.requests.pop(pp.digest, None)
            self.own_pending.pop(pp.digest, None)
            self._arrived.pop(pp.digest, None)
        if n % self.K == 0 and n > self.h:
            self.own_ckpts[n] = chain

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _on_checkpoint(self, m: Msg) -> None:
        if m.seq <= self.h or m.seq % self.K:
            return
        votes = self.ckpts.setdefault(m.seq, {})
        old = votes.get(m.sender)
        if old is not None:
            if old.digest != m.digest:
                self._fault("equivocation", m.sender, m, f"two checkpoints at {m.seq}")
            return
        votes[m.sender] = m
        # bounded: keep each sender's 3 newest checkpoint seqs
        mine = sorted(s for s, vs in self.ckpts.items() if m.sender in vs)
        for s in mine[:-3]:
            self.ckpts[s].pop(m.sender, None)
            if not self.ckpts[s]:
                del self.ckpts[s]
        self._check_stable(m.seq)

    def _ckpt_cert(self, msgs: list[Msg]) -> tuple[int, str, tuple[Msg, ...]] | None:
        """(seq, digest, proof) when ``msgs`` hold 2f+1 matching checkpoints from distinct nodes."""
        by: dict[tuple[int, str], dict[str, Msg]] = {}
        for c in msgs:
            by.setdefault((c.seq, c.digest), {})[c.sender] = c
        certs = [(k, vs) for k, vs in by.items() if len(vs) >= self.quorum]
        if len(certs) > 1 and len({k[0] for k, _ in certs}) < len(certs):
            self._fault("too_many_faulty", "*", msgs[0], f"two stable checkpoints at seq {certs[0][0][0]}")
            return None
        if not certs:
            return None
        (seq, d), vs = max(certs, key=lambda kv: kv[0][0])
        return seq, d, tuple(vs[s] for s in sorted(vs)[: self.quorum])

    def _check_stable(self, seq: int) -> None:
        cert = self._ckpt_cert(list(self.ckpts.get(seq, {}).values()))
        if cert is None:
            return
        _, d, proof = cert
        own = self.own_ckpts.get(seq)
        if own is not None and own != d:
            self._fault("too_many_faulty", "*", proof[0], f"2f+1 nodes certify checkpoint {seq} = {d[:12]}, "
                        f"we executed {own[:12]}")  # fmt: skip
            return
        self._stabilize(seq, d, proof)

    def _stabilize(self, seq: int, digest: str, proof: tuple[Msg, ...], assign: bool = True) -> None:
        if seq <= self.h:
            return
        self.h, self.stable_digest, self.stable_proof = seq, digest, proof
        self._signed = {k: d for k, d in self._signed.items() if k[2] > seq or k[0] is MsgType.VIEW_CHANGE}
        if self.storage is not None:
            self._save_state()  # first the new h (loading skips records at or below it), then the shorter log
            self.storage.compact(seq)
        self.pps = {k: v for k, v in self.pps.items() if k[1] > seq}
        self.prepares = {k: v for k, v in self.prepares.items() if k[1] > seq}
        self.commits = {k: v for k, v in self.commits.items() if k[1] > seq}
        self.sent_commit = {k for k in self.sent_commit if k[1] > seq}
        self.pcerts = {s: v for s, v in self.pcerts.items() if s > seq}
        self.ccerts = {s: v for s, v in self.ccerts.items() if s > seq}
        self.ckpts = {s: v for s, v in self.ckpts.items() if s > seq}
        self.own_ckpts = {s: v for s, v in self.own_ckpts.items() if s > seq}
        self.assigned = {d: s for d, s in self.assigned.items() if s > seq}
        if assign and self.is_primary and self.status is Status.NORMAL:
            self._assign_pending()  # the window moved

    # -- view change ---------------------------------------------------------------------------------------
    def _start_view_change(self, new_view: int, reason: str) -> None:
        if new_view <= self.view and self.status is Status.VIEW_CHANGE:
            return
        self._transition("vote_view_change")
        self.view = new_view
        self._vc_elapsed = 0
        proofs: list[Msg] = list(self.stable_proof)
        for n in sorted(self.pcerts):
            if n > self.h:
                proofs.extend(self.pcerts[n])
        ps = tuple(proofs)
        self.own_vc = self._new(
            MsgType.VIEW_CHANGE, view=new_view, seq=self.h, digest=proofs_digest(ps), proofs=ps
        )
        self.vcs[self.id] = self.own_vc
        self._save_state()
        self._broadcast(self.own_vc)
        self._maybe_new_view()

    def _valid_vc(self, m: Msg) -> str | None:
        """None when the VIEW-CHANGE's certificates hold, else what is wrong."""
        cks = [p for p in m.proofs if p.type is MsgType.CHECKPOINT]
        pps = [p for p in m.proofs if p.type is MsgType.PRE_PREPARE]
        preps = [p for p in m.proofs if p.type is MsgType.PREPARE]
        if len(cks) + len(pps) + len(preps) != len(m.proofs):
            return "unexpected message types"
        if m.seq % self.K:
            return "stable seq is not a checkpoint"
        if m.seq == 0:
            if cks:
                return "checkpoint proof for seq 0"
        else:
            if not all(c.seq == m.seq and c.sender in self.keys and self._payload_ok(c) and self._verify(c)
                       for c in cks):  # fmt: skip
                return "bad checkpoint proof"
            cert = self._ckpt_cert(cks)
            if cert is None or cert[0] != m.seq:
                return "checkpoint proof is not 2f+1 matching"
        seen: set[int] = set()
        for pp in pps:
            if pp.seq in seen or not m.seq < pp.seq <= m.seq + self.L or pp.view >= m.view:
                return f"prepared certificate for seq {pp.seq} out of range"
            seen.add(pp.seq)
            prim = self.primary(pp.view)
            if pp.sender != prim or not self._payload_ok(pp) or not self._verify(pp):
                return f"bad pre-prepare in certificate for seq {pp.seq}"
            senders = {p.sender for p in preps if (p.view, p.seq, p.digest) == (pp.view, pp.seq, pp.digest)
                       and p.sender != prim and p.sender in self.keys and self._payload_ok(p) and self._verify(p)}  # fmt: skip
            if len(senders) < 2 * self.f:
                return f"certificate for seq {pp.seq} has {len(senders)} < 2f prepares"
        keys = {(pp.view, pp.seq, pp.digest) for pp in pps}
        if any((p.view, p.seq, p.digest) not in keys for p in preps):
            return "prepare outside any certificate"
        return None

    def _on_view_change(self, m: Msg) -> None:
        if m.view <= self.view and (self.status is Status.NORMAL or m.view < self.view):
            # a node behind us: the primary of our view shows it the NEW-VIEW
            if (
                self.status is Status.NORMAL
                and self.nv_msg is not None
                and self.is_primary
                and m.view == self.view
            ):
                self._answer(m.sender, "nv", self.view, self.nv_msg)
            return
        old = self.vcs.get(m.sender)
        if old is not None and old.view >= m.view:
            return
        err = self._valid_vc(m)
        if err is not None:
            self._fault("bad_view_change", m.sender, m, err)
            return
        self.vcs[m.sender] = m
        higher = sorted(vc.view for s, vc in self.vcs.items() if vc.view > self.view and s != self.id)
        if len(higher) >= self.f + 1:
            # f+1 nodes want a later view: at least one correct node does; join the smallest
            self._start_view_change(higher[-(self.f + 1)], "f+1 nodes moved on")
        self._maybe_new_view()

    def _compute_o(self, view: int, vcs: list[Msg]) -> tuple[int, Msg, list[tuple[int, str, Msg | None]]]:
        """min_s, the view change carrying its proof, and per seq in (min_s, max_s]: (seq, digest, request)."""
        best_vc = max(vcs, key=lambda vc: (vc.seq, vc.sender))
        min_s = best_vc.seq
        chosen: dict[int, Msg] = {}
        for vc in vcs:
            for pp in vc.proofs:
                if pp.type is MsgType.PRE_PREPARE and pp.seq > min_s:
                    cur = chosen.get(pp.seq)
                    if cur is None or pp.view > cur.view:
                        chosen[pp.seq] = pp
        max_s = max(chosen, default=min_s)
        out: list[tuple[int, str, Msg | None]] = []
        for n in range(min_s + 1, max_s + 1):
            best = chosen.get(n)
            if best is None or best.digest == NULL_DIGEST:
                out.append((n, NULL_DIGEST, None))
            else:
                out.append((n, best.digest, best.proofs[0]))
        return min_s, best_vc, out

    def _maybe_new_view(self) -> None:
        v = self.view
        if self.status is not Status.VIEW_CHANGE or self.primary(v) != self.id:
            return
        vcs = [vc for s, vc in sorted(self.vcs.items()) if vc.view == v]
        if len(vcs) < self.quorum:
            return
        vcs = vcs[: self.quorum]
        _, _, o = self._compute_o(v, vcs)
        pps = [
            self._new(MsgType.PRE_PREPARE, view=v, seq=n, digest=d, proofs=(r,) if r else ()) for n, d, r in o
        ]
        proofs = tuple(vcs) + tuple(pps)
        nv = self._new(MsgType.NEW_VIEW, view=v, digest=proofs_digest(proofs), proofs=proofs)
        self._broadcast(nv)
        self._enter_view(nv)

    def _on_new_view(self, m: Msg) -> None:
        if m.view < self.view or (m.view == self.view and self.status is Status.NORMAL):
            return
        if m.sender != self.primary(m.view):
            self._fault(
                "not_primary",
                m.sender,
                m,
                f"new-view for view {m.view}; the primary is {self.primary(m.view)}",
            )
            return
        err = self._valid_nv(m)
        if err is not None:
            self._fault("bad_new_view", m.sender, m, err)
            if self.status is Status.VIEW_CHANGE and m.view == self.view:
                self._start_view_change(self.view + 1, "bad new-view")
            return
        self._enter_view(m)

    def _valid_nv(self, m: Msg) -> str | None:
        vcs = [p for p in m.proofs if p.type is MsgType.VIEW_CHANGE]
        pps = [p for p in m.proofs if p.type is MsgType.PRE_PREPARE]
        if len(vcs) + len(pps) != len(m.proofs):
            return "unexpected message types"
        if len({vc.sender for vc in vcs}) != len(vcs) or len(vcs) < self.quorum:
            return f"{len(vcs)} view changes from distinct nodes < 2f+1"
        for vc in vcs:
            if (
                vc.view != m.view
                or vc.sender not in self.keys
                or not self._payload_ok(vc)
                or not self._verify(vc)
            ):
                return f"bad view change from {vc.sender}"
            err = self._valid_vc(vc)
            if err is not None:
                return f"view change from {vc.sender}: {err}"
        _, _, o = self._compute_o(m.view, vcs)
        if len(pps) != len(o):
            return f"{len(pps)} pre-prepares, the proofs justify {len(o)}"
        for pp, (n, d, _r) in zip(pps, o, strict=True):
            if (pp.view, pp.seq, pp.digest, pp.sender) != (m.view, n, d, m.sender):
                return f"pre-prepare for seq {pp.seq} is not the one the proofs justify"
            if not self._payload_ok(pp) or not self._verify(pp):
                return f"bad pre-prepare for seq {pp.seq}"
        return None

    def _enter_view(self, nv: Msg) -> None:
        vcs = [p for p in nv.proofs if p.type is MsgType.VIEW_CHANGE]
        pps = [p for p in nv.proofs if p.type is MsgType.PRE_PREPARE]
        min_s, best_vc, _ = self._compute_o(nv.view, vcs)
        self._transition("new_view")
        self.view, self.nv_msg = nv.view, nv
        self._vc_elapsed = 0
        self.vc_timeout = self.base_vc_ticks
        self.own_vc = None
        self.vcs = {s: vc for s, vc in self.vcs.items() if vc.view > nv.view}
        self.pps = {k: v for k, v in self.pps.items() if k[0] >= nv.view}
        self.prepares = {k: v for k, v in self.prepares.items() if k[0] >= nv.view}
        self.commits = {k: v for k, v in self.commits.items() if k[0] >= nv.view}
        self.sent_commit = {k for k in self.sent_commit if k[0] >= nv.view}
        # we never sign for an earlier view again (CHECKPOINTs carry no view)
        self._signed = {
            k: d for k, d in self._signed.items() if k[1] >= nv.view or k[0] is MsgType.CHECKPOINT
        }
        if min_s > self.h:
            cks = [p for p in best_vc.proofs if p.type is MsgType.CHECKPOINT]
            cert = self._ckpt_cert(cks)
            if cert is not None:
                own = self.own_ckpts.get(min_s)
                if own is not None and own != cert[1]:
                    self._fault("too_many_faulty", "*", nv, f"certified checkpoint {min_s} differs from ours")
                else:
                    self._stabilize(*cert, assign=False)  # not before next_seq and assigned are set below
        self.assigned = {}
        self.next_seq = max([pp.seq for pp in pps], default=min_s)
        self._save_state()  # the NEW-VIEW holds its pre-prepares: a restart re-reads them from the state
        for pp in pps:
            if not self._in_window(pp.seq):
                continue
            key = (pp.view, pp.seq)
            self.pps[key] = pp
            if pp.proofs:
                self.assigned[pp.digest] = pp.seq
            if self.id != nv.sender:
                self._prepare(pp)
            self._check_prepared(key)
        if self.is_primary:
            self._assign_pending()

    # -- state transfer -------------------------------------------------------------------------------------
    def _answer(self, dst: str, what: str, seq: int, m: Msg) -> None:
        """Send ``m`` to ``dst`` at most once per resend interval for (what, seq)."""
        k = (dst, what, seq)
        last = self._answered.get(k)
        if last is not None and self.now - last < self.resend_ticks:
            return
        self._answered[k] = self.now
        self._send(dst, m)

    def _on_fetch(self, m: Msg) -> None:
        if m.view < self.view and self.nv_msg is not None and self.status is Status.NORMAL:
            self._answer(m.sender, "nv", self.view, self.nv_msg)
        a = m.seq
        if a >= self.last_exec:
            return
        entries: list[Msg] = []
        size = 0
        certs: list[Msg] = []
        for s in range(a + 1, self.last_exec + 1):
            pp = self.history.get(s)
            if pp is None or len(entries) >= MAX_WIRE_MSGS // 8:
                break
            if s > self.h:
                cert = self.ccerts.get(s)
                if cert is None:
                    break
                certs.extend(cert)
            size += sum(len(r.data) for r in pp.proofs)
            if size > MAX_WIRE_DATA_BYTES // 2:
                break
            entries.append(pp)
        if not entries:
            return
        end = entries[-1].seq
        cks: tuple[Msg, ...] = ()
        if a < self.h:
            if end < self.h:
                return  # cannot prove a page that stops short of the stable checkpoint
            cks = self.stable_proof
        proofs = (*cks, *entries, *certs)
        self._answer(m.sender, "entries", a, self._new(MsgType.ENTRIES, seq=a, digest=proofs_digest(proofs),
                                                      proofs=proofs))  # fmt: skip

    def _on_entries(self, m: Msg) -> None:
        if m.seq != self.last_exec:
            return  # stale answer
        cks = [p for p in m.proofs if p.type is MsgType.CHECKPOINT]
        pps = [p for p in m.proofs if p.type is MsgType.PRE_PREPARE]
        coms = [p for p in m.proofs if p.type is MsgType.COMMIT]
        if len(cks) + len(pps) + len(coms) != len(m.proofs):
            self._fault("bad_proof", m.sender, m, "unexpected message types")
            return
        if [pp.seq for pp in pps] != list(range(m.seq + 1, m.seq + 1 + len(pps))):
            self._fault("bad_proof", m.sender, m, "entries are not contiguous")
            return
        for pp in pps:
            if not self._payload_ok(pp):
                self._fault("bad_proof", m.sender, m, f"entry {pp.seq} payload does not match its digest")
                return
        certified: dict[int, str] = {}
        ck_cert = None
        if cks:
            if not all(c.sender in self.keys and self._payload_ok(c) and self._verify(c) for c in cks):
                self._fault("bad_proof", m.sender, m, "bad checkpoint signature")
                return
            ck_cert = self._ckpt_cert(cks)
            if ck_cert is None:
                self._fault("bad_proof", m.sender, m, "checkpoint proof is not 2f+1 matching")
                return
            certified[ck_cert[0]] = ck_cert[1]
        if self.h > self.last_exec:
            certified[self.h] = self.stable_digest
        chain, upto = self.chain, self.last_exec
        for pp in pps:
            chain = chain_next(chain, pp.seq, pp.digest)
            want = certified.get(pp.seq)
            if want is not None:
                if chain != want:
                    self._fault(
                        "bad_proof", m.sender, m, f"entries do not hash to the certified checkpoint {pp.seq}"
                    )
                    return
                upto = pp.seq
        accepted: list[tuple[Msg, tuple[Msg, ...]]] = [(pp, ()) for pp in pps if pp.seq <= upto]
        for pp in pps:
            if pp.seq <= upto:
                continue
            by_view: dict[int, dict[str, Msg]] = {}
            for c in coms:
                if (c.seq, c.digest) == (pp.seq, pp.digest) and c.sender in self.keys and self._payload_ok(c) \
                        and self._verify(c):  # fmt: skip
                    by_view.setdefault(c.view, {})[c.sender] = c
            good = next((vs for vs in by_view.values() if len(vs) >= self.quorum), None)
            if good is None:
                break  # no commit certificate: the rest stays unproven
            accepted.append((pp, tuple(good[s] for s in sorted(good)[: self.quorum])))
        if not accepted and pps:
            self._fault("bad_proof", m.sender, m, "no entry carries a proof")
            return
        for pp, cert in accepted:
            self._decide(pp.seq, pp, cert)
        if ck_cert is not None and ck_cert[0] <= self.last_exec:
            self._stabilize(*ck_cert)
