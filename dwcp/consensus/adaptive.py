"""Automatic consensus choice (adaptive mode): evidence of Byzantine behaviour, and when to switch.

Sans-IO, like the engines it watches: nothing here reads a clock, a socket or
an environment variable.  ``now`` is a parameter (seconds, monotonic) and the
host -- ``EpochDriver`` in the daemon, ``_testbase.adaptivesim`` in tests --
calls in.  Four parts:

* ``FaultDetector``: evidence of Byzantine behaviour per peer, in every epoch;
* ``sign_envelope`` / ``envelope_signer``: Ed25519 signatures on epoch
  envelopes, so that Raft epochs have signatures to check too;
* ``SwitchPolicy``: when to propose a switch, from the evidence and the time;
* ``Adaptive``: the three for one host (``incoming``, ``outgoing``,
  ``after_ready``, ``poll``, ``status``).

Rules
-----
1. Evidence is something only a faulty node does, counted against the node
   that provably did it:

   * ``bad_signature``: an envelope whose signature verifies under no
     member's key, or is missing where envelopes are signed (counted against
     the link's TLS identity; in plaintext, tests only, against the claimed
     sender);
   * ``forged``: an envelope whose ``src`` is not its link's TLS identity
     (against that identity: the envelope is still refused), one whose
     signature verifies under another member's key than its ``src``'s
     (against the signer: it signed a claim to be someone else), or a Raft
     message naming another sender than its envelope;
   * ``malformed``: an envelope ``dwcp.consensus.wire`` refuses (against the
     TLS identity; in plaintext against the member it names as ``src``, if any);
   * ``equivocation`` in Raft: a node that voted for itself in a term (it
     sent us VOTE, or APPEND as that term's leader) and also granted us its
     vote in that term; a leader that sent us two different entries for one
     (term, index) of its own term.  Both are impossible for a correct node,
     whose vote is durable (``FileStorage``);
   * in PBFT epochs, what ``PbftNode.faults`` counts (bad_signature,
     wrong_sender, equivocation, ...), as it grows, once per (kind, node,
     view, seq) (PBFT resends its votes: an old equivocation seen again is not
     new); "too_many_faulty" names no node and is not counted.

   Crashes, delays, drops, partitions and restarts with their disk are not
   evidence, so a correct cluster on a bad network never switches.
2. Bounded: counts per (member, kind) for known kinds only; the recent
   events in a deque of ``MAX_EVENTS``; Raft observations in LRU tables of
   ``MAX_RAFT_KEYS``; the switch history by ``MAX_HISTORY``.
3. Raft -> BFT: in a Raft epoch, with at least ``byzantine_evidence_min``
   events here within the last ``evidence_window_s`` (the minimum is 2: one
   sample never switches), ``switch_cooldown_s`` after the last switch
   applied here, and no proposal of ours in flight, propose
   ``{"op": "switch", "algorithm": "bft", "cause": "byzantine_evidence",
   "reason": <the evidence>, "if_epoch": <this epoch>}``.  Only a node that
   holds the evidence proposes.
4. In a BFT epoch the same threshold makes a node re-assert BFT (the same
   command, a no-op where BFT runs already), at most once per
   ``evidence_window_s``: a note every node applies, so that evidence one node
   sees keeps all of them in BFT (each node's quiet period restarts at a note).
5. BFT -> Raft: in a BFT epoch, when neither evidence arrived here nor a note
   was applied for ``quiet_period_s`` (counted from the switch at the
   earliest) and the cool-down has passed, propose raft, cause
   "quiet_period".  Hysteresis: BFT is entered on ``byzantine_evidence_min``
   events within a window and left only after a quiet period at least as
   long as the window (``ConsensusConfig.problems`` checks it), and
   ``switch_cooldown_s`` spaces any two automatic switches.
6. Duplicates are harmless: a switch to the algorithm that runs is a no-op,
   and so is one whose ``if_epoch`` is not the epoch it is applied in
   (``epochs`` rule 2), so when several nodes propose, one switches and the
   others' commands change nothing.  A proposal to go back to raft also
   carries ``if_gidx``, the global index its proposer had applied: a note (or
   any switch command) committed after that makes it a no-op, so a stale
   proposal -- from a node cut off, or slow to commit -- never overrides
   evidence it did not know of.
7. Every switch applied (automatic or the operator's, cause "operator") is
   recorded here: counts by (cause, algorithm), and a bounded history (which
   also lists an epoch a lagging node installed from its peers, "caught_up").
8. With ``auto_switch`` false the detector still counts and reports; nothing
   is proposed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from dwcp.errors import RemoteProtocolError
from dwcp.wire import consts as C

from .epochs import Envelope, EpochNode
from .pbft import FAULT_KINDS as PBFT_FAULT_KINDS
from .raft import Msg as RaftMsg
from .raft import MsgType as RaftType

__all__ = [
    "Adaptive",
    "AdaptiveSettings",
    "Evidence",
    "FaultDetector",
    "KINDS",
    "SwitchPolicy",
    "CAUSE_EVIDENCE",
    "CAUSE_QUIET",
    "CAUSE_OPERATOR",
    "CAUSE_CAUGHT_UP",
    "envelope_signer",
    "sign_envelope",
    "signing_bytes",
]

KINDS = tuple(dict.fromkeys(("bad_signature", "forged", "malformed", "equivocation",
                             *(k for k in PBFT_FAULT_KINDS if k != "too_many_faulty"))))  # fmt: skip
CAUSE_EVIDENCE = "byzantine_evidence"
CAUSE_QUIET = "quiet_period"
CAUSE_OPERATOR = "operator"
CAUSE_CAUGHT_UP = "caught_up"  # history only: this node learnt of a switch by a state transfer
MAX_EVENTS = 4096  # recent evidence events kept (the window is counted over these)
MAX_RAFT_KEYS = 4096  # (epoch, peer, term) vote claims, and entries, remembered
MAX_HISTORY = 32  # applied switches listed in status
SIG_DOMAIN = b"dwcp-epoch-envelope/1\n"


@dataclass(frozen=True)
class AdaptiveSettings:
    """The [consensus] settings of adaptive mode (``ConsensusConfig`` documents and validates them)."""

    auto_switch: bool = True
    byzantine_evidence_min: int = 3
    evidence_window_s: float = 30.0
    quiet_period_s: float = 600.0
    switch_cooldown_s: float = 120.0

    @classmethod
    def from_config(cls, cc: Any) -> AdaptiveSettings:
        return cls(cc.auto_switch, cc.byzantine_evidence_min, cc.evidence_window_s, cc.quiet_period_s,
                   cc.switch_cooldown_s)  # fmt: skip


@dataclass(frozen=True)
class Evidence:
    at: float  # the host's monotonic clock, seconds
    peer: str
    kind: str  # one of KINDS
    n: int  # events (a PBFT counter may grow by more than one between two looks)
    detail: str


# -- envelope signatures ----------------------------------------------------------------------------------
def signing_bytes(d: dict) -> bytes:
    """What an envelope's signature covers: its wire form without "sig", canonical JSON, with a domain."""
    body = {k: v for k, v in d.items() if k != "sig"}
    return SIG_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_envelope(d: dict, key: Any) -> dict:
    """``d`` (an ``epoch_to_wire`` dict) with its Ed25519 signature under ``key``, in field "sig"."""
    return {**d, "sig": key.sign(signing_bytes(d)).hex()}


