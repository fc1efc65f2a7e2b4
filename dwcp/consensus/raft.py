"""Raft, sans-IO: ``tick()`` and ``step(msg)`` in, ``ready()`` out (the shape of etcd-io/raft).

A ``RaftNode`` never reads a clock, a socket or a file.  The driver:

1. calls ``tick()`` at a fixed interval (elections and heartbeats count ticks);
2. feeds every received message to ``step(msg)``;
3. calls ``ready()`` and, in this order, makes the storage durable (the node
   has already written to its ``Storage``; ``storage.sync()`` fsyncs it),
   sends ``ready.messages`` (a leader's APPEND and SNAP may leave before the
   fsync -- thesis 10.2.1: they acknowledge nothing, and the leader counts its
   own log toward a commit only when an answer comes, in a later round, or
   with no other voter, before it applies), restores the state machine from
   ``ready.snapshot`` if there is one, applies ``ready.committed`` to it, and
   then serves ``ready.read_states`` (linearizable reads);
4. now and then snapshots the state machine at an applied index and hands it
   to ``compact(index, data)``: the log up to there is dropped.

Rules kept here (Raft paper, section 5; thesis 4.1, 5, 6.4, 9.6; plus CheckQuorum):

* one vote per term, persisted before it is sent; votes only for a log at
  least as up to date as ours;
* PreVote (thesis 9.6): a node whose election timer fires first asks whether
  it *could* win at term+1 without raising its term; only a quorum of yeses
  starts a real election.  A node that heard from a leader within an election
  timeout (its "lease") answers no to pre-votes and ignores votes, so a node
  rejoining from a partition does not depose a working leader;
* a leader appends a no-op at the start of its term so that entries of
  earlier terms commit through it (5.4.2), and commits index N only when a
  majority holds N and entry N is of its own term;
* a follower truncates a conflicting suffix and never an entry it already
  knows is committed; its commit index never moves back;
* any message with a higher term turns the node into a follower of that term
  (except a pre-vote and a granted pre-vote answer, which change nothing);
* CheckQuorum: a leader that has not heard from a majority within an
  election timeout steps down (no stale leader keeps accepting proposals in a
  minority partition);
* randomized election timeouts in [election_ticks, 2 x election_ticks).

Snapshots (etcd's shape).  The storage holds a snapshot (its metadata: index,
term, voters; and the state machine's bytes) and the log *after* it; the
log's slot 0 is a sentinel carrying the snapshot's index and term, so
``_term_at(snapshot index)`` works.  A leader whose follower needs an entry
at or before its snapshot sends the snapshot instead (``SNAP``), in chunks of
``SNAP_CHUNK_BYTES``, stop-and-wait (each chunk is answered with the bytes
received, ``SNAP_RESP``; a heartbeat resends the unanswered chunk).  A
follower installs a snapshot only if it is ahead of its commit index (an
older snapshot never replaces a newer log), and then its log is the snapshot
alone; ``ready()`` hands the snapshot out before any committed entry.

Linearizable reads: ReadIndex (thesis 6.4).  ``read_index(ctx)`` on the
leader records the commit index (once the leader has committed an entry of
its own term), then tags its next heartbeats with a read sequence number;
when a quorum has echoed that number the leader was still the leader after
the read arrived, and the read is released by ``ready()`` once everything up
to the recorded index is handed out for applying.  A follower forwards the
read to the leader (``READ_INDEX``) and waits for the index it answers
(``READ_INDEX_RESP``).

Errors are sticky: after a storage failure (disk full, I/O error) or an
internal error, the node is failed and refuses every further call with the
same error; the driver stops it, and a restart reloads what is on disk.

Membership changes are one node at a time (``propose_conf``): a configuration
entry takes effect when appended (section 4.1 of the thesis), and a new
change waits until the previous one is committed.
"""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dwcp.errors import InternalError, NotLeaderError  # NotLeaderError: re-exported

__all__ = ["Entry", "Msg", "MsgType", "Role", "RaftNode", "Ready", "ReadState", "NotLeaderError", "MemoryStorage",
           "HardState", "SnapshotMeta", "SNAP_CHUNK_BYTES", "MAX_SNAPSHOT_BYTES"]  # fmt: skip

