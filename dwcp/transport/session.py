"""The transfer session, sans-IO: what the protocol decides on either side.

Theory of operation
-------------------
A send is one control stream and N data streams.  The driver (``DataServer``)
reads frames, moves bytes and talks to the store; what those frames mean and
what to do about them is decided here, without a socket, a thread or a clock:

* ``parse_send(transfer_id, hello)`` validates a send's HELLO into a
  ``SendHello``: key, size, digest, chunk size, proposed baseline, relay
  target, and the capabilities both sides have (``negotiate``).
* ``plan(hello, ...)`` chooses the mode -- ``delta`` (we hold the proposed
  baseline), ``pages`` (we hold another version of the same size), ``full`` --
  and the chunk size: the interrupted attempt's, whose chunks we keep, or at
  least one that cuts the object into at most ``MAX_CHUNKS`` chunks.
* ``ReceiveSession`` is one transfer's state: which chunks are held and which
  are being received (claims), the admission of every DATA header, how a
  verified chunk is written (what the partial holds already), progress, and
  the failure that ends it.

Rules
-----
1. A DATA frame is admitted only if it names this transfer, a chunk boundary
   inside the object, exactly that chunk's length, and -- for a delta codec --
   this transfer's baseline.  Anything else is a RemoteProtocolError: the
   stream closes, the transfer goes on over the others.
2. A chunk held already is acknowledged again (``ADMIT_HELD``); one being
   received on another stream is refused as busy (``ADMIT_BUSY``: the sender
   sends it again later); otherwise the stream claims it (``ADMIT_CLAIMED``)
   until it lands verified (``landed``) or fails its hash (``rejected``: NACK).
3. Failure is sticky: after ``fail`` nothing is admitted and every stream,
   and the control stream, answer with its (code, reason).  The first
   failure wins.
4. Commit needs every chunk held and no failure (``check_commit``).
5. Time comes in as ``now``.  The session is shared by the transfer's stream
   threads, so every change of its state happens under its one lock.

The sending side
----------------
``SendSession`` is the same transfer seen by the sender (``Sender`` drives it):
it builds HELLO, judges WELCOME against what HELLO offered, keeps which chunks
the receiver acknowledged, decides what a NACK means, and builds and judges DONE.

6. WELCOME's mode must be one HELLO made possible: ``delta`` only against the
   very baseline HELLO offered; ``pages`` only if HELLO's caps had "pages",
   and with a ``base_digest``; ``full`` always.  Its chunk size, if it differs
   from ours, is the receiver's (a partial of an interrupted attempt): the
   spans follow it.  Its ``have`` bitmap holds at most ceil(nchunks / 8)
   bytes and no bit at or beyond nchunks (a receiver never holds a chunk the
   object lacks).  Anything else is a RemoteProtocolError.
7. An ACK may name chunks acknowledged already (a held chunk is acknowledged
   again), never one at or beyond nchunks: RemoteProtocolError.  The same
   holds for a NACK's chunk.
8. A NACK "busy" sends the chunk again later, uncounted.  Any other NACK
   counts: from the second one of a chunk it goes full (no delta against the
   base), and the sixth fails the transfer with the receiver's reason.
9. Failure is sticky, as on the receiving side: the first ``fail`` wins; after
   it, ACKs and NACKs change nothing and DONE cannot be built.
10. DONE is built only once every chunk is acknowledged and nothing failed;
   the receiver's DONE must say ok and name the digest HELLO announced.

States
------
11. Each session is in one state (``state``), and every event -- a method that
    says what happened or builds what is sent -- is checked against its
    side's table, ``SEND_TRANSITIONS`` or ``RECEIVE_TRANSITIONS``: state ->
    {event: the state it leads to}.  An event its state does not list is
    refused and changes nothing.  Queries (``span``, ``is_held``,
    ``missing``, ``check_commit``, ``finished``, ...) are allowed in any
    state.  The sending side::

        SEND_IDLE          --hello-------->  SEND_HELLO_SENT
        SEND_HELLO_SENT    --on_welcome--->  SEND_TRANSFERRING  (a WELCOME against rule 6: SEND_FAILED)
        SEND_TRANSFERRING  --dictionary_sent-->  SEND_TRANSFERRING  (the dictionary WELCOME asked for: rule 13)
        SEND_TRANSFERRING  --done--------->  SEND_DONE_SENT     (every chunk acknowledged, rule 10)
        SEND_DONE_SENT     --on_done------>  SEND_COMMITTED     (a DONE against rule 10: SEND_FAILED)
        SEND_COMMITTED     --close-------->  SEND_COMMITTED
        any other state    --fail--------->  SEND_FAILED        (SEND_COMMITTED stays: the receiver has it)

    and the data streams' events -- data_hello, take, sent, acked, nacked,
    requeued -- in SEND_TRANSFERRING and every state after it, changing none
    (after the end they change nothing: a stream may lag behind it).  The
    receiving side::

        RECV_PLANNED       --welcome------>  RECV_RECEIVING
        RECV_RECEIVING     --check_dict_frame---->  RECV_RECEIVING  (the dictionary WELCOME asked for: rule 13)
        RECV_RECEIVING     --dictionary_arrived-->  RECV_RECEIVING
        RECV_RECEIVING     --on_done------>  RECV_COMMITTING    (a DONE against rule 4: RECV_FAILED)
        RECV_COMMITTING    --stored------->  RECV_COMMITTED     (the driver committed the object)
        RECV_FAILED        --on_done------>  RECV_FAILED        (raises the failure: rule 3)
        any other state    --fail--------->  RECV_FAILED        (RECV_COMMITTED stays)

    and the data streams' events -- admit, landed, rejected, released -- in
    RECV_RECEIVING and every state after it, changing none.
12. Whose fault.  A driver hands a session the peer's word only when the
    protocol expects it (WELCOME after HELLO, the receiver's DONE after ours,
    DATA on a stream that presented WELCOME's token), so an event its state
    does not allow is the driver's misuse: LocalProtocolError.  What the
    peer says wrong inside an allowed event (rules 1, 4, 6, 7, 10) is a
    RemoteProtocolError; one that ends the transfer (a WELCOME or a DONE)
    fails it first, so the failure is sticky on both sides.

Dictionaries (both sides)
-------------------------
13. A HELLO may name one zstd dictionary (id, xxh3-128 digest, size) if
   both sides have "zdict".  WELCOME asks for it (``need_dict``) if the
   receiver does not hold exactly those bytes; only then does the sender send
   it, once, as the control stream's next frame (FRAME_DICT: offset = its id,
   length = its size), before any data stream opens.  A WELCOME asking for a
   dictionary HELLO did not name is a RemoteProtocolError; so is a FRAME_DICT
   that is not the announced one (ERR_UNKNOWN_DICT: the transfer fails).
14. A DATA frame compressed with a dictionary must name the announced id
   (ERR_UNKNOWN_DICT otherwise); one that arrives before the dictionary did
   is busy (``ADMIT_BUSY``: sent again later), never decoded without it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dwcp.errors import InvalidKeyError, LocalProtocolError, RemoteProtocolError
from dwcp.storage import MAX_CHUNKS, min_chunk_size, validate_key
from dwcp.wire import consts as C

__all__ = [
    "PROTOCOL_VERSION", "CAPS", "SendHello", "Plan", "ReceiveSession", "parse_send", "negotiate", "plan",
    "ADMIT_CLAIMED", "ADMIT_HELD", "ADMIT_BUSY", "WRITE_SKIP", "WRITE_NONZERO_PAGES", "WRITE_DIRTY_PAGES",
    "WRITE_ALL", "SendSession", "NACK_RESEND", "NACK_IGNORE", "NACK_FAILED", "MAX_NACKS", "DictRef", "Forward",
]  # fmt: skip

# 2: an object's digest is the root of its chunk-hash tree (dwcp.digest), no longer the whole-object xxh3-128
# 3: a DATA frame's raw_hash is the chunk hash of dwcp.digest rule 4 (from the tree's leaf hashes), no longer
#    the xxh3-64 of the chunk's bytes
PROTOCOL_VERSION = 3
# What this version speaks: delta frames (xbzrle), zstd payloads, sparse chunks, pages mode, resume.
# "sealed": data streams carry AES-256-GCM records keyed through their TLS session (dwcp.security.aead);
# offered only over TLS by a side that can, kept in WELCOME's caps only by a receiver that agrees
CAPS = frozenset({"xbzrle", "zstd", "sparse", "pages", "resume", "zdict", "sealed"})

ADMIT_CLAIMED, ADMIT_HELD, ADMIT_BUSY = "claimed", "held", "busy"
# how a verified chunk reaches the partial, by what the partial holds where nothing landed yet
WRITE_SKIP = "skip"  # a zero chunk over zeros
WRITE_NONZERO_PAGES = "nonzero"  # a sparse chunk over zeros
WRITE_DIRTY_PAGES = "dirty"  # a delta over its own baseline: the pages it changes
WRITE_ALL = "all"


def negotiate(theirs: list[str] | None) -> frozenset[str]:
    """The capabilities both sides have (the message schema bounded the list); none offered, none had."""
    return CAPS & frozenset(theirs or ())


@dataclass(frozen=True)
class DictRef:
    """A zstd dictionary as HELLO names it (rule 13)."""

    id: int
    digest: bytes  # xxh3-128 of its bytes
    size: int

    def to_wire(self) -> dict:
        return {"id": self.id, "digest": self.digest.hex(), "size": self.size}


@dataclass(frozen=True)
class SendHello:
    """A validated HELLO of ``op = send``."""

    transfer_id: int
    key: str
    size: int  # invariant: 0 <= size <= messages.MAX_OBJECT_BYTES (bounded by the message schema)
    digest: bytes  # the object digest (dwcp.digest: the root of its leaf hashes)
    chunk_size: int  # what the sender proposes: a multiple of PAGE_SIZE in [4 KiB, 64 MiB]
    base_digest: bytes | None  # the baseline the sender holds and proposes for a delta
    forward_to: tuple[str, int] | None  # a relay's next hop
    caps: frozenset[str]  # negotiated: in both CAPS and the sender's list
    dictionary: DictRef | None = None  # the zstd dictionary chunks may be compressed with (rule 13)
    forward_then: tuple[tuple[str, int], ...] = ()  # a replication chain's later hops (Forward)
    forward_ack: int | None = None  # copies the chain must verify before DONE; None: a plain relay
    origin: dict | None = None  # {"writer", "hlc", "parent"}: who wrote it, when, replacing what (catalog)


@dataclass(frozen=True)
class Forward:
    """Where a receiver sends the object on as it lands (HELLO's ``forward``).

    A relay names ``to`` only: the receiver answers DONE once ``to`` holds the object verified, or
    ERROR.  A replication chain adds ``then`` (the hops after ``to``; each receiver forwards to the
    next, skipping one that fails) and ``ack``: how many verified copies the chain from ``to`` on
    must hold before this receiver answers DONE (0: at once, forwarding in the background).  Its
    DONE then lists every downstream hop's outcome (``forwarded.hops``), and the sender judges.
    """

    to: str
    then: tuple[str, ...] = ()
    ack: int | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"to": self.to}
        if self.then:
            d["then"] = list(self.then)
        if self.ack is not None:
            d["ack"] = self.ack
        return d


def _hostport(text: str, field: str = "forward.to") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteProtocolError(f"{field} {text!r} is not HOST:PORT", C.ERR_BAD_FIELD)
    return host.strip("[]"), int(port)


def parse_send(transfer_id: int, hello: dict) -> SendHello:
    """Validate a send's HELLO (its version, fields' types and bounds were checked before)."""
    for k in ("key", "size", "digest", "chunk_size"):
        if k not in hello:
            raise RemoteProtocolError(f"HELLO for a send lacks {k!r}", C.ERR_MALFORMED)
    try:
        key = validate_key(hello["key"])
    except InvalidKeyError as exc:
        raise RemoteProtocolError(f"invalid key: {exc}", C.ERR_BAD_FIELD) from None
    base = hello.get("base_digest")
    fwd = hello.get("forward")
    caps = negotiate(hello.get("caps"))
    then = tuple(_hostport(a, "forward.then") for a in fwd.get("then", ())) if fwd else ()
    if fwd and fwd.get("ack", 0) > 1 + len(then):
        raise RemoteProtocolError(f"forward.ack {fwd['ack']} is more copies than its chain of {1 + len(then)} "
                                  "hops can hold", C.ERR_BAD_FIELD)  # fmt: skip
    dd = hello.get("dict")  # its fields' types and bounds were checked by the message schema
    if dd is not None and "zdict" not in caps:
        raise RemoteProtocolError('HELLO names a dictionary but does not offer "zdict"', C.ERR_BAD_FIELD)
    return SendHello(transfer_id, key, hello["size"], bytes.fromhex(hello["digest"]), hello["chunk_size"],
                     bytes.fromhex(base) if base else None, _hostport(fwd["to"]) if fwd else None, caps,
                     DictRef(dd["id"], bytes.fromhex(dd["digest"]), dd["size"]) if dd else None,
                     then, fwd.get("ack") if fwd else None, hello.get("origin"))  # fmt: skip


@dataclass(frozen=True)
class Plan:
    mode: str  # "full" | "delta" | "pages"
    base_digest: bytes | None  # the version deltas and page hashes are against (None for full)
    chunk_size: int
    why_chunk_size: str  # "" when the sender's proposal stands


def plan(hello: SendHello, *, holds_proposed: bool, latest: tuple[bytes, int] | None,
         resume_chunk_size: int | None) -> Plan:  # fmt: skip
    """Mode and chunk size of a send, from what the store holds.

    ``holds_proposed``: a verified version with the proposed baseline's digest and the object's size;
    ``latest``: (digest, size) of the key's newest version; ``resume_chunk_size``: the chunk size of a
    partial of this very object (digest and size), if one is on disk.
    """
    if holds_proposed and hello.base_digest is not None and "xbzrle" in hello.caps:
        mode, base = "delta", hello.base_digest
    elif (latest is not None and "pages" in hello.caps and latest[1] == hello.size and latest[0] != hello.digest
          and hello.size > 0):  # fmt: skip
        mode, base = "pages", latest[0]
    else:
        mode, base = "full", None
    floor = max(C.PAGE_SIZE, min_chunk_size(hello.size))
    cs, why = hello.chunk_size, ""
    if (resume_chunk_size is not None and "resume" in hello.caps and resume_chunk_size != cs
            and floor <= resume_chunk_size <= C.MAX_RAW_LEN and resume_chunk_size % C.PAGE_SIZE == 0):  # fmt: skip
        cs, why = (
            resume_chunk_size,
            f"the partial of an interrupted attempt is in {resume_chunk_size}-byte chunks",
        )
    elif cs < floor:
        cs, why = floor, f"at most {MAX_CHUNKS} chunks per object"
    return Plan(mode, base, cs, why)


# -- the states (rules 11, 12) -----------------------------------------------------------------------
__all__ += ["SEND_IDLE", "SEND_HELLO_SENT", "SEND_TRANSFERRING", "SEND_DONE_SENT", "SEND_COMMITTED", "SEND_FAILED",
            "RECV_PLANNED", "RECV_RECEIVING", "RECV_COMMITTING", "RECV_COMMITTED", "RECV_FAILED",
            "SEND_TRANSITIONS", "RECEIVE_TRANSITIONS"]  # fmt: skip


class _State(str):
    """A session state; a str so it prints and serialises as itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