def envelope_signer(d: dict, keys: dict[str, Any], claimed: str) -> str | None:
    """The member whose key verifies ``d``'s signature (the claimed sender's tried first), or None.
    ``d`` has passed ``epoch_from_wire``: "sig", when there, is 128 lowercase hex digits."""
    sig = d.get("sig")
    if not isinstance(sig, str):
        return None
    raw, msg = bytes.fromhex(sig), signing_bytes(d)
    for who in [claimed, *sorted(k for k in keys if k != claimed)]:
        key = keys.get(who)
        if key is None:
            continue
        try:
            key.verify(raw, msg)
        except InvalidSignature:
            continue
        return who
    return None


# -- the detector --------------------------------------------------------------------------------------------
class FaultDetector:
    """Evidence of Byzantine behaviour per peer (rule 1), bounded (rule 2)."""

    def __init__(self, node_id: str, ids: list[str], *, max_events: int = MAX_EVENTS) -> None:
        self.id = node_id
        self.peers = frozenset(ids) - {node_id}
        # invariant: peer in self.peers, kind in KINDS, count >= 1
        self.counts: dict[str, dict[str, int]] = {}
        self.events: deque[Evidence] = deque(maxlen=max_events)  # oldest first; at is non-decreasing
        self.last_at: float | None = None  # the newest event's time
        # (epoch, peer, term) -> bit 1: it voted for itself in that term, bit 2: it granted us its vote
        self._claims: OrderedDict[tuple[int, str, int], int] = OrderedDict()
        # (epoch, leader, term, index) -> digest of the entry that leader sent us there
        self._entries: OrderedDict[tuple[int, str, int, int], bytes] = OrderedDict()
        self._pbft_seen: dict[int, dict[tuple[str, str], int]] = {}  # epoch -> (kind, node) -> count seen
        self._pbft_keys: OrderedDict[tuple, None] = OrderedDict()  # (epoch, kind, node, view, seq) counted

    def record(self, peer: str | None, kind: str, now: float, detail: str = "", n: int = 1) -> bool:
        """Count ``n`` events of ``kind`` against ``peer``; False (nothing counted) for a non-member or ourselves."""
        if peer not in self.peers or kind not in KINDS or n < 1:
            return False
        by = self.counts.setdefault(peer, {})
        by[kind] = by.get(kind, 0) + n
        now = max(now, self.last_at) if self.last_at is not None else now  # keep the deque ordered
        self.events.append(Evidence(now, peer, kind, n, detail))
        self.last_at = now
        return True

    def recent(self, now: float, window_s: float) -> list[Evidence]:
        """The events within the last ``window_s`` seconds."""
        out = []
        for ev in reversed(self.events):
            if ev.at <= now - window_s:
                break
            out.append(ev)
        out.reverse()
        return out

    # -- Raft (rule 1, equivocation and forged) -------------------------------------------------------
    def observe_raft(self, epoch: int, frm: str, m: RaftMsg, now: float) -> None:
        """A Raft message of ``epoch`` that came in an envelope from ``frm`` (its sender, authenticated)."""
        if m.src != frm:
            self.record(frm, "forged", now, f"a raft {m.type.value} in its envelope names {m.src} as sender")
            return
        if m.dst != self.id:
            return
        t = m.type
        if t is RaftType.VOTE or t is RaftType.APPEND:
            self._claim(epoch, frm, m.term, 1, now, again=t is RaftType.VOTE)
        elif t is RaftType.VOTE_RESP and m.granted:
            self._claim(epoch, frm, m.term, 2, now, again=True)
        if t is RaftType.APPEND:
            for e in m.entries:
                if e.term != m.term:
                    continue  # an earlier term's entry, relayed: its own leader answers for it
                key = (epoch, frm, e.term, e.index)
                digest = hashlib.blake2b(e.kind.encode() + b"\0" + e.data, digest_size=16).digest()
                old = self._entries.get(key)
                if old is None:
                    self._entries[key] = digest
                    if len(self._entries) > MAX_RAFT_KEYS:
                        self._entries.popitem(last=False)
                elif old != digest:
                    self.record(frm, "equivocation", now,
                                f"epoch {epoch}: two different entries at term {e.term} index {e.index}")  # fmt: skip

    def _claim(self, epoch: int, peer: str, term: int, bit: int, now: float, again: bool) -> None:
        """``peer`` claimed a vote in ``term`` (bit 1: for itself, 2: for us).  Both is evidence: once when the
        second claim comes, and again for each further vote message (``again``), which a correct node never
        sends; a leader's every heartbeat repeats its claim, and is not counted again."""
        key = (epoch, peer, term)
        old = self._claims.get(key, 0)
        bits = old | bit
        self._claims[key] = bits
        self._claims.move_to_end(key)
        if len(self._claims) > MAX_RAFT_KEYS:
            self._claims.popitem(last=False)
        if bits == 3 and (old != 3 or again):
            self.record(peer, "equivocation", now,
                        f"epoch {epoch}: voted for itself and for {self.id} in term {term}")  # fmt: skip

    # -- PBFT --------------------------------------------------------------------------------------------------
    def observe_pbft_faults(self, epoch: int, faults: dict[str, dict[str, int]], now: float,
                            events: Sequence[Any] = ()) -> None:  # fmt: skip
        """The fault counters of ``epoch``'s PBFT engine (and its ``fault_events`` log): what grew since the last
        look is evidence, once per (kind, node, view, seq) -- PBFT resends its votes until a checkpoint, so one
        old equivocation shows up again and again, and is not new evidence each time."""
        seen = self._pbft_seen.setdefault(epoch, {})
        grown: list[tuple[str, str, int]] = []
        for kind, by in faults.items():
            for node, n in by.items():
                if n > seen.get((kind, node), 0):
                    grown.append((kind, node, n - seen.get((kind, node), 0)))
                    seen[(kind, node)] = n
        for e in sorted(self._pbft_seen)[:-3]:  # the current and retired epochs' engines, and one more
            del self._pbft_seen[e]
        total = sum(g for _, _, g in grown)
        if not total:
            return
        if total > len(events):  # no log, or more new faults than it keeps: count what grew
            for kind, node, g in grown:
                self.record(node, kind, now, f"epoch {epoch}: counted by pbft", g)
            return
        for ev in list(events)[-total:]:
            key = (epoch, ev.kind, ev.node, ev.view, ev.seq)
            if key in self._pbft_keys:
                continue
            self._pbft_keys[key] = None
            if len(self._pbft_keys) > MAX_RAFT_KEYS:
                self._pbft_keys.popitem(last=False)
            self.record(
                ev.node, ev.kind, now, f"epoch {epoch} view {ev.view} seq {ev.seq}: {ev.detail}"[:200]
            )

    def summary(self, events: list[Evidence]) -> str:
        """ "c3: bad_signature x5, equivocation x1; c2: forged x2" for ``events``."""
        by: dict[str, dict[str, int]] = {}
        for ev in events:
            k = by.setdefault(ev.peer, {})
            k[ev.kind] = k.get(ev.kind, 0) + ev.n
        return "; ".join(f"{p}: " + ", ".join(f"{k} x{n}" for k, n in sorted(ks.items()))
                         for p, ks in sorted(by.items()))  # fmt: skip