SNAP_CHUNK_BYTES = 256 << 10  # one SNAP message's share of the snapshot (hex on the wire: 512 KiB)
MAX_SNAPSHOT_BYTES = 1 << 30  # a follower refuses to buffer a snapshot larger than this
MAX_PENDING_READS = 4096  # reads waiting for confirmation or for their index to be applied, per node


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class MsgType(enum.Enum):
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    PREVOTE = "prevote"
    PREVOTE_RESP = "prevote_resp"
    APPEND = "append"
    APPEND_RESP = "append_resp"
    SNAP = "snap"
    SNAP_RESP = "snap_resp"
    READ_INDEX = "read_index"
    READ_INDEX_RESP = "read_index_resp"


@dataclass(frozen=True)
class Entry:
    term: int
    index: int
    kind: str = "data"  # "data" | "noop" | "conf"
    data: bytes = b""


@dataclass(frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    voters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Msg:
    type: MsgType
    src: str
    dst: str
    term: int
    # VOTE/PREVOTE: last_index/last_term; VOTE_RESP/PREVOTE_RESP: granted
    last_index: int = 0
    last_term: int = 0
    granted: bool = False
    # APPEND: prev_index/prev_term, entries, commit; APPEND_RESP: success, match (or the hint)
    prev_index: int = 0
    prev_term: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0  # also READ_INDEX_RESP: the read's index
    success: bool = False
    match: int = 0  # also SNAP_RESP: the snapshot bytes received so far
    # SNAP: the snapshot's metadata, this chunk's offset and bytes, whether it is the last
    snap: SnapshotMeta | None = None  # SNAP_RESP: the snapshot it answers (its index and term)
    offset: int = 0
    data: bytes = b""
    done: bool = False
    # ReadIndex: APPEND carries the leader's read sequence number and APPEND_RESP echoes it;
    # READ_INDEX / READ_INDEX_RESP carry the follower's opaque read context
    read_seq: int = 0
    ctx: bytes = b""


@dataclass(frozen=True)
class HardState:
    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True)
class ReadState:
    """A read that may now be served: everything up to ``index`` has been handed out for applying."""

    index: int
    ctx: bytes


class MemoryStorage:
    """Hard state, snapshot and log in memory (the simulator's "disk": it survives a crash unless wiped).

    ``log[0]`` is a sentinel holding the snapshot's index and term; ``log[k]`` is entry ``log[0].index + k``.
    """

    def __init__(self) -> None:
        self.hard = HardState()
        self.snap = SnapshotMeta()
        self.snap_data = b""
        self.log: list[Entry] = [Entry(0, 0, "noop")]

    def set_hard(self, hs: HardState) -> None:
        self.hard = hs

    def sync(self) -> None:
        """Make what was appended durable (the driver calls it before sending ``ready().messages``)."""

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``; the first must follow the log or replace a suffix (truncating it)."""
        if not entries:
            return
        off = self.log[0].index
        first = entries[0].index
        if first > off + len(self.log) or first <= off:
            raise InternalError(f"log gap: appending {first} to the log ({off}, {off + len(self.log) - 1}]")
        del self.log[first - off :]
        self.log.extend(entries)

    def compact(self, meta: SnapshotMeta, data: bytes) -> None:
        """Keep ``data`` as the snapshot at ``meta.index`` (<= the last index) and drop the log up to it."""
        off = self.log[0].index
        if not off < meta.index <= off + len(self.log) - 1:
            raise InternalError(
                f"compacting at {meta.index} outside the log ({off}, {off + len(self.log) - 1}]"
            )
        self.snap, self.snap_data = meta, data
        self.log = [Entry(meta.term, meta.index, "noop"), *self.log[meta.index - off + 1 :]]

    def install(self, meta: SnapshotMeta, data: bytes) -> None:
        """A leader's snapshot replaces the whole log (the log restarts after it)."""
        self.snap, self.snap_data = meta, data
        self.log = [Entry(meta.term, meta.index, "noop")]


_F = TypeVar("_F", bound=Callable[..., Any])


def _sticky(fn: _F) -> _F:
    """Refuse calls once failed; a failure other than a caller's mistake fails the node for good."""

    @functools.wraps(fn)
    def wrapper(self: RaftNode, *args: Any, **kw: Any) -> Any:
        if self.failed is not None:
            raise self.failed
        try:
            return fn(self, *args, **kw)
        except (NotLeaderError, ValueError):
            raise
        except Exception as exc:
            self.failed = exc
            raise

    return wrapper  # type: ignore[return-value]


@dataclass
class Ready:
    messages: list[Msg] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    snapshot: tuple[SnapshotMeta, bytes] | None = None  # restore the state machine from it first
    read_states: list[ReadState] = field(default_factory=list)


