"""Consensus messages from peers: the one validator for Raft, PBFT and epoch envelopes.

Every consensus message a peer sends arrives as one FRAME_RAFT JSON object
(``dwcp.wire.messages`` checks the frame and parses its JSON).  What that
object may hold is decided here, and every driver decodes through this module:

* ``raft_from_wire(d)`` -- a Raft message (``raft.Msg``) or a follower's
  forwarded proposal (``Forward``): ``RaftDriver.deliver``;
* ``pbft_from_wire(w)`` -- a PBFT message (``pbft.Msg``) with the messages
  nested in it as proofs: ``pbft.Msg.from_wire`` is this one (stored PBFT
  state loads through it too);
* ``epoch_from_wire(d, algorithm_of)`` -- an epoch envelope (``epochs.Envelope``)
  whose engine body is decoded as the Raft or PBFT message it is:
  ``EpochDriver.deliver``.

Their encoders -- ``raft_to_wire``, ``pbft.Msg.to_wire``, ``epoch_to_wire``
-- write the JSON field names they always wrote; decoding what one encoded
gives the message back.

Rules
-----
1. A message type is a schema (``RAFT_SCHEMAS``, ``PBFT_SCHEMAS``,
   ``EPOCH_SCHEMAS``): each field has a kind and is required or optional.  The
   discriminator (``type``, ``t``, ``kind``) is read first and chooses the
   schema.  A field the schema does not name, a missing required field, or a
   value not of its kind is a ``RemoteProtocolError(ERR_MALFORMED)`` that names
   the message and the field ("raft append message: field 'term' is not a
   non-negative int64").  Required are the fields the encoder always writes.
2. The kinds: an int is a JSON integer in [0, 2**63) (true and false are not
   ints); a bool is true or false; a node id matches ``ID_PATTERN``; a digest
   or a signature is lowercase hex of its fixed length; bytes are lowercase
   hex, or canonical base64 (PBFT request data), of at most a fixed length; an
   enum is one of its strings; a list holds a bounded number of items of one
   kind.  A value is never converted (``"3"`` is not 3, ``1.0`` is not 1).
3. Every length is checked before anything is decoded or iterated: a
   string's before it is decoded, a list's before its items are looked at.
   One message, everything nested in it included, decodes at most its
   protocol's ``Budget`` of messages and bytes, and PBFT proofs nest at most
   ``PBFT_MAX_DEPTH`` deep.
4. Nothing but ``RemoteProtocolError`` leaves a ``*_from_wire``, whatever the
   input: no KeyError, ValueError, TypeError or RecursionError (nothing here
   recurses deeper than rule 3 allows, and no value of unknown shape is
   printed into an error).
5. Shape here, meaning elsewhere: whether the sender is the link's peer, the
   message is for this node, a signature verifies or a digest matches its
   payload is decided by the drivers and the cores.  The one exception is an
   epoch's engine body, which must be a message of the algorithm that epoch
   runs here (``algorithm_of``), since the engine that steps it expects that.
6. ``command_id(data)`` reads the id ``propose`` put into a committed command
   and never raises: a command without one (or not JSON at all) gives None.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dwcp.errors import RemoteProtocolError
from dwcp.wire import consts as C

from . import pbft
from .epochs import MAX_STATE_BYTES, Envelope
from .raft import SNAP_CHUNK_BYTES, Entry, MsgType, SnapshotMeta
from .raft import Msg as RaftMsg

__all__ = [
    "Budget",
    "Forward",
    "ID_PATTERN",
    "Schema",
    "RAFT_SCHEMAS",
    "PBFT_SCHEMAS",
    "EPOCH_SCHEMAS",
    "raft_from_wire",
    "raft_to_wire",
    "pbft_from_wire",
    "epoch_from_wire",
    "epoch_to_wire",
    "command_id",
]

INT64_MAX = (1 << 63) - 1
ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,64}")  # with fullmatch: `$` would let a final "\n" by
MAX_ID = 64

# Raft
RAFT_MAX_ENTRIES = 1024  # entries in one APPEND (the core sends max_entries_per_msg = 64)
RAFT_MAX_VOTERS = 256
RAFT_MAX_DATA = 2 << 20  # one entry's, one snapshot chunk's or one forwarded proposal's bytes
RAFT_MAX_CTX = 64  # a read's context, bytes
RAFT_MAX_BYTES = C.MAX_CONTROL_LEN  # decoded bytes in one message: more than one frame can carry
assert SNAP_CHUNK_BYTES <= RAFT_MAX_DATA

# PBFT
PBFT_MAX_DATA = pbft.MAX_DATA_BYTES  # one request's data (a catalog command)
PBFT_MAX_MSGS = pbft.MAX_WIRE_MSGS  # messages in one PBFT message, nested ones included
PBFT_MAX_DEPTH = 3  # NEW-VIEW > VIEW-CHANGE > PRE-PREPARE > REQUEST
PBFT_SIG_BYTES = 64  # an Ed25519 signature
PBFT_DIGEST_BYTES = 32  # a SHA-256 digest
# its request data, plus a signature and an aux signature per message
PBFT_MAX_BYTES = pbft.MAX_WIRE_DATA_BYTES + PBFT_MAX_MSGS * 2 * PBFT_SIG_BYTES

# epochs
EPOCH_KINDS = ("engine", "forward", "hint", "state_req", "state")


class Budget:
    """What one message may still decode, everything nested in it included (rule 3)."""

    __slots__ = ("messages", "bytes", "depth")

    def __init__(self, messages: int, nbytes: int) -> None:
        self.messages = messages  # >= 0: messages left to decode
        self.bytes = nbytes  # >= 0: decoded bytes left
        self.depth = 0  # how deep the message being decoded is nested (0: the outermost)

    def spend(self, n: int) -> None:
        if n > self.bytes:
            raise _Invalid("exceeds what one message may carry")
        self.bytes -= n


class _Invalid(Exception):
    """A value is not of its field's kind: what is wrong with it ("is not a bool")."""


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, C.ERR_MALFORMED)


