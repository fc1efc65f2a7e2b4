"""The data port: accepts control and data streams, receives objects into the store.

This module is the I/O driver of the receiving side: it reads frames, moves
bytes between sockets and the store, and asks the sans-IO transfer session
(``dwcp.transport.session``) what they mean -- a send's validation, its mode
and chunk size, the admission of every DATA frame, how a chunk is written,
when the transfer has failed and when it may commit.

Theory of operation
-------------------
One listening socket; a thread per admitted connection.  Every connection
starts with mutual TLS (unless ``security.plaintext``) and one HELLO frame,
and is *pending* until both passed (a data stream: until its transfer id and
token did).  ``admission.Admission`` decides at accept who gets one of the
``listen.max_connections`` slots (rules there: a pool of
``max_unauthenticated`` pending slots, ``max_unauthenticated_per_source``
per source address, silent squatters evicted first); the first byte, the TLS
handshake and the HELLO must all arrive by ``listen.handshake_timeout_s``
after accept, and every frame header within ``listen.header_timeout_s`` of
its first byte (absolute deadlines: a drip does not push them back).

* ``role=control, op=send`` opens a transfer: the key is validated, the
  mode chosen (``delta`` if we hold the proposed baseline digest, ``pages``
  if we hold another version of the same size and the HELLO's caps (when
  it has any) include "pages" -- its per-page hashes go back in
  PAGE_HASHES frames -- else ``full``; a sender due a full refresh offers
  no baseline and leaves "pages" out), a write lease and a
  resumable partial taken in the store, and WELCOME returns the mode, a
  token for the data streams and the bitmap of chunks already held
  (resume).  The control stream then waits for DONE, commits (whole-object
  digest from the leaf hashes of the chunks as they landed, fsync, atomic rename) and answers DONE or ERROR.
* ``role=data`` joins a transfer by id + token (and must be the same
  authenticated peer): DATA frames are bounded, checked against the
  transfer (id, offset alignment, length), decoded straight into the
  partial's mapped chunk (raw payloads are received into it with no copy),
  verified (xxh3-64) and acknowledged; a corrupt chunk is NACKed and comes
  again.
* ``role=control, op=fetch`` streams the latest verified version of a key
  back on the same connection, encoded with the [codec] zstd level (or its
  bounds), at most ``transport.compress_workers`` chunks at once over all
  fetches.
* any other op (consensus ``raft``, cluster ``probe``) goes to the handler
  its owner registered (``register``); an op nobody registered is refused.

Rules
-----
1. Any protocol violation (RemoteProtocolError) is logged, answered with an
   ERROR frame when possible, and closes that connection only; the server
   keeps serving every other connection.
2. Nothing replaces a verified version except a commit whose whole-object
   digest matched; a failed or abandoned transfer leaves a partial that a
   later send of the same key and content resumes.
3. A chunk is written by one stream at a time (claims); a chunk already
   held is received into scratch and dropped.
4. A send is judged before anything is stored: the peer's right to write
   the key (``security.acl``), a relay's next hop (a [cluster] peer or
   ``security.relay_allow``), ``storage.max_object_bytes``, the free space.
   A fetch needs the right to read.  Refusals carry ERR_FORBIDDEN /
   ERR_TOO_LARGE / ERR_STORAGE and the reason.
5. What a HELLO costs is bounded whatever it announces: at most
   ``storage.MAX_CHUNKS`` chunks per object (the receiver raises the chunk
   size in WELCOME), one bit of state per chunk.
6. A failure of the transfer itself (the disk) ends it: every stream and the
   control stream hear the reason once (ERR_STORAGE), the log has it once.
7. One transfer per key (the store's lease).  A new attempt of the same
   object by the same peer takes over a running one -- its sender gave up
   (a silent partition leaves the receiver waiting on a dead control
   stream); anyone else is told who holds the key and how long it may.
8. A connection refused at accept is reset (no thread, no TIME_WAIT here);
   an evicted one is shut down, which wakes its thread.  Per-connection
   refusals and evictions are logged at most once per ``_ADMISSION_LOG_S``
   (with a count): an attacker must not be able to flood the log.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dwcp._backend import impl as _k
from dwcp.codec import ChunkDecoder, ChunkEncoder, CodecConfig, DictionaryStore, chunk_spans
from dwcp.config import Config
from dwcp.digest import LEAF_BYTES, chunk_hash
from dwcp.errors import (
    BrokenResourceError,
    DWCPError,
    HeaderTimeoutError,
    IntegrityError,
    InvalidKeyError,
    KeyBusyError,
    RemoteProtocolError,
    StorageError,
    bind_error,
)
from dwcp.security import aead
from dwcp.storage import ObjectStore, Partial, close_mapping, min_chunk_size, validate_key
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control, encode_page_hashes

from .admission import REASONS, Admission, Limits, source_key
from .engine import Engine, fs_type, read_receive_cpus, start_engine
from .events import NO_EVENTS, TransferEvents
from .framesock import FrameSocket
from .session import (
    ADMIT_CLAIMED,
    ADMIT_HELD,
    PROTOCOL_VERSION,
    WRITE_ALL,
    WRITE_DIRTY_PAGES,
    WRITE_NONZERO_PAGES,
    Forward,
    ReceiveSession,
    SendHello,
    TransferReport,
    parse_send,
    plan,
)
from .sockopts import set_buffer_bytes

__all__ = ["DataServer", "OpHandler", "message_stream"]

log = logging.getLogger("dwcp.server")

PAGE_HASHES_PER_FRAME = 1 << 20  # 8 MiB of hashes per frame
# A control stream's handler, by the op its HELLO names (DataServer.register):
# (stream, transfer id, HELLO, verified identity or None on plaintext, peer name)
OpHandler = Callable[[FrameSocket, int, dict, "str | None", str], None]


def message_stream(frame_type: int, deliver: Callable[[dict, str | None], None]) -> OpHandler:
    """A handler for a long-lived stream of ``frame_type`` messages (consensus): each goes to
    ``deliver(message, identity)`` until the peer closes the stream."""

    def serve(fs: FrameSocket, transfer_id: int, hello: dict, identity: str | None, peer: str) -> None:
        fs.sock.settimeout(None)  # quiet while the cluster is
        while (got := fs.recv_control(frame_type)) is not None:
            deliver(got[1], identity)

    return serve


MAX_HELLO_BYTES = 64 << 10  # a HELLO is a few hundred bytes of JSON: an unauthenticated peer gets no more
_ADMISSION_LOG_S = 10.0  # at most one log line per this many seconds about refused/evicted connections
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and keeps no TIME_WAIT
# an admission reason (admission.REASONS) -> what was full, and the setting that bounds it
_LIMIT_NAMES = {"per_source": "its source's unauthenticated slots", "unauthenticated": "the unauthenticated pool",
                "max_connections": "every connection slot"}  # fmt: skip
_SETTINGS = {"per_source": "max_unauthenticated_per_source", "unauthenticated": "max_unauthenticated",
             "max_connections": "max_connections"}  # fmt: skip


@dataclass(eq=False)
class _Transfer:
    """A transfer's I/O side: its session decides (dwcp.transport.session), this holds what the driver moves."""

    s: ReceiveSession
    partial: Partial
    base: memoryview | None  # the plan's baseline, mapped (deltas decode against it)
    token: str  # what the sender's data streams must present
    peer: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    streams: set[FrameSocket] = field(default_factory=set)
    closed: bool = False  # the control stream is ending the transfer: no stream may join

    def __post_init__(self) -> None:
        self.quiet = threading.Condition(self.lock)  # notified as data streams leave

    @property
    def transfer_id(self) -> int:
        return self.s.hello.transfer_id

    @property
    def key(self) -> str:
        return self.s.hello.key

    @property
    def size(self) -> int:
        return self.s.hello.size

    @property
    def chunk_size(self) -> int:
        return self.s.chunk_size

    @property
    def sealed(self) -> bool:
        """Its data streams seal their records after HELLO (dwcp.security.aead): WELCOME kept the cap."""
        return "sealed" in self.s.hello.caps


