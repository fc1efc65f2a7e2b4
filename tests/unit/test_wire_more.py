"""More wire tests: every schema rule of dwcp.wire.messages.

Each bad control message is checked both ways: decoding it (a peer sent it) raises
RemoteProtocolError(ERR_MALFORMED), encoding it (we tried to send it) raises
LocalProtocolError(ERR_MALFORMED), and the error names the offending field.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp._backend import impl as _k
from dwcp.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C
from dwcp.wire import messages as M

TOKEN = "ab" * 32
DIGEST = "0123456789abcdef" * 2

GOOD = {
    C.FRAME_HELLO: {"v": 1, "role": "control", "op": "send"},
    C.FRAME_WELCOME: {"mode": "full"},
    C.FRAME_ACK: {"chunks": [0, 1]},
    C.FRAME_NACK: {"chunk": 1, "reason": "bad"},
    C.FRAME_DONE: {},
    C.FRAME_ERROR: {"code": 1, "message": "m"},
    C.FRAME_RAFT: {"type": "append", "src": "a"},
    C.FRAME_CLOSE: {},
}


def raw_frame(frame_type: int, payload: bytes, *, transfer_id: int = 7, raw_hash: int | None = None) -> bytes:
    """A control frame carrying ``payload`` verbatim (not necessarily valid JSON)."""
    h = _k.xxh3_64(payload) if raw_hash is None else raw_hash
    n = len(payload)
    return _k.pack_header(frame_type, C.CODEC_RAW, 0, transfer_id, 0, n, n, raw_hash=h) + payload


def split(frame: bytes):
    return _k.parse_header(frame, 0), frame[C.HEADER_SIZE :]


def decode_raw(frame_type: int, payload: bytes) -> dict:
    return M.decode_control(*split(raw_frame(frame_type, payload)))


def decode_obj(frame_type: int, obj) -> dict:
    return decode_raw(frame_type, json.dumps(obj).encode())


def with_(frame_type: int, **fields) -> dict:
    d = dict(GOOD[frame_type])
    d.update(fields)
    return d


def without(frame_type: int, field: str) -> dict:
    d = dict(GOOD[frame_type])
    del d[field]
    return d


H, W, A, N, D, E, R, X = (C.FRAME_HELLO, C.FRAME_WELCOME, C.FRAME_ACK, C.FRAME_NACK, C.FRAME_DONE,
                          C.FRAME_ERROR, C.FRAME_RAFT, C.FRAME_CLOSE)  # fmt: skip
LINK = ["eu", "us", 0.04, 1_000_000]
FWD = {"to": "h:1", "seconds": 1.5, "wire_bytes": 10, "mode": "full"}
HOP = {"to": "h:2", "state": "failed", "error": "ConnectionRefusedError"}
ORIGIN = {"writer": "eu-1", "hlc": 123 << 16, "parent": "ab" * 16}
ENTRY = [1, 2, "data", "00"]

# (frame type, message, regex the error must match: it names the field or rule)
BAD = [
    pytest.param(C.FRAME_DATA, {}, "carries no JSON", id="data-frame-has-no-schema"),
    pytest.param(C.FRAME_PAGE_HASHES, {}, "carries no JSON", id="page-hashes-has-no-schema"),
    pytest.param(H, [1, 2], "not a JSON object", id="array"),
    pytest.param(H, "hello", "not a JSON object", id="string"),
    pytest.param(H, with_(H, bogus=1), "unknown field 'bogus'", id="unknown-field"),
    pytest.param(X, {"reason": "r", "x": 1}, "unknown field 'x'", id="unknown-field-close"),
    pytest.param(H, with_(H, v=True), "'v' must be an integer", id="bool-for-int"),
    pytest.param(H, with_(H, size=1.0), "'size' must be an integer", id="float-for-int"),
    pytest.param(H, with_(H, size="1"), "'size' must be an integer", id="str-for-int"),
    pytest.param(H, with_(H, key=1), "'key' must be str", id="int-for-str"),
    pytest.param(H, with_(H, digest=None), "'digest' must be str", id="null-digest"),
    pytest.param(A, {"chunks": {}}, "'chunks' must be list", id="dict-for-list"),
    pytest.param(H, with_(H, forward=["h:1"]), "'forward' must be dict", id="list-for-dict"),
    pytest.param(D, {"ok": 1}, "'ok' must be bool", id="int-for-bool"),
    pytest.param(H, with_(H, transfer_id=-1), "'transfer_id'=-1 out of range", id="negative-int"),
    pytest.param(H, with_(H, transfer_id=1 << 64), "'transfer_id'=.* out of range", id="int-2**64"),
    pytest.param(H, with_(H, key="k" * 4097), "'key' is too long", id="long-str"),
    pytest.param(H, without(H, "role"), "missing field 'role'", id="missing-role"),
    pytest.param(H, without(H, "v"), "missing field 'v'", id="missing-v"),
    pytest.param(N, without(N, "reason"), "missing field 'reason'", id="missing-reason"),
    pytest.param(E, without(E, "code"), "missing field 'code'", id="missing-code"),
    pytest.param(W, {}, "missing field 'mode'", id="missing-mode"),
    pytest.param(H, with_(H, digest=DIGEST.upper()), "'digest' is not 32 hex", id="upper-hex-digest"),
    pytest.param(H, with_(H, digest=DIGEST[:-1]), "'digest' is not 32 hex", id="short-digest"),
    pytest.param(W, with_(W, base_digest="z" * 32), "'base_digest' is not 32 hex", id="bad-base-digest"),
    pytest.param(H, with_(H, streams=0), r"streams=0 outside \[1, 256\]", id="streams-0"),
    pytest.param(H, with_(H, streams=257), "streams=257 outside", id="streams-257"),
    pytest.param(H, with_(H, size=M.MAX_OBJECT_BYTES + 1), "object size .* exceeds", id="size-too-big"),
    pytest.param(H, with_(H, chunk_size=C.PAGE_SIZE - 1), "chunk_size=4095", id="chunk-small"),
    pytest.param(H, with_(H, chunk_size=3 * C.PAGE_SIZE + 1), "chunk_size=", id="chunk-not-pages"),
    pytest.param(H, with_(H, chunk_size=C.MAX_RAW_LEN + C.PAGE_SIZE), "chunk_size=", id="chunk-big"),
    pytest.param(W, with_(W, chunk_size=0), "chunk_size=0", id="chunk-0-welcome"),
    pytest.param(H, with_(H, page_size=8192), "page_size=8192", id="page-size"),
    pytest.param(A, {"chunks": [-1]}, "ACK chunks", id="ack-negative"),
    pytest.param(A, {"chunks": [1 << 32]}, "ACK chunks", id="ack-2**32"),
    pytest.param(A, {"chunks": [True]}, "ACK chunks", id="ack-bool"),
    pytest.param(A, {"chunks": ["1"]}, "ACK chunks", id="ack-str"),
    pytest.param(A, {"chunks": [0] * 65537}, "ACK chunks", id="ack-too-many"),
    pytest.param(H, with_(H, role="admin"), "unknown role 'admin'", id="role"),
    pytest.param(H, with_(H, op="delete"), "unknown op 'delete'", id="op"),
    pytest.param(H, without(H, "op"), "unknown op None", id="control-without-op"),
    pytest.param(H, {"v": 1, "role": "data"}, "without a valid token", id="data-without-token"),
    pytest.param(H, {"v": 1, "role": "data", "token": TOKEN[:-1]}, "valid token", id="short-token"),
    pytest.param(H, {"v": 1, "role": "data", "token": TOKEN.upper()}, "valid token", id="upper-token"),
    pytest.param(W, {"mode": "partial"}, "unknown mode 'partial'", id="mode"),
    pytest.param(R, {"src": "a"}, "missing field 'type'", id="raft-without-type"),
    pytest.param(R, {"type": 3}, "'type' of a consensus message", id="raft-type-int"),
    pytest.param(R, {"type": "t" * 65}, "'type' of a consensus message", id="raft-type-long"),
    pytest.param(W, with_(W, mode="probe", links=[LINK[:3]]), "links", id="link-3-long"),
    pytest.param(W, with_(W, mode="probe", links=[["", "us", 0, 0]]), "links", id="link-empty-region"),
    pytest.param(W, with_(W, mode="probe", links=[["r" * 65, "us", 0, 0]]), "links", id="link-long-region"),
    pytest.param(W, with_(W, mode="probe", links=[["eu", 1, 0, 0]]), "links", id="link-int-region"),
    pytest.param(W, with_(W, mode="probe", links=[["eu", "us", -0.1, 0]]), "links", id="link-negative"),
    pytest.param(W, with_(W, mode="probe", links=[["eu", "us", 0, 1e15]]), "links", id="link-1e15"),
    pytest.param(W, with_(W, mode="probe", links=[["eu", "us", True, 0]]), "links", id="link-bool"),
    pytest.param(W, with_(W, mode="probe", links=[["eu", "us", "1", 0]]), "links", id="link-str"),
    pytest.param(W, with_(W, mode="probe", links=["x"]), "links", id="link-not-list"),
    pytest.param(W, with_(W, mode="probe", links=[LINK] * 4097), "links", id="too-many-links"),
    pytest.param(H, with_(H, caps=["c"] * 65), "caps", id="too-many-caps"),
    pytest.param(H, with_(H, caps=["c" * 65]), "caps", id="long-cap"),
    pytest.param(W, with_(W, caps=[1]), "caps", id="int-cap"),
    pytest.param(H, with_(H, forward={}), "forward must be", id="forward-empty"),
    pytest.param(H, with_(H, forward={"to": "h:1", "via": "x"}), "forward must be", id="forward-extra"),
    pytest.param(H, with_(H, forward={"to": 1}), "forward must be", id="forward-int"),
    pytest.param(H, with_(H, forward={"to": ""}), "forward must be", id="forward-empty-to"),
    pytest.param(H, with_(H, forward={"to": "h" * 301}), "forward must be", id="forward-long"),
    pytest.param(D, {"forwarded": {"to": "h:1"}}, "forwarded must be", id="forwarded-missing"),
    pytest.param(D, {"forwarded": {**FWD, "x": 1}}, "forwarded must be", id="forwarded-extra"),
    pytest.param(D, {"forwarded": {**FWD, "to": 1}}, "forwarded must be", id="forwarded-to-int"),
    pytest.param(D, {"forwarded": {**FWD, "to": "h" * 301}}, "forwarded must be", id="forwarded-to-long"),
    pytest.param(D, {"forwarded": {**FWD, "mode": 1}}, "forwarded must be", id="forwarded-mode-int"),
    pytest.param(D, {"forwarded": {**FWD, "mode": "m" * 17}}, "forwarded must be", id="forwarded-mode-long"),
    pytest.param(D, {"forwarded": {**FWD, "seconds": -1}}, "forwarded must be", id="forwarded-negative"),
    pytest.param(D, {"forwarded": {**FWD, "wire_bytes": True}}, "forwarded must be", id="forwarded-bool"),
    pytest.param(D, {"forwarded": {**FWD, "wire_bytes": 2**63}}, "forwarded must be", id="forwarded-2**63"),
    pytest.param(D, {"forwarded": {**FWD, "seconds": "1"}}, "forwarded must be", id="forwarded-str"),
    # a replication chain (HELLO's forward.then / ack, DONE's forwarded.hops)
    pytest.param(
        H, with_(H, forward={"to": "h:1", "then": ["h:2"] * 9}), "forward must be", id="chain-too-long"
    ),
    pytest.param(H, with_(H, forward={"to": "h:1", "then": "h:2"}), "forward must be", id="chain-not-list"),
    pytest.param(H, with_(H, forward={"to": "h:1", "then": [2]}), "forward must be", id="chain-int-hop"),
    pytest.param(H, with_(H, forward={"to": "h:1", "then": [""]}), "forward must be", id="chain-empty-hop"),
    pytest.param(H, with_(H, forward={"to": "h:1", "ack": True}), "forward must be", id="ack-bool"),
    pytest.param(H, with_(H, forward={"to": "h:1", "ack": -1}), "forward must be", id="ack-negative"),
    pytest.param(H, with_(H, forward={"to": "h:1", "ack": 10}), "forward must be", id="ack-10"),
    pytest.param(H, with_(H, forward={"to": "h:1", "ack": "1"}), "forward must be", id="ack-str"),
    pytest.param(D, {"forwarded": {**FWD, "hops": {}}}, "forwarded must be", id="hops-not-list"),
    pytest.param(D, {"forwarded": {**FWD, "hops": [HOP] * 10}}, "forwarded must be", id="hops-too-many"),
    pytest.param(
        D, {"forwarded": {**FWD, "hops": [{**HOP, "state": "gone"}]}}, "forwarded must be", id="hop-state"
    ),
    pytest.param(
        D, {"forwarded": {**FWD, "hops": [{**HOP, "state": []}]}}, "forwarded must be", id="hop-state-list"
    ),
    pytest.param(D, {"forwarded": {**FWD, "hops": [{"to": "h:1"}]}}, "forwarded must be", id="hop-no-state"),
    pytest.param(D, {"forwarded": {**FWD, "hops": [{**HOP, "x": 1}]}}, "forwarded must be", id="hop-extra"),
    pytest.param(
        D, {"forwarded": {**FWD, "hops": [{**HOP, "error": 1}]}}, "forwarded must be", id="hop-error-int"
    ),
    pytest.param(
        D,
        {"forwarded": {**FWD, "hops": [{**HOP, "error": "e" * 501}]}},
        "forwarded must be",
        id="hop-error-long",
    ),
    pytest.param(D, {"forwarded": {**FWD, "hops": ["h:1"]}}, "forwarded must be", id="hop-not-dict"),
    pytest.param(H, with_(H, origin={**ORIGIN, "x": 1}), "origin must be", id="origin-extra"),
    pytest.param(H, with_(H, origin={"writer": "w", "hlc": 1}), "origin must be", id="origin-missing"),
    pytest.param(H, with_(H, origin={**ORIGIN, "writer": ""}), "origin must be", id="origin-no-writer"),
    pytest.param(
        H, with_(H, origin={**ORIGIN, "writer": "w" * 129}), "origin must be", id="origin-long-writer"
    ),
    pytest.param(H, with_(H, origin={**ORIGIN, "hlc": -1}), "origin must be", id="origin-negative-hlc"),
    pytest.param(H, with_(H, origin={**ORIGIN, "hlc": 1 << 63}), "origin must be", id="origin-hlc-2**63"),
    pytest.param(H, with_(H, origin={**ORIGIN, "hlc": True}), "origin must be", id="origin-bool-hlc"),
    pytest.param(
        H, with_(H, origin={**ORIGIN, "parent": "AB" * 16}), "origin must be", id="origin-upper-hex"
    ),
    pytest.param(
        H, with_(H, origin={**ORIGIN, "parent": "ab" * 15}), "origin must be", id="origin-short-parent"
    ),
    pytest.param(H, with_(H, origin={**ORIGIN, "parent": None}), "origin must be", id="origin-null-parent"),
]


@pytest.mark.parametrize("frame_type, obj, match", BAD)
def test_schema_refuses_bad_message_from_peer(frame_type, obj, match):
    """decode_control: a bad message from the peer is RemoteProtocolError(ERR_MALFORMED) naming the field."""
    with pytest.raises(RemoteProtocolError, match=match) as ei:
        decode_obj(frame_type, obj)
    assert ei.value.code == C.ERR_MALFORMED
    assert not isinstance(ei.value, IntegrityError)


@pytest.mark.parametrize("frame_type, obj, match", BAD)
def test_schema_refuses_bad_message_we_send(frame_type, obj, match):
    """encode_control: sending a bad message is our bug: LocalProtocolError(ERR_MALFORMED), nothing encoded."""
    with pytest.raises(LocalProtocolError, match=match) as ei:
        M.encode_control(frame_type, 1, obj)
    assert ei.value.code == C.ERR_MALFORMED


GOOD_EDGES = [
    pytest.param(H, {"v": 1, "role": "data", "token": TOKEN, "stream": 3}, id="data-stream"),
    pytest.param(H, with_(H, op="fetch", streams=1, chunk_size=C.PAGE_SIZE, page_size=C.PAGE_SIZE), id="min"),
    pytest.param(H, with_(H, op="probe", streams=M.MAX_STREAMS, chunk_size=C.MAX_RAW_LEN), id="max"),
    pytest.param(H, with_(H, op="raft", size=M.MAX_OBJECT_BYTES, transfer_id=(1 << 64) - 1), id="max-ints"),
    pytest.param(H, with_(H, digest=DIGEST, base_digest=None, key="k" * 4096), id="null-base-digest"),
    pytest.param(H, with_(H, forward={"to": "h" * 300}, caps=["c" * 64] * 64), id="forward-caps-max"),
    pytest.param(W, {"mode": "pages", "have": "f" * 10000, "base_digest": DIGEST}, id="have-is-long"),
    pytest.param(W, {"mode": "probe", "region": "eu", "links": [LINK] * 4096}, id="links-max"),
    pytest.param(W, {"mode": "probe", "links": [["r" * 64, "u", 0, 1e15 - 1]]}, id="link-edges"),
    pytest.param(A, {"chunks": [0, (1 << 32) - 1]}, id="ack-edges"),
    pytest.param(A, {"chunks": [0] * 65536}, id="ack-max"),
    pytest.param(A, {"chunks": []}, id="ack-empty"),
    pytest.param(D, {"ok": True, "digest": DIGEST, "forwarded": FWD}, id="done-forwarded"),
    pytest.param(D, {"forwarded": {**FWD, "to": "h" * 300, "mode": "m" * 16, "seconds": 0}}, id="fwd-edges"),
    pytest.param(
        H,
        with_(
            H, forward={"to": "h:1", "then": ["h" * 300] * M.MAX_FORWARD_HOPS, "ack": M.MAX_FORWARD_HOPS + 1}
        ),
        id="chain-max",
    ),  # fmt: skip
    pytest.param(H, with_(H, forward={"to": "h:1", "then": [], "ack": 0}), id="chain-empty"),
    pytest.param(
        H, with_(H, origin={"writer": "w" * 128, "hlc": (1 << 63) - 1, "parent": ""}), id="origin-edges"
    ),
    pytest.param(H, with_(H, origin=ORIGIN), id="origin"),
    pytest.param(
        D,
        {
            "forwarded": {
                **FWD,
                "hops": [{**HOP, "error": "e" * 500}]
                + [{"to": "h:3", "state": s} for s in M.HOP_STATES] * 2
                + [HOP] * 2,
            }
        },
        id="hops-max",
    ),  # fmt: skip
    # a consensus message's content is dwcp.consensus.wire's (tests/unit/test_consensus_wire.py): the
    # frame layer passes it on whole, an epoch state answer of 8 MiB included
    pytest.param(R, with_(R, data="0" * (8 << 20), ctx="c" * 5000), id="raft"),
    pytest.param(
        R, {"type": "epoch", "src": "a", "epoch": 3, "kind": "engine", "body": {"any": [1]}}, id="epoch"
    ),
    pytest.param(X, {"reason": "bye"}, id="close"),
]


@pytest.mark.parametrize("frame_type, obj", GOOD_EDGES)
def test_schema_accepts_edge_values_and_round_trips(frame_type, obj):
    """Values at the edge of every bound are accepted, and encode -> parse the header -> decode gives them back."""
    frame = M.encode_control(frame_type, 99, obj)
    h, payload = split(frame)
    assert (h.frame_type, h.codec, h.transfer_id) == (frame_type, C.CODEC_RAW, 99)
    assert h.raw_len == h.enc_len == len(payload) == len(frame) - C.HEADER_SIZE
    assert M.decode_control(h, payload) == obj


@pytest.mark.parametrize("kind", sorted(M.SCHEMAS))
def test_every_schema_has_a_minimal_valid_message(kind):
    """Each frame type with a schema accepts its minimal message; required fields are exactly the ones refused missing."""
    assert M.decode_control(*split(M.encode_control(kind, 0, GOOD[kind]))) == GOOD[kind]
    for field, (_, required) in M.SCHEMAS[kind].items():
        if required:
            with pytest.raises(RemoteProtocolError, match=f"missing field '{field}'"):
                decode_obj(kind, without(kind, field))


def test_encode_is_compact_json():
    frame = M.encode_control(C.FRAME_NACK, 5, {"chunk": 3, "reason": "r"})
    assert frame[C.HEADER_SIZE :] == b'{"chunk":3,"reason":"r"}'


def test_checksum_is_verified_before_json_is_parsed():
    """Rule 3: a payload whose xxh3-64 does not match the header is an IntegrityError(ERR_CHECKSUM),
    even when it is not JSON at all."""
    for payload in (b'{"mode":"full"}', b"\xff not json"):
        hdr, body = split(raw_frame(C.FRAME_WELCOME, payload, raw_hash=_k.xxh3_64(payload) ^ 1))
        with pytest.raises(IntegrityError, match="checksum") as ei:
            M.decode_control(hdr, body)
        assert ei.value.code == C.ERR_CHECKSUM


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b'{"mode": "full"} trailing',
        b"\xef\xbb\xbf{}",
        b'{"size": ' + b"1" * 5000 + b"}",
    ],
    ids=["empty", "unterminated", "not-utf8", "trailing", "bom", "huge-int-literal"],
)
def test_non_json_payload_is_malformed(payload):
    with pytest.raises(RemoteProtocolError, match="not JSON") as ei:
        decode_raw(C.FRAME_DONE, payload)
    assert ei.value.code == C.ERR_MALFORMED


@pytest.mark.parametrize("payload", [b"null", b"1", b'"x"', b"[]", b"true"])
def test_json_scalar_is_not_a_message(payload):
    with pytest.raises(RemoteProtocolError, match="not a JSON object"):
        decode_raw(C.FRAME_DONE, payload)


def test_nan_and_infinity_are_refused_where_numbers_are_bounded():
    """Python's json accepts NaN/Infinity literals; the bounds must still refuse them."""
    for lit in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(RemoteProtocolError, match="links"):
            decode_raw(W, b'{"mode":"probe","links":[["a","b",' + lit + b",1]]}")
        with pytest.raises(RemoteProtocolError, match="forwarded"):
            decode_raw(D, b'{"forwarded":{"to":"h","mode":"m","wire_bytes":1,"seconds":' + lit + b"}}")
        with pytest.raises(RemoteProtocolError, match="'size' must be an integer"):
            decode_raw(H, b'{"v":1,"role":"control","op":"send","size":' + lit + b"}")


