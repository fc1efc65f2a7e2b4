"""``EpochSim`` with adaptive mode: envelopes travel in their wire form, signed, checked and watched by each
node's ``Adaptive`` (the daemon's code path, minus the sockets), and any node can be made Byzantine.

Time: each tick is ``tick_s`` seconds of the policy's clock (``t``).  A link
is authenticated (as mutual TLS makes it) unless ``authenticated=False``
(plaintext: only signatures tell who sent what).  ``proposals`` lists every
automatic switch command a node proposed, ``(t, node, command)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from dwcp.consensus.adaptive import Adaptive, AdaptiveSettings
from dwcp.consensus.byzantine import ByzantineHook
from dwcp.consensus.epochs import Envelope, EpochReady
from dwcp.errors import RemoteProtocolError

from .epochsim import EpochSim, mixed_factory, sim_keys

__all__ = ["AdaptiveSim", "Wire"]


@dataclass(frozen=True, eq=False)
class Wire:
    src: str  # the link's end that sent it (its TLS identity), whatever the envelope claims
    dst: str
    d: dict  # the envelope's wire form (``epoch_to_wire``, with "sig")


class AdaptiveSim(EpochSim):
    def __init__(self, n: int = 4, seed: int = 0, *, settings: AdaptiveSettings, tick_s: float = 0.05,
                 authenticated: bool = True, **kw: Any) -> None:  # fmt: skip
        ids = [f"n{i}" for i in range(n)]
        self.tick_s, self.authenticated = tick_s, authenticated
        self.keys = sim_keys(ids, seed)
        self.verify = {i: k.public_key() for i, k in self.keys.items()}
        super().__init__(n, seed, factory=mixed_factory(ids, seed), **kw)
        self.adaptive = {i: Adaptive(i, ids, settings, signer=self.keys[i], verify_keys=self.verify,
                                     algorithm=self.nodes[i].algorithm) for i in ids}  # fmt: skip
        self.proposals: list[tuple[float, str, dict]] = []
        self.refused = 0  # envelopes a node refused (the daemon closes that stream)
        self._auto = itertools.count(1)

    @property
    def t(self) -> float:
        return self.now * self.tick_s

    def set_byzantine(self, i: str, mode: str | None) -> None:
        """Make node ``i`` Byzantine (``byzantine.MODES``), or correct again (None)."""
        self.adaptive[i].byzantine = None if mode is None else ByzantineHook(mode, i, self.ids, self.keys[i])

    # -- the EpochSim hooks ------------------------------------------------------------------------
    def _send(self, e: Envelope) -> None:
        for d in self.adaptive[e.src].outgoing(e, self.nodes[e.src]):
            self._schedule(Wire(e.src, e.dst, d))

    def _deliver(self, m: Any) -> None:
        node = self.nodes[m.dst]
        try:
            e = self.adaptive[m.dst].incoming(
                m.d, m.src if self.authenticated else None, self.t, node.algorithm_of
            )
        except RemoteProtocolError:
            self.refused += 1
            return
        if e is not None:
            node.step(e)

    def _after_ready(self, i: str, r: EpochReady) -> None:
        a, node = self.adaptive[i], self.nodes[i]
        a.after_ready(node, r.applied, self.t, self.t)
        cmd = a.poll(node, self.t, lambda: f"auto-{i}-{next(self._auto)}")
        if cmd is not None:
            self.proposals.append((self.t, i, cmd))
            node.propose(cmd)

    # -- asking ---------------------------------------------------------------------------------------
    def algorithms(self, among: list[str] | None = None) -> set[str]:
        return {self.nodes[i].algorithm for i in among or self.ids}