def _hostport_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Forwarder(threading.Thread):
    """Relay or replicate: send a transfer's object on to the next hop while it arrives, chunk by chunk.

    Reads the .part through its own mapping, opened before any chunk lands (the inode becomes the
    version at commit, so the mapping stays valid even after this receiver answered DONE), and hands
    each chunk to the next hop only once it is stored and verified here (``Partial.wait_chunk``).

    A relay (HELLO's ``forward`` without ``ack``) has one hop and fails with it.  A replication chain
    (``ack`` set) names hops in order: the object goes to the first, which forwards it along the rest;
    a hop that fails is skipped and the object goes to the one after it (HDFS's pipeline recovery), so
    ``hops`` ends up with every downstream hop's outcome: the ones this forwarder tried, then what the
    hop that stored it reported of the hops after it.
    """

    def __init__(self, server: DataServer, t: _Transfer, req: SendHello) -> None:
        import mmap

        super().__init__(name=f"dwcp-relay-{t.transfer_id:x}", daemon=True)
        assert req.forward_to is not None
        self.server, self.t, self.digest, self.ack, self.origin = (
            server,
            t,
            req.digest,
            req.forward_ack,
            req.origin,
        )
        self.chain = [_hostport_text(h, p) for h, p in (req.forward_to, *req.forward_then)]
        self.to = self.chain[0]
        self.error: str | None = None  # a relay's failure
        self.result: TransferReport | None = None  # the report of the hop that stored it, once verified
        self.hops: list[dict[str, str]] = []  # a chain's outcomes, once done
        self._upstream_gone = False
        fd = os.open(t.partial.part_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._m = mmap.mmap(fd, t.size, prot=mmap.PROT_READ) if t.size else None
        finally:
            os.close(fd)

    def _ready(self, i: int, timeout_s: float) -> bool:
        if self.t.partial.wait_chunk(i, timeout_s):
            return True
        if self.t.closed:  # the upstream transfer ended without this chunk
            self._upstream_gone = True
            raise BrokenResourceError("the upstream transfer ended")
        return False

    def forwarded(self) -> dict[str, Any]:
        """DONE's ``forwarded``: the hop that stored it (or the first, still pending), and a chain's hops."""
        r = self.result
        out: dict[str, Any] = {"to": r.to if r is not None else self.to, "seconds": r.seconds if r else 0,
                               "wire_bytes": r.wire_bytes if r else 0, "mode": r.mode if r else "pending"}  # fmt: skip
        if self.ack is not None:
            out["hops"] = (
                list(self.hops)
                if not self.is_alive()
                else [{"to": h, "state": "pending"} for h in self.chain]
            )
        return out

    def run(self) -> None:
        from .sender import Sender

        cfg = self.server.config
        try:
            # the upstream's chunk size: chunk i here must be chunk i of the partial it waits on
            tp = replace(cfg.transport, chunk_size_bytes=self.t.chunk_size)
            snd = Sender(tp, cfg.security, node_id=cfg.node.id, events=self.server.events, codec=cfg.codec,
                         dictionaries=self.server.dictionaries)  # fmt: skip
            for i, to in enumerate(self.chain):
                rest = self.chain[i + 1 :]
                nxt = (
                    Forward(rest[0], tuple(rest[1:]), max(0, (self.ack or 0) - 1))
                    if rest and self.ack is not None
                    else None
                )
                host, _, port = to.rpartition(":")
                try:
                    r = snd.send(self._m if self._m is not None else b"", host.strip("[]"), int(port), self.t.key,
                                 digest=self.digest, ready=self._ready, forward_to=nxt, origin=self.origin)  # fmt: skip
                except Exception as exc:
                    if self.ack is None or self._upstream_gone:
                        raise
                    why = f"{type(exc).__name__}: {exc}"[:500]
                    self.hops.append({"to": to, "state": "failed", "error": why})
                    log.warning("replicating %s to %s failed (%s); %s", self.t.key, to, why,
                                f"on to {rest[0]}" if rest else "no hop left")  # fmt: skip
                    continue
                self.result = r
                self.hops.append({"to": to, "state": "stored"})
                self.hops += (r.relayed or {}).get("hops", [])
                break
        except Exception as exc:  # reported to the upstream sender in the DONE/ERROR
            self.error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("relay of %s to %s failed: %s", self.t.key, self.to, self.error)
        finally:
            if self._m is not None:
                close_mapping(self._m)


def _limits(config: Config) -> Limits:
    lc = config.listen
    return Limits(lc.max_connections, lc.unauthenticated_limit, lc.max_unauthenticated_per_source)


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic()); TimeoutError when it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class DataServer:
    def __init__(self, config: Config, *, store: ObjectStore | None = None,
                 events: TransferEvents | None = None) -> None:  # fmt: skip
        self.config = config
        self.events = events if events is not None else NO_EVENTS
        # op -> handler of a control stream's HELLO (`register`); data streams join transfers
        self._ops: dict[str, OpHandler] = {"send": self._control, "fetch": self._fetch}
        # (key, digest, size, HELLO's origin) once stored; an answer is why the version is refused
        # after all (a conflict under cluster.conflicts = "reject"): the sender gets ERR_CONFLICT
        self.on_commit: Callable[[str, bytes, int, dict | None], str | None] | None = None
        self.store = (
            store
            if store is not None
            else ObjectStore(config.storage.data_dir, keep_versions=config.storage.keep_versions)
        )
        self._ssl: ssl.SSLContext | None = None
        if not config.security.plaintext:
            from dwcp.security.tls import TLSConfig, server_context

            self._ssl = server_context(
                TLSConfig(ca_cert=config.security.ca_cert, cert=config.security.cert, key=config.security.key)
            )
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[
            int, socket.socket
        ] = {}  # admitted conn id -> its socket now (TLS-wrapped once wrapped)
        self._admission = Admission(_limits(config))  # under self._lock
        self._admission_log = [0.0, 0]  # (when the last line was logged, events since): rule 4
        self._transfers: dict[int, _Transfer] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._draining = False
        self._idle = threading.Condition(self._lock)  # notified whenever a transfer ends
        self.engine: Engine | None = None  # the receive engine, from start()
        self.decoder = ChunkDecoder(CodecConfig())
        # trained dictionaries, and those peers sent (kept: each travels once); read at the first send
        # that names one
        self.dictionaries = DictionaryStore(config.dictionaries_dir)
        self.encoder = self._fetch_encoder(config)
        self._stats_lock = threading.Lock()
        self.stats = {"connections_total": 0, "protocol_errors_total": 0, "tls_failures_total": 0,
                      "transfers_ok_total": 0, "transfers_failed_total": 0, "chunks_nacked_total": 0,
                      "chunks_received_total": 0, "bytes_wire_total": 0, "bytes_raw_total": 0}  # fmt: skip
        self.stats.update(refused_acl_total=0, refused_relay_total=0)  # security.acl, security.relay_allow
        self.stats.update(dictionaries_received_total=0, transfers_conflict_total=0)
        self.stats.update(
            {f"{what}_{r}_total": 0 for what in ("refused", "evicted") for r in REASONS},
            handshake_timeouts_tls_total=0,
            handshake_timeouts_hello_total=0,
            header_timeouts_total=0,
        )

    def _count(self, name: str, n: int) -> None:
        # stream threads update these concurrently: `+=` on a dict entry is a
        # read-modify-write that can lose updates between threads
        with self._stats_lock:
            self.stats[name] += n

    def stats_snapshot(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.stats)

    @property
    def unauthenticated(self) -> int:
        """Connections admitted and not authenticated yet (a gauge)."""
        with self._lock:
            return self._admission.pending

    # -- lifecycle -------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        return self._sock.getsockname()[:2]

    def start(self) -> tuple[str, int]:
        lc = self.config.listen
        fam = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
        tc = self.config.transport
        # registered slots are pinned memory, worth it for WRITE_FIXED; a tmpfs .part is pwritten in the
        # loop instead (pump.h), so there they would only add to the daemon's resident set
        tmpfs = fs_type(str(self.config.storage.data_dir)) == "tmpfs"
        engine = start_engine(tc.engine, tc.engine_slots, loops=tc.engine_loops, register=not tmpfs)
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((lc.host, lc.data_port))
            except OSError as exc:
                raise bind_error("listen.data_port", lc.host, lc.data_port, exc) from exc
            s.listen(min(lc.max_connections, 1024))
        except BaseException:
            s.close()
            engine.close()
            raise
        cpus: tuple[int, ...] | None
        if tc.engine_cpus:
            cpus, why = tuple(tc.engine_cpus), "transport.engine_cpus"
        elif engine.pumps:
            cpus, why = read_receive_cpus(lc.host)
        else:
            cpus, why = None, "no loops: each stream's thread receives"
        engine.pin(cpus, "the receive", why)
        log.info("receive engine: %s (%s)", engine.kind, engine.reason)
        self.engine = engine
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, name="dwcp-accept", daemon=True)
        self._thread.start()
        log.info(
            "data port listening on %s:%d (%s)", *self.address, "plaintext" if self._ssl is None else "mTLS"
        )
        return self.address

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            conns = list(self._conns.values())
        for c in conns:
            _shutdown(c)
        if self._thread is not None:
            self._thread.join(5)
        if self.engine is not None:
            self.engine.close()  # a payload still in the pump ends its stream (ClosedResourceError)

    def register(self, op: str, handler: OpHandler) -> None:
        """Serve control streams whose HELLO names ``op`` with ``handler`` (consensus, cluster probes...).

        ``handler(fs, transfer_id, hello, identity, peer)`` owns the stream until it returns: ``identity``
        is the peer's verified certificate identity (None on a plaintext port), ``peer`` the name it is
        logged and judged by (``identity`` or ``plaintext:ADDR``).  A later registration of the same
        op replaces the earlier one (a restarted driver); "send" and "fetch" are the server's own.
        """
        if op in ("send", "fetch"):
            raise ValueError(f"op {op!r} is the data server's own")
        self._ops[op] = handler

    @staticmethod
    def _fetch_encoder(config: Config) -> ChunkEncoder:
        """The encoder of fetches: the [codec] zstd level (or its bounds), transport.compress_workers at once."""
        return ChunkEncoder(CodecConfig.from_settings(config.codec, link_rate_bytes_per_s=1e11,
                                                      compress_workers=config.transport.encode_workers))  # fmt: skip

    def reconfigure(self, config: Config) -> None:
        """Run new transfers and connections with ``config`` (a reload's live settings)."""
        if (config.codec, config.transport.encode_workers) != (
            self.config.codec,
            self.config.transport.encode_workers,
        ):
            self.encoder = self._fetch_encoder(config)
        self.config = config

    def drain(self, timeout_s: float) -> int:
        """Refuse new transfers (ERR_UNAVAILABLE) and wait up to ``timeout_s`` for the running ones.

        Returns how many were still running at the deadline; closing the
        server then leaves their partials checkpointed for a resume.
        """
        import time

        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._draining = True
            while self._transfers:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(left)
            return len(self._transfers)

    @property
    def draining(self) -> bool:
        return self._draining

    def __enter__(self) -> DataServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def transfers(self) -> list[dict]:
        with self._lock:
            ts = list(self._transfers.values())
        now = time.monotonic()
        return [{"transfer_id": t.transfer_id, "key": t.key, "mode": t.s.plan.mode, "size": t.size, "peer": t.peer,
                 "chunks_received": t.s.chunks_received, "streams": len(t.streams), "age_s": now - t.s.started}
                for t in ts]  # fmt: skip

    # -- accepting -------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                if self._closing:
                    return
                continue
            accepted = time.monotonic()
            with self._lock:
                self._admission.limits = _limits(self.config)  # a reload's limits apply from the next accept
                self._mark_spoken()
                v = self._admission.admit(source_key(addr[0]))
                if v.conn is not None:
                    self._conns[v.conn] = conn
                if v.evicted is not None:
                    # silent: its thread still waits for a first byte on the plain socket; it closes that
                    # socket only after leaving _conns under this lock, so the fd is still this connection's
                    _shutdown(self._conns[v.evicted])
            if v.conn is None:
                self._count(f"refused_{v.reason}_total", 1)
                self._log_admission("refused", addr, v.reason)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                conn.close()
                continue
            if v.evicted is not None:
                self._count(f"evicted_{v.reason}_total", 1)
                self._log_admission("evicted the oldest silent connection for", addr, v.reason)
            self._count("connections_total", 1)
            threading.Thread(target=self._serve, args=(conn, addr, v.conn, accepted), name=f"dwcp-conn-{addr[1]}",
                             daemon=True).start()  # fmt: skip

    def _mark_spoken(self) -> None:
        """Tell the admission which silent connections have bytes waiting (under self._lock).

        Asked of the kernel, not of their threads: a thread that has not run
        yet must not cost a client that spoke its slot.
        """
        silent = self._admission.silent()
        if not silent:
            return
        poller = select.poll()
        fds = {}
        for c in silent:
            fd = self._conns[c].fileno()
            if fd >= 0:
                fds[fd] = c
                poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            self._admission.spoke(fds[fd])

    def _log_admission(self, what: str, addr, reason: str) -> None:
        """One line about a refused or evicting connection, at most every _ADMISSION_LOG_S (rule 4)."""
        now = time.monotonic()
        with self._stats_lock:
            last, n = self._admission_log
            if last and now - last < _ADMISSION_LOG_S:
                self._admission_log[1] = n + 1
                return
            self._admission_log[:] = [now, 0]
        more = f"; {n} more refused or evicting in the {now - last:.0f} s before" if n else ""
        log.warning("%s %s:%s: %s full (listen.%s)%s", what, addr[0], addr[1], _LIMIT_NAMES[reason],
                    _SETTINGS[reason], more)  # fmt: skip

    def _serve(self, conn: socket.socket, addr, cid: int, accepted: float) -> None:
        fs: FrameSocket | None = None
        peer_name = f"plaintext:{addr[0]}"
        lc = self.config.listen
        deadline = accepted + lc.handshake_timeout_s
        stage = "tls" if self._ssl is not None else "hello"
        authenticated = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.transport.socket_buffer_bytes:
                # after accept: the listener keeps autotuning, so the SYN-ACK's window scale is sized for
                # tcp_rmem's maximum (and a reload back to 0 needs nothing undone)
                set_buffer_bytes(conn, self.config.transport.socket_buffer_bytes)
            conn.settimeout(_left(deadline))
            if not conn.recv(1, socket.MSG_PEEK):
                return  # the client left without a word, or we evicted it (shutdown)
            with self._lock:
                if not self._admission.spoke(cid):
                    return  # evicted just before its first byte arrived
            if self._ssl is not None:
                conn = self._ssl.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                with self._lock:
                    self._conns[cid] = conn
                conn.settimeout(_left(deadline))
                try:
                    conn.do_handshake()  # one deadline for the whole handshake, however the bytes trickle
                except TimeoutError:
                    raise
                except (ssl.SSLError, OSError) as exc:
                    self._count("tls_failures_total", 1)
                    log.warning("TLS handshake with %s:%s refused: %s", addr[0], addr[1], exc)
                    return
                from dwcp.security.tls import peer_identity

                peer = peer_name = peer_identity(conn)
            else:
                peer = peer_name
            stage = "hello"
            fs = FrameSocket(
                conn, timeout_s=self.config.transport.idle_timeout_s, header_timeout_s=lc.header_timeout_s
            )
            fs.deadline = deadline
            got = fs.recv_control(C.FRAME_HELLO, max_len=MAX_HELLO_BYTES)
            fs.deadline = None
            if got is None:
                return
            h, hello = got
            if h.frame_type != C.FRAME_HELLO:
                raise RemoteProtocolError("connection must start with HELLO", C.ERR_BAD_FRAME_TYPE)
            if hello["v"] != PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    f"{self.config.node.id} speaks dwcp protocol {PROTOCOL_VERSION}, the peer {hello['v']}: "
                    f"upgrade dwcp on the older side (protocol 2 changed what an object's digest is)",
                    C.ERR_BAD_VERSION)  # fmt: skip
            # a data stream's credential is its transfer's token: a bad one is refused before it counts
            t = self._joined_transfer(h.transfer_id, hello, peer) if hello["role"] == "data" else None
            with self._lock:
                self._admission.authenticated(cid)
            authenticated = True
            if t is not None:
                secret = hello.get("seal")
                if t.sealed != (secret is not None):
                    raise RemoteProtocolError(f"transfer {t.transfer_id:x} is {'' if t.sealed else 'not '}sealed; "
                                              f"this data stream's HELLO {'lacks' if t.sealed else 'has'} a secret",
                                              C.ERR_BAD_FIELD)  # fmt: skip
                if secret is not None:
                    fs.seal(bytes.fromhex(secret), t.transfer_id, sender=False)
                    with self._lock:  # the same descriptor in a plain socket object: close() shuts that one
                        if cid in self._conns:
                            self._conns[cid] = fs.sock
                self._data(fs, t)
            else:
                handler = self._ops.get(hello.get("op", ""))
                if handler is None:
                    raise RemoteProtocolError(f"{self.config.node.id} does not serve op {hello.get('op')!r}",
                                              C.ERR_BAD_FIELD)  # fmt: skip
                handler(fs, h.transfer_id, hello, peer if self._ssl is not None else None, peer)
        except RemoteProtocolError as exc:
            if isinstance(exc, HeaderTimeoutError):
                self._count("header_timeouts_total", 1)
            self._count("protocol_errors_total", 1)
            self.events.protocol_error(peer_name, exc.code)
            log.warning("protocol error from %s:%s: %s (code %d); closing", addr[0], addr[1], exc, exc.code)
            if fs is not None:
                self._send_error(fs, exc.code, str(exc))
        except TimeoutError as exc:
            if authenticated:
                log.info("connection from %s:%s ended: %s", addr[0], addr[1], exc)
            else:
                self._count(f"handshake_timeouts_{stage}_total", 1)
                log.info("closing %s:%s: no %s %.1f s after accept (listen.handshake_timeout_s)", addr[0], addr[1],
                         "TLS handshake" if stage == "tls" else "HELLO", time.monotonic() - accepted)  # fmt: skip
        except (BrokenResourceError, OSError) as exc:
            log.info("connection from %s:%s ended: %s", addr[0], addr[1], exc)
        except Exception:  # a bug must not take the server down; it is logged loudly
            log.exception("internal error serving %s:%s", addr[0], addr[1])
            if fs is not None:
                self._send_error(fs, 0, "internal error")
        finally:
            with self._lock:  # first: the accept loop touches only sockets still in _conns (see there)
                self._conns.pop(cid, None)
                self._admission.closed(cid)
            if fs is not None:
                fs.close()  # the socket, and the pipe a plaintext stream splices through
            else:
                try:
                    conn.close()
                except OSError:
                    pass

    @staticmethod
    def _linger(fs: FrameSocket, timeout_s: float = 2.0) -> None:
        """Close our side and read until the peer closes (at most ``timeout_s``).

        A sender streaming chunks has bytes in flight: closing with them unread
        makes the kernel answer with a reset, and a reset can overtake the
        ERROR frame just sent, so the sender would never read why.
        """
        deadline = time.monotonic() + timeout_s
        try:
            fs.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                fs.sock.settimeout(left)
                if not fs.sock.recv(1 << 16):
                    return
        except OSError:
            pass

    @staticmethod
    def _send_error(fs: FrameSocket, code: int, message: str) -> None:
        try:
            fs.sock.settimeout(1.0)
            fs.send(encode_control(C.FRAME_ERROR, 0, {"code": code, "message": message[:1000]}))
        except (OSError, DWCPError):
            pass

    # -- control stream: one transfer ------------------------------------
    def _control(
        self, fs: FrameSocket, transfer_id: int, hello: dict, identity: str | None, peer: str
    ) -> None:
        t0 = time.perf_counter()
        rep: dict[str, Any] = {"outcome": "failed", "size": 0, "wire": 0}
        try:
            self._control_transfer(fs, transfer_id, hello, peer, rep)
        except StorageError as exc:  # the disk: the sender hears the reason, the log has it once
            rep["outcome"] = "failed"
            self._count("transfers_failed_total", 1)
            log.error("send of %s from %s failed: %s", hello.get("key"), peer, exc)
            self._send_error(fs, C.ERR_STORAGE, str(exc))
        except BaseException:
            rep["outcome"] = "failed"
            raise
        finally:
            self.events.transfer_finished("rx", peer, rep["outcome"], time.perf_counter() - t0, rep["size"],
                                          rep["wire"])  # fmt: skip

    def _refuse(self, fs: FrameSocket, rep: dict, code: int, why: str, reason: str | None = None) -> None:
        """Answer a send or fetch with ERROR ``code`` before anything is stored or read."""
        rep["outcome"] = "refused"
        if reason is not None:  # counted first: whoever reads the answer finds it counted
            self._count("refused_" + reason + "_total", 1)
            self.events.access_refused(reason)
        log.info("refused: %s (code %d)", why, code)
        self._send_error(fs, code, why)

    def _allowed(self, peer: str, key: str, right: str) -> bool:
        return self.config.security.allows(peer, key, right)

    def _control_transfer(self, fs: FrameSocket, transfer_id: int, hello: dict, peer: str, rep: dict) -> None:
        """One send's control stream; ``rep`` gets its outcome (see events.OUTCOMES) and sizes."""
        req = parse_send(transfer_id, hello)
        if "sealed" in req.caps and not self._seals(fs):  # WELCOME's caps tell the sender we did not agree
            req = dataclasses.replace(req, caps=req.caps - {"sealed"})
        key = req.key
        if not self._allowed(peer, key, "write"):
            return self._refuse(fs, rep, C.ERR_FORBIDDEN, f"{peer} is not allowed to write {key!r} on "
                                f"{self.config.node.id} (no security.acl rule grants it)", "acl")  # fmt: skip
        for hop in (req.forward_to, *req.forward_then) if req.forward_to is not None else ():
            if not self._relay_target_ok(*hop):
                return self._refuse(fs, rep, C.ERR_FORBIDDEN, f"{key}: will not relay to {_hostport_text(*hop)}: "
                                    "not a [cluster] peer nor in security.relay_allow", "relay")  # fmt: skip
        if self._draining:
            return self._refuse(fs, rep, C.ERR_UNAVAILABLE, f"{self.config.node.id} is shutting down; send {key} "
                                "elsewhere or later")  # fmt: skip
        limit = self.config.storage.max_object_bytes
        if limit and req.size > limit:
            return self._refuse(fs, rep, C.ERR_TOO_LARGE, f"{key}: {req.size} bytes is more than this node's "
                                f"storage.max_object_bytes ({limit})")  # fmt: skip
        with self._lock:
            if transfer_id in self._transfers:
                raise RemoteProtocolError(f"transfer id {transfer_id} is already in use", C.ERR_BAD_FIELD)
        proposed = self.store.get(key, req.base_digest) if req.base_digest is not None else None
        latest = self.store.latest(key)
        p = plan(req, holds_proposed=proposed is not None and proposed.size == req.size,
                 latest=(latest.digest, latest.size) if latest is not None else None,
                 resume_chunk_size=self.store.partial_chunk_size(key, req.digest, req.size))  # fmt: skip
        if p.why_chunk_size:
            log.info("send of %s: %d-byte chunks (sender proposed %d): %s", key, p.chunk_size, req.chunk_size,
                     p.why_chunk_size)  # fmt: skip
        base_info = None if p.base_digest is None else self.store.get(key, p.base_digest)
        # a delta/pages transfer seeds the partial from the base (which allocates
        # the space, and fails as early on a full disk): no separate fallocate
        try:
            partial = self._begin(req, p.chunk_size, peer, preallocate=base_info is None)
        except KeyBusyError as exc:
            return self._refuse(fs, rep, C.ERR_BUSY, str(exc))
        t = None
        try:
            bad = partial.verify_resumed()
            if bad:
                log.warning("%s: %d resumed chunks failed re-verification and will be resent", key, len(bad))
            if base_info is not None and partial.resumed == 0 and req.size:
                partial.seed_from(base_info)
            held_dict = None
            if req.dictionary is not None:
                held_dict = self.dictionaries.get(req.dictionary.id, req.dictionary.digest)
            sess = ReceiveSession(req, p, held=partial.have, zero_filled=partial.seeded_from is None,
                                  seeded=p.base_digest is not None and partial.seeded_from == p.base_digest,
                                  now=time.monotonic(), dictionary=held_dict)  # fmt: skip
            base = memoryview(self.store.open_version(base_info)) if base_info is not None else None
            t = _Transfer(sess, partial, base, secrets.token_hex(32), peer)
            with self._lock:
                self._transfers[transfer_id] = t
            fs.send(encode_control(C.FRAME_WELCOME, transfer_id, sess.welcome(t.token, self.config.node.id)))
            log.info("transfer %x: %s from %s, %d bytes, mode %s, %d chunks already held%s",
                     transfer_id, key, peer, req.size, p.mode, sess.held_count,
                     "" if sess.zero_filled or sess.seeded else " (over another version's bytes)")  # fmt: skip
            if p.mode == "pages":
                assert base is not None
                hashes = _k.page_hashes(base, C.PAGE_SIZE)
                step = PAGE_HASHES_PER_FRAME * 8
                for i in range(0, len(hashes), step):
                    fs.send(encode_page_hashes(transfer_id, i // 8, hashes[i : i + step]))
            if sess.needs_dict:
                self._receive_dictionary(fs, sess)
            fwd = self._start_forwarder(t, req) if req.forward_to is not None else None
            # The control stream is quiet while the data streams work: a silent control stream is
            # only idle if the transfer made no progress either.  A failure of the transfer (the
            # disk, a takeover) is answered here, where the sender waits for DONE.
            idle = self.config.transport.idle_timeout_s
            while True:
                if sess.failure is not None:
                    self._count("transfers_failed_total", 1)
                    self._send_error(fs, *sess.failure)
                    rep.update(wire=sess.wire_bytes)
                    return
                if fs.readable(0.5):
                    got = fs.recv_control(C.FRAME_DONE, C.FRAME_CLOSE)
                    break
                if sess.idle_for(time.monotonic()) > idle:
                    raise TimeoutError(
                        f"transfer {transfer_id:x} of {key}: no DONE and no chunk for {idle:.0f} s"
                    )
            if got is None or got[0].frame_type != C.FRAME_DONE:
                log.info("transfer %x of %s: sender went away; partial kept for resume", transfer_id, key)
                rep.update(outcome="interrupted", wire=sess.wire_bytes)
                return
            sess.on_done()
            try:
                info = partial.commit()
            except IntegrityError as exc:
                sess.fail(exc.code, f"{key}: {exc}")
                self._count("transfers_failed_total", 1)
                self._send_error(fs, exc.code, f"{key}: {exc}")
                log.error("transfer %x of %s failed verification: %s", transfer_id, key, exc)
                rep.update(outcome="integrity", wire=sess.wire_bytes)
                return
            except StorageError as exc:
                sess.fail(C.ERR_STORAGE, str(exc))
                raise
            sess.stored()
            self._count("transfers_ok_total", 1)
            rep.update(outcome="ok", size=info.size, wire=sess.wire_bytes)
            refused = (
                self.on_commit(key, info.digest, info.size, req.origin)
                if self.on_commit is not None
                else None
            )
            if refused is not None:
                self._count("transfers_conflict_total", 1)
                self._send_error(fs, C.ERR_CONFLICT, refused)
                log.warning(
                    "transfer %x: %s stored, then refused by the catalog: %s", transfer_id, key, refused
                )
                rep.update(outcome="refused")
                return
            done: dict[str, Any] = {
                "ok": True,
                "digest": info.digest.hex(),
                "size": info.size,
                "chunks": sess.nchunks,
            }
            if fwd is not None and fwd.ack is None:  # a relay answers once the next hop holds it too
                fwd.join()
                if fwd.error is not None:
                    self._send_error(fs, C.ERR_UNAVAILABLE, f"{key}: stored here, but relaying to {fwd.to} failed: "
                                                            f"{fwd.error}")  # fmt: skip
                    return
                done["forwarded"] = fwd.forwarded()
            elif fwd is not None:  # a replication chain: once `ack` hops hold it (0: now), with who does
                if fwd.ack:
                    fwd.join()
                done["forwarded"] = fwd.forwarded()
            fs.send(encode_control(C.FRAME_DONE, transfer_id, done))
            log.info(
                "transfer %x: %s committed (%d bytes, %s)", transfer_id, key, info.size, info.digest.hex()
            )
        finally:
            if t is not None:
                with self._lock:
                    t.closed = True
                for s in list(t.streams):
                    try:
                        s.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                # no stream thread may touch the partial once it is closed: its descriptors could be
                # reused by the next attempt's partial before a late write lands
                with t.lock:
                    t.quiet.wait_for(lambda: not t.streams, self.config.transport.stall_timeout_s)
                if t.base is not None:
                    t.base.release()
            try:
                partial.abort(keep=True)  # no-op after a commit
            except DWCPError:
                pass
            if t is not None:  # listed until its lease is gone: a new attempt finds whom it waits for
                with self._lock:
                    self._transfers.pop(transfer_id, None)
                    self._idle.notify_all()

    def _begin(self, req: SendHello, chunk_size: int, peer: str, *, preallocate: bool) -> Partial:
        """The key's write lease and partial; a stale attempt of the same send by the same peer is taken over.

        A sender that lost its connections (a silent partition: no FIN, no RST) retries while the
        receiver still waits on the first attempt; that attempt's sender has given up, so the new
        one ends it and resumes its partial.  Anyone else is told who holds the key and until when.
        """
        key, digest, size = req.key, req.digest, req.size
        try:
            return self.store.begin(key, digest, size, chunk_size, preallocate=preallocate)
        except KeyBusyError:
            with self._lock:
                holder = next((t for t in self._transfers.values() if t.key == key), None)
            if holder is None:
                raise
            now = time.monotonic()
            if not holder.closed:  # (one that is closing gives its lease up within moments)
                hs = holder.s
                if holder.peer != peer or hs.hello.digest != digest:
                    left = max(0.0, self.config.transport.idle_timeout_s - hs.idle_for(now))
                    raise KeyBusyError(
                        f"key {key!r} is busy: {holder.peer} has been sending version {hs.hello.digest.hex()} for "
                        f"{now - hs.started:.0f} s; unless it progresses it is given up in {left:.0f} s; "
                        "retry then"
                    ) from None
                log.warning("transfer %x of %s: taken over by a new attempt of the same send from %s (quiet for "
                            "%.1f s)", holder.transfer_id, key, peer, hs.idle_for(now))  # fmt: skip
                hs.fail(C.ERR_BUSY, f"{key}: taken over by a newer attempt of the same send")
                for s in list(holder.streams):
                    try:
                        s.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            deadline = now + self.config.transport.stall_timeout_s
            while True:
                try:
                    return self.store.begin(key, digest, size, chunk_size, preallocate=preallocate)
                except KeyBusyError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def _seals(self, fs: FrameSocket) -> bool:
        """Whether this transfer's data streams may seal their records: a TLS control stream, the
        config's ``security.data_records = "sealed"``, and AES-GCM loaded here."""
        return fs.tls and self.config.security.data_records == "sealed" and aead.available()[0]

    def _relay_target_ok(self, host: str, port: int) -> bool:
        """A relayed send may name a [cluster] peer or a security.relay_allow entry, nothing else."""
        allowed = [p.address for p in self.config.cluster.peers] + list(self.config.security.relay_allow)
        for a in allowed:
            h, _, pt = a.rpartition(":")
            if h.strip("[]").lower() == host.lower() and pt == str(port):
                return True
        return False

    def _start_forwarder(self, t: _Transfer, req: SendHello) -> _Forwarder:
        fwd = _Forwarder(self, t, req)
        fwd.start()
        log.info("transfer %x: %s %s on to %s as it lands", t.transfer_id, "relaying" if fwd.ack is None else
                 "replicating", t.key, " -> ".join(fwd.chain))  # fmt: skip
        return fwd

    # -- data streams ----------------------------------------------------
    def _joined_transfer(self, transfer_id: int, hello: dict, peer: str) -> _Transfer:
        """The running transfer a data stream's HELLO names, with its token, from the same peer."""
        with self._lock:
            t = self._transfers.get(transfer_id)
        token = hello.get("token", "")
        if t is None or t.peer != peer or not token.isascii() or not hmac.compare_digest(t.token, token):
            raise RemoteProtocolError(f"data stream for unknown transfer {transfer_id:x}", C.ERR_BAD_FIELD)
        return t

    def _data(self, fs: FrameSocket, t: _Transfer) -> None:
        with t.lock:
            if t.closed:
                return
            t.streams.add(fs)
        try:
            self._data_loop(fs, t)
        finally:
            with t.lock:
                t.streams.discard(fs)
                t.quiet.notify_all()

    def _receive_dictionary(self, fs: FrameSocket, sess: ReceiveSession) -> None:
        """The dictionary WELCOME asked for: the control stream's next frame (session rule 13)."""
        ref = sess.hello.dictionary
        assert ref is not None
        got = fs.recv_control(C.FRAME_DICT, max_len=ref.size)
        if got is None:
            raise BrokenResourceError(f"{sess.hello.key}: sender closed before the dictionary it announced")
        h, payload = got
        if h.frame_type == C.FRAME_ERROR:
            raise RemoteProtocolError(f"sender gave up: {payload.get('message')}", payload.get("code", 0))
        sess.check_dict_frame(h)
        d = self.dictionaries.receive(ref.id, ref.digest, ref.size, payload)
        sess.dictionary_arrived(d)
        self._count("dictionaries_received_total", 1)
        log.info("dictionary %d (%d bytes) received with %s, kept", d.id, len(d.data), sess.hello.key)

    def _data_loop(self, fs: FrameSocket, t: _Transfer) -> None:
        sess, partial = t.s, t.partial
        scratch = bytearray()
        chunk_buf = bytearray(sess.chunk_size)
        pump = self.engine.pick() if self.engine is not None else None  # this stream's loop
        # without a loop, plain RAW chunks pass through this stream's own slot a block at a time
        slot = bytearray(min(LEAF_BYTES, sess.chunk_size)) if pump is None else None
        idle = fs.sock.gettimeout()
        while not t.closed and sess.failure is None:
            fs.sock.settimeout(idle)  # between frames a data stream may be quiet for idle_timeout_s
            h = fs.recv_header()
            if h is None:
                return
            # inside a frame it must keep moving: a stream stalled mid-chunk (e.g. TCP in RTO
            # backoff) holds that chunk's claim, and the sender's resend on another stream gets
            # "busy" until this read gives up -- so give up after the stall timeout, not the idle one
            fs.sock.settimeout(self.config.transport.stall_timeout_s)
            if h.frame_type == C.FRAME_CLOSE:
                fs.skip_payload(h)
                return
            verdict, idx = sess.admit(h)
            if verdict != ADMIT_CLAIMED:
                # a resend of a chunk we hold (ack it again) or are receiving on another stream (busy)
                fs.skip_payload(h)
                if verdict == ADMIT_HELD:
                    fs.send(encode_control(C.FRAME_ACK, t.transfer_id, {"chunks": [idx]}))
                else:
                    fs.send(encode_control(C.FRAME_NACK, t.transfer_id, {"chunk": idx, "reason": "busy"}))
                continue
            try:
                off, ln = sess.span(idx)
                out = memoryview(chunk_buf)[:ln]
                written = False
                if h.codec == C.CODEC_RAW:
                    if fs.can_recv_direct and ln:
                        # plain TCP or sealed records: socket -> slot -> file a block at a time, each block
                        # hashed while in cache (the native engine, GIL released): no chunk byte enters a
                        # Python object
                        try:
                            blocks, chash = fs.recv_blocks_into(partial.fileno(), off, ln, slot, pump)
                        except StorageError as exc:
                            raise StorageError(f"cannot write {t.key!r}: {exc}") from exc
                        written = True
                    else:
                        fs.recv_into_exact(out)  # straight into the reusable chunk buffer
                        chash, blocks = chunk_hash(out)
                    if chash != h.raw_hash:
                        raise IntegrityError(f"chunk {idx} fails its chunk hash check", C.ERR_CHECKSUM)
                else:
                    if len(scratch) < h.enc_len:
                        scratch = bytearray(h.enc_len)
                    pmv = memoryview(scratch)[: h.enc_len]
                    fs.recv_into_exact(pmv)
                    base = (
                        t.base[off : off + ln] if h.codec in C.DELTA_CODECS and t.base is not None else None
                    )
                    decoded: list[bytes] = []  # the decoder verifies the chunk hash and gives its blocks
                    self.decoder.decode(
                        h, pmv, base=base, out=out, dictionary=sess.dictionary, blocks_out=decoded
                    )
                    blocks = decoded[0]
                # pwrite, not a shared mapping: writing fresh file pages through
                # mmap faults per 4 KiB and is ~20x slower (see storage.Partial.view)
                how = sess.write_mode(h.codec)
                # WRITE_NONZERO_PAGES / WRITE_DIRTY_PAGES: only the pages flagged; the others of the .part
                # already hold the right bytes (zeros of a fresh sparse file, or the baseline it was seeded
                # from); should that assumption ever fail, the object digest at commit refuses the object
                if how == WRITE_NONZERO_PAGES:  # the .part reads as zeros: write the pages that are not
                    partial.write_pages(off, out, _k.nonzero_pages(out, C.PAGE_SIZE))
                elif how == WRITE_DIRTY_PAGES:  # the .part holds the base: write the pages this delta changed
                    assert t.base is not None
                    partial.write_pages(off, out, _k.scan_dirty(t.base[off : off + ln], out, C.PAGE_SIZE))
                elif how == WRITE_ALL and not written:
                    partial.write(idx, out)
                # the digest's leaves, from the chunk hash's blocks: commit reads back none of this chunk
                partial.hashed(off, ln, blocks, None if written else out)
                partial.mark_done(idx, h.raw_hash)
            except IntegrityError as exc:
                sess.rejected(idx)
                self.events.checksum_failure(t.peer)
                self.events.chunk_retransmit("rx", t.peer)
                self._count("chunks_nacked_total", 1)
                log.warning("transfer %x: %s; asking for it again", t.transfer_id, exc)
                fs.send(encode_control(C.FRAME_NACK, t.transfer_id, {"chunk": idx, "reason": str(exc)[:200]}))
                continue
            except StorageError as exc:
                # the disk, not the stream: the whole transfer ends (its control stream tells the
                # sender why), logged once however many streams hit it
                sess.released(idx)
                if sess.fail(C.ERR_STORAGE, str(exc)):
                    log.error("transfer %x of %s from %s: %s", t.transfer_id, t.key, t.peer, exc)
                break
            except BaseException:
                sess.released(idx)
                raise
            sess.landed(idx, time.monotonic())
            self._count("chunks_received_total", 1)
            self._count("bytes_wire_total", C.HEADER_SIZE + h.enc_len)
            self._count("bytes_raw_total", h.raw_len)
            self.events.chunk("rx", t.peer, h.codec, h.raw_len, C.HEADER_SIZE + h.enc_len)
            fs.send(encode_control(C.FRAME_ACK, t.transfer_id, {"chunks": [idx]}))
        if sess.failure is not None:  # every stream of the sender hears it: none retries into a dead transfer
            self._send_error(fs, *sess.failure)
            self._linger(fs)

    # -- fetch: stream the latest version back ----------------------------
    @staticmethod
    def _fetch_resume(hello: dict, size: int, want: str | None) -> tuple[int, bytes]:
        """A resumed fetch's chunk size and held-chunk bitmap, checked against the version it names."""
        cs = hello.get("chunk_size")
        if want is None:
            raise RemoteProtocolError(
                "a resumed fetch (have) must name its version (digest)", C.ERR_BAD_FIELD
            )
        if not isinstance(cs, int) or cs % C.PAGE_SIZE or not min_chunk_size(size) <= cs <= C.MAX_RAW_LEN:
            raise RemoteProtocolError(
                f"a resumed fetch's chunk_size {cs!r} does not fit {size} bytes", C.ERR_BAD_FIELD
            )
        n = -(-size // cs)
        try:
            have = bytes.fromhex(hello["have"])
        except ValueError:
            raise RemoteProtocolError("fetch have is not hex", C.ERR_BAD_FIELD) from None
        if len(have) != -(-n // 8) or (n % 8 and have and have[-1] >> (n % 8)):
            raise RemoteProtocolError(f"fetch have is not a bitmap of {n} chunks", C.ERR_BAD_FIELD)
        return cs, have

    def _fetch(self, fs: FrameSocket, transfer_id: int, hello: dict, identity: str | None, peer: str) -> None:
        try:
            key = validate_key(hello.get("key", ""))
        except InvalidKeyError as exc:
            raise RemoteProtocolError(f"invalid key: {exc}", C.ERR_BAD_FIELD) from None
        if not self._allowed(peer, key, "read"):
            self._refuse(fs, {}, C.ERR_FORBIDDEN, f"{peer} is not allowed to read {key!r} on {self.config.node.id} "
                         "(no security.acl rule grants it)", "acl")  # fmt: skip
            return
        want = hello.get("digest")  # a version by its digest (`dwcp fetch --version`), else the latest
        if want is not None:
            try:
                info = self.store.get(key, bytes.fromhex(want)) if len(want) == 32 else None
            except ValueError:
                raise RemoteProtocolError(
                    f"fetch digest {want[:64]!r} is not 32 hex digits", C.ERR_BAD_FIELD
                ) from None
            if info is None:
                self._send_error(
                    fs, C.ERR_BAD_FIELD, f"{self.config.node.id} holds no version {want} of {key!r}"
                )
                return
        else:
            info = self.store.latest(key)
        if info is None:
            self._send_error(fs, C.ERR_BAD_FIELD, f"no verified version of {key!r} here")
            return
        chunk_size = max(self.config.transport.chunk_size_bytes, min_chunk_size(info.size))
        have = None  # a resumed fetch: the chunks the client holds, at the chunk size it holds them in
        if hello.get("have") is not None:
            chunk_size, have = self._fetch_resume(hello, info.size, want)
        welcome = {"mode": "fetch", "size": info.size, "digest": info.digest.hex(), "chunk_size": chunk_size,
                   "node": self.config.node.id}  # fmt: skip
        if have is not None:
            welcome["resumed_chunks"] = sum(bin(b).count("1") for b in have)
        fs.send(encode_control(C.FRAME_WELCOME, transfer_id, welcome))
        data = memoryview(self.store.open_version(info)) if info.size else memoryview(b"")
        try:
            spans = chunk_spans(info.size, chunk_size)
            for i, (off, ln) in enumerate(spans):
                if have is not None and have[i >> 3] >> (i & 7) & 1:
                    continue
                f = self.encoder.encode(data[off : off + ln], offset=off, transfer_id=transfer_id,
                                        last=i == len(spans) - 1)  # fmt: skip
                fs.send(f.header, f.payload)
            fs.send(encode_control(C.FRAME_DONE, transfer_id, {"ok": True, "digest": info.digest.hex(),
                                                               "size": info.size}))  # fmt: skip
        finally:
            data.release()
        log.info("fetch of %s (%d bytes) by %s", key, info.size, peer)
        fs.recv_header()  # wait for the client to close (or its CLOSE frame)