def _show(v: object) -> str:
    """A value for an error message, bounded, and never a recursive repr (rule 4)."""
    return repr(v[:32]) if type(v) is str else type(v).__name__


# -- kinds: (value, budget) -> the decoded value, or _Invalid ------------------------------------------
Check = Callable[[Any, Budget], Any]


def _int(v: Any, b: Budget) -> int:
    if type(v) is not int or not 0 <= v <= INT64_MAX:
        raise _Invalid("is not a non-negative int64")
    return v


def _positive_int(v: Any, b: Budget) -> int:
    if type(v) is not int or not 1 <= v <= INT64_MAX:
        raise _Invalid("is not a positive int64")
    return v


def _bool(v: Any, b: Budget) -> bool:
    if type(v) is not bool:
        raise _Invalid("is not a bool")
    return v


def _node_id(v: Any, b: Budget) -> str:
    if type(v) is not str or len(v) > MAX_ID or not ID_PATTERN.fullmatch(v):
        raise _Invalid(f"is not a node id ({ID_PATTERN.pattern})")
    return v


def enum(*values: str) -> Check:
    allowed = frozenset(values)
    what = f"is not one of {', '.join(values)}"

    def check(v: Any, b: Budget) -> str:
        if type(v) is not str or v not in allowed:
            raise _Invalid(what)
        return v

    return check


def hex_digest(nbytes: int, *, empty: bool = False) -> Check:
    """Lowercase hex of exactly ``nbytes`` bytes (or "" if ``empty``), kept as text."""
    pattern = re.compile(f"[0-9a-f]{{{2 * nbytes}}}")
    what = f"is not {2 * nbytes} lowercase hex digits" + (" or empty" if empty else "")

    def check(v: Any, b: Budget) -> str:
        if type(v) is not str or not (empty and v == "" or len(v) == 2 * nbytes and pattern.fullmatch(v)):
            raise _Invalid(what)
        return v

    return check


