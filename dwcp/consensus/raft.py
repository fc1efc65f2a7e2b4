"""Raft, sans-IO: ``tick()`` and ``step(msg)`` in, ``ready()`` out (the shape of etcd-io/raft).

A ``RaftNode`` never reads a clock, a socket or a file.  The driver:

1. calls ``tick()`` at a fixed interval (elections and heartbeats count ticks);
2. feeds every received message to ``step(msg)``;
3. calls ``ready()`` and, in this order, makes the storage durable (the node
   has already written to its ``Storage``; a ``FileStorage`` fsyncs there),
   sends ``ready.messages``, and applies ``ready.committed`` to the state
   machine.

Rules kept here (Raft paper, section 5; plus CheckQuorum):

* one vote per term, persisted before it is sent; votes only for a log at
  least as up to date as ours;
* a leader appends a no-op at the start of its term so that entries of
  earlier terms commit through it (5.4.2), and commits index N only when a
  majority holds N and entry N is of its own term;
* a follower truncates a conflicting suffix and never an entry it already
  knows is committed;
* any message with a higher term turns the node into a follower of that term;
* CheckQuorum: a leader that has not heard from a majority within an
  election timeout steps down (no stale leader keeps accepting proposals in a
  minority partition);
* randomized election timeouts in [election_ticks, 2 x election_ticks).

Membership changes are one node at a time (``propose_conf``): a configuration
entry takes effect when appended (section 4.1 of the thesis), and a new
change waits until the previous one is committed.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from dwcp.errors import DWCPError, InternalError

__all__ = ["Entry", "Msg", "MsgType", "Role", "RaftNode", "Ready", "NotLeaderError", "MemoryStorage", "HardState"]


class NotLeaderError(DWCPError):
    """A proposal went to a node that is not the leader; ``leader`` is the leader it knows, if any."""

    def __init__(self, message: str, leader: str | None) -> None:
        super().__init__(message)
        self.leader = leader


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class MsgType(enum.Enum):
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    APPEND = "append"
    APPEND_RESP = "append_resp"


@dataclass(frozen=True)
class Entry:
    term: int
    index: int
    kind: str = "data"  # "data" | "noop" | "conf"
    data: bytes = b""


@dataclass(frozen=True)
class Msg:
    type: MsgType
    src: str
    dst: str
    term: int
    # VOTE: last_index/last_term; VOTE_RESP: granted
    last_index: int = 0
    last_term: int = 0
    granted: bool = False
    # APPEND: prev_index/prev_term, entries, commit; APPEND_RESP: success, match (or the hint)
    prev_index: int = 0
    prev_term: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    success: bool = False
    match: int = 0


@dataclass(frozen=True)
class HardState:
    term: int = 0
    vote: str | None = None
    commit: int = 0


class MemoryStorage:
    """Hard state and log in memory (the simulator's "disk": it survives a crash unless wiped)."""

    def __init__(self) -> None:
        self.hard = HardState()
        self.log: list[Entry] = [Entry(0, 0, "noop")]  # index 0: a sentinel

    def set_hard(self, hs: HardState) -> None:
        self.hard = hs

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``; the first must follow the log or replace a suffix (truncating it)."""
        if not entries:
            return
        first = entries[0].index
        if first > len(self.log):
            raise InternalError(f"log gap: appending {first} after {len(self.log) - 1}")
        del self.log[first:]
        self.log.extend(entries)


@dataclass
class Ready:
    messages: list[Msg] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)


class RaftNode:
    def __init__(
        self,
        id: str,
        peers: list[str],
        storage: MemoryStorage | None = None,
        *,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        max_entries_per_msg: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        if id not in peers:
            raise ValueError("a node is one of its peers")
        if not 1 <= heartbeat_ticks < election_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        self.id = id
        self.storage = storage or MemoryStorage()
        self.election_ticks, self.heartbeat_ticks = election_ticks, heartbeat_ticks
        self.max_entries = max_entries_per_msg
        self.rng = rng or random.Random()
        hs = self.storage.hard
        self.term, self.vote, self.commit = hs.term, hs.vote, hs.commit
        self.voters: set[str] = set(peers)
        for e in self.storage.log:  # the last configuration in the log is the one in force
            if e.kind == "conf":
                self.voters = set(e.data.decode().split(","))
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.applied = 0
        self._elapsed = 0
        self._timeout = self._new_timeout()
        self._votes: set[str] = set()
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._active: set[str] = set()  # CheckQuorum: peers heard from this election timeout
        self._outbox: list[Msg] = []

    # -- the log ---------------------------------------------------------------
    @property
    def log(self) -> list[Entry]:
        return self.storage.log

    @property
    def last_index(self) -> int:
        return len(self.log) - 1

    def _term_at(self, i: int) -> int | None:
        return self.log[i].term if 0 <= i < len(self.log) else None

    def _persist(self) -> None:
        self.storage.set_hard(HardState(self.term, self.vote, self.commit))

    def _new_timeout(self) -> int:
        return self.election_ticks + self.rng.randrange(self.election_ticks)

    def _send(self, m: Msg) -> None:
        self._outbox.append(m)

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    # -- the driver's interface -----------------------------------------------
    def tick(self) -> None:
        self._elapsed += 1
        if self.role is Role.LEADER:
            if self._elapsed % self.heartbeat_ticks == 0:
                self._broadcast_append()
            if self._elapsed >= self.election_ticks:
                if len((self._active | {self.id}) & self.voters) < self.quorum:  # CheckQuorum
                    self._become_follower(self.term, None)
                    return
                self._active = set()
                self._elapsed = 0
        elif self._elapsed >= self._timeout and self.id in self.voters:
            self._campaign()

    def propose(self, data: bytes, kind: str = "data") -> int:
        """Append ``data`` to the log (leader only); returns its index (committed later, maybe never)."""
        return self.propose_batch([data], kind)[0]

    def propose_batch(self, items: list[bytes], kind: str = "data") -> list[int]:
        """Append several entries at once: one storage write (one fsync), one append per follower."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(f"{self.id} is not the leader (term {self.term})", self.leader)
        first = self.last_index + 1
        es = [Entry(self.term, first + k, kind, d) for k, d in enumerate(items)]
        self.storage.append(es)
        self._match[self.id] = self.last_index
        self._broadcast_append()
        self._maybe_commit()
        return [e.index for e in es]

    def propose_conf(self, voters: set[str]) -> int:
        """Change the voters by exactly one node (added or removed)."""
        if len(voters ^ self.voters) != 1:
            raise ValueError("membership changes are one node at a time")
        if any(e.kind == "conf" for e in self.log[self.commit + 1 :]):
            raise NotLeaderError("a membership change is still in flight", self.leader)
        idx = self.propose(",".join(sorted(voters)).encode(), kind="conf")
        self.voters = set(voters)
        for p in self.voters - set(self._next):
            self._next[p], self._match[p] = idx, 0
        return idx

    def ready(self) -> Ready:
        r = Ready(self._outbox, self.log[self.applied + 1 : self.commit + 1])
        self._outbox = []
        self.applied = self.commit
        return r

    def step(self, m: Msg) -> None:
        if m.dst != self.id:
            return
        if m.term > self.term:
            leader = m.src if m.type is MsgType.APPEND else None
            self._become_follower(m.term, leader)
        if m.type is MsgType.VOTE:
            self._on_vote(m)
        elif m.type is MsgType.VOTE_RESP:
            if self.role is Role.CANDIDATE and m.term == self.term and m.granted:
                self._votes.add(m.src)
                if len(self._votes & self.voters) >= self.quorum:
                    self._become_leader()
        elif m.type is MsgType.APPEND:
            self._on_append(m)
        elif m.type is MsgType.APPEND_RESP:
            self._on_append_resp(m)

    # -- roles -------------------------------------------------------------------
    def _become_follower(self, term: int, leader: str | None) -> None:
        if term > self.term:
            self.term, self.vote = term, None
            self._persist()
        self.role, self.leader = Role.FOLLOWER, leader
        self._elapsed, self._timeout = 0, self._new_timeout()

    def _campaign(self) -> None:
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self._persist()  # the vote is durable before anyone hears of it
        self.leader = None
        self._votes = {self.id}
        self._elapsed, self._timeout = 0, self._new_timeout()
        if len(self._votes & self.voters) >= self.quorum:
            self._become_leader()
            return
        for p in sorted(self.voters - {self.id}):
            self._send(Msg(MsgType.VOTE, self.id, p, self.term, last_index=self.last_index,
                           last_term=self.log[-1].term))  # fmt: skip

    def _become_leader(self) -> None:
        self.role, self.leader = Role.LEADER, self.id
        self._next = {p: self.last_index + 1 for p in self.voters}
        self._match = {p: 0 for p in self.voters}
        self._active = set()
        self._elapsed = 0
        self.propose(b"", kind="noop")  # commits earlier terms' entries through this term (5.4.2)

    # -- handlers ------------------------------------------------------------------
    def _on_vote(self, m: Msg) -> None:
        up_to_date = (m.last_term, m.last_index) >= (self.log[-1].term, self.last_index)
        grant = m.term == self.term and self.vote in (None, m.src) and up_to_date and self.role is not Role.LEADER
        if grant:
            self.vote = m.src
            self._persist()
            self._elapsed = 0  # granting a vote resets our own election timer
        self._send(Msg(MsgType.VOTE_RESP, self.id, m.src, self.term, granted=grant))

    def _on_append(self, m: Msg) -> None:
        if m.term < self.term:
            self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=False, match=0))
            return
        self.role, self.leader, self._elapsed = Role.FOLLOWER, m.src, 0
        if self._term_at(m.prev_index) != m.prev_term:
            hint = min(m.prev_index - 1, self.last_index)  # the leader backs off to here
            self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=False, match=max(hint, 0)))
            return
        new = []
        for e in m.entries:
            t = self._term_at(e.index)
            if t is None or t != e.term:
                if t is not None and e.index <= self.commit:
                    raise InternalError(f"{self.id}: leader {m.src} would overwrite committed entry {e.index}")
                new = [x for x in m.entries if x.index >= e.index]
                break
        if new:
            self.storage.append(new)
            for e in new:
                if e.kind == "conf":
                    self.voters = set(e.data.decode().split(","))
        last_new = m.prev_index + len(m.entries)
        if m.commit > self.commit:
            self.commit = min(m.commit, last_new)
            self._persist()
        self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=True, match=last_new))

    def _on_append_resp(self, m: Msg) -> None:
        if self.role is not Role.LEADER or m.term != self.term:
            return
        self._active.add(m.src)
        if m.success:
            if m.match > self._match.get(m.src, 0):
                self._match[m.src] = m.match
            self._next[m.src] = max(self._next.get(m.src, 1), m.match + 1)
            self._maybe_commit()
            if self._next[m.src] <= self.last_index:
                self._send_append(m.src)
        else:
            self._next[m.src] = max(1, min(self._next.get(m.src, 1) - 1, m.match + 1, self._match.get(m.src, 0) + 1))
            self._send_append(m.src)

    # -- leader machinery --------------------------------------------------------------
    def _send_append(self, p: str) -> None:
        nxt = self._next.get(p, self.last_index + 1)
        prev = nxt - 1
        entries = tuple(self.log[nxt : nxt + self.max_entries])
        self._send(Msg(MsgType.APPEND, self.id, p, self.term, prev_index=prev, prev_term=self.log[prev].term,
                       entries=entries, commit=self.commit))  # fmt: skip
        if entries:
            # pipeline: the next append to p carries what follows (etcd's "replicate" state); a lost
            # message shows up as a refused later append, which backs next off and resends
            self._next[p] = entries[-1].index + 1

    def _broadcast_append(self) -> None:
        for p in sorted(self.voters - {self.id}):
            self._send_append(p)

    def _maybe_commit(self) -> None:
        self._match[self.id] = self.last_index
        for n in range(self.last_index, self.commit, -1):
            if self.log[n].term != self.term:
                break  # only entries of this term commit by counting (5.4.2)
            if sum(1 for p in self.voters if self._match.get(p, 0) >= n) >= self.quorum:
                self.commit = n
                self._persist()
                break