def test_deeply_nested_json_is_malformed_not_recursion_error():
    """A peer can send a small (~100 KB, far below MAX_CONTROL_LEN) deeply nested JSON payload;
    it must be refused like any malformed message, not crash the reader with RecursionError."""
    with pytest.raises(RemoteProtocolError) as ei:
        decode_raw(C.FRAME_DONE, b"[" * 100_000)
    assert ei.value.code == C.ERR_MALFORMED


@pytest.mark.parametrize(
    "frame_type, obj",
    [
        (H, with_(H, digest=DIGEST + "\n")),
        (W, with_(W, base_digest=DIGEST + "\n")),
        (H, {"v": 1, "role": "data", "token": TOKEN + "\n"}),
    ],
    ids=["digest", "base-digest", "token"],
)
def test_hex_fields_refuse_trailing_newline(frame_type, obj):
    """A digest is exactly 32 hex digits and a token exactly 64: 33/65 characters are malformed."""
    with pytest.raises(RemoteProtocolError, match="digest|token"):
        decode_obj(frame_type, obj)


# -- PAGE_HASHES ---------------------------------------------------------------------------------------


def test_page_hashes_frame():
    """PAGE_HASHES carries raw u64s (not JSON); the header offset is the first page index."""
    hashes = b"".join(i.to_bytes(8, "little") for i in (1, 2, 3))
    frame = M.encode_page_hashes(11, 4096, hashes)
    hdr, body = split(frame)
    assert (hdr.frame_type, hdr.transfer_id, hdr.offset, hdr.raw_len, hdr.enc_len) == (
        C.FRAME_PAGE_HASHES, 11, 4096, 24, 24,
    )  # fmt: skip
    assert body == hashes
    M.verify_payload(hdr, body)
    with pytest.raises(IntegrityError) as ei:
        M.verify_payload(hdr, b"\x09" + body[1:])
    assert ei.value.code == C.ERR_CHECKSUM
    with pytest.raises(RemoteProtocolError, match="not JSON|carries no JSON"):
        M.decode_control(hdr, body)  # raw hashes are no control message