def hex_bytes(max_bytes: int, *, sizes: tuple[int, ...] = ()) -> Check:
    """Lowercase hex of at most ``max_bytes`` bytes (of one of ``sizes`` if given), decoded."""
    lengths = frozenset(2 * n for n in sizes)
    what = (
        f"is not lowercase hex of {' or '.join(map(str, sizes)) if sizes else f'at most {max_bytes}'} bytes"
    )

    def check(v: Any, b: Budget) -> bytes:
        if type(v) is not str or len(v) > 2 * max_bytes or lengths and len(v) not in lengths:
            raise _Invalid(what)
        b.spend(len(v) // 2)
        try:
            out = bytes.fromhex(v)
        except ValueError:
            raise _Invalid(what) from None
        if out.hex() != v:  # fromhex takes upper case and whitespace: one spelling only
            raise _Invalid(what)
        return out

    return check


def base64_bytes(max_bytes: int) -> Check:
    """Canonical base64 of at most ``max_bytes`` bytes, decoded."""
    max_len = 4 * ((max_bytes + 2) // 3)
    what = f"is not canonical base64 of at most {max_bytes} bytes"

    def check(v: Any, b: Budget) -> bytes:
        if type(v) is not str or len(v) > max_len or len(v) % 4:
            raise _Invalid(what)
        n = len(v) // 4 * 3 - v[-2:].count("=")  # the decoded length, if the padding is where it belongs
        if n > max_bytes:
            raise _Invalid(what)
        b.spend(n)
        try:
            out = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            raise _Invalid(what) from None
        if base64.b64encode(out).decode() != v:  # padding bits, "=" inside
            raise _Invalid(what)
        return out

    return check


def list_of(item: Check, max_len: int, min_len: int = 0) -> Check:
    what = f"is not a list of {min_len}..{max_len} items"

    def check(v: Any, b: Budget) -> tuple:
        if type(v) is not list or not min_len <= len(v) <= max_len:
            raise _Invalid(what)
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x, b))
            except _Invalid as exc:
                raise _Invalid(f"[{i}] {exc}") from None
        return tuple(out)

    return check


_RAFT_DATA = hex_bytes(RAFT_MAX_DATA)


def _entry(v: Any, b: Budget) -> Entry:
    """One Raft log entry: [term, index, kind, hex data]."""
    if type(v) is not list or len(v) != 4:
        raise _Invalid("is not a [term, index, kind, hex data] entry")
    term, index, kind, data = v
    if (
        type(term) is not int
        or type(index) is not int
        or not (0 <= term <= INT64_MAX and 0 <= index <= INT64_MAX)
    ):
        raise _Invalid("has a term or an index that is not a non-negative int64")
    if kind != "data" and kind != "noop" and kind != "conf":
        raise _Invalid("has a kind that is not one of data, noop, conf")
    try:
        return Entry(term, index, kind, _RAFT_DATA(data, b))
    except _Invalid as exc:
        raise _Invalid(f"has data that {exc}") from None


# -- schemas -------------------------------------------------------------------------------------------
REQUIRED, OPTIONAL = True, False


@dataclass(frozen=True)
class Schema:
    name: str  # what an error calls the message: "raft append message"
    fields: dict[str, tuple[Check, bool]]  # field -> (kind, required)


def _decode(schema: Schema, obj: dict, b: Budget) -> dict[str, Any]:
    """``obj``'s fields, each checked and decoded by its kind (rules 1 and 2)."""
    fields = schema.fields
    for k in obj:
        if k not in fields:
            raise _bad(f"{schema.name}: unknown field {_show(k)}")
    out: dict[str, Any] = {}
    for k, (check, required) in fields.items():
        if k in obj:
            try:
                out[k] = check(obj[k], b)
            except _Invalid as exc:
                raise _bad(f"{schema.name}: field {k!r} {exc}") from None
        elif required:
            raise _bad(f"{schema.name}: missing field {k!r}")
    return out


def _select(schemas: dict[str, Schema], key: str, name: str, obj: object) -> Schema:
    """The schema ``obj``'s discriminator ``key`` names."""
    if type(obj) is not dict:
        raise _bad(f"{name}: not a JSON object but {_show(obj)}")
    if key not in obj:
        raise _bad(f"{name}: missing field {key!r}")
    t = obj[key]
    if type(t) is not str or t not in schemas:
        raise _bad(f"{name}: field {key!r} is {_show(t)}, not one of {', '.join(schemas)}")
    return schemas[t]