# -- the policy -------------------------------------------------------------------------------------------------
class SwitchPolicy:
    """When to propose a switch (rules 3-8).  The host tells it what was applied and asks ``poll(now, ...)``."""

    def __init__(self, settings: AdaptiveSettings, detector: FaultDetector, *, can_bft: bool = True,
                 now: float = 0.0) -> None:  # fmt: skip
        self.s, self.detector, self.can_bft = settings, detector, can_bft
        self.last_switch_at = -math.inf  # when a switch that changed the algorithm was last applied here
        self.quiet_since = now  # >= last_switch_at; moved by switches and notes (evidence: quiet_from)
        self.last_note_at = -math.inf  # when we last proposed to re-assert BFT (rule 4)
        self.outstanding: str | None = None  # the id of our proposal not applied yet (at most one)
        self.history: deque[dict] = deque(maxlen=MAX_HISTORY)
        self.counts: dict[tuple[str, str], int] = {}  # (cause, algorithm switched to) -> applied here

    def quiet_from(self) -> float:
        """Since when nothing kept BFT necessary: the later of the last switch or note and the last evidence."""
        last = self.detector.last_at
        return self.quiet_since if last is None else max(self.quiet_since, last)

    def on_applied(self, now: float, wall: float, cmd: dict, res: dict, before: str, after: str) -> None:
        """A switch command was applied here (``res`` its result; ``before``/``after`` the algorithm)."""
        if cmd.get("id") is not None and cmd.get("id") == self.outstanding:
            self.outstanding = None
        cause = str(cmd["cause"]) if cmd.get("cause") in (CAUSE_EVIDENCE, CAUSE_QUIET) else CAUSE_OPERATOR
        if res.get("ok") and before != after:
            self.on_jump(now)
            self.counts[(cause, after)] = self.counts.get((cause, after), 0) + 1
            self.history.append({"at": wall, "epoch": res.get("epoch"), "from": before, "to": after,
                                 "cause": cause, "reason": str(cmd.get("reason", ""))[:512]})  # fmt: skip
        elif cause == CAUSE_EVIDENCE and after == "bft":  # a note (rule 4): somebody still sees evidence
            self.quiet_since = max(self.quiet_since, now)

    def on_jump(self, now: float, wall: float | None = None, before: str = "", after: str = "",
                epoch: int | None = None) -> None:  # fmt: skip
        """The algorithm changed here: a switch applied, or (``wall`` given) a later epoch's start state
        installed from peers (epochs rule 3: the switch was applied elsewhere; listed, not counted)."""
        self.last_switch_at = now
        self.quiet_since = max(self.quiet_since, now)
        if wall is not None:
            self.history.append({"at": wall, "epoch": epoch, "from": before, "to": after, "cause": CAUSE_CAUGHT_UP,
                                 "reason": "a later epoch's start state installed from peers"})  # fmt: skip

    def poll(
        self, now: float, algorithm: str, epoch: int, new_id: Callable[[], str], gidx: int = 0
    ) -> dict | None:
        """The switch command to propose now, or None (``gidx``: what the node has applied)."""
        s = self.s
        if not s.auto_switch or self.outstanding is not None:
            return None
        cooled = now - self.last_switch_at >= s.switch_cooldown_s  # a note is no switch: not held back by it
        recent = self.detector.recent(now, s.evidence_window_s)
        enough = sum(ev.n for ev in recent) >= s.byzantine_evidence_min
        cmd: dict | None = None
        if algorithm == "raft":
            if enough and cooled and self.can_bft:
                cmd = {"algorithm": "bft", "cause": CAUSE_EVIDENCE,
                       "reason": f"evidence within {s.evidence_window_s:g} s: {self.detector.summary(recent)}"}  # fmt: skip
        elif enough:
            if now - self.last_note_at >= s.evidence_window_s:
                self.last_note_at = now
                cmd = {"algorithm": "bft", "cause": CAUSE_EVIDENCE,
                       "reason": f"evidence still coming within {s.evidence_window_s:g} s: "
                                 f"{self.detector.summary(recent)}"}  # fmt: skip
        elif cooled and now - self.quiet_from() >= s.quiet_period_s:
            cmd = {
                "algorithm": "raft",
                "cause": CAUSE_QUIET,
                "if_gidx": gidx,
                "reason": f"no evidence of Byzantine behaviour for {now - self.quiet_from():.1f} s",
            }
        if cmd is None:
            return None
        cid = new_id()
        self.outstanding = cid
        return {"op": "switch", **cmd, "if_epoch": epoch, "id": cid}


