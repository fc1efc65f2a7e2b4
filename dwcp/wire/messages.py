"""Control messages of the transfer session: JSON objects in control frames.

Rules
-----
1. A control frame (any frame type but DATA) carries one JSON object,
   UTF-8, at most MAX_CONTROL_LEN bytes (the header rules bound it before
   it is read), except PAGE_HASHES, whose payload is raw little-endian u64
   page hashes and whose header ``offset`` is the first page index.
2. Every message is checked against a schema here: unknown or missing
   fields, wrong types, absurd values -> RemoteProtocolError(ERR_MALFORMED).
   Nothing downstream re-validates.
3. The payload's xxh3-64 is in the header (``raw_hash``) like any frame's
   and is verified before the JSON is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dwcp._backend import impl as _k
from dwcp.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C

__all__ = ["encode_control", "decode_control", "encode_dict", "SCHEMAS", "MAX_STREAMS", "MAX_OBJECT_BYTES",
           "MAX_DICT_BYTES", "MAX_FORWARD_HOPS", "HOP_STATES"]  # fmt: skip

MAX_STREAMS = 256
MAX_OBJECT_BYTES = 1 << 44  # 16 TiB
MAX_DICT_BYTES = 1 << 20  # a zstd dictionary (dwcp.codec.dictionaries)
MAX_FORWARD_HOPS = 8  # receivers a replicated send may name after the first (HELLO's forward.then)
HOP_STATES = ("stored", "failed", "pending")  # a downstream hop's state in DONE's forwarded.hops
_HEX32 = re.compile(r"[0-9a-f]{32}")  # with fullmatch: `$` would let a final "\n" by
_HEX64 = re.compile(r"[0-9a-f]{64}")

# field -> (type, required)
_T = bool | int | str
SCHEMAS: dict[int, dict[str, tuple[Any, bool]]] = {
    C.FRAME_HELLO: {
        "v": (int, True),
        "role": (str, True),  # "control" | "data"
        "op": (str, False),  # "send" | "fetch" (control)
        "transfer_id": (int, False),
        "key": (str, False),
        "size": (int, False),
        "digest": (str, False),
        "base_digest": (str, False),
        "chunk_size": (int, False),
        "page_size": (int, False),
        "streams": (int, False),
        "caps": (list, False),
        "token": (str, False),  # data streams: the token WELCOME gave
        "stream": (int, False),
        "seal": (
            str,
            False,
        ),  # data streams of a sealed transfer: the 32-byte secret (dwcp.security.aead), hex
        "node": (str, False),
        "rate": (int, False),  # op "push" (anti-entropy): the bytes/s the holder may send the version at
        "have": (
            str,
            False,
        ),  # op "fetch", resuming: hex of the chunk bitmap already held (with digest, chunk_size)
        # a send's writer, its HLC reading and the digest of the key's latest version as it saw it ("" none):
        # {"writer", "hlc", "parent"}, recorded with the version (dwcp.consensus.catalog: conflicts)
        "origin": (dict, False),
        # {"to": "HOST:PORT"}: relay the object on to the next hop; a replicated send adds "then" (the
        # chain's later hops, each relays to the next) and "ack" (verified copies the chain from "to" on
        # must hold before this receiver answers DONE; 0: answer at once and forward in the background)
        "forward": (dict, False),
        "dict": (dict, False),  # {"id", "digest", "size"}: the zstd dictionary the chunks may use
    },
    C.FRAME_WELCOME: {
        "mode": (str, True),  # "full" | "delta" | "pages"
        "base_digest": (str, False),
        "have": (str, False),  # hex of the received-chunk bitmap (resume)
        "token": (str, False),
        "size": (int, False),
        "digest": (str, False),
        "chunk_size": (int, False),
        "node": (str, False),
        "resumed_chunks": (int, False),
        "caps": (list, False),  # the capabilities both sides have (transport.session.negotiate)
        "region": (str, False),  # mode "probe": the answering node's region
        "links": (list, False),  # mode "probe": [[from, to, one-way latency s, bytes/s], ...] it measured
        "need_dict": (bool, False),  # the receiver lacks HELLO's dictionary: send it (FRAME_DICT)
    },
    C.FRAME_ACK: {"chunks": (list, True)},
    C.FRAME_NACK: {"chunk": (int, True), "reason": (str, True)},
    C.FRAME_DONE: {
        "digest": (str, False),
        "size": (int, False),
        "ok": (bool, False),
        "chunks": (int, False),
        # a relay's next hop: {"to", "seconds", "wire_bytes", "mode"}, and for a replicated send "hops":
        # [{"to", "state": stored | failed | pending, "error"}], every downstream hop's outcome
        "forwarded": (dict, False),
    },
    C.FRAME_ERROR: {"code": (int, True), "message": (str, True)},
    # a consensus message (Raft, an epoch envelope): its content is dwcp.consensus.wire's, the one validator
    # of every consensus message; here only its type, and the frame's bounds (MAX_CONTROL_LEN, JSON depth)
    C.FRAME_RAFT: {"type": (str, True)},
    C.FRAME_CLOSE: {"reason": (str, False)},
}


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, C.ERR_MALFORMED)


def _validate(frame_type: int, obj: Any, err=_bad) -> dict:
    schema = SCHEMAS.get(frame_type)
    if schema is None:
        raise err(f"frame type {frame_type} carries no JSON message")
    if not isinstance(obj, dict):
        raise err("control message is not a JSON object")
    if frame_type == C.FRAME_RAFT:
        if "type" not in obj:
            raise err("missing field 'type'")
        if not isinstance(obj["type"], str) or not 0 < len(obj["type"]) <= 64:
            raise err("field 'type' of a consensus message must be a str of 1 to 64 characters")
        return obj
    for k, v in obj.items():
        if k not in schema:
            raise err(f"unknown field {k!r} in a {frame_type} message")
        typ, _ = schema[k]
        if v is None and k in ("base_digest",):
            continue
        if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise err(f"field {k!r} must be an integer")
        if typ is not int and not isinstance(v, typ):
            raise err(f"field {k!r} must be {typ.__name__}")
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v < 1 << 64:
            raise err(f"field {k!r}={v} out of range")
        if isinstance(v, str) and len(v) > 4096 and k != "have":
            raise err(f"field {k!r} is too long")
    for k, (_, required) in schema.items():
        if required and k not in obj:
            raise err(f"missing field {k!r}")
    for k in ("digest", "base_digest"):
        v = obj.get(k)
        if v is not None and not _HEX32.fullmatch(v):
            raise err(f"field {k!r} is not 32 hex digits")
    if "streams" in obj and not 1 <= obj["streams"] <= MAX_STREAMS:
        raise err(f"streams={obj['streams']} outside [1, {MAX_STREAMS}]")
    if "size" in obj and obj["size"] > MAX_OBJECT_BYTES:
        raise err(f"object size {obj['size']} exceeds {MAX_OBJECT_BYTES}")
    if (
        "chunk_size" in obj
        and not (C.PAGE_SIZE <= obj["chunk_size"] <= C.MAX_RAW_LEN)
        or ("chunk_size" in obj and obj["chunk_size"] % C.PAGE_SIZE)
    ):
        raise err(f"chunk_size={obj['chunk_size']} must be a multiple of {C.PAGE_SIZE} in [4 KiB, 64 MiB]")
    if "page_size" in obj and obj["page_size"] != C.PAGE_SIZE:
        raise err(f"page_size={obj['page_size']}: this version speaks {C.PAGE_SIZE} only")
    if frame_type == C.FRAME_ACK:
        ch = obj["chunks"]
        if len(ch) > 65536 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 32
                                      for c in ch):  # fmt: skip
            raise err("ACK chunks must be at most 65536 integers in [0, 2**32)")
    if frame_type == C.FRAME_HELLO:
        if obj["role"] not in ("control", "data"):
            raise err(f"unknown role {obj['role']!r}")
        if obj["role"] == "control" and obj.get("op") not in (
            "send",
            "fetch",
            "probe",
            "raft",
            "push",
            "leaves",
        ):
            raise err(f"unknown op {obj.get('op')!r}")
        if obj["role"] == "data" and not _HEX64.fullmatch(obj.get("token", "")):
            raise err("data stream without a valid token")
        if "seal" in obj and (obj["role"] != "data" or not _HEX64.fullmatch(obj["seal"])):
            raise err("seal must be a data stream's 64 hex digits")
    if frame_type == C.FRAME_WELCOME and obj["mode"] not in (
        "full",
        "delta",
        "pages",
        "fetch",
        "probe",
        "leaves",
    ):
        raise err(f"unknown mode {obj['mode']!r}")
    links = obj.get("links")
    if links is not None and (len(links) > 4096 or not all(
        isinstance(x, list) and len(x) == 4 and all(isinstance(r, str) and 0 < len(r) <= 64 for r in x[:2])
        and all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e15 for v in x[2:])
        for x in links
    )):  # fmt: skip
        raise err("links must be at most 4096 [from, to, latency_s, bytes_per_s] entries")
    caps = obj.get("caps")
    if caps is not None and (len(caps) > 64 or not all(isinstance(c, str) and len(c) <= 64 for c in caps)):
        raise err("caps must be at most 64 strings of at most 64 characters")
    dd = obj.get("dict")
    if dd is not None and (
        set(dd) != {"id", "digest", "size"}
        or not all(isinstance(dd[k], int) and not isinstance(dd[k], bool) for k in ("id", "size"))
        or not 0 < dd["id"] < 1 << 32 or not 0 < dd["size"] <= MAX_DICT_BYTES
        or not isinstance(dd["digest"], str) or not _HEX32.fullmatch(dd["digest"])
    ):  # fmt: skip
        raise err(f"dict must be {{id: 1..2**32-1, digest: 32 hex digits, size: 1..{MAX_DICT_BYTES}}}")
    fw = obj.get("forward")
    if fw is not None and (
        not {"to"} <= set(fw) <= {"to", "then", "ack"} or not _addr(fw["to"])
        or not isinstance(fw.get("then", []), list) or len(fw.get("then", [])) > MAX_FORWARD_HOPS
        or not all(_addr(a) for a in fw.get("then", []))
        or not _small_int(fw.get("ack", 0), MAX_FORWARD_HOPS + 1)
    ):  # fmt: skip
        raise err(f'forward must be {{"to": "HOST:PORT", "then": [at most {MAX_FORWARD_HOPS} HOST:PORT], '
                  f'"ack": 0..{MAX_FORWARD_HOPS + 1}}}')  # fmt: skip
    og = obj.get("origin")
    if og is not None and (
        set(og) != {"writer", "hlc", "parent"} or not isinstance(og["writer"], str) or not 0 < len(og["writer"]) <= 128
        or not _small_int(og["hlc"], (1 << 63) - 1)
        or not isinstance(og["parent"], str) or not (og["parent"] == "" or _HEX32.fullmatch(og["parent"]))
    ):  # fmt: skip
        raise err('origin must be {"writer": a node id, "hlc": 0..2**63-1, "parent": 32 hex digits or ""}')
    fd = obj.get("forwarded")
    if fd is not None and (
        not {"to", "seconds", "wire_bytes", "mode"} <= set(fd) <= {"to", "seconds", "wire_bytes", "mode", "hops"}
        or not isinstance(fd["to"], str) or len(fd["to"]) > 300
        or not isinstance(fd["mode"], str) or len(fd["mode"]) > 16
        or not all(isinstance(fd[k], int | float) and not isinstance(fd[k], bool) and 0 <= fd[k] < 2**63
                   for k in ("seconds", "wire_bytes"))
        or not _hops(fd.get("hops", []))
    ):  # fmt: skip
        raise err("forwarded must be {to, seconds, wire_bytes, mode[, hops: [{to, state, error}]]}")
    return obj


def _addr(a: Any) -> bool:
    return isinstance(a, str) and 0 < len(a) <= 300


def _small_int(n: Any, hi: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= hi


def _hops(hops: Any) -> bool:
    """DONE's forwarded.hops: at most MAX_FORWARD_HOPS + 1 {to, state[, error]}."""
    return isinstance(hops, list) and len(hops) <= MAX_FORWARD_HOPS + 1 and all(
        isinstance(h, dict) and {"to", "state"} <= set(h) <= {"to", "state", "error"} and _addr(h["to"])
        and h["state"] in HOP_STATES and isinstance(h.get("error", ""), str) and len(h.get("error", "")) <= 500
        for h in hops
    )  # fmt: skip


