"""A Byzantine node for tests: what ``DWCP_TEST_BYZANTINE`` makes one real daemon (or simulated node) do.

TEST ONLY.  ``EpochDriver`` reads the variable once, at start, in adaptive
mode, and logs loudly when it is set; nothing else reads it.  The node
otherwise runs correctly: the hook spoils or adds to what it sends, so
that its peers' fault detectors (``dwcp.consensus.adaptive``) have evidence
to find.  Modes:

* ``badsig``: every envelope leaves with a corrupted signature (its peers
  drop them all: to them this node is mute, and lying);
* ``equivocate``: in Raft epochs, now and then it tells its leader (or, as
  the leader, its followers) that it voted both for itself and for them in
  the current term -- sent only where the Raft core ignores it, so it is
  evidence and never a second vote that counts; in PBFT epochs, each of its
  COMMITs goes with a second, signed COMMIT for another digest in that slot;
* ``forge``: now and then it sends a copy of an envelope claiming to come
  from another member (signed with its own key, so the signature names it).
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import pbft
from .epochs import Envelope, EpochNode
from .raft import Msg as RaftMsg
from .raft import MsgType as RaftType
from .raft import Role

__all__ = ["ByzantineHook", "MODES", "ENV_VAR"]

MODES = ("badsig", "equivocate", "forge")
ENV_VAR = "DWCP_TEST_BYZANTINE"


class ByzantineHook:
    def __init__(self, mode: str, node_id: str, ids: list[str], signer: Any = None, every: int = 4) -> None:
        if mode not in MODES:
            raise ValueError(f"{ENV_VAR}={mode!r}: one of {', '.join(MODES)}")
        self.mode, self.id, self.ids = mode, node_id, sorted(ids)
        self.signer = signer
        self.every = every  # equivocate/forge: one envelope in this many per peer
        self._sent: dict[str, int] = {}  # peer -> envelopes sent to it

    def _due(self, dst: str) -> bool:
        n = self._sent[dst] = self._sent.get(dst, 0) + 1
        return n % self.every == 0

    def outgoing(self, e: Envelope, node: EpochNode) -> list[Envelope]:
        """``e`` and whatever this node adds to it."""
        out = [e]
        if self.mode == "forge" and self._due(e.dst):
            victim = next((i for i in self.ids if i not in (self.id, e.dst)), None)
            if victim is not None:
                out.append(Envelope(e.epoch, victim, e.dst, e.kind, e.body))
        elif self.mode == "equivocate" and e.kind == "engine":
            out += self._equivocate(e, node)
        return out

    def _equivocate(self, e: Envelope, node: EpochNode) -> list[Envelope]:
        m = e.body
        if isinstance(m, RaftMsg):
            raft = getattr(node.engine, "node", None) if e.epoch == node.epoch else None
            if raft is None or raft.leader not in (e.dst, self.id) or m.term != raft.term:
                return []  # only to the leader, or as the leader: where the Raft core ignores it
            if raft.role is not Role.LEADER and raft.role is not Role.FOLLOWER or not self._due(e.dst):
                return []
            return [Envelope(e.epoch, self.id, e.dst, "engine", RaftMsg(RaftType.VOTE, self.id, e.dst, m.term)),
                    Envelope(e.epoch, self.id, e.dst, "engine",
                             RaftMsg(RaftType.VOTE_RESP, self.id, e.dst, m.term, granted=True))]  # fmt: skip
        if isinstance(m, pbft.Msg) and m.type is pbft.MsgType.COMMIT and m.sender == self.id and self.signer:
            other = hashlib.sha256(b"equivocation" + m.digest.encode()).hexdigest()
            twin = pbft.Msg(pbft.MsgType.COMMIT, self.id, m.view, m.seq, other)
            twin = pbft.Msg(
                twin.type, twin.sender, twin.view, twin.seq, twin.digest, sig=self.signer.sign(twin.body())
            )
            return [Envelope(e.epoch, self.id, e.dst, "engine", twin)]
        return []

    def tamper(self, d: dict) -> dict:
        """The wire form as it leaves (``badsig``: the signature spoiled)."""
        sig = d.get("sig")
        if self.mode == "badsig" and isinstance(sig, str) and sig:
            return {**d, "sig": ("1" if sig[0] == "0" else "0") + sig[1:]}
        return d