# -- Raft ----------------------------------------------------------------------------------------------
_RAFT_TYPE = enum(*(t.value for t in MsgType), "forward")
_RAFT_HEAD = {"type": (_RAFT_TYPE, REQUIRED), "src": (_node_id, REQUIRED), "dst": (_node_id, REQUIRED),
              "term": (_int, REQUIRED)}  # fmt: skip
_INT = (_int, REQUIRED)
_BOOL = (_bool, REQUIRED)
_CTX = (hex_bytes(RAFT_MAX_CTX), REQUIRED)


def _raft(name: str, **fields: tuple[Check, bool]) -> Schema:
    return Schema(f"raft {name} message", {**_RAFT_HEAD, **fields})


_VOTE = {"last_index": _INT, "last_term": _INT}
RAFT_SCHEMAS: dict[str, Schema] = {
    "vote": _raft("vote", **_VOTE),
    "prevote": _raft("prevote", **_VOTE),
    "vote_resp": _raft("vote_resp", granted=_BOOL),
    "prevote_resp": _raft("prevote_resp", granted=_BOOL),
    "append": _raft(
        "append",
        prev_index=_INT,
        prev_term=_INT,
        commit=_INT,
        read_seq=_INT,
        entries=(list_of(_entry, RAFT_MAX_ENTRIES), REQUIRED),
    ),  # fmt: skip
    "append_resp": _raft("append_resp", success=_BOOL, match=_INT, read_seq=_INT),
    "snap": _raft(
        "snap",
        snap_index=(_positive_int, REQUIRED),
        snap_term=_INT,
        read_seq=_INT,
        voters=(list_of(_node_id, RAFT_MAX_VOTERS, 1), REQUIRED),
        offset=_INT,
        done=_BOOL,
        data=(_RAFT_DATA, REQUIRED),
    ),  # fmt: skip
    "snap_resp": _raft(
        "snap_resp", snap_index=(_positive_int, REQUIRED), snap_term=_INT, read_seq=_INT, match=_INT
    ),
    "read_index": _raft("read_index", ctx=_CTX),
    "read_index_resp": _raft("read_index_resp", ctx=_CTX, commit=_INT),
    # a follower's proposal, for the leader to propose
    "forward": Schema(
        "raft forward message",
        {"type": (_RAFT_TYPE, REQUIRED), "src": (_node_id, REQUIRED), "data": (_RAFT_DATA, REQUIRED)},
    ),  # fmt: skip
}
_RAFT_TYPES = {t.value: t for t in MsgType}


@dataclass(frozen=True)
class Forward:
    """A follower's proposal (Raft message type "forward"), for the leader to propose."""

    src: str
    data: bytes


def _raft_msg(d: object, b: Budget) -> RaftMsg | Forward:
    f = _decode(_select(RAFT_SCHEMAS, "type", "raft message", d), d, b)  # type: ignore[arg-type]
    t = f.pop("type")
    if t == "forward":
        return Forward(f["src"], f["data"])
    if "snap_index" in f:
        f["snap"] = SnapshotMeta(f.pop("snap_index"), f.pop("snap_term"), f.pop("voters", ()))
    return RaftMsg(_RAFT_TYPES[t], f.pop("src"), f.pop("dst"), f.pop("term"), **f)


def raft_from_wire(d: object) -> RaftMsg | Forward:
    """The Raft message (or forwarded proposal) a peer sent; anything else is a RemoteProtocolError."""
    return _raft_msg(d, Budget(1, RAFT_MAX_BYTES))


def raft_to_wire(m: RaftMsg) -> dict[str, Any]:
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
    else:  # READ_INDEX, READ_INDEX_RESP
        d["ctx"] = m.ctx.hex()
        if t is MsgType.READ_INDEX_RESP:
            d["commit"] = m.commit
    return d


def forward_to_wire(src: str, data: bytes) -> dict[str, Any]:
    return {"type": "forward", "src": src, "data": data.hex()}


