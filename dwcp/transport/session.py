"""The transfer session, sans-IO: what the protocol decides on the receiving side.

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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dwcp.errors import InvalidKeyError, RemoteProtocolError
from dwcp.storage import MAX_CHUNKS, min_chunk_size, validate_key
from dwcp.wire import consts as C

__all__ = [
    "PROTOCOL_VERSION", "CAPS", "SendHello", "Plan", "ReceiveSession", "parse_send", "negotiate", "plan",
    "ADMIT_CLAIMED", "ADMIT_HELD", "ADMIT_BUSY", "WRITE_SKIP", "WRITE_NONZERO_PAGES", "WRITE_DIRTY_PAGES",
    "WRITE_ALL",
]  # fmt: skip

PROTOCOL_VERSION = 1
# What this version speaks: delta frames (xbzrle), zstd payloads, sparse chunks, pages mode, resume.
CAPS = frozenset({"xbzrle", "zstd", "sparse", "pages", "resume"})

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
class SendHello:
    """A validated HELLO of ``op = send``."""

    transfer_id: int
    key: str
    size: int  # invariant: 0 <= size <= messages.MAX_OBJECT_BYTES (bounded by the message schema)
    digest: bytes  # xxh3-128 of the whole object
    chunk_size: int  # what the sender proposes: a multiple of PAGE_SIZE in [4 KiB, 64 MiB]
    base_digest: bytes | None  # the baseline the sender holds and proposes for a delta
    forward_to: tuple[str, int] | None  # a relay's next hop
    caps: frozenset[str]  # negotiated: in both CAPS and the sender's list


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteProtocolError(f"forward.to {text!r} is not HOST:PORT", C.ERR_BAD_FIELD)
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
    return SendHello(transfer_id, key, hello["size"], bytes.fromhex(hello["digest"]), hello["chunk_size"],
                     bytes.fromhex(base) if base else None, _hostport(fwd["to"]) if fwd else None,
                     negotiate(hello.get("caps")))  # fmt: skip


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
        cs, why = resume_chunk_size, f"the partial of an interrupted attempt is in {resume_chunk_size}-byte chunks"
    elif cs < floor:
        cs, why = floor, f"at most {MAX_CHUNKS} chunks per object"
    return Plan(mode, base, cs, why)


class ReceiveSession:
    """One transfer being received: the rules above, over the chunks of one object."""

    def __init__(self, hello: SendHello, p: Plan, *, held: bytes, zero_filled: bool, seeded: bool,
                 now: float) -> None:  # fmt: skip
        """``held``: the bitmap of chunks the partial holds already (bit i, LSB first = chunk i);
        ``zero_filled``: where nothing landed the partial reads as zeros; ``seeded``: it holds the
        plan's baseline there (Partial.seeded_from)."""
        self.hello = hello
        self.plan = p
        self.chunk_size = p.chunk_size
        self.nchunks = -(-hello.size // p.chunk_size)  # invariant: <= MAX_CHUNKS
        self._held = bytearray(held.ljust((self.nchunks + 7) // 8, b"\0"))
        self.zero_filled = zero_filled
        self.seeded = seeded and p.base_digest is not None
        self._claimed: set[int] = set()  # chunks a stream is receiving; invariant: none of them held
        self._lock = threading.Lock()
        self.failure: tuple[int, str] | None = None  # (ERR_*, why); sticky
        self.started = now
        self.progressed = now  # when the last chunk landed
        self.chunks_received = 0
        self.chunks_nacked = 0
        self.wire_bytes = 0

    # -- what WELCOME says ---------------------------------------------------------
    def welcome(self, token: str, node: str) -> dict:
        msg = {"mode": self.plan.mode, "token": token, "chunk_size": self.chunk_size, "node": node,
               "caps": sorted(self.hello.caps)}  # fmt: skip
        if "resume" in self.hello.caps:
            msg["have"] = bytes(self._held).hex()
            msg["resumed_chunks"] = self.held_count
        if self.plan.base_digest is not None:
            msg["base_digest"] = self.plan.base_digest.hex()
        return msg

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
        if h.codec in C.DELTA_CODECS and (self.plan.base_digest is None or h.base_digest != self.plan.base_digest):
            base = self.plan.base_digest.hex() if self.plan.base_digest else "none"
            raise RemoteProtocolError(f"delta against {h.base_digest.hex()}, but this transfer's baseline is {base}",
                                      C.ERR_UNKNOWN_BASELINE)  # fmt: skip
        with self._lock:
            self.wire_bytes += C.HEADER_SIZE + h.enc_len
            if self.is_held(idx):
                return ADMIT_HELD, idx
            if idx in self._claimed or self.failure is not None:
                return ADMIT_BUSY, idx
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
            self._claimed.discard(idx)
            self._held[idx >> 3] |= 1 << (idx & 7)
            self.chunks_received += 1
            self.progressed = now

    def rejected(self, idx: int) -> None:
        """Chunk ``idx`` failed its hash (NACK it: the sender sends it again)."""
        with self._lock:
            self._claimed.discard(idx)
            self.chunks_nacked += 1

    def released(self, idx: int) -> None:
        """The stream receiving chunk ``idx`` gave up on it (it broke, or the transfer failed)."""
        with self._lock:
            self._claimed.discard(idx)

    # -- the transfer as a whole -----------------------------------------------------------
    def fail(self, code: int, why: str) -> bool:
        """End the transfer with ``why`` (rule 3); True if this call set it."""
        with self._lock:
            if self.failure is not None:
                return False
            self.failure = (code, why)
            return True

    def missing(self) -> int:
        return self.nchunks - self.held_count

    def check_commit(self) -> None:
        """Rule 4: raise unless the object may be committed."""
        if self.failure is not None:
            raise RemoteProtocolError(f"DONE for a failed transfer: {self.failure[1]}", self.failure[0])
        missing = self.missing()
        if missing:
            raise RemoteProtocolError(f"DONE with {missing} chunks still missing", C.ERR_TRUNCATED)

    def idle_for(self, now: float) -> float:
        """Seconds since the last chunk landed (or since the start)."""
        return now - self.progressed