# -- one host's adaptive mode ----------------------------------------------------------------------------------
class Adaptive:
    """Detector, signatures and policy for one node.  ``byzantine`` is the test hook (``byzantine.py``)."""

    def __init__(self, node_id: str, ids: list[str], settings: AdaptiveSettings, *, signer: Any = None,
                 verify_keys: dict[str, Any] | None = None, byzantine: Any = None, algorithm: str = "raft",
                 now: float = 0.0) -> None:  # fmt: skip
        self.id, self.ids = node_id, sorted(ids)
        self.algorithm = algorithm  # the node's algorithm as of the last after_ready
        self.settings = settings
        self.signer, self.keys = signer, dict(verify_keys or {})
        # envelopes are signed (and must be) when this node can sign and check every member's signature
        self.signing = signer is not None and set(self.keys) >= set(self.ids)
        self.detector = FaultDetector(node_id, self.ids)
        self.policy = SwitchPolicy(settings, self.detector, can_bft=self.signing, now=now)
        self.byzantine = byzantine

    def _evidence(self, peer: str | None, kind: str, now: float, detail: str) -> None:
        self.detector.record(peer, kind, now, detail)

    # -- envelopes in and out -------------------------------------------------------------------------------------
    def incoming(self, d: object, peer: str | None, now: float, algorithm_of: Callable[[int], str | None]
                 ) -> Envelope | None:  # fmt: skip
        """An envelope from the wire: the Envelope to step, None to drop it (counted), or RemoteProtocolError
        (counted too) for what the link must not carry.  ``peer``: the TLS identity (None: plaintext)."""
        from .wire import epoch_from_wire

        claimed = d.get("src") if isinstance(d, dict) and isinstance(d.get("src"), str) else None
        blame = peer if peer is not None else claimed
        if not isinstance(d, dict) or d.get("type") != "epoch":
            self._evidence(blame, "malformed", now, "not an epoch envelope")
            raise RemoteProtocolError(
                "this node runs adaptive consensus: epoch envelopes only", C.ERR_BAD_FIELD
            )
        try:
            e = epoch_from_wire(d, algorithm_of)
        except RemoteProtocolError as exc:
            self._evidence(blame, "malformed", now, str(exc)[:200])
            raise
        if peer is not None and e.src != peer:
            self._evidence(peer, "forged", now, f"envelope claims to be from {e.src}")
            raise RemoteProtocolError(
                f"consensus envelope from {peer} claims to be from {e.src}", C.ERR_BAD_FIELD
            )
        if e.dst != self.id or e.src not in self.ids or e.src == self.id:
            raise RemoteProtocolError(
                f"envelope {e.src} -> {e.dst} is not for this cluster node", C.ERR_BAD_FIELD
            )
        if self.signing:
            signer = envelope_signer(d, self.keys, e.src)
            if signer != e.src:
                if signer is not None:
                    self._evidence(signer, "forged", now, f"signed an envelope claiming to be from {e.src}")
                else:
                    self._evidence(blame, "bad_signature", now, f"{e.kind} envelope of epoch {e.epoch}")
                return None
        if e.kind == "engine" and isinstance(e.body, RaftMsg):
            self.detector.observe_raft(e.epoch, e.src, e.body, now)
            if e.body.src != e.src:
                return None  # the Raft engine would drop it anyway
        return e

    def outgoing(self, e: Envelope, node: EpochNode) -> list[dict]:
        """The wire dicts to send for ``e`` (signed when envelopes are; the test hook may add or spoil some)."""
        from .wire import epoch_to_wire

        envs = self.byzantine.outgoing(e, node) if self.byzantine is not None else [e]
        out = []
        for x in envs:
            d = epoch_to_wire(x)
            if self.signing:
                d = sign_envelope(d, self.signer)
            if self.byzantine is not None:
                d = self.byzantine.tamper(d)
            out.append(d)
        return out

    # -- after the node moved ---------------------------------------------------------------------------------------
    def after_ready(
        self, node: EpochNode, applied: list[tuple[int, dict, dict]], now: float, wall: float
    ) -> None:
        """After ``node.ready()``: its PBFT engines' fault counters, and the switch commands it applied."""
        for epoch, eng in ((node.epoch, node.engine), (node.epoch - 1, node.retired)):
            pbft_node = getattr(eng, "node", None)
            faults = getattr(pbft_node, "faults", None)
            if isinstance(faults, dict) and faults:
                self.detector.observe_pbft_faults(epoch, faults, now, getattr(pbft_node, "fault_events", ()))
        alg = self.algorithm
        for _gidx, cmd, res in applied:
            if cmd.get("op") != "switch":
                continue
            after = str(cmd.get("algorithm")) if res.get("ok") else alg
            self.policy.on_applied(now, wall, cmd, res, alg, after)
            alg = after
        if node.algorithm != alg:  # a later epoch's state installed (epochs rule 3): no switch applied here
            self.policy.on_jump(now, wall, alg, node.algorithm, node.epoch)
        self.algorithm = node.algorithm

    def poll(self, node: EpochNode, now: float, new_id: Callable[[], str]) -> dict | None:
        """A switch command to propose now (the host proposes it and logs it), or None."""
        return self.policy.poll(now, node.algorithm, node.epoch, new_id, node.gidx)

    def status(self, now: float) -> dict:
        p, s = self.policy, self.settings
        return {
            "mode": "auto" if s.auto_switch else "detect_only",
            "signed_envelopes": self.signing,
            "evidence": {peer: dict(sorted(k.items())) for peer, k in sorted(self.detector.counts.items())},
            "evidence_in_window": sum(ev.n for ev in self.detector.recent(now, s.evidence_window_s)),
            "quiet_for_s": round(max(0.0, now - p.quiet_from()), 3),
            "switches": list(p.history),
            "switches_auto": {f"{c}->{to}": n for (c, to), n in sorted(p.counts.items())},
            "proposal_in_flight": p.outstanding,
            "settings": {
                "byzantine_evidence_min": s.byzantine_evidence_min,
                "evidence_window_s": s.evidence_window_s,
                "quiet_period_s": s.quiet_period_s,
                "switch_cooldown_s": s.switch_cooldown_s,
            },  # fmt: skip
            "byzantine_test_hook": getattr(self.byzantine, "mode", None),
        }
