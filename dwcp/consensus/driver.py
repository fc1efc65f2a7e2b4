"""The daemon's Raft driver: ticks, the wire, durable storage and the catalog around the sans-IO core.

* One core thread per node steps the ``RaftNode`` (single-threaded by design),
  in rounds: it takes everything delivered, proposed and asked since the last
  round, steps it all, ticks if a tick is due, then drains ``ready()`` once:
  a leader's replication (APPEND, SNAP) goes out first, then one fsync
  (``FileStorage.sync``) before anything else is sent or anything applied
  (so the leader's disk writes while the followers' do: Raft thesis 10.2.1),
  one write per peer, committed entries applied to the ``Catalog`` in log order;
  proposers and readers are woken after the lock is released.  Work that
  arrives during a round's fsync makes the next round, so batches grow with
  the load.  ``lock`` is held for a round's stepping and draining.
* A leader holds new proposals while a replication round is in flight (at
  most HOLD_S) and proposes them together when it commits: one round trip per
  batch, not many small pipelined ones that each cost every node a wake-up,
  an fsync and a frame.
* Peers talk over the data port: a stream opened with HELLO op "raft" (mutual
  TLS, and the sender's certificate identity must be the ``src`` of every
  message it carries), then FRAME_RAFT JSON frames, one per message (a
  round's frames to a peer go out in one write).  ``deliver`` checks them on
  the connection's thread and queues them for the core.  A lost connection
  loses messages, which Raft tolerates; links reconnect.
* ``propose`` waits until the command is applied (or times out); a follower's
  core forwards the command to the leader it knows.  A proposer never takes
  ``lock`` (it would queue behind a round's fsync): it registers its waiter
  with the submission under ``_in_lock``, and waits on a one-shot latch.
"""

from __future__ import annotations

import _socket
import copy
import itertools
import json
import logging
import os
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dwcp._backend import impl as _k
from dwcp.errors import DWCPError, InternalError, RemoteProtocolError, StorageError
from dwcp.transport.dialer import Dialer
from dwcp.transport.session import PROTOCOL_VERSION
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

from .catalog import Catalog
from .raft import Msg, MsgType, NotLeaderError, RaftNode, Role
from .storage import FileStorage
from .wire import Forward, command_id, forward_to_wire, raft_from_wire, raft_to_wire

__all__ = ["RaftDriver", "SNAPSHOT_EVERY"]

log = logging.getLogger("dwcp.raft")

SNAPSHOT_EVERY = 10_000  # applied entries between two snapshots of the catalog (each compacts the log)
MAX_LINK_QUEUE = 10_000  # frames queued for one peer while its stream is down or full
HOLD_S = 0.002  # the longest a leader holds proposals back for the round in flight
MAX_HELD = 1024  # ... or until this many are held
MAX_INBOX = 50_000  # messages (or proposals, or reads) waiting for the core thread's next round

_T = TypeVar("_T")


def raft_frame(d: dict) -> bytes:
    """``encode_control(FRAME_RAFT, 0, d)`` for a dict ``raft_to_wire`` made: the schema check is left out on
    this hot path (the tests check that every message type passes it; the receiver checks it anyway)."""
    body = json.dumps(d, separators=(",", ":")).encode()
    return (
        _k.pack_header(C.FRAME_RAFT, C.CODEC_RAW, 0, 0, 0, len(body), len(body), raw_hash=_k.xxh3_64(body))
        + body
    )


def _peer_closed(sock: Any) -> bool:
    """Whether the peer has closed this stream (its FIN or RST has arrived), without consuming anything.

    A raft stream carries nothing back, so a readable one is closed -- or holds TLS records (a TLS 1.3
    session ticket): peeked at below the TLS layer, those are data and the stream is alive.
    """
    try:
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        if not p.poll(0):
            return False
        return _socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True


