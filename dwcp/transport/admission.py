"""Admission to the data port: which connection gets a slot, which is refused, which is evicted.

Theory of operation
-------------------
Anyone who can reach the data port can open connections; only the
cluster's peers can authenticate them.  Every accepted connection is
*pending* until it authenticates -- past the TLS handshake with a verified
certificate and a valid HELLO read (plaintext: a valid HELLO; a data stream:
its transfer id + token checked) -- and *authenticated* from then until it
closes.  Pending connections are what a stranger can create at will, so
they are bounded, and no bound lets them take an authenticated peer's slot.
The driver (``DataServer``) bounds how long a connection may stay pending
(``listen.handshake_timeout_s`` from accept, an absolute deadline); this
core decides who gets in.  It does no I/O and reads no clock: "oldest"
means admitted first.

Rules
-----
1. At most ``max_connections`` connections, pending and authenticated.
2. At most ``max_pending`` of them pending (the pool): the other
   ``max_connections - max_pending`` slots are reached only by
   authenticating, so strangers cannot starve the cluster's peers.
3. At most ``max_pending_per_source`` pending connections from one source
   (an address; the driver keys IPv6 by /64).  A source that holds an
   authenticated connection is a known peer's and is bounded by rule 2
   only: a sender opens its data streams together, and each is pending for
   a round trip.
4. A newcomer that finds rule 1, 2 or 3 full evicts the oldest *silent*
   pending connection -- accepted, and not one byte received from it yet --
   that frees what it needs: one from its own source when rule 3 is full,
   else one from the source holding the most pending connections.  An idle
   squatter thus loses its slot to any newcomer, while a client that speaks
   at once (a TLS ClientHello, a HELLO) keeps its slot until it
   authenticates or its deadline passes.
5. With no such silent connection the newcomer is refused, and the reason
   names the full rule: ``per_source`` (3), else ``unauthenticated`` (2),
   else ``max_connections`` (1).
6. ``spoke`` marks a pending connection as no longer silent and says
   whether it still holds its slot (an evicted one must close);
   ``authenticated`` moves it out of the pool; ``closed`` frees its slot
   (a no-op for an evicted one).  Limits changed by ``limits = ...`` apply
   to later admissions; connections admitted earlier keep their slots.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Admission", "Limits", "Verdict", "REASONS", "source_key"]

# why a newcomer was refused, or what was full when it evicted (the ``reason`` metric label)
REASONS = ("per_source", "unauthenticated", "max_connections")


def source_key(host: str) -> str:
    """What rule 3 counts per: the address, or for IPv6 its /64 (one host's usual allocation)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_pending: int
    max_pending_per_source: int

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_pending, self.max_pending_per_source) < 1:
            raise ValueError(f"admission limits must be >= 1, got {self}")


@dataclass(frozen=True)
class Verdict:
    """``conn``: the newcomer's id, or None when refused.  ``reason``: the full rule ("": none was).

    ``evicted``: the id of the connection the newcomer displaced, which the driver must close.
    """

    conn: int | None
    reason: str = ""
    evicted: int | None = None


@dataclass(eq=False)
class _Pending:
    source: str
    silent: bool = True  # no byte received yet: the only kind rule 4 evicts


class Admission:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}  # admission order: oldest first
        self._authenticated: dict[int, str] = {}  # conn -> source
        self._pending_by_source: dict[str, int] = {}  # invariant: sums to len(_pending); no zero entries
        self._authed_by_source: dict[str, int] = {}  # invariant: sums to len(_authenticated); no zero entries

    # -- reading ---------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def total(self) -> int:
        return len(self._pending) + len(self._authenticated)

    def silent(self) -> list[int]:
        """The pending connections nothing was received from yet, oldest first (eviction candidates)."""
        return [c for c, p in self._pending.items() if p.silent]

    # -- events ----------------------------------------------------------
    def admit(self, source: str) -> Verdict:
        """A connection from ``source`` was accepted: admit it (perhaps evicting a silent one) or refuse it."""
        lim = self.limits
        own = self._pending_by_source.get(source, 0)
        source_full = own >= lim.max_pending_per_source and source not in self._authed_by_source
        pool_full = len(self._pending) >= lim.max_pending
        all_full = self.total >= lim.max_connections
        reason = "per_source" if source_full else "unauthenticated" if pool_full else \
            "max_connections" if all_full else ""  # fmt: skip
        victim = None
        if reason:
            victim = self._victim(source if source_full else None)
            if victim is None:
                return Verdict(None, reason)
            self._drop(victim)
        conn = self._next_id
        self._next_id += 1
        self._pending[conn] = _Pending(source)
        self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
        return Verdict(conn, reason, victim)

    def spoke(self, conn: int) -> bool:
        """Bytes arrived on pending ``conn``: it is no longer silent.  False: it was evicted (close it)."""
        p = self._pending.get(conn)
        if p is not None:
            p.silent = False
            return True
        return conn in self._authenticated

    def authenticated(self, conn: int) -> None:
        """Pending ``conn`` (one that spoke, so not evictable) authenticated: it leaves the pool."""
        p = self._pending.pop(conn)
        _dec(self._pending_by_source, p.source)
        self._authenticated[conn] = p.source
        self._authed_by_source[p.source] = self._authed_by_source.get(p.source, 0) + 1

    def closed(self, conn: int) -> None:
        """``conn`` closed: its slot is free (nothing happens for one evicted already)."""
        self._drop(conn)

    # -- internals -------------------------------------------------------
    def _victim(self, source: str | None) -> int | None:
        """The oldest silent pending connection of ``source``, or (None) of the source holding the most."""
        best, best_key = None, None
        for c, p in self._pending.items():  # bounded by max_pending (rule 2), oldest first
            if not p.silent or (source is not None and p.source != source):
                continue
            key = -self._pending_by_source[p.source]
            if best_key is None or key < best_key:  # strict: ties keep the older one
                best, best_key = c, key
        return best

    def _drop(self, conn: int) -> None:
        p = self._pending.pop(conn, None)
        if p is not None:
            _dec(self._pending_by_source, p.source)
            return
        src = self._authenticated.pop(conn, None)
        if src is not None:
            _dec(self._authed_by_source, src)


def _dec(counts: dict[str, int], key: str) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]