@dataclass
class _Read:
    seq: int
    ctx: bytes
    origin: str
    index: int | None  # None until the leader has committed an entry of its term


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
        pre_vote: bool = True,
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
        self.pre_vote = pre_vote
        self.rng = rng or random.Random()
        self.failed: BaseException | None = None
        self._boot_voters = set(peers)
        st = self.storage
        hs = st.hard
        self.term, self.vote = hs.term, hs.vote
        self.commit = max(hs.commit, st.snap.index)
        self.voters: set[str] = self._voters_at(self.last_index)
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.applied = st.snap.index
        # a restarted node's state machine starts from the snapshot on its disk
        self._pending_snap: tuple[SnapshotMeta, bytes] | None = (
            (st.snap, st.snap_data) if st.snap.index else None
        )
        self._elapsed = 0
        self._timeout = self._new_timeout()
        self._votes: set[str] = set()
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._active: set[str] = set()  # CheckQuorum: peers heard from this election timeout
        self._outbox: list[Msg] = []
        self._snap_off: dict[
            str, tuple[int, int]
        ] = {}  # leader: peer -> (snapshot index, bytes acknowledged)
        self._snap_buf: tuple[str, int, SnapshotMeta, bytearray] | None = (
            None  # follower: (leader, term, meta, bytes)
        )
        self._read_seq = 0
        self._read_acks: dict[str, int] = {}
        self._reads: list[_Read] = []  # leader: waiting for a quorum's heartbeat answers
        self._read_states: list[ReadState] = []  # waiting for their index to be handed out

    # -- the log ---------------------------------------------------------------
    @property
    def log(self) -> list[Entry]:
        """The log after the snapshot (slot 0: the snapshot's sentinel)."""
        return self.storage.log

    @property
    def first_index(self) -> int:
        return self.storage.log[0].index + 1

    @property
    def last_index(self) -> int:
        log = self.storage.log
        return log[0].index + len(log) - 1

    def _term_at(self, i: int) -> int | None:
        log = self.storage.log
        j = i - log[0].index
        return log[j].term if 0 <= j < len(log) else None

    def _entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) (lo after the snapshot)."""
        off = self.storage.log[0].index
        return self.storage.log[lo - off : hi - off]

    def _voters_at(self, index: int) -> set[str]:
        st = self.storage
        voters = set(st.snap.voters) if st.snap.index else set(self._boot_voters)
        for e in self._entries(self.first_index, index + 1):
            if e.kind == "conf":
                voters = set(e.data.decode().split(","))
        return voters

    def _persist(self) -> None:
        self.storage.set_hard(HardState(self.term, self.vote, self.commit))

    def _new_timeout(self) -> int:
        return self.election_ticks + self.rng.randrange(self.election_ticks)

    def _send(self, m: Msg) -> None:
        self._outbox.append(m)

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def _in_lease(self) -> bool:
        """Heard from a live leader within an election timeout (or am it)."""
        return self.role is Role.LEADER or (self.leader is not None and self._elapsed < self.election_ticks)

    # -- the driver's interface -----------------------------------------------
    @_sticky
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
            if self.pre_vote:
                self._pre_campaign()
            else:
                self._campaign()

    def propose(self, data: bytes, kind: str = "data") -> int:
        """Append ``data`` to the log (leader only); returns its index (committed later, maybe never)."""
        return self.propose_batch([data], kind)[0]

    @_sticky
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
        if any(e.kind == "conf" for e in self._entries(self.commit + 1, self.last_index + 1)):
            raise NotLeaderError("a membership change is still in flight", self.leader)
        idx = self.propose(",".join(sorted(voters)).encode(), kind="conf")
        self.voters = set(voters)
        for p in self.voters - set(self._next):
            self._next[p], self._match[p] = idx, 0
        return idx

    @_sticky
    def compact(self, index: int, data: bytes) -> None:
        """``data`` is the state machine at applied ``index``: keep it as the snapshot, drop the log up to it."""
        if index > self.applied:
            raise ValueError(f"cannot snapshot at {index}: only {self.applied} is applied")
        if index <= self.storage.snap.index:
            return  # an older snapshot than the one we have
        term = self._term_at(index)
        if term is None:
            raise InternalError(f"{self.id}: no term for applied index {index}")
        self.storage.compact(SnapshotMeta(index, term, tuple(sorted(self._voters_at(index)))), data)

    @_sticky
    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read; ``ready().read_states`` carries ``ctx`` back once it may be served."""
        if len(self._reads) + len(self._read_states) >= MAX_PENDING_READS:
            raise NotLeaderError(f"{self.id}: too many reads in flight", self.leader)
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader is not None:
            self._send(Msg(MsgType.READ_INDEX, self.id, self.leader, self.term, ctx=ctx))
        else:
            raise NotLeaderError(f"{self.id} knows no leader to confirm a read (term {self.term})", None)

    def ready(self) -> Ready:
        snap, self._pending_snap = self._pending_snap, None
        if snap is not None:
            self.applied = max(self.applied, snap[0].index)
        r = Ready(self._outbox, self._entries(self.applied + 1, self.commit + 1), snap)
        self._outbox = []
        self.applied = max(self.applied, self.commit)
        if self._read_states:
            r.read_states = [s for s in self._read_states if s.index <= self.applied]
            self._read_states = [s for s in self._read_states if s.index > self.applied]
        return r

    @_sticky
    def step(self, m: Msg) -> None:
        if m.dst != self.id:
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PREVOTE) and self._in_lease():
                return  # a leader is alive: a disruptive candidate gets no answer (thesis 4.2.3)
            if m.type is MsgType.PREVOTE or (m.type is MsgType.PREVOTE_RESP and m.granted):
                pass  # a pre-vote changes no term
            else:
                leader = m.src if m.type in (MsgType.APPEND, MsgType.SNAP) else None
                self._become_follower(m.term, leader)
        t = m.type
        if t is MsgType.VOTE or t is MsgType.PREVOTE:
            self._on_vote(m)
        elif t is MsgType.VOTE_RESP:
            if self.role is Role.CANDIDATE and m.term == self.term and m.granted:
                self._votes.add(m.src)
                if len(self._votes & self.voters) >= self.quorum:
                    self._become_leader()
        elif t is MsgType.PREVOTE_RESP:
            if self.role is Role.PRE_CANDIDATE and m.term == self.term + 1 and m.granted:
                self._votes.add(m.src)
                if len(self._votes & self.voters) >= self.quorum:
                    self._campaign()
        elif t is MsgType.APPEND:
            self._on_append(m)
        elif t is MsgType.APPEND_RESP:
            self._on_append_resp(m)
        elif t is MsgType.SNAP:
            self._on_snap(m)
        elif t is MsgType.SNAP_RESP:
            self._on_snap_resp(m)
        elif t is MsgType.READ_INDEX:
            if self.role is Role.LEADER and m.term == self.term and m.src in self.voters:
                if len(self._reads) < MAX_PENDING_READS:
                    self._leader_read(m.ctx, m.src)
        elif t is MsgType.READ_INDEX_RESP:
            if m.term == self.term and m.src == self.leader and len(self._read_states) < MAX_PENDING_READS:
                self._read_states.append(ReadState(m.commit, m.ctx))

    # -- roles -------------------------------------------------------------------
    def _become_follower(self, term: int, leader: str | None) -> None:
        if term > self.term:
            self.term, self.vote = term, None
            self._persist()
        self.role, self.leader = Role.FOLLOWER, leader
        self._elapsed, self._timeout = 0, self._new_timeout()
        self._reads = []

    def _pre_campaign(self) -> None:
        self.role, self.leader = Role.PRE_CANDIDATE, None
        self._votes = {self.id}
        self._elapsed, self._timeout = 0, self._new_timeout()
        if len(self._votes & self.voters) >= self.quorum:
            self._campaign()
            return
        for p in sorted(self.voters - {self.id}):
            self._send(Msg(MsgType.PREVOTE, self.id, p, self.term + 1, last_index=self.last_index,
                           last_term=self.log[-1].term))  # fmt: skip

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
        self._snap_off = {}
        self._read_acks = {}
        self._reads = []
        self._elapsed = 0
        self.propose(b"", kind="noop")  # commits earlier terms' entries through this term (5.4.2)

    # -- handlers ------------------------------------------------------------------
    def _on_vote(self, m: Msg) -> None:
        up_to_date = (m.last_term, m.last_index) >= (self.log[-1].term, self.last_index)
        if m.type is MsgType.PREVOTE:
            grant = m.term > self.term and up_to_date and not self._in_lease()
            self._send(
                Msg(MsgType.PREVOTE_RESP, self.id, m.src, m.term if grant else self.term, granted=grant)
            )
            return
        grant = (
            m.term == self.term and self.vote in (None, m.src) and up_to_date and self.role is not Role.LEADER
        )
        if grant:
            self.vote = m.src
            self._persist()
            self._elapsed = 0  # granting a vote resets our own election timer
        self._send(Msg(MsgType.VOTE_RESP, self.id, m.src, self.term, granted=grant))

    def _follow(self, m: Msg) -> bool:
        """A message from a leader: False (and a refusal sent) if its term is stale."""
        if m.term < self.term:
            self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=False, match=0))
            return False
        self.role, self.leader, self._elapsed = Role.FOLLOWER, m.src, 0
        return True

    def _on_append(self, m: Msg) -> None:
        if not self._follow(m):
            return
        prev_index, prev_term, entries = m.prev_index, m.prev_term, m.entries
        snap = self.storage.snap
        if prev_index < snap.index:
            # what precedes our snapshot is committed, so it is the leader's too: skip it
            entries = tuple(e for e in entries if e.index > snap.index)
            if not entries and prev_index + len(m.entries) <= snap.index:
                self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=True, match=self.commit,
                               read_seq=m.read_seq))  # fmt: skip
                return
            prev_index, prev_term = snap.index, snap.term
        if self._term_at(prev_index) != prev_term:
            hint = min(prev_index - 1, self.last_index)  # the leader backs off to here
            self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=False, match=max(hint, 0),
                           read_seq=m.read_seq))  # fmt: skip
            return
        new: list[Entry] = []
        for k, e in enumerate(entries):
            t = self._term_at(e.index)
            if t is None or t != e.term:
                if t is not None and e.index <= self.commit:
                    raise InternalError(
                        f"{self.id}: leader {m.src} would overwrite committed entry {e.index}"
                    )
                new = list(entries[k:])
                break
        if new:
            self.storage.append(new)
            for e in new:
                if e.kind == "conf":
                    self.voters = set(e.data.decode().split(","))
        last_new = prev_index + len(entries)
        if min(m.commit, last_new) > self.commit:  # never backwards (a late message may know less)
            self.commit = min(m.commit, last_new)
            self._persist()
        self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=True, match=last_new,
                       read_seq=m.read_seq))  # fmt: skip

    def _on_snap(self, m: Msg) -> None:
        if not self._follow(m) or m.snap is None:
            return
        meta = m.snap

        def answer(got: int) -> None:
            self._send(
                Msg(MsgType.SNAP_RESP, self.id, m.src, self.term, snap=meta, match=got, read_seq=m.read_seq)
            )

        if meta.index <= self.commit:
            # we already hold (committed) everything it has: never trade a newer log for an older snapshot
            self._snap_buf = None
            self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=True, match=self.commit,
                           read_seq=m.read_seq))  # fmt: skip
            return
        buf = self._snap_buf
        if m.offset == 0 and (buf is None or (buf[0], buf[1], buf[2]) != (m.src, m.term, meta)):
            buf = self._snap_buf = (m.src, m.term, meta, bytearray())
        if buf is None or (buf[0], buf[1], buf[2]) != (m.src, m.term, meta) or m.offset != len(buf[3]):
            answer(
                len(buf[3]) if buf is not None and (buf[0], buf[1], buf[2]) == (m.src, m.term, meta) else 0
            )
            return
        if len(buf[3]) + len(m.data) > MAX_SNAPSHOT_BYTES:
            self._snap_buf = None
            answer(0)
            return
        buf[3].extend(m.data)
        if not m.done:
            answer(len(buf[3]))
            return
        self._snap_buf = None
        data = bytes(buf[3])
        if self._term_at(meta.index) == meta.term:
            # our log already holds the snapshot's last entry: keep the log, compact nothing, just commit
            self.commit = meta.index
        else:
            self.storage.install(meta, data)
            self.commit = meta.index
            self.applied = meta.index
            self._pending_snap = (meta, data)
            self.voters = set(meta.voters)
        self._persist()
        self._send(Msg(MsgType.APPEND_RESP, self.id, m.src, self.term, success=True, match=meta.index,
                       read_seq=m.read_seq))  # fmt: skip

    def _on_append_resp(self, m: Msg) -> None:
        if self.role is not Role.LEADER or m.term != self.term:
            return
        self._active.add(m.src)
        self._ack_read(m.src, m.read_seq)
        if m.success:
            self._snap_off.pop(m.src, None)
            if m.match > self._match.get(m.src, 0):
                self._match[m.src] = m.match
            self._next[m.src] = max(self._next.get(m.src, 1), m.match + 1)
            self._maybe_commit()
            if self._next[m.src] <= self.last_index:
                self._send_append(m.src)
        else:
            if m.src in self._snap_off:
                return  # a late refusal while the snapshot is on its way
            self._next[m.src] = max(
                1, min(self._next.get(m.src, 1) - 1, m.match + 1, self._match.get(m.src, 0) + 1)
            )
            self._send_append(m.src)

    def _on_snap_resp(self, m: Msg) -> None:
        if self.role is not Role.LEADER or m.term != self.term or m.snap is None:
            return
        self._active.add(m.src)
        self._ack_read(m.src, m.read_seq)
        cur = self._snap_off.get(m.src)
        snap = self.storage.snap
        if cur is None or cur[0] != m.snap.index or (m.snap.index, m.snap.term) != (snap.index, snap.term):
            return  # an answer about an older snapshot, or no snapshot on its way
        if m.match != cur[1]:
            self._snap_off[m.src] = (cur[0], min(m.match, len(self.storage.snap_data)))
            self._send_append(m.src)

    # -- leader machinery --------------------------------------------------------------
    def _send_append(self, p: str) -> None:
        nxt = self._next.get(p, self.last_index + 1)
        prev = nxt - 1
        prev_term = self._term_at(prev)
        if prev_term is None:  # compacted away: the follower needs the snapshot
            self._send_snap(p)
            return
        entries = tuple(self._entries(nxt, nxt + self.max_entries))
        self._send(Msg(MsgType.APPEND, self.id, p, self.term, prev_index=prev, prev_term=prev_term,
                       entries=entries, commit=self.commit, read_seq=self._read_seq))  # fmt: skip
        if entries:
            # pipeline: the next append to p carries what follows (etcd's "replicate" state); a lost
            # message shows up as a refused later append, which backs next off and resends
            self._next[p] = entries[-1].index + 1

    def _send_snap(self, p: str) -> None:
        meta, data = self.storage.snap, self.storage.snap_data
        cur = self._snap_off.get(p)
        if cur is None or cur[0] != meta.index:
            cur = self._snap_off[p] = (meta.index, 0)
        off = cur[1]
        chunk = data[off : off + SNAP_CHUNK_BYTES]
        self._send(Msg(MsgType.SNAP, self.id, p, self.term, snap=meta, offset=off, data=chunk,
                       done=off + len(chunk) >= len(data), read_seq=self._read_seq))  # fmt: skip

    def _broadcast_append(self) -> None:
        for p in sorted(self.voters - {self.id}):
            self._send_append(p)

    def _maybe_commit(self) -> None:
        self._match[self.id] = self.last_index
        # the highest index a quorum holds: the quorum-th largest match (etcd's quorum.JointConfig)
        n = sorted((self._match.get(p, 0) for p in self.voters), reverse=True)[self.quorum - 1]
        if (
            n > self.commit and self._term_at(n) == self.term
        ):  # only entries of this term commit by counting (5.4.2)
            self.commit = n
            self._persist()
        if self._reads and self._term_at(self.commit) == self.term:
            for r in self._reads:
                if r.index is None:
                    r.index = self.commit
            self._release_reads()

    # -- ReadIndex -------------------------------------------------------------------------
    def _leader_read(self, ctx: bytes, origin: str) -> None:
        index = self.commit if self._term_at(self.commit) == self.term else None
        self._read_seq += 1
        self._reads.append(_Read(self._read_seq, ctx, origin, index))
        if len(self.voters) == 1 or self.quorum == 1:
            self._release_reads()
        else:
            self._broadcast_append()  # the heartbeat round that confirms we still lead

    def _ack_read(self, src: str, seq: int) -> None:
        if seq > self._read_acks.get(src, 0):
            self._read_acks[src] = seq
            self._release_reads()

    def _release_reads(self) -> None:
        if not self._reads:
            return
        acks = sorted((self._read_seq if p == self.id else self._read_acks.get(p, 0) for p in self.voters),
                      reverse=True)  # fmt: skip
        confirmed = acks[self.quorum - 1]  # a quorum answered heartbeats sent after these reads
        keep: list[_Read] = []
        for r in self._reads:
            if r.seq > confirmed or r.index is None:
                keep.append(r)
            elif r.origin == self.id:
                self._read_states.append(ReadState(r.index, r.ctx))
            else:
                self._send(
                    Msg(MsgType.READ_INDEX_RESP, self.id, r.origin, self.term, commit=r.index, ctx=r.ctx)
                )
        self._reads = keep