class _PeerLink(threading.Thread):
    """Sends one peer its messages over a stream it (re)opens as needed.

    ``send`` writes straight to the socket from the caller's thread when the stream is up, nothing is
    queued and the kernel takes the whole frame without blocking (the common case: no thread hand-off);
    otherwise the frame (or the part of it the kernel did not take) is queued, and this thread writes the
    queue in order, connecting first if needed.  A lost stream loses what was queued for it, as a lossy
    network would, and so does a queue past MAX_LINK_QUEUE frames (whole frames only)."""

    def __init__(self, driver: Any, peer: str, address: str) -> None:
        """``driver``: a RaftDriver or an EpochDriver (its ``id``, ``dialer``, ``stopped``)."""
        super().__init__(name=f"dwcp-raft-{peer}", daemon=True)
        self.driver, self.peer, self.address = driver, peer, address
        self._cv = threading.Condition(threading.Lock())  # guards _fs, _queue and _writing
        self._queue: list[bytes] = []
        self._writing = False  # this thread is writing a batch outside the lock: no direct write meanwhile
        self._fs: Any = None  # a FrameSocket once connected
        self._direct = True  # plaintext streams only (an SSLSocket's send takes no flags)
        self.closed = threading.Event()  # the peer left the cluster (or moved): this link ends

    def send(self, frame: bytes) -> None:
        with self._cv:
            if self._fs is not None and not self._queue and not self._writing and _peer_closed(self._fs.sock):
                self._forget_closed(self._fs)
            if self._fs is not None and self._direct and not self._queue and not self._writing:
                try:
                    n = self._fs.sock.send(frame, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    n = 0  # this thread meets the error on its next write and reconnects
                if n >= len(frame):
                    return
                self._queue.append(frame[n:])  # the rest of a started frame: never dropped (see _lost)
                self._cv.notify()
                return
            if len(self._queue) >= MAX_LINK_QUEUE:
                return  # a peer that cannot keep up loses messages, as on a lossy network
            self._queue.append(frame)
            self._cv.notify()

    def _forget_closed(self, fs: Any) -> None:
        """(``_cv`` held) A stream the peer closed -- restarted: the old stream's next write would vanish into
        its RST.  Close it so the next write reopens; unlike ``_lost``, what is queued stays for the new one."""
        if self._fs is fs:
            self._fs = None
        fs.close()

    def _lost(self, fs: Any) -> None:
        """The stream failed: close it, and drop what was queued for it (it may end in half a frame)."""
        with self._cv:
            if self._fs is fs:
                self._fs = None
            self._queue.clear()
        if fs is not None:
            fs.close()

    def run(self) -> None:
        host, _, port = self.address.rpartition(":")
        while not self.driver.stopped.is_set() and not self.closed.is_set():
            with self._cv:
                if not self._queue:
                    self._cv.wait(0.2)
                    if not self._queue:
                        continue
                batch, self._queue = self._queue, []
                fs = self._fs
                self._writing = True
            try:
                if fs is not None and _peer_closed(fs.sock):
                    with self._cv:
                        self._forget_closed(fs)
                    fs = None
                if fs is None:
                    fs, _ = self.driver.dialer.dial(host.strip("[]"), int(port))
                    fs.send(encode_control(C.FRAME_HELLO, 0, {"v": PROTOCOL_VERSION, "role": "control", "op": "raft",
                                                              "node": self.driver.id}))  # fmt: skip
                    with self._cv:
                        self._fs, self._direct = fs, not isinstance(fs.sock, ssl.SSLSocket)
                fs.send(b"".join(batch))
            except (OSError, DWCPError) as exc:
                log.debug("raft link to %s: %s", self.peer, exc)
                self._lost(fs)
                self.driver.stopped.wait(0.1)
            finally:
                with self._cv:
                    self._writing = False
        with self._cv:  # stopped, or the peer left: its stream goes too
            fs, self._fs = self._fs, None
        if fs is not None:
            fs.close()


class RaftDriver:
    def __init__(self, node_id: str, peers: dict[str, str], data_dir: str, *, dialer: Dialer, tick_s: float = 0.05,
                 election_ticks: int = 10, snapshot_every: int = SNAPSHOT_EVERY) -> None:  # fmt: skip
        """``dialer``: how peer links connect (the node's TLS identity and transport settings)."""
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.id = node_id
        self.dialer, self.tick_s = dialer, tick_s
        self.bootstrap = dict(peers)  # the configured peers; the catalog's member records change the set
        self._members_rev = 0  # the catalog's members_rev the links and wanted voters follow
        self._wanted: set[str] | None = (
            None  # the voters the catalog's membership asks for (leader: reconcile)
        )
        self.snapshot_every = snapshot_every
        self.storage = FileStorage(os.path.join(data_dir, "raft"))
        self.node = RaftNode(node_id, sorted({node_id, *peers}), self.storage, election_ticks=election_ticks)
        self.catalog = Catalog()
        self.applied = 0  # the last log index applied to the catalog (data or not)
        self.snapshots = 0  # taken here (compactions)
        self.installed = 0  # snapshots restored (at start, or sent by a leader)
        self.failed: BaseException | None = None  # a storage failure stopped this node
        self.lock = threading.Lock()  # the core, the catalog, the waiters (held by the core thread per round)
        self.stopped = threading.Event()
        self.links = {p: _PeerLink(self, p, a) for p, a in peers.items()}
        self._readers: dict[bytes, threading.Event] = {}
        # the core thread's input, swapped out whole each round (under _in_lock); _wake says "look"
        self._in_lock = threading.Lock()
        # proposals waiting to be applied here (under _in_lock, registered with the submission, so a proposer
        # never queues on ``lock`` behind a round's fsync): command id -> (a held lock the core releases once
        # the command is applied -- a one-shot latch, cheaper than an Event to make, wait on and set --, box)
        self._waiters: dict[str, tuple[threading.Lock, list]] = {}
        self._wake = threading.Event()
        self._inbox: list[Msg] = []  # delivered messages (bounded: MAX_INBOX, beyond it dropped as if lost)
        self._props: list[
            tuple[int, bytes]
        ] = []  # (the term it was handed in, command): proposals and forwards
        self._reads: list[bytes] = []  # read contexts to ask the core about
        self._held: list[
            bytes
        ] = []  # leader: proposals waiting for the round in flight to commit (core thread)
        self._held_since = 0.0
        self._held_term = -1
        self._quiet_props = False  # set by the core thread: see _submit
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(4)
        self.rounds = 0  # core rounds run (status: entries per round is the batching achieved)
        self.dropped = 0  # delivered messages or forwards dropped because the core was MAX_INBOX behind
        self.leader_changes = 0
        self._last_leader: str | None = None
        self._core_thread: threading.Thread | None = None
        with self.lock:
            out = (
                self._drain()
            )  # a restart: the catalog from the snapshot on disk (the log replays as it commits)
        self._release(out)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        for link in self.links.values():
            link.start()
        self._core_thread = threading.Thread(target=self._run, name=f"dwcp-raft-core-{self.id}", daemon=True)
        self._core_thread.start()

    def close(self) -> None:
        self.stopped.set()
        self._wake.set()
        with self.lock:
            self.storage.close()

    def _live(self) -> bool:
        return self.failed is None and not self.stopped.is_set()

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            log.error("raft: %s stops: %s (restart it once the disk is fixed; it reloads what is on disk)",
                      self.id, exc)  # fmt: skip
        self.stopped.set()
        self.storage.close()

    def _submit(self, kind: str, item: Any, waiter: tuple[str, threading.Lock, list] | None = None) -> None:
        with self._in_lock:
            if waiter is not None:
                self._waiters[waiter[0]] = waiter[1:]
            box = self._inbox if kind == "msg" else self._props if kind == "prop" else self._reads
            if len(box) >= MAX_INBOX:
                self.dropped += 1  # the core is far behind: lose it, as a congested network would
                return
            box.append(item)
            if kind == "prop" and self._quiet_props:
                return  # the leader's core wakes for the round in flight's answers (or HOLD_S) and takes it then
        self._wake.set()

    # -- the core thread ------------------------------------------------------------------
    def _run(self) -> None:
        """The one thread that steps the core: each round takes everything delivered, proposed and asked
        since the last one, steps it all, ticks if due, then drains once (one fsync, one write per peer,
        one wake-up per applied command).  Work that arrives during a round's fsync makes the next round:
        the batches grow with the load by themselves."""
        next_tick = time.monotonic() + self.tick_s
        while not self.stopped.is_set():
            wait = next_tick - time.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, HOLD_S) if self._held or self._quiet_props else wait)
            self._wake.clear()  # before the swap: whatever comes after it sets the flag again
            with self._in_lock:
                msgs, self._inbox = self._inbox, []
                props, self._props = self._props, []
                reads, self._reads = self._reads, []
            now = time.monotonic()
            tick = now >= next_tick
            if tick:
                next_tick = max(next_tick + self.tick_s, now)  # a stalled round does not owe a burst of ticks
            with self.lock:
                if not self._live():
                    return
                try:
                    self._round(msgs, props, reads, tick, now)
                    out = self._drain()
                except (StorageError, InternalError) as exc:
                    self._fail(exc)
                    return
                self.rounds += 1
                # a replication round in flight: proposals wait for it, so they need not wake the core
                self._quiet_props = self.node.role is Role.LEADER and self.node.commit < self.node.last_index
            self._release(out)

    def _round(
        self, msgs: list[Msg], props: list[tuple[int, bytes]], reads: list[bytes], tick: bool, now: float
    ) -> None:
        node = self.node
        for m in msgs:
            node.step(m)
        if props or self._held:
            # a proposal handed in at another term is dropped: its proposer sees the new term and asks again
            mine = [d for t, d in props if t == node.term]
            if node.role is Role.LEADER:
                # hold new proposals while a replication round is in flight, and propose them all when it
                # commits: one round trip carries every proposal that came in during the previous one (the
                # batch grows with the load), instead of many small pipelined rounds that each cost every
                # node a wake-up, an fsync and a frame; HOLD_S bounds the wait if a round is lost
                if self._held and self._held_term != node.term:
                    self._held = []
                if mine and not self._held:
                    self._held_since, self._held_term = now, node.term
                self._held.extend(mine)
                if self._held and (node.commit >= node.last_index or len(self._held) >= MAX_HELD
                                   or now - self._held_since >= HOLD_S):  # fmt: skip
                    batch, self._held = self._held, []
                    node.propose_batch(batch)
            elif mine and node.leader in self.links:
                self.links[node.leader].send(b"".join(
                    encode_control(C.FRAME_RAFT, 0, forward_to_wire(self.id, d)) for d in mine))  # fmt: skip
        if node.role is Role.LEADER:
            self._reconcile_voters()
        for ctx in reads:
            try:
                node.read_index(ctx)
            except NotLeaderError:
                pass  # the reader asks again (a leader may be elected meanwhile)
        if tick:
            node.tick()

    def _drain(
        self,
    ) -> tuple[dict[str, list[Msg]], list[tuple[threading.Lock, list, dict]], list[threading.Event]]:
        """Hand out what the core has ready (lock held).  Returns what to do once the lock is released:
        the messages per peer, and the proposers and readers to wake."""
        r = self.node.ready()
        # a leader's replication (APPEND, SNAP) leaves before its own fsync, which then runs while the
        # followers write theirs (Raft thesis 10.2.1): it acknowledges nothing, and the leader counts its
        # own log for a commit only in a later round (the answers it needs come in one), after this fsync,
        # or -- one voter alone -- this round's committed entries are applied only after it
        sends: dict[str, list[Msg]] = {}
        early: dict[str, list[Msg]] = {}
        for m in r.messages:
            (early if m.type is MsgType.APPEND or m.type is MsgType.SNAP else sends).setdefault(
                m.dst, []
            ).append(m)
        self._send(early)
        self.storage.sync()  # durable before anyone hears of it (an answer, a vote), or it is applied
        if r.snapshot is not None:
            meta, data = r.snapshot
            self.catalog = Catalog.restore(json.loads(data))
            self.applied = meta.index
            self.installed += 1
            log.info("raft: catalog restored from the snapshot at %d (term %d)", meta.index, meta.term)
        done: list[tuple[str, dict]] = []
        # a racy look is enough: a command's waiter is registered before the command is handed to the core
        waiting, catalog = bool(self._waiters), self.catalog
        for e in r.committed:
            self.applied = e.index
            if e.kind != "data":
                continue
            res = catalog.apply(e.index, e.data)
            if waiting:
                cid = command_id(e.data)
                if cid is not None:
                    done.append((cid, res))
        wake: list[tuple[threading.Lock, list, dict]] = []
        if done:
            with self._in_lock:
                for cid, res in done:
                    w = self._waiters.pop(cid, None)
                    if w is not None:
                        wake.append((w[0], w[1], res))
        readers: list[threading.Event] = []
        for rs in r.read_states:
            ev = self._readers.pop(rs.ctx, None)
            if ev is not None:
                readers.append(ev)
        if self.catalog.members_rev != self._members_rev:
            self._follow_members()
        if self.applied - self.storage.snap.index >= self.snapshot_every:
            data = json.dumps(self.catalog.snapshot(), separators=(",", ":")).encode()
            self.node.compact(self.applied, data)
            self.snapshots += 1
        if self.node.leader != self._last_leader:
            self._last_leader = self.node.leader
            self.leader_changes += 1
            log.info("raft: leader is %s (term %d)", self.node.leader, self.node.term)
        return sends, wake, readers

    def membership(self) -> dict[str, str]:
        """Every node of the cluster now, this one included: id -> data-port address ("" for this one)."""
        boot = {p: {"address": a, "region": ""} for p, a in self.bootstrap.items()} | {
            self.id: {"address": "", "region": ""}}  # fmt: skip
        return {p: m["address"] for p, m in self.catalog.membership(boot).items()}

    def _follow_members(self) -> None:
        """(lock held) The catalog's membership changed: a link to each new node (or new address), none to
        a removed one, and the voters the leader moves toward, one node at a time (``_round``)."""
        self._members_rev = self.catalog.members_rev
        target = self.membership()
        for p, addr in target.items():
            link = self.links.get(p)
            if p == self.id or (link is not None and link.address == addr):
                continue
            if link is not None:
                link.closed.set()
            self.links[p] = _PeerLink(self, p, addr)
            if self._core_thread is not None:
                self.links[p].start()
            log.info("raft: %s is a member at %s", p, addr)
        for p in [p for p in self.links if p not in target]:
            self.links.pop(p).closed.set()
            log.info("raft: %s is no longer a member", p)
        self._wanted = set(target)

    def _reconcile_voters(self) -> None:
        """(core thread, leader) Move the voters one node toward the membership: add first, then remove;
        never this leader itself (stop it, and the next leader removes it)."""
        node, wanted = self.node, self._wanted
        if wanted is None or wanted == node.voters:
            return
        add, drop = sorted(wanted - node.voters), sorted(node.voters - wanted - {self.id})
        step = node.voters | {add[0]} if add else node.voters - {drop[0]} if drop else None
        if step is None:
            return
        try:
            node.propose_conf(step)
        except (NotLeaderError, ValueError):
            return  # the previous change is still in flight: the next round tries again
        log.info("raft: voters -> %s", ", ".join(sorted(step)))

    def _release(self, out: tuple[dict[str, list[Msg]], list[tuple[threading.Lock, list, dict]],
                                  list[threading.Event]]) -> None:  # fmt: skip
        """Send a round's messages (one write per peer) and wake its proposers and readers (lock released)."""
        sends, wake, readers = out
        self._send(sends)
        for latch, box, res in wake:
            box.append(res)
            latch.release()
        for ev in readers:
            ev.set()

    def _send(self, sends: dict[str, list[Msg]]) -> None:
        for dst, ms in sends.items():
            link = self.links.get(dst)
            if link is not None:
                link.send(b"".join(raft_frame(raft_to_wire(m)) for m in ms))

    # -- the wire -----------------------------------------------------------------------
    def deliver(self, d: dict, peer_identity: str | None) -> None:
        """A message from the data port; ``peer_identity`` is the TLS identity (None: plaintext).  Checked
        here, on the connection's thread; the core thread steps it with the rest of its round."""
        m = raft_from_wire(d)
        if peer_identity is not None and m.src != peer_identity:
            raise RemoteProtocolError(
                f"raft message from {peer_identity} claims to be from {m.src}", C.ERR_BAD_FIELD
            )
        if isinstance(m, Forward):  # a follower's proposal for us to lead
            if self.node.role is Role.LEADER:  # a racy look: the core checks again, under its term
                self._submit("prop", (self.node.term, m.data))
            return
        if m.dst != self.id or m.src not in self.links:
            raise RemoteProtocolError(
                f"raft message {m.src} -> {m.dst} is not for this cluster node", C.ERR_BAD_FIELD
            )
        self._submit("msg", m)

    # -- proposing ------------------------------------------------------------------------
    def _check(self) -> None:
        if self.failed is not None:
            raise StorageError(f"raft on {self.id} stopped: {self.failed}")

    def propose(self, cmd: dict, timeout_s: float = 5.0) -> dict:
        """Apply ``cmd`` to the catalog through consensus; its result once committed and applied here."""
        cid = f"{self._id_prefix}{next(self._ids):08x}"  # 16 hex digits, unique per driver
        data = json.dumps({**cmd, "id": cid}, separators=(",", ":")).encode()
        latch, box = threading.Lock(), []  # type: ignore[var-annotated]
        latch.acquire()  # the core releases it once the command is applied here
        waiter: tuple[str, threading.Lock, list] | None = (cid, latch, box)
        deadline = time.monotonic() + timeout_s
        proposed_in: tuple[int, str | None] | None = None  # (term, leader) we handed it in at: once per pair
        while True:
            self._check()
            term, leader = self.node.term, self.node.leader  # racy reads; the core drops a stale proposal
            if proposed_in != (term, leader):
                # the core proposes it (leader) or forwards it (follower); a new term may have dropped an
                # uncommitted proposal, and one made while no leader was known (an election under way) went
                # nowhere: ask again then (the catalog's commands are idempotent per content)
                self._submit("prop", (term, data), waiter)
                proposed_in, waiter = (term, leader), None
            if latch.acquire(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                with self._in_lock:
                    self._waiters.pop(cid, None)
                raise NotLeaderError(
                    f"no quorum committed the command within {timeout_s} s", self.node.leader
                )
        return box[0]

    # -- reading ---------------------------------------------------------------------------
    def read(self, fn: Callable[[Catalog], _T] | None = None, timeout_s: float = 5.0) -> Any:
        """A linearizable read of the catalog (ReadIndex): ``fn(catalog)`` -- by default a copy of it --
        evaluated once this node has applied every write committed before the call, on any node."""
        ctx = secrets.token_bytes(8)
        ev = threading.Event()
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self._check()
            self._readers[ctx] = ev
        while True:
            self._check()
            self._submit("read", ctx)
            # a lost heartbeat or forward, or a new leader, drops the read: ask again
            if ev.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                with self.lock:
                    self._readers.pop(ctx, None)
                raise NotLeaderError(f"no leader confirmed a read within {timeout_s} s", self.node.leader)
        with self.lock:
            self._check()
            return fn(self.catalog) if fn is not None else copy.deepcopy(self.catalog)

    def status(self) -> dict:
        with self.lock:
            n = self.node
            return {"role": n.role.value, "term": n.term, "leader": n.leader, "commit": n.commit,
                    "last_index": n.last_index, "voters": sorted(n.voters), "leader_changes": self.leader_changes,
                    "applied": self.applied, "snapshot_index": self.storage.snap.index, "snapshots": self.snapshots,
                    "rounds": self.rounds, "dropped": self.dropped,
                    "failed": None if self.failed is None else str(self.failed)}  # fmt: skip