def encode_control(frame_type: int, transfer_id: int, msg: dict) -> bytes:
    """One control frame (header + JSON payload)."""
    _validate(frame_type, msg, err=lambda m: LocalProtocolError(m, C.ERR_MALFORMED))
    body = json.dumps(msg, separators=(",", ":")).encode()
    return (
        _k.pack_header(
            frame_type, C.CODEC_RAW, 0, transfer_id, 0, len(body), len(body), raw_hash=_k.xxh3_64(body)
        )
        + body
    )


def encode_page_hashes(transfer_id: int, first_page: int, hashes: bytes) -> bytes:
    if len(hashes) % 8:
        raise LocalProtocolError("page hashes must be whole u64s", C.ERR_MALFORMED)
    return (
        _k.pack_header(
            C.FRAME_PAGE_HASHES,
            C.CODEC_RAW,
            0,
            transfer_id,
            first_page,
            len(hashes),
            len(hashes),
            raw_hash=_k.xxh3_64(hashes),
        )  # fmt: skip
        + hashes
    )


def encode_dict(transfer_id: int, dict_id: int, data: bytes) -> bytes:
    """A FRAME_DICT: the dictionary's bytes, its zstd id in the offset field."""
    if not 0 < len(data) <= MAX_DICT_BYTES or not 0 < dict_id < 1 << 32:
        raise LocalProtocolError(f"dictionary {dict_id} of {len(data)} bytes", C.ERR_BAD_LENGTH)
    return _k.pack_header(C.FRAME_DICT, C.CODEC_RAW, 0, transfer_id, dict_id, len(data), len(data),
                          raw_hash=_k.xxh3_64(data)) + data  # fmt: skip


def verify_payload(header, payload) -> None:
    if _k.xxh3_64(payload) != header.raw_hash:
        raise IntegrityError(f"control frame type {header.frame_type} fails its checksum", C.ERR_CHECKSUM)


def decode_control(header, payload) -> dict:
    """Validate and parse one control frame's JSON payload."""
    verify_payload(header, payload)
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: malformed too
        raise _bad(f"control payload is not JSON: {exc}") from None
    return _validate(header.frame_type, obj)