@pytest.mark.parametrize("n", [1, 7, 9, 15])
def test_page_hashes_must_be_whole_u64s(n):
    with pytest.raises(LocalProtocolError, match="whole u64s") as ei:
        M.encode_page_hashes(1, 0, b"\0" * n)
    assert ei.value.code == C.ERR_MALFORMED


# -- fuzzing the decoder -----------------------------------------------------------------------------------

_FIELDS = sorted({k for s in M.SCHEMAS.values() for k in s} | {"zzz"})
_scalars = st.none() | st.booleans() | st.integers(-2, 2**64 + 1) | st.floats() | st.text(max_size=40)
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=20)  # fmt: skip


@given(
    st.sampled_from(sorted(M.SCHEMAS) + [C.FRAME_DATA, C.FRAME_PAGE_HASHES]),
    st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=6),
)
def test_fuzz_messages_give_a_dict_or_a_protocol_error(frame_type, obj):
    """Any JSON object decodes to itself or raises RemoteProtocolError(ERR_MALFORMED); encode agrees with decode."""
    try:
        got = decode_obj(frame_type, obj)
    except RemoteProtocolError as exc:
        assert exc.code == C.ERR_MALFORMED
        with pytest.raises(LocalProtocolError):
            M.encode_control(frame_type, 0, obj)
    else:
        assert json.dumps(got) == json.dumps(obj)
        M.encode_control(frame_type, 0, obj)


@given(st.sampled_from(sorted(M.SCHEMAS)), st.binary(max_size=200))
def test_fuzz_payload_bytes_give_a_dict_or_a_protocol_error(frame_type, payload):
    try:
        got = decode_raw(frame_type, payload)
    except RemoteProtocolError as exc:
        assert exc.code == C.ERR_MALFORMED
    else:
        assert isinstance(got, dict)