SEND_IDLE = _State("SEND_IDLE")  # built; HELLO not yet
SEND_HELLO_SENT = _State("SEND_HELLO_SENT")  # waiting for WELCOME
SEND_TRANSFERRING = _State("SEND_TRANSFERRING")  # the data streams send chunks
SEND_DONE_SENT = _State("SEND_DONE_SENT")  # waiting for the receiver's DONE
SEND_COMMITTED = _State("SEND_COMMITTED")  # the receiver confirmed the object: final
SEND_FAILED = _State("SEND_FAILED")  # final: ``failed`` says why

RECV_PLANNED = _State("RECV_PLANNED")  # HELLO judged, the plan made; WELCOME not yet
RECV_RECEIVING = _State("RECV_RECEIVING")  # the data streams deliver chunks
RECV_COMMITTING = _State("RECV_COMMITTING")  # the sender's DONE was judged: the driver verifies and stores
RECV_COMMITTED = _State("RECV_COMMITTED")  # stored: final
RECV_FAILED = _State("RECV_FAILED")  # final: ``failure`` says why

_SEND_STREAM_EVENTS = ("data_hello", "take", "sent", "acked", "nacked", "requeued")
_RECV_STREAM_EVENTS = ("admit", "landed", "rejected", "released")


def _with_streams(state: str, events: tuple[str, ...], rest: dict[str, str]) -> dict[str, str]:
    return {**dict.fromkeys(events, state), **rest}