# -- PBFT ----------------------------------------------------------------------------------------------
def _proofs(v: Any, b: Budget) -> tuple[pbft.Msg, ...]:
    """The PBFT messages nested in one as its proofs (rule 3: bounded by the budget and the depth)."""
    if type(v) is not list or len(v) > PBFT_MAX_MSGS:
        raise _Invalid(f"is not a list of at most {PBFT_MAX_MSGS} messages")
    if b.depth >= PBFT_MAX_DEPTH:
        raise _Invalid(f"nests messages more than {PBFT_MAX_DEPTH} deep")
    b.depth += 1  # not restored on an error: that ends the decoding, and the budget with it
    out = []
    for i, x in enumerate(v):
        try:
            out.append(_pbft_msg(x, b))
        except RemoteProtocolError as exc:
            raise _Invalid(f"[{i}]: {exc}") from None
    b.depth -= 1
    return tuple(out)


_PBFT_TYPE = enum(*(t.value for t in pbft.MsgType))
_PBFT_HEAD = {"t": (_PBFT_TYPE, REQUIRED), "s": (_node_id, REQUIRED), "v": (_int, REQUIRED), "n": (_int, REQUIRED),
              "d": (hex_digest(PBFT_DIGEST_BYTES, empty=True), REQUIRED),
              "sig": (hex_bytes(PBFT_SIG_BYTES, sizes=(0, PBFT_SIG_BYTES)), REQUIRED)}  # fmt: skip
_DATA = (base64_bytes(PBFT_MAX_DATA), OPTIONAL)  # a REQUEST's command
_AUX = (
    hex_bytes(PBFT_SIG_BYTES, sizes=(PBFT_SIG_BYTES,)),
    OPTIONAL,
)  # a PREPARE's: the pre-prepare's signature
_P = (_proofs, OPTIONAL)


def _pbft(t: pbft.MsgType, **fields: tuple[Check, bool]) -> Schema:
    return Schema(f"pbft {t.value} message", {**_PBFT_HEAD, **fields})


# which optional fields each type may carry: as ``pbft.Msg`` documents them (``to_wire`` leaves empty ones out)
PBFT_SCHEMAS: dict[str, Schema] = {
    s.name.split()[1]: s
    for s in (
        _pbft(pbft.MsgType.REQUEST, data=_DATA),
        _pbft(pbft.MsgType.PRE_PREPARE, p=_P),
        _pbft(pbft.MsgType.PREPARE, aux=_AUX),
        _pbft(pbft.MsgType.COMMIT),
        _pbft(pbft.MsgType.CHECKPOINT),
        _pbft(pbft.MsgType.VIEW_CHANGE, p=_P),
        _pbft(pbft.MsgType.NEW_VIEW, p=_P),
        _pbft(pbft.MsgType.FETCH),
        _pbft(pbft.MsgType.ENTRIES, p=_P),
    )
}
_PBFT_TYPES = {t.value: t for t in pbft.MsgType}


def _pbft_msg(w: object, b: Budget) -> pbft.Msg:
    schema = _select(PBFT_SCHEMAS, "t", "pbft message", w)
    if b.messages < 1:
        raise _bad(f"{schema.name}: more than {PBFT_MAX_MSGS} messages in one")
    b.messages -= 1
    f = _decode(schema, w, b)  # type: ignore[arg-type]
    return pbft.Msg(_PBFT_TYPES[f["t"]], f["s"], f["v"], f["n"], f["d"], f.get("data", b""), f.get("p", ()),
                    f.get("aux", b""), f["sig"])  # fmt: skip


def pbft_from_wire(w: object) -> pbft.Msg:
    """The PBFT message a peer sent (or our storage holds), its proofs included; junk: RemoteProtocolError."""
    return _pbft_msg(w, Budget(PBFT_MAX_MSGS, PBFT_MAX_BYTES))


