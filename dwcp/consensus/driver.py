"""The daemon's Raft driver: ticks, the wire, durable storage and the catalog around the sans-IO core.

* One lock around the ``RaftNode`` (the core is single-threaded by design).
* A ticker thread calls ``tick()`` every ``tick_s``; connection threads call
  ``deliver`` for each message a peer sent; after either, ``ready()`` is
  drained: its messages go to per-peer send queues, its committed entries
  are applied to the ``Catalog`` in log order.  The storage (``FileStorage``)
  fsyncs inside the core's calls, so nothing is sent before it is durable.
* Peers talk over the data port: a stream opened with HELLO op "raft" (mutual
  TLS, and the sender's certificate identity must be the ``src`` of every
  message it carries), then one FRAME_RAFT JSON frame per message.  A lost
  connection loses messages, which Raft tolerates; links reconnect.
* ``propose`` waits until the command is applied (or times out); a follower
  forwards the command to the leader it knows.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dwcp._backend import impl as _k
from dwcp.errors import DWCPError, InternalError, RemoteProtocolError, StorageError
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

from .catalog import Catalog
from .raft import SNAP_CHUNK_BYTES, Entry, Msg, MsgType, NotLeaderError, RaftNode, Role, SnapshotMeta
from .storage import FileStorage

__all__ = ["RaftDriver", "msg_to_wire", "msg_from_wire", "SNAPSHOT_EVERY"]

log = logging.getLogger("dwcp.raft")

SNAPSHOT_EVERY = 10_000  # applied entries between two snapshots of the catalog (each compacts the log)
MAX_WIRE_ENTRIES = 1024  # entries in one APPEND (the core sends max_entries_per_msg = 64)
MAX_WIRE_VOTERS = 256
MAX_WIRE_NAME = 256  # a node id
MAX_WIRE_CTX = 64  # a read's context, bytes
MAX_WIRE_DATA = 2 << 20  # one entry's or one snapshot chunk's bytes (the core's chunk: SNAP_CHUNK_BYTES)
assert SNAP_CHUNK_BYTES <= MAX_WIRE_DATA

_T = TypeVar("_T")


def msg_to_wire(m: Msg) -> dict:
    d: dict[str, Any] = {"type": m.type.value, "src": m.src, "dst": m.dst, "term": m.term}
    t = m.type
    if t is MsgType.VOTE or t is MsgType.PREVOTE:
        d.update(last_index=m.last_index, last_term=m.last_term)
    elif t is MsgType.VOTE_RESP or t is MsgType.PREVOTE_RESP:
        d["granted"] = m.granted
    elif t is MsgType.APPEND:
        d.update(prev_index=m.prev_index, prev_term=m.prev_term, commit=m.commit, read_seq=m.read_seq,
                 entries=[[e.term, e.index, e.kind, e.data.hex()] for e in m.entries])  # fmt: skip
    elif t is MsgType.APPEND_RESP:
        d.update(success=m.success, match=m.match, read_seq=m.read_seq)
    elif t is MsgType.SNAP or t is MsgType.SNAP_RESP:
        snap = m.snap or SnapshotMeta()
        d.update(snap_index=snap.index, snap_term=snap.term, read_seq=m.read_seq)
        if t is MsgType.SNAP:
            d.update(voters=list(snap.voters), offset=m.offset, done=m.done, data=m.data.hex())
        else:
            d["match"] = m.match
    elif t is MsgType.READ_INDEX or t is MsgType.READ_INDEX_RESP:
        d["ctx"] = m.ctx.hex()
        if t is MsgType.READ_INDEX_RESP:
            d["commit"] = m.commit
    return d


def raft_frame(d: dict) -> bytes:
    """``encode_control(FRAME_RAFT, 0, d)`` for a dict ``msg_to_wire`` made: the schema check is left out on
    this hot path (the tests check that every message type passes it; the receiver checks it anyway)."""
    body = json.dumps(d, separators=(",", ":")).encode()
    return _k.pack_header(C.FRAME_RAFT, C.CODEC_RAW, 0, 0, 0, len(body), len(body), raw_hash=_k.xxh3_64(body)) + body


def _int(d: dict, k: str) -> int:
    v = d.get(k, 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
        raise ValueError(f"{k} must be an integer in [0, 2**63)")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_WIRE_NAME:
        raise ValueError(f"{what} must be a name of 1..{MAX_WIRE_NAME} characters")
    return v


def _hex(v: Any, limit: int, what: str) -> bytes:
    if not isinstance(v, str) or len(v) > 2 * limit:
        raise ValueError(f"{what} must be hex of at most {limit} bytes")
    return bytes.fromhex(v)


def _bool(d: dict, k: str) -> bool:
    v = d.get(k, False)
    if not isinstance(v, bool):
        raise ValueError(f"{k} must be a boolean")
    return v


def _entry(x: Any) -> Entry:
    if not isinstance(x, list) or len(x) != 4:
        raise ValueError("an entry is [term, index, kind, hex data]")
    term, index, kind, data = x
    if kind not in ("data", "noop", "conf"):
        raise ValueError(f"unknown entry kind {kind!r}")
    return Entry(_int({"t": term}, "t"), _int({"i": index}, "i"), kind, _hex(data, MAX_WIRE_DATA, "entry data"))


def msg_from_wire(d: dict) -> Msg:
    """The message a peer sent; anything malformed or out of bounds is a RemoteProtocolError."""
    try:
        if not isinstance(d, dict):
            raise TypeError("a raft message is a JSON object")
        t = MsgType(d["type"])
        src, dst, term = _str(d["src"], "src"), _str(d["dst"], "dst"), _int(d, "term")
        kw: dict[str, Any] = {}
        if t is MsgType.VOTE or t is MsgType.PREVOTE:
            kw.update(last_index=_int(d, "last_index"), last_term=_int(d, "last_term"))
        elif t is MsgType.VOTE_RESP or t is MsgType.PREVOTE_RESP:
            kw["granted"] = _bool(d, "granted")
        elif t is MsgType.APPEND:
            ents = d.get("entries", [])
            if not isinstance(ents, list) or len(ents) > MAX_WIRE_ENTRIES:
                raise ValueError(f"entries must be a list of at most {MAX_WIRE_ENTRIES}")
            kw.update(prev_index=_int(d, "prev_index"), prev_term=_int(d, "prev_term"), commit=_int(d, "commit"),
                      read_seq=_int(d, "read_seq"), entries=tuple(_entry(x) for x in ents))  # fmt: skip
        elif t is MsgType.APPEND_RESP:
            kw.update(success=_bool(d, "success"), match=_int(d, "match"), read_seq=_int(d, "read_seq"))
        elif t is MsgType.SNAP or t is MsgType.SNAP_RESP:
            voters: tuple[str, ...] = ()
            if t is MsgType.SNAP:
                vs = d.get("voters", [])
                if not isinstance(vs, list) or not 0 < len(vs) <= MAX_WIRE_VOTERS:
                    raise ValueError(f"voters must be a list of 1..{MAX_WIRE_VOTERS} names")
                voters = tuple(_str(v, "a voter") for v in vs)
                kw.update(offset=_int(d, "offset"), done=_bool(d, "done"),
                          data=_hex(d.get("data", ""), MAX_WIRE_DATA, "snapshot chunk"))  # fmt: skip
            else:
                kw["match"] = _int(d, "match")
            index = _int(d, "snap_index")
            if index < 1:
                raise ValueError("a snapshot's index is at least 1")
            kw.update(snap=SnapshotMeta(index, _int(d, "snap_term"), voters), read_seq=_int(d, "read_seq"))
        else:
            kw["ctx"] = _hex(d.get("ctx", ""), MAX_WIRE_CTX, "ctx")
            if t is MsgType.READ_INDEX_RESP:
                kw["commit"] = _int(d, "commit")
        return Msg(t, src, dst, term, **kw)
    except (KeyError, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"bad raft message: {exc}", C.ERR_MALFORMED) from None


def _command_id(data: bytes) -> str | None:
    """The "id" ``propose`` put last in a command: a slice, not a second JSON parse (None if not there)."""
    if data[-25:-19] == b',"id":' and data[-19:-18] == data[-2:-1] == b'"' and data[-1:] == b"}":
        return data[-18:-2].decode("ascii", "replace")
    try:
        cid = json.loads(data).get("id")
    except (ValueError, AttributeError):
        return None
    return cid if isinstance(cid, str) else None


class _PeerLink(threading.Thread):
    """Sends one peer its messages over a stream it (re)opens as needed."""

    def __init__(self, driver: Any, peer: str, address: str) -> None:
        """``driver``: a RaftDriver or an EpochDriver (its ``id``, ``transport``, ``ssl_ctx``, ``stopped``)."""
        super().__init__(name=f"dwcp-raft-{peer}", daemon=True)
        self.driver, self.peer, self.address = driver, peer, address
        self.q: queue.Queue = queue.Queue(maxsize=10_000)
        self._fs: Any = None  # a FrameSocket once connected

    def send(self, frame: bytes) -> None:
        try:
            self.q.put_nowait(frame)
        except queue.Full:
            pass  # a peer that cannot keep up loses messages, as on a lossy network

    def run(self) -> None:
        from dwcp.transport.sender import open_stream

        host, _, port = self.address.rpartition(":")
        while not self.driver.stopped.is_set():
            try:
                batch = [self.q.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < 256:  # whatever else is queued goes in the same write
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._fs is None:
                    self._fs, _ = open_stream(host.strip("[]"), int(port), self.driver.transport, self.driver.ssl_ctx)
                    self._fs.send(encode_control(C.FRAME_HELLO, 0, {"v": 1, "role": "control", "op": "raft",
                                                                     "node": self.driver.id}))  # fmt: skip
                self._fs.send(b"".join(batch))
            except (OSError, DWCPError) as exc:
                log.debug("raft link to %s: %s", self.peer, exc)
                if self._fs is not None:
                    self._fs.close()
                    self._fs = None
                self.driver.stopped.wait(0.1)


class RaftDriver:
    def __init__(self, node_id: str, peers: dict[str, str], data_dir: str, *, transport, ssl_ctx=None,
                 tick_s: float = 0.05, election_ticks: int = 10, snapshot_every: int = SNAPSHOT_EVERY) -> None:  # fmt: skip
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.id = node_id
        self.transport, self.ssl_ctx, self.tick_s = transport, ssl_ctx, tick_s
        self.snapshot_every = snapshot_every
        self.storage = FileStorage(os.path.join(data_dir, "raft"))
        self.node = RaftNode(node_id, sorted({node_id, *peers}), self.storage, election_ticks=election_ticks)
        self.catalog = Catalog()
        self.applied = 0  # the last log index applied to the catalog (data or not)
        self.snapshots = 0  # taken here (compactions)
        self.installed = 0  # snapshots restored (at start, or sent by a leader)
        self.failed: BaseException | None = None  # a storage failure stopped this node
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.links = {p: _PeerLink(self, p, a) for p, a in peers.items()}
        self._waiters: dict[str, tuple[threading.Event, list]] = {}
        self._readers: dict[bytes, threading.Event] = {}
        self._inbox: list[Msg] = []  # delivered messages waiting for the lock (bounded by the connections)
        self._inbox_lock = threading.Lock()
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(4)
        self._pending: list[bytes] = []  # group commit: proposals waiting for the next leader write
        self._flushing = False
        self.leader_changes = 0
        self._last_leader: str | None = None
        with self.lock:
            self._drain()  # a restart: the catalog from the snapshot on disk (the log replays as it commits)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        for link in self.links.values():
            link.start()
        threading.Thread(target=self._ticker, name="dwcp-raft-tick", daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            self.storage.close()

    def _ticker(self) -> None:
        while not self.stopped.wait(self.tick_s):
            with self.lock:
                if self._live():
                    self._core(self.node.tick)

    def _live(self) -> bool:
        return self.failed is None and not self.stopped.is_set()

    def _core(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        """Call into the core and drain it (lock held); a storage failure stops this node for good."""
        try:
            out = fn(*args)
            self._drain()
            return out
        except (StorageError, InternalError) as exc:
            self._fail(exc)
            return None

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            log.error("raft: %s stops: %s (restart it once the disk is fixed; it reloads what is on disk)",
                      self.id, exc)  # fmt: skip
        self.stopped.set()
        self.storage.close()

    # -- the wire -----------------------------------------------------------------------
    def deliver(self, d: dict, peer_identity: str | None) -> None:
        """A message from the data port; ``peer_identity`` is the TLS identity (None: plaintext)."""
        if d.get("type") == "forward":  # a follower's proposal for us to lead
            if peer_identity is not None and d.get("src") != peer_identity:
                raise RemoteProtocolError("forwarded proposal from a node that is not its sender", C.ERR_BAD_FIELD)
            try:
                data = _hex(d.get("data"), MAX_WIRE_DATA, "forwarded data")
            except (ValueError, TypeError) as exc:
                raise RemoteProtocolError(f"bad forwarded proposal: {exc}", C.ERR_MALFORMED) from None
            with self.lock:
                if self._live() and self.node.role is Role.LEADER:
                    self._pending.append(data)
                    flush = not self._flushing
                    self._flushing = self._flushing or flush
                else:
                    flush = False
            if flush:
                self._flush()
            return
        m = msg_from_wire(d)
        if peer_identity is not None and m.src != peer_identity:
            raise RemoteProtocolError(f"raft message from {peer_identity} claims to be from {m.src}", C.ERR_BAD_FIELD)
        if m.dst != self.id or m.src not in self.links:
            raise RemoteProtocolError(f"raft message {m.src} -> {m.dst} is not for this cluster node", C.ERR_BAD_FIELD)
        with self._inbox_lock:
            self._inbox.append(m)
        # flat combining: whoever gets the lock steps everything queued so far and drains once (one fsync
        # for a burst of appends); a thread that finds the inbox already emptied by another just returns
        with self.lock:
            with self._inbox_lock:
                batch, self._inbox = self._inbox, []
            if batch and self._live():
                self._core(self._step_all, batch)

    def _step_all(self, batch: list[Msg]) -> None:
        for m in batch:
            self.node.step(m)

    def _drain(self) -> None:
        r = self.node.ready()
        self.storage.sync()  # durable before anyone hears of it, or it is applied
        for m in r.messages:
            link = self.links.get(m.dst)
            if link is not None:
                link.send(raft_frame(msg_to_wire(m)))
        if r.snapshot is not None:
            meta, data = r.snapshot
            self.catalog = Catalog.restore(json.loads(data))
            self.applied = meta.index
            self.installed += 1
            log.info("raft: catalog restored from the snapshot at %d (term %d)", meta.index, meta.term)
        for e in r.committed:
            self.applied = e.index
            if e.kind != "data":
                continue
            res = self.catalog.apply(e.index, e.data)
            cid = _command_id(e.data) if self._waiters else None
            w = self._waiters.pop(cid, None) if cid is not None else None
            if w is not None:
                w[1].append(res)
                w[0].set()
        for rs in r.read_states:
            ev = self._readers.pop(rs.ctx, None)
            if ev is not None:
                ev.set()
        if self.applied - self.storage.snap.index >= self.snapshot_every:
            data = json.dumps(self.catalog.snapshot(), separators=(",", ":")).encode()
            self.node.compact(self.applied, data)
            self.snapshots += 1
        if self.node.leader != self._last_leader:
            self._last_leader = self.node.leader
            self.leader_changes += 1
            log.info("raft: leader is %s (term %d)", self.node.leader, self.node.term)

    # -- proposing ------------------------------------------------------------------------
    def _check(self) -> None:
        if self.failed is not None:
            raise StorageError(f"raft on {self.id} stopped: {self.failed}")

    def propose(self, cmd: dict, timeout_s: float = 5.0) -> dict:
        """Apply ``cmd`` to the catalog through consensus; its result once committed and applied here."""
        cid = f"{self._id_prefix}{next(self._ids):08x}"  # 16 hex digits, unique per driver
        data = json.dumps({**cmd, "id": cid}, separators=(",", ":")).encode()
        ev, box = threading.Event(), []  # type: ignore[var-annotated]
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self._check()
            self._waiters[cid] = (ev, box)
        proposed_in: int | None = None  # the term we proposed (or forwarded) in: once per term
        while not ev.is_set():
            flush = False
            with self.lock:
                self._check()
                leader = self.node.leader
                if proposed_in != self.node.term:
                    if self.node.role is Role.LEADER:
                        self._pending.append(data)
                        proposed_in = self.node.term
                        flush = not self._flushing
                        self._flushing = self._flushing or flush
                    elif leader in self.links:
                        self.links[leader].send(encode_control(C.FRAME_RAFT, 0, {"type": "forward", "src": self.id,
                                                                                  "data": data.hex()}))  # fmt: skip
                        proposed_in = self.node.term
            if flush:
                self._flush()
            # a new term may have dropped an uncommitted proposal: ask again then (the catalog's
            # commands are idempotent per id-less content: a version seen twice just counts once)
            if ev.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                with self.lock:
                    self._waiters.pop(cid, None)
                raise NotLeaderError(f"no quorum committed the command within {timeout_s} s", leader)
        return box[0]

    def _flush(self) -> None:
        """Group commit: whoever finds no flush running writes everything pending, in rounds."""
        while True:
            with self.lock:
                batch, self._pending = self._pending, []
                if not batch or not self._live():
                    self._flushing = False
                    return
                if self.node.role is Role.LEADER:
                    self._core(self.node.propose_batch, batch)
                # not leader any more: the proposers see the new term and forward or retry

    # -- reading ---------------------------------------------------------------------------
    def read(self, fn: Callable[[Catalog], _T] | None = None, timeout_s: float = 5.0) -> Any:
        """A linearizable read of the catalog (ReadIndex): ``fn(catalog)`` -- by default a copy of it --
        evaluated once this node has applied every write committed before the call, on any node."""
        ctx = secrets.token_bytes(8)
        ev = threading.Event()
        deadline = time.monotonic() + timeout_s
        leader: str | None = None
        while True:
            with self.lock:
                self._check()
                self._readers[ctx] = ev
                leader = self.node.leader
                try:
                    self._core(self.node.read_index, ctx)
                except NotLeaderError as exc:
                    leader = exc.leader
            # a lost heartbeat or forward, or a new leader, drops the read: ask again
            if ev.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                with self.lock:
                    self._readers.pop(ctx, None)
                raise NotLeaderError(f"no leader confirmed a read within {timeout_s} s", leader)
        with self.lock:
            self._check()
            return fn(self.catalog) if fn is not None else copy.deepcopy(self.catalog)

    def status(self) -> dict:
        with self.lock:
            n = self.node
            return {"role": n.role.value, "term": n.term, "leader": n.leader, "commit": n.commit,
                    "last_index": n.last_index, "voters": sorted(n.voters), "leader_changes": self.leader_changes,
                    "applied": self.applied, "snapshot_index": self.storage.snap.index, "snapshots": self.snapshots,
                    "failed": None if self.failed is None else str(self.failed)}  # fmt: skip