# state -> {event: the state it leads to}; an event a state does not list is refused (rule 11)
SEND_TRANSITIONS: Mapping[str, Mapping[str, str]] = {
    SEND_IDLE: {"hello": SEND_HELLO_SENT, "fail": SEND_FAILED},
    SEND_HELLO_SENT: {"on_welcome": SEND_TRANSFERRING, "fail": SEND_FAILED},
    SEND_TRANSFERRING: _with_streams(SEND_TRANSFERRING, _SEND_STREAM_EVENTS,
                                     {"dictionary_sent": SEND_TRANSFERRING, "done": SEND_DONE_SENT,
                                      "fail": SEND_FAILED}),
    SEND_DONE_SENT: _with_streams(SEND_DONE_SENT, _SEND_STREAM_EVENTS,
                                  {"on_done": SEND_COMMITTED, "fail": SEND_FAILED}),
    SEND_COMMITTED: _with_streams(SEND_COMMITTED, _SEND_STREAM_EVENTS,
                                  {"close": SEND_COMMITTED, "fail": SEND_COMMITTED}),
    SEND_FAILED: _with_streams(SEND_FAILED, _SEND_STREAM_EVENTS, {"fail": SEND_FAILED}),
}  # fmt: skip
RECEIVE_TRANSITIONS: Mapping[str, Mapping[str, str]] = {
    RECV_PLANNED: {"welcome": RECV_RECEIVING, "fail": RECV_FAILED},
    RECV_RECEIVING: _with_streams(RECV_RECEIVING, _RECV_STREAM_EVENTS,
                                  {"check_dict_frame": RECV_RECEIVING, "dictionary_arrived": RECV_RECEIVING,
                                   "on_done": RECV_COMMITTING, "fail": RECV_FAILED}),
    RECV_COMMITTING: _with_streams(RECV_COMMITTING, _RECV_STREAM_EVENTS,
                                   {"stored": RECV_COMMITTED, "fail": RECV_FAILED}),
    RECV_COMMITTED: _with_streams(RECV_COMMITTED, _RECV_STREAM_EVENTS, {"fail": RECV_COMMITTED}),
    RECV_FAILED: _with_streams(RECV_FAILED, _RECV_STREAM_EVENTS, {"on_done": RECV_FAILED, "fail": RECV_FAILED}),
}  # fmt: skip


