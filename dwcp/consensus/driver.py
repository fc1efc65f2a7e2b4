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

import json
import logging
import os
import queue
import secrets
import threading
import time
from typing import Any

from dwcp.errors import DWCPError, RemoteProtocolError
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

from .catalog import Catalog
from .raft import Entry, Msg, MsgType, NotLeaderError, RaftNode, Role
from .storage import FileStorage

__all__ = ["RaftDriver", "msg_to_wire", "msg_from_wire"]

log = logging.getLogger("dwcp.raft")


def msg_to_wire(m: Msg) -> dict:
    d: dict[str, Any] = {"type": m.type.value, "src": m.src, "dst": m.dst, "term": m.term}
    if m.type is MsgType.VOTE:
        d.update(last_index=m.last_index, last_term=m.last_term)
    elif m.type is MsgType.VOTE_RESP:
        d["granted"] = m.granted
    elif m.type is MsgType.APPEND:
        d.update(prev_index=m.prev_index, prev_term=m.prev_term, commit=m.commit,
                 entries=[[e.term, e.index, e.kind, e.data.hex()] for e in m.entries])  # fmt: skip
    else:
        d.update(success=m.success, match=m.match)
    return d


def msg_from_wire(d: dict) -> Msg:
    try:
        t = MsgType(d["type"])
        entries = tuple(Entry(int(a), int(b), str(k), bytes.fromhex(x)) for a, b, k, x in d.get("entries", ()))
        return Msg(t, d["src"], d["dst"], d["term"], last_index=d.get("last_index", 0),
                   last_term=d.get("last_term", 0), granted=d.get("granted", False), prev_index=d.get("prev_index", 0),
                   prev_term=d.get("prev_term", 0), entries=entries, commit=d.get("commit", 0),
                   success=d.get("success", False), match=d.get("match", 0))  # fmt: skip
    except (KeyError, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"bad raft message: {exc}", C.ERR_MALFORMED) from None


class _PeerLink(threading.Thread):
    """Sends one peer its messages over a stream it (re)opens as needed."""

    def __init__(self, driver: RaftDriver, peer: str, address: str) -> None:
        super().__init__(name=f"dwcp-raft-{peer}", daemon=True)
        self.driver, self.peer, self.address = driver, peer, address
        self.q: queue.Queue = queue.Queue(maxsize=10_000)
        self._fs: Any = None  # a FrameSocket once connected

    def send(self, d: dict) -> None:
        try:
            self.q.put_nowait(d)
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
                self._fs.send(b"".join(encode_control(C.FRAME_RAFT, 0, d) for d in batch))
            except (OSError, DWCPError) as exc:
                log.debug("raft link to %s: %s", self.peer, exc)
                if self._fs is not None:
                    self._fs.close()
                    self._fs = None
                self.driver.stopped.wait(0.1)


class RaftDriver:
    def __init__(self, node_id: str, peers: dict[str, str], data_dir: str, *, transport, ssl_ctx=None,
                 tick_s: float = 0.05, election_ticks: int = 10) -> None:  # fmt: skip
        self.id = node_id
        self.transport, self.ssl_ctx, self.tick_s = transport, ssl_ctx, tick_s
        self.storage = FileStorage(os.path.join(data_dir, "raft"))
        self.node = RaftNode(node_id, sorted({node_id, *peers}), self.storage, election_ticks=election_ticks)
        self.catalog = Catalog()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.links = {p: _PeerLink(self, p, a) for p, a in peers.items()}
        self._waiters: dict[str, tuple[threading.Event, list]] = {}
        self._pending: list[bytes] = []  # group commit: proposals waiting for the next leader write
        self._flushing = False
        self.leader_changes = 0
        self._last_leader: str | None = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        for link in self.links.values():
            link.start()
        threading.Thread(target=self._ticker, name="dwcp-raft-tick", daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        self.storage.close()

    def _ticker(self) -> None:
        while not self.stopped.wait(self.tick_s):
            with self.lock:
                self.node.tick()
                self._drain()

    # -- the wire -----------------------------------------------------------------------
    def deliver(self, d: dict, peer_identity: str | None) -> None:
        """A message from the data port; ``peer_identity`` is the TLS identity (None: plaintext)."""
        if d.get("type") == "forward":  # a follower's proposal for us to lead
            if peer_identity is not None and d.get("src") != peer_identity:
                raise RemoteProtocolError("forwarded proposal from a node that is not its sender", C.ERR_BAD_FIELD)
            with self.lock:
                if self.node.role is Role.LEADER:
                    self.node.propose(bytes.fromhex(d["data"]))
                    self._drain()
            return
        m = msg_from_wire(d)
        if peer_identity is not None and m.src != peer_identity:
            raise RemoteProtocolError(f"raft message from {peer_identity} claims to be from {m.src}", C.ERR_BAD_FIELD)
        if m.dst != self.id or m.src not in self.links:
            raise RemoteProtocolError(f"raft message {m.src} -> {m.dst} is not for this cluster node", C.ERR_BAD_FIELD)
        with self.lock:
            self.node.step(m)
            self._drain()

    def _drain(self) -> None:
        r = self.node.ready()
        for m in r.messages:
            link = self.links.get(m.dst)
            if link is not None:
                link.send(msg_to_wire(m))
        for e in r.committed:
            if e.kind != "data":
                continue
            res = self.catalog.apply(e.index, e.data)
            try:
                cid = json.loads(e.data).get("id")
            except ValueError:
                cid = None
            w = self._waiters.pop(cid, None) if cid else None
            if w is not None:
                w[1].append(res)
                w[0].set()
        if self.node.leader != self._last_leader:
            self._last_leader = self.node.leader
            self.leader_changes += 1
            log.info("raft: leader is %s (term %d)", self.node.leader, self.node.term)

    # -- proposing ------------------------------------------------------------------------
    def propose(self, cmd: dict, timeout_s: float = 5.0) -> dict:
        """Apply ``cmd`` to the catalog through consensus; its result once committed and applied here."""
        cid = secrets.token_hex(8)
        data = json.dumps({**cmd, "id": cid}, separators=(",", ":")).encode()
        ev, box = threading.Event(), []  # type: ignore[var-annotated]
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self._waiters[cid] = (ev, box)
        proposed_in: int | None = None  # the term we proposed (or forwarded) in: once per term
        while not ev.is_set():
            flush = False
            with self.lock:
                leader = self.node.leader
                if proposed_in != self.node.term:
                    if self.node.role is Role.LEADER:
                        self._pending.append(data)
                        proposed_in = self.node.term
                        flush = not self._flushing
                        self._flushing = self._flushing or flush
                    elif leader in self.links:
                        self.links[leader].send({"type": "forward", "src": self.id, "data": data.hex()})
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
                if not batch:
                    self._flushing = False
                    return
                if self.node.role is Role.LEADER:
                    self.node.propose_batch(batch)
                    self._drain()
                # not leader any more: the proposers see the new term and forward or retry

    def status(self) -> dict:
        with self.lock:
            n = self.node
            return {"role": n.role.value, "term": n.term, "leader": n.leader, "commit": n.commit,
                    "last_index": n.last_index, "voters": sorted(n.voters), "leader_changes": self.leader_changes}  # fmt: skip