# -- epoch envelopes -----------------------------------------------------------------------------------
def _engine_body(v: Any, b: Budget) -> RaftMsg | pbft.Msg:
    """An engine message: a PBFT message (field "t") or a Raft one (field "type"), each within its own budget."""
    try:
        if type(v) is dict and "t" in v:
            return pbft_from_wire(v)
        if type(v) is dict and "type" in v:
            m = raft_from_wire(v)
            if isinstance(m, RaftMsg):
                return m
            raise _Invalid("is a raft forward message, not an engine message")  # kind "forward" carries those
    except RemoteProtocolError as exc:
        raise _Invalid(f"is not an engine message: {exc}") from None
    raise _Invalid("is not a raft or a pbft message")


# "sig": the sender's Ed25519 signature over the rest (adaptive mode; ``adaptive.signing_bytes``), checked
# by ``adaptive.Adaptive.incoming`` (rule 5); the Envelope does not carry it
_EPOCH_HEAD = {"type": (enum("epoch"), REQUIRED), "epoch": (_int, REQUIRED), "src": (_node_id, REQUIRED),
               "dst": (_node_id, REQUIRED), "kind": (enum(*EPOCH_KINDS), REQUIRED),
               "sig": (hex_bytes(PBFT_SIG_BYTES, sizes=(PBFT_SIG_BYTES,)), OPTIONAL)}  # fmt: skip
_STATE = (hex_bytes(MAX_STATE_BYTES), REQUIRED)
EPOCH_SCHEMAS: dict[str, Schema] = {
    "engine": Schema("epoch engine envelope", {**_EPOCH_HEAD, "body": (_engine_body, REQUIRED)}),
    "forward": Schema("epoch forward envelope", {**_EPOCH_HEAD, "data": (_RAFT_DATA, REQUIRED)}),
    "hint": Schema("epoch hint envelope", _EPOCH_HEAD),
    "state_req": Schema("epoch state_req envelope", {**_EPOCH_HEAD, "want": (_int, REQUIRED)}),
    "state": Schema("epoch state envelope", {**_EPOCH_HEAD, "data": _STATE}),
}


def epoch_from_wire(d: object, algorithm_of: Callable[[int], str | None]) -> Envelope:
    """The epoch envelope a peer sent.  ``algorithm_of(epoch)``: the algorithm ("raft" or "bft") this node
    runs in that epoch, or None if it runs none there: such an engine body is checked, then dropped."""
    schema = _select(EPOCH_SCHEMAS, "kind", "epoch envelope", d)
    f = _decode(schema, d, Budget(1, MAX_STATE_BYTES))  # type: ignore[arg-type]
    epoch, kind = f["epoch"], f["kind"]
    body: Any = f.get("want")  # state_req; a hint has no body
    if kind == "forward" or kind == "state":
        body = f["data"]
    elif kind == "engine":
        body = f["body"]
        alg = algorithm_of(epoch)
        if alg is None:
            body = None
        elif isinstance(body, RaftMsg) != (alg == "raft"):
            raise _bad(
                f"{schema.name}: field 'body' is not a {alg} message, and epoch {epoch} runs {alg} here"
            )
    return Envelope(epoch, f["src"], f["dst"], kind, body)


def epoch_to_wire(e: Envelope) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "epoch", "epoch": e.epoch, "src": e.src, "dst": e.dst, "kind": e.kind}
    if e.kind == "engine":
        d["body"] = e.body.to_wire() if isinstance(e.body, pbft.Msg) else raft_to_wire(e.body)
    elif e.kind in ("forward", "state"):
        d["data"] = e.body.hex()
    elif e.kind == "state_req":
        d["want"] = int(e.body)
    return d


# -- committed commands --------------------------------------------------------------------------------
def command_id(data: bytes) -> str | None:
    """The "id" ``RaftDriver.propose`` put last in a command: a slice, not a second JSON parse (None if not
    there; rule 6: a command is whatever a leader committed, so nothing about it may raise here)."""
    if data[-25:-19] == b',"id":' and data[-19:-18] == data[-2:-1] == b'"' and data[-1:] == b"}":
        return data[-18:-2].decode("ascii", "replace")
    try:
        cmd = json.loads(data)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError); nested too deep
        return None
    cid = cmd.get("id") if type(cmd) is dict else None
    return cid if type(cid) is str else None