def _next(table: Mapping[str, Mapping[str, str]], state: str, event: str, what: str = "") -> str:
    """The state ``event`` leads to from ``state``; LocalProtocolError if ``state`` does not allow it (rule 12)."""
    nxt = table[state].get(event)
    if nxt is None:
        raise LocalProtocolError(f"{what or event} in state {state}", 0)
    return nxt


class ReceiveSession:
    """One transfer being received: the rules above, over the chunks of one object."""

    def __init__(self, hello: SendHello, p: Plan, *, held: bytes, zero_filled: bool, seeded: bool,
                 now: float, dictionary=None) -> None:  # fmt: skip
        """``held``: the bitmap of chunks the partial holds already (bit i, LSB first = chunk i);
        ``zero_filled``: where nothing landed the partial reads as zeros; ``seeded``: it holds the
        plan's baseline there (Partial.seeded_from); ``dictionary``: HELLO's dictionary, if the
        receiver holds it already (a dwcp.codec.Dictionary), else None (WELCOME asks for it)."""
        self.hello = hello
        self.plan = p
        self.chunk_size = p.chunk_size
        self.nchunks = -(-hello.size // p.chunk_size)  # invariant: <= MAX_CHUNKS
        self._held = bytearray(held.ljust((self.nchunks + 7) // 8, b"\0"))
        self.zero_filled = zero_filled
        self.seeded = seeded and p.base_digest is not None
        self._claimed: set[int] = set()  # chunks a stream is receiving; invariant: none of them held
        self._lock = threading.Lock()
        self.state: str = RECV_PLANNED  # rule 11; changes only under _lock
        self.failure: tuple[int, str] | None = None  # (ERR_*, why); sticky; invariant: set iff RECV_FAILED
        self.started = now
        self.progressed = now  # when the last chunk landed
        self.chunks_received = 0
        self.chunks_nacked = 0
        self.wire_bytes = 0
        if dictionary is not None and (hello.dictionary is None or (dictionary.id, dictionary.digest)
                                       != (hello.dictionary.id, hello.dictionary.digest)):  # fmt: skip
            raise LocalProtocolError("the dictionary held is not the one HELLO named", C.ERR_UNKNOWN_DICT)
        self.dictionary = dictionary  # set once: at the start, or when FRAME_DICT arrived (rule 13)
        self.needs_dict = hello.dictionary is not None and dictionary is None

    # -- what WELCOME says ---------------------------------------------------------
    def welcome(self, token: str, node: str) -> dict:
        with self._lock:
            self.state = _next(RECEIVE_TRANSITIONS, self.state, "welcome", "WELCOME")
        msg = {"mode": self.plan.mode, "token": token, "chunk_size": self.chunk_size, "node": node,
               "caps": sorted(self.hello.caps)}  # fmt: skip
        if "resume" in self.hello.caps:
            msg["have"] = bytes(self._held).hex()
            msg["resumed_chunks"] = self.held_count
        if self.plan.base_digest is not None:
            msg["base_digest"] = self.plan.base_digest.hex()
        if self.needs_dict:
            msg["need_dict"] = True
        return msg

    # -- the dictionary (rule 13) ----------------------------------------------------------
    def check_dict_frame(self, h) -> DictRef:
        """Judge the FRAME_DICT that follows a WELCOME with need_dict; returns what it must hold."""
        with self._lock:
            _next(RECEIVE_TRANSITIONS, self.state, "check_dict_frame", "a dictionary")
        ref = self.hello.dictionary
        if not self.needs_dict or ref is None:
            raise RemoteProtocolError("a dictionary this transfer did not ask for", C.ERR_BAD_FRAME_TYPE)
        if h.frame_type != C.FRAME_DICT or h.transfer_id != self.hello.transfer_id:
            raise RemoteProtocolError(f"frame type {h.frame_type} where the dictionary WELCOME asked for was due",
                                      C.ERR_BAD_FRAME_TYPE)  # fmt: skip
        if h.offset != ref.id or h.raw_len != ref.size:
            raise RemoteProtocolError(f"dictionary {h.offset} of {h.raw_len} bytes; HELLO announced {ref.id} of "
                                      f"{ref.size}", C.ERR_UNKNOWN_DICT)  # fmt: skip
        return ref

    def dictionary_arrived(self, dictionary) -> None:
        """The announced dictionary is here and verified (its bytes hash to HELLO's digest)."""
        ref = self.hello.dictionary
        if ref is None or (dictionary.id, dictionary.digest) != (ref.id, ref.digest):
            raise LocalProtocolError("a dictionary other than HELLO's", C.ERR_UNKNOWN_DICT)
        with self._lock:
            _next(RECEIVE_TRANSITIONS, self.state, "dictionary_arrived")
            self.dictionary = dictionary
            self.needs_dict = False

    @property
    def held_count(self) -> int:
        return sum(bin(b).count("1") for b in self._held)

    # -- data frames -----------------------------------------------------------------
    def span(self, idx: int) -> tuple[int, int]:
        off = idx * self.chunk_size
        return off, min(self.chunk_size, self.hello.size - off)

    def is_held(self, idx: int) -> bool:
        return bool(self._held[idx >> 3] >> (idx & 7) & 1)

    def admit(self, h) -> tuple[str, int]:
        """Judge a DATA frame's header (rule 1, 2): (ADMIT_*, chunk index)."""
        with self._lock:
            _next(RECEIVE_TRANSITIONS, self.state, "admit", "a DATA frame")  # a stream event: no change
        if h.frame_type != C.FRAME_DATA:
            raise RemoteProtocolError(f"frame type {h.frame_type} on a data stream", C.ERR_BAD_FRAME_TYPE)
        if h.transfer_id != self.hello.transfer_id:
            raise RemoteProtocolError(f"chunk of transfer {h.transfer_id:x} on a stream of transfer "
                                      f"{self.hello.transfer_id:x}", C.ERR_BAD_FIELD)  # fmt: skip
        idx, rem = divmod(h.offset, self.chunk_size)
        if rem or idx >= self.nchunks or h.raw_len != self.span(idx)[1]:
            raise RemoteProtocolError(
                f"chunk at offset {h.offset} with {h.raw_len} bytes does not fit the {self.hello.size}-byte object "
                f"in {self.chunk_size}-byte chunks", C.ERR_BAD_LENGTH,
            )  # fmt: skip
        if h.codec in C.DELTA_CODECS and (
            self.plan.base_digest is None or h.base_digest != self.plan.base_digest
        ):
            base = self.plan.base_digest.hex() if self.plan.base_digest else "none"
            raise RemoteProtocolError(f"delta against {h.base_digest.hex()}, but this transfer's baseline is {base}",
                                      C.ERR_UNKNOWN_BASELINE)  # fmt: skip
        ref = self.hello.dictionary
        if h.codec == C.CODEC_ZSTD_DICT and (ref is None or h.dict_id != ref.id):
            raise RemoteProtocolError(f"chunk at {h.offset} compressed with dictionary {h.dict_id}; this transfer "
                                      f"announced {'none' if ref is None else ref.id}", C.ERR_UNKNOWN_DICT)  # fmt: skip
        with self._lock:
            self.wire_bytes += C.HEADER_SIZE + h.enc_len
            if self.is_held(idx):
                return ADMIT_HELD, idx
            if idx in self._claimed or self.failure is not None:
                return ADMIT_BUSY, idx
            if h.codec == C.CODEC_ZSTD_DICT and self.dictionary is None:
                return ADMIT_BUSY, idx  # rule 14: not decodable yet
            self._claimed.add(idx)
            return ADMIT_CLAIMED, idx

    def write_mode(self, codec: int) -> str:
        """How a verified chunk of ``codec`` reaches the partial (WRITE_*), given what it holds already."""
        if codec == C.CODEC_ZERO and self.zero_filled:
            return WRITE_SKIP
        if codec in (C.CODEC_SPARSE, C.CODEC_SPARSE_ZSTD) and self.zero_filled:
            return WRITE_NONZERO_PAGES
        if codec in C.DELTA_CODECS and self.seeded:
            return WRITE_DIRTY_PAGES
        return WRITE_ALL

    def landed(self, idx: int, now: float) -> None:
        """Chunk ``idx`` is written and verified: held from now on (ACK it)."""
        with self._lock:
            _next(RECEIVE_TRANSITIONS, self.state, "landed")
            self._claimed.discard(idx)
            self._held[idx >> 3] |= 1 << (idx & 7)
            self.chunks_received += 1
            self.progressed = now

    def rejected(self, idx: int) -> None:
        """Chunk ``idx`` failed its hash (NACK it: the sender sends it again)."""
        with self._lock:
            _next(RECEIVE_TRANSITIONS, self.state, "rejected")
            self._claimed.discard(idx)
            self.chunks_nacked += 1

    def released(self, idx: int) -> None:
        """The stream receiving chunk ``idx`` gave up on it (it broke, or the transfer failed)."""
        with self._lock:
            _next(RECEIVE_TRANSITIONS, self.state, "released")
            self._claimed.discard(idx)

    # -- the transfer as a whole -----------------------------------------------------------
    def fail(self, code: int, why: str) -> bool:
        """End the transfer with ``why`` (rule 3); True if this call set it (not once failed or committed)."""
        with self._lock:
            return self._fail(code, why)

    def _fail(self, code: int, why: str) -> bool:  # under _lock
        if _next(RECEIVE_TRANSITIONS, self.state, "fail") != RECV_FAILED or self.failure is not None:
            return False
        self.failure, self.state = (code, why), RECV_FAILED
        return True

    def missing(self) -> int:
        return self.nchunks - self.held_count

    def check_commit(self) -> None:
        """Rule 4: raise unless the object may be committed (a query: ``on_done`` is the event)."""
        if self.failure is not None:
            raise RemoteProtocolError(f"DONE for a failed transfer: {self.failure[1]}", self.failure[0])
        missing = self.missing()
        if missing:
            raise RemoteProtocolError(f"DONE with {missing} chunks still missing", C.ERR_TRUNCATED)

    def on_done(self) -> None:
        """The sender's DONE: the object may be committed (rule 4), or RemoteProtocolError -- and the transfer
        failed with it, unless it had failed already (then the error is that failure)."""
        with self._lock:
            nxt = _next(RECEIVE_TRANSITIONS, self.state, "on_done", "DONE")
            try:
                self.check_commit()
            except RemoteProtocolError as exc:
                self._fail(exc.code, str(exc))
                raise
            self.state = nxt

    def stored(self) -> None:
        """The driver verified the whole object and committed it to the store."""
        with self._lock:
            self.state = _next(RECEIVE_TRANSITIONS, self.state, "stored")

    def idle_for(self, now: float) -> float:
        """Seconds since the last chunk landed (or since the start)."""
        return now - self.progressed


# -- the sending side ------------------------------------------------------------------------------

# what the sender does about a NACK (rule 8)
NACK_RESEND = "resend"  # queue the chunk again
NACK_IGNORE = "ignore"  # acknowledged meanwhile, or the transfer failed: nothing
NACK_FAILED = "failed"  # that NACK failed the transfer
MAX_NACKS = 5  # verification failures of one chunk the transfer survives; the next one ends it


class SendSession:
    """One transfer being sent: rules 6-10 above, over the chunks of one object.

    ``base_digest``: the baseline offered for a delta (None: none); ``full_refresh``: a full send is due,
    so HELLO leaves "xbzrle" and "pages" out of its caps (and the caller offers no baseline).
    """

    def __init__(self, transfer_id: int, key: str, size: int, digest: bytes, chunk_size: int, *, node: str,
                 base_digest: bytes | None = None, full_refresh: bool = False, forward_to: str | Forward | None = None,
                 streams: int | None = None, dictionary: DictRef | None = None,
                 sealed: bool = False, origin: dict | None = None) -> None:  # fmt: skip
        self.transfer_id = transfer_id
        self.key = key
        self.size = size
        self.digest = digest
        self.node = node
        self.offered_base = base_digest
        self.caps = CAPS - {"xbzrle", "pages"} if full_refresh else CAPS
        if not sealed:
            self.caps = self.caps - {"sealed"}
        self.sealed = False  # WELCOME agreed: data streams seal their records after HELLO
        self.forward = Forward(forward_to) if isinstance(forward_to, str) else forward_to
        self.origin = origin  # HELLO's origin (writer, hlc, parent), if the caller knows it
        self.streams = streams
        self.dictionary = dictionary  # offered in HELLO (rule 13)
        self.dict_needed = False  # WELCOME asked for it: the driver sends it before the data streams
        self._lock = threading.Lock()
        # set by on_welcome; until then the proposal stands
        self.mode: str | None = None
        self.token = ""
        self.base_digest: bytes | None = None  # what the receiver's deltas / page hashes are against
        self.chunk_size = chunk_size  # the proposal, then the receiver's
        self.spans: list[tuple[int, int]] = []  # (offset, length) of each chunk
        self._done = bytearray()  # one byte per chunk: 1 once acknowledged; invariant: never goes back to 0
        self.remaining = 0  # invariant: == number of zeros in _done
        self.resumed = 0  # chunks the receiver held before this transfer
        self.acked_raw = 0  # raw bytes of the acknowledged chunks (of this transfer, resumed ones excluded)
        self._nacks: dict[int, int] = {}  # chunk -> verification failures; invariant: <= MAX_NACKS + 1
        self._full: set[int] = set()  # chunks that go full (NACKed twice): invariant: _nacks[c] >= 2
        self._sends: dict[int, int] = {}  # chunk -> times sent
        self.chunks_sent = 0
        self.chunks_resent = 0  # NACKed (not busy) or requeued from a failed stream
        self.raw_sent = 0
        self.wire_bytes = 0
        self.failed: str | None = None  # why the transfer failed; sticky: set once, never cleared
        self.error: BaseException | None = None  # the typed error the driver raises for it, if any
        self.state: str = (
            SEND_IDLE  # rule 11; changes only under _lock; invariant: SEND_FAILED iff failed is set
        )

    # -- HELLO and WELCOME -------------------------------------------------------------------------
    def hello(self) -> dict:
        with self._lock:
            self.state = _next(SEND_TRANSITIONS, self.state, "hello", "HELLO")
        msg = {"v": PROTOCOL_VERSION, "role": "control", "op": "send", "key": self.key, "size": self.size,
               "digest": self.digest.hex(), "chunk_size": self.chunk_size, "page_size": C.PAGE_SIZE,
               "caps": sorted(self.caps), "node": self.node}  # fmt: skip
        if self.offered_base is not None:
            msg["base_digest"] = self.offered_base.hex()
        if self.forward is not None:
            msg["forward"] = self.forward.to_wire()
        if self.origin is not None:
            msg["origin"] = dict(self.origin)
        if self.streams is not None:
            msg["streams"] = self.streams
        if self.dictionary is not None:
            msg["dict"] = self.dictionary.to_wire()
        return msg

    def on_welcome(self, msg: dict) -> list[int]:
        """Judge WELCOME (rule 6); returns the chunks to send, in order."""
        with self._lock:
            nxt = _next(SEND_TRANSITIONS, self.state, "on_welcome", "WELCOME")
        try:
            todo = self._on_welcome(msg)
        except RemoteProtocolError as exc:
            self.fail(str(exc), exc)
            raise
        with self._lock:
            self.state = nxt  # no stream runs before WELCOME: nothing changed the state meanwhile
        return todo

    def _on_welcome(self, msg: dict) -> list[int]:
        mode = msg.get("mode")
        base = msg.get("base_digest")
        if mode == "delta":
            if self.offered_base is None or base != self.offered_base.hex():
                raise RemoteProtocolError(
                    "receiver chose delta against a baseline we did not offer", C.ERR_BAD_FIELD
                )
        elif mode == "pages":
            if "pages" not in self.caps:
                raise RemoteProtocolError("receiver chose pages, which we did not offer", C.ERR_BAD_FIELD)
            if not base:
                raise RemoteProtocolError("receiver chose pages without a base_digest", C.ERR_MALFORMED)
        elif mode != "full":
            raise RemoteProtocolError(f"unexpected mode {mode!r} for a send", C.ERR_MALFORMED)
        sealed = "sealed" in (msg.get("caps") or ())
        if sealed and "sealed" not in self.caps:
            raise RemoteProtocolError(
                "receiver chose sealed records, which we did not offer", C.ERR_BAD_FIELD
            )
        need_dict = msg.get("need_dict", False)
        if need_dict and self.dictionary is None:
            raise RemoteProtocolError("receiver asked for a dictionary we did not name", C.ERR_BAD_FIELD)
        cs = msg.get("chunk_size", self.chunk_size)
        if (not isinstance(cs, int) or isinstance(cs, bool) or not C.PAGE_SIZE <= cs <= C.MAX_RAW_LEN
                or cs % C.PAGE_SIZE):  # fmt: skip
            raise RemoteProtocolError(f"WELCOME's chunk size {cs!r} is not a multiple of {C.PAGE_SIZE} in "
                                      f"[{C.PAGE_SIZE}, {C.MAX_RAW_LEN}]", C.ERR_BAD_FIELD)  # fmt: skip
        try:
            have = bytes.fromhex(msg.get("have", ""))
            base_digest = bytes.fromhex(base) if mode != "full" and base else None
        except (TypeError, ValueError):
            raise RemoteProtocolError("WELCOME's have or base_digest is not hex", C.ERR_MALFORMED) from None
        spans = [(off, min(cs, self.size - off)) for off in range(0, self.size, cs)]
        n = len(spans)
        if len(have) > (n + 7) // 8:
            raise RemoteProtocolError(
                f"WELCOME's bitmap has {len(have)} bytes for {n} chunks", C.ERR_BAD_FIELD
            )
        if n & 7 and len(have) == (n + 7) // 8 and have[-1] >> (n & 7):
            raise RemoteProtocolError(
                f"WELCOME's bitmap holds chunks beyond the object's {n}", C.ERR_BAD_FIELD
            )
        with self._lock:
            self.mode, self.token, self.base_digest = mode, msg.get("token", ""), base_digest
            self.dict_needed = bool(need_dict)
            self.sealed = sealed
            self.chunk_size, self.spans = cs, spans
            self._done = bytearray(n)
            todo = []
            for i in range(n):
                if i >> 3 < len(have) and have[i >> 3] >> (i & 7) & 1:
                    self._done[i] = 1
                else:
                    todo.append(i)
            self.remaining = len(todo)
            self.resumed = n - len(todo)
        return todo

    def dictionary_sent(self) -> None:
        """The dictionary WELCOME asked for went on the control stream (rule 13): its bytes count."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "dictionary_sent")
            if not self.dict_needed or self.dictionary is None:
                raise LocalProtocolError("a dictionary the receiver did not ask for", C.ERR_UNKNOWN_DICT)
            self.wire_bytes += C.HEADER_SIZE + self.dictionary.size

    def data_hello(self, stream: int, seal: bytes | None = None) -> dict:
        """HELLO of data stream ``stream``; a sealed transfer's names the stream's secret ``seal``."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "data_hello", "a data stream's HELLO")
        if (seal is not None) != self.sealed:
            raise LocalProtocolError("a sealed transfer's data streams, and only theirs, carry a secret")
        msg = {"v": PROTOCOL_VERSION, "role": "data", "transfer_id": self.transfer_id, "token": self.token,
               "stream": stream}  # fmt: skip
        if seal is not None:
            msg["seal"] = seal.hex()
        return msg

    # -- chunks ------------------------------------------------------------------------------------
    @property
    def nchunks(self) -> int:
        return len(self.spans)

    @property
    def finished(self) -> bool:
        """Every chunk acknowledged, or the transfer failed: the streams may stop."""
        return self.remaining == 0 or self.failed is not None

    def is_done(self, idx: int) -> bool:
        return bool(self._done[idx])

    def goes_full(self, idx: int) -> bool:
        """Chunk ``idx`` must go without a delta against the base (NACKed twice, rule 8)."""
        return idx in self._full

    def sends_of(self, idx: int) -> int:
        return self._sends.get(idx, 0)

    def nacks_of(self, idx: int) -> int:
        return self._nacks.get(idx, 0)

    def take(self, idx: int) -> bool:
        """A stream took chunk ``idx`` off the queue: False if it needs no sending (acknowledged meanwhile,
        or the transfer failed)."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "take")
            return not self._done[idx] and self.failed is None

    def sent(self, idx: int, raw_len: int, wire_len: int) -> None:
        """Chunk ``idx`` went out, ``wire_len`` bytes for its ``raw_len``."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "sent")
            self._sends[idx] = self._sends.get(idx, 0) + 1
            self.chunks_sent += 1
            self.raw_sent += raw_len
            self.wire_bytes += wire_len

    def _check_index(self, idx: object, what: str) -> int:
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(self.spans):
            raise RemoteProtocolError(f"{what} of chunk {idx!r}: the object has {len(self.spans)} chunks",
                                      C.ERR_BAD_FIELD)  # fmt: skip
        return idx

    def acked(self, chunks: list[int]) -> list[int]:
        """An ACK (rule 7): the chunks it acknowledged first (the others were already)."""
        new: list[int] = []
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "acked", "an ACK")
            idxs = [self._check_index(c, "ACK") for c in chunks]
            if self.failed is not None:
                return new
            for i in idxs:
                if not self._done[i]:
                    self._done[i] = 1
                    self.remaining -= 1
                    self.acked_raw += self.spans[i][1]
                    new.append(i)
        return new

    def nacked(self, idx: int, reason: str) -> str:
        """A NACK of chunk ``idx`` (rule 8): NACK_RESEND, NACK_IGNORE or NACK_FAILED."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "nacked", "a NACK")
            self._check_index(idx, "NACK")
            if self._done[idx] or self.failed is not None:
                return NACK_IGNORE
            if reason == "busy":
                return NACK_RESEND
            n = self._nacks[idx] = self._nacks.get(idx, 0) + 1
            self.chunks_resent += 1
            if n >= 2:
                self._full.add(idx)
        if n > MAX_NACKS:
            self.fail(f"chunk {idx} failed verification at the receiver {n} times: {reason}")
            return NACK_FAILED
        return NACK_RESEND

    def requeued(self, chunks) -> list[int]:
        """The stream carrying ``chunks`` failed: those still unacknowledged go again (returned)."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "requeued")
            out = [i for i in chunks if not self._done[i]]
            self.chunks_resent += len(out)
        return out

    # -- the transfer as a whole -------------------------------------------------------------------
    def fail(self, why: str, error: BaseException | None = None) -> bool:
        """End the transfer with ``why`` (rule 9); True if this call set it (not once failed or committed)."""
        with self._lock:
            return self._fail(why, error)

    def _fail(self, why: str, error: BaseException | None) -> bool:  # under _lock
        if _next(SEND_TRANSITIONS, self.state, "fail") != SEND_FAILED or self.failed is not None:
            return False
        self.failed, self.error, self.state = why, error, SEND_FAILED
        return True

    @property
    def committed(self) -> bool:
        return self.state == SEND_COMMITTED

    def done(self) -> dict:
        """The DONE to send (rule 10)."""
        with self._lock:
            what = ("DONE before WELCOME" if self.mode is None
                    else "DONE" if self.failed is None else f"DONE for a failed transfer ({self.failed})")  # fmt: skip
            nxt = _next(SEND_TRANSITIONS, self.state, "done", what)
            if self.remaining:
                raise LocalProtocolError(f"DONE with {self.remaining} chunks unacknowledged", 0)
            self.state = nxt
        return {}

    def on_done(self, msg: dict) -> None:
        """The receiver's DONE (rule 10): it committed what we announced, or RemoteProtocolError."""
        with self._lock:
            nxt = _next(SEND_TRANSITIONS, self.state, "on_done", "the receiver's DONE")
            if not msg.get("ok") or msg.get("digest") != self.digest.hex():
                exc = RemoteProtocolError(f"receiver did not confirm {self.key}: {msg}", C.ERR_BAD_FIELD)
                self._fail(str(exc), exc)
                raise exc
            self.state = nxt

    def close(self) -> dict:
        """The CLOSE after the receiver's DONE."""
        with self._lock:
            _next(SEND_TRANSITIONS, self.state, "close", "CLOSE")
        return {"reason": "done"}


# -- the report of a finished send -----------------------------------------------------------------
__all__ += ["TransferReport", "StreamsReport", "CodecReport", "DictionaryReport"]


@dataclass(frozen=True, slots=True)
class StreamsReport:
    """How many streams a send ran and why (``TransferReport.streams``)."""

    initial: int  # the count it started with
    max: int  # the most it ran at once
    final: int  # the count it ended with
    auto: bool  # the controller chose the count (False: fixed by the caller)
    decisions: tuple[dict[str, Any], ...]  # {"t": seconds, "streams": n, "reason": why}, in order
    # what the controller saw (the last 512 samples): (t, streams after, goodput B/s, retransmitted fraction)
    samples: tuple[tuple[float, int, int, float | None], ...]

    def to_json(self) -> dict[str, Any]:
        return {"initial": self.initial, "max": self.max, "final": self.final, "auto": self.auto,
                "decisions": [dict(d) for d in self.decisions], "samples": [list(s) for s in self.samples]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CodecReport:
    """How a send's chunks were encoded (``TransferReport.codec``)."""

    zstd_level: int | str  # the [codec] zstd_level setting, or "adaptive"
    zstd_levels_used: dict[int, int]  # level -> chunks compressed at it, by level
    compress_workers: int  # the encode bound setting (transport.encode_workers)
    encodes_at_once_max: int  # the most chunks encoded at once

    def to_json(self) -> dict[str, Any]:
        return {"zstd_level": self.zstd_level, "zstd_levels_used": dict(self.zstd_levels_used),
                "compress_workers": self.compress_workers, "encodes_at_once_max": self.encodes_at_once_max}  # fmt: skip


@dataclass(frozen=True, slots=True)
class DictionaryReport:
    """The zstd dictionary a send's chunks could use (``TransferReport.dictionary``)."""

    type: str  # its [[codec.dictionary]] type
    id: int  # its zstd id
    sent: bool  # the receiver lacked it: it travelled with this send (rule 13)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "sent": self.sent}


@dataclass(frozen=True, slots=True)
class TransferReport:
    """What ``Sender.send`` reports of a verified send.  ``to_json()`` is the ``dwcp send --json`` document."""

    key: str
    to: str  # HOST:PORT sent to
    mode: str  # "full" | "delta" | "pages": WELCOME's choice
    size: int  # bytes of the object
    digest: str  # the object digest (dwcp.digest), hex: what the receiver verified
    verified: bool  # the receiver's DONE confirmed the digest (always True: a failed send raises)
    wire_bytes: int  # frame bytes of the chunks sent (and of a dictionary that went along), headers included
    ratio: float  # size / wire_bytes (inf when nothing went)
    seconds: float
    throughput_bytes_per_s: float  # size / seconds
    chunks: int
    chunk_size: int
    chunk_size_reason: str
    chunks_sent: int  # resends included
    chunks_resent: int  # NACKed, or requeued from a failed stream
    resumed_chunks: int  # held by the receiver before this send
    stream_errors: tuple[str, ...]  # why streams failed (the first 20)
    streams: StreamsReport
    rtt_ms: float  # the control stream's smoothed RTT at the start
    tls: bool
    socket: dict[str, Any]  # the control stream's socket options, as the dialer applied them
    chunk_latency_ms: dict[str, float] | None  # send -> ACK: p50, p99, max, n; None when no chunk went
    # the egress NIC's `dwcp tune` profile: {"nic": name, "applied": {field: value}, "skipped": {field: why}}
    # (dwcp.transport.nicplan); None when no profile applies (no tune dir, no profile for that NIC)
    nic: dict[str, Any] | None
    relayed: dict[str, Any] | None  # a relay's account of the next hop (to, seconds, wire_bytes, mode)
    tcp_info: tuple[dict[str, Any], ...]  # TCP_INFO of each data stream as it ended (the first 64)
    refresh: str | None  # why this send had to go full (the [codec] settings)
    delta_chain: int | None  # non-full sends since the key's last full one; None: not tracked
    codec: CodecReport
    dictionary: DictionaryReport | None = None  # None: no [[codec.dictionary]] rule matched the key
    # how the sent version was kept as the key's next baseline: "reflink" (its extents cloned: no bytes
    # copied), "copy_file_range" (copied in the kernel), "write" (read and written in user space: a
    # buffer, a block device), "held" (that version was kept already), "caller" (the caller keeps its
    # own versions: ``base=``, ``dwcp send --base``); None: nothing kept (no baselines store, or the
    # source changed after it was sent)
    baseline: str | None = None
    # the path's forecast and what the send then measured (dwcp.transport.trace): {"peer", "nic",
    # "prediction": {series: Forecast} | None, "used": {what the forecast set}, "outcome": {series: value},
    # "settle_s", "anomalies": [Anomaly]}; None: no path traces kept (no state directory)
    path: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready builtins: the keys (and order) ``dwcp send --json`` prints."""
        return {"key": self.key, "to": self.to, "mode": self.mode, "size": self.size, "digest": self.digest,
                "verified": self.verified, "wire_bytes": self.wire_bytes, "ratio": self.ratio,
                "seconds": self.seconds, "throughput_bytes_per_s": self.throughput_bytes_per_s,
                "chunks": self.chunks, "chunk_size": self.chunk_size, "chunk_size_reason": self.chunk_size_reason,
                "chunks_sent": self.chunks_sent, "chunks_resent": self.chunks_resent,
                "resumed_chunks": self.resumed_chunks, "stream_errors": list(self.stream_errors),
                "streams": self.streams.to_json(), "rtt_ms": self.rtt_ms, "tls": self.tls,
                "socket": dict(self.socket), "chunk_latency_ms": self.chunk_latency_ms,
                "nic": self.nic, "relayed": self.relayed, "tcp_info": [dict(i) for i in self.tcp_info],
                "refresh": self.refresh, "delta_chain": self.delta_chain, "baseline": self.baseline,
                "dictionary": None if self.dictionary is None else self.dictionary.to_json(),
                "codec": self.codec.to_json(), "path": self.path}  # fmt: skip
