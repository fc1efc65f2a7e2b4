"""dwcp.consensus.wire by its rules: every consensus message a peer can send, valid and broken.

Valid messages of every type round-trip (encode -> JSON -> decode gives the message, and encoding it again
gives the same JSON); each rule has a message that only that rule refuses; and fuzzing shows that any
JSON-ish value, or a valid message mutated anywhere, decodes to a message or raises RemoteProtocolError.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.consensus import pbft, raft
from dwcp.consensus import wire as W
from dwcp.consensus.epochs import MAX_STATE_BYTES, Envelope
from dwcp.consensus.raft import Entry, MsgType, SnapshotMeta
from dwcp.errors import RemoteProtocolError
from dwcp.wire import consts as C

SIG = bytes(range(64))
AUX = bytes(range(64, 128))
DIGEST = "0123456789abcdef" * 4
PT = pbft.MsgType


def rmsg(t: MsgType, **kw: Any) -> raft.Msg:
    return raft.Msg(t, "n1", "n2.dc-1", 7, **kw)


RAFT = {
    "vote": rmsg(MsgType.VOTE, last_index=12, last_term=6),
    "prevote": rmsg(MsgType.PREVOTE, last_index=0, last_term=0),
    "vote_resp": rmsg(MsgType.VOTE_RESP, granted=True),
    "prevote_resp": rmsg(MsgType.PREVOTE_RESP, granted=False),
    "append": rmsg(
        MsgType.APPEND,
        prev_index=3,
        prev_term=2,
        commit=3,
        read_seq=9,
        entries=(Entry(7, 4, "data", b'{"op":"x"}'), Entry(7, 5, "noop"), Entry(7, 6, "conf", b"\0")),
    ),  # fmt: skip
    "append_resp": rmsg(MsgType.APPEND_RESP, success=True, match=6, read_seq=9),
    "snap": rmsg(
        MsgType.SNAP,
        snap=SnapshotMeta(100, 6, ("n1", "n2.dc-1", "n3")),
        offset=4096,
        done=True,
        data=b"chunk",
        read_seq=1,
    ),  # fmt: skip
    "snap_resp": rmsg(MsgType.SNAP_RESP, snap=SnapshotMeta(100, 6), match=4101, read_seq=1),
    "read_index": rmsg(MsgType.READ_INDEX, ctx=b"12345678"),
    "read_index_resp": rmsg(MsgType.READ_INDEX_RESP, ctx=b"12345678", commit=44),
}
FORWARD = W.Forward("n3", b'{"op":"version"}')


def pmsg(t: pbft.MsgType, **kw: Any) -> pbft.Msg:
    return pbft.Msg(t, "n1", sig=SIG, **kw)


_REQ = pmsg(PT.REQUEST, seq=3, digest=DIGEST, data=b'{"op":"version","key":"k"}')
_PP = pmsg(PT.PRE_PREPARE, view=1, seq=5, digest=DIGEST, proofs=(_REQ,))
_PREP = pbft.Msg(PT.PREPARE, "n2", 1, 5, DIGEST, aux=AUX, sig=SIG)
_CKPT = pmsg(PT.CHECKPOINT, seq=16, digest=DIGEST)
_VC = pmsg(PT.VIEW_CHANGE, view=2, seq=16, digest=DIGEST, proofs=(_CKPT, _PP, _PREP))
PBFT = {
    "request": _REQ,
    "pre_prepare": _PP,
    "prepare": _PREP,
    "commit": pmsg(PT.COMMIT, view=1, seq=5, digest=DIGEST),
    "checkpoint": _CKPT,
    "view_change": _VC,
    "new_view": pmsg(PT.NEW_VIEW, view=2, digest=DIGEST, proofs=(_VC, _VC, _PP)),
    "fetch": pbft.Msg(PT.FETCH, "n3", 2, 16),  # unsigned, no digest: the empty forms
    "entries": pmsg(PT.ENTRIES, seq=16, digest=DIGEST, proofs=(_CKPT, _PP)),
}
EPOCH = {
    "engine-raft": Envelope(3, "n1", "n2", "engine", RAFT["append"]),
    "engine-bft": Envelope(4, "n1", "n2", "engine", PBFT["new_view"]),
    "forward": Envelope(3, "n1", "n2", "forward", b'{"op":"drop"}'),
    "hint": Envelope(3, "n1", "n2", "hint"),
    "state_req": Envelope(3, "n1", "n2", "state_req", 5),
    "state": Envelope(5, "n1", "n2", "state", b"\x00catalog"),
}


def algorithm_of(epoch: int) -> str | None:
    return {3: "raft", 4: "bft"}.get(epoch)


def jsonly(d: Any) -> Any:
    """What the peer's JSON turns into here."""
    return json.loads(json.dumps(d))


def raft_wire(k: str) -> dict:
    return jsonly(W.raft_to_wire(RAFT[k]) if k != "forward" else W.forward_to_wire(FORWARD.src, FORWARD.data))


def pbft_wire(k: str) -> dict:
    return jsonly(PBFT[k].to_wire())


def epoch_wire(k: str) -> dict:
    return jsonly(W.epoch_to_wire(EPOCH[k]))


def epoch_from_wire(d: object) -> Envelope:
    return W.epoch_from_wire(d, algorithm_of)


WIRE = {"raft": raft_wire, "pbft": pbft_wire, "epoch": epoch_wire}
DECODE = {"raft": W.raft_from_wire, "pbft": W.pbft_from_wire, "epoch": epoch_from_wire}
SAMPLES = (
    [("raft", k) for k in [*RAFT, "forward"]] + [("pbft", k) for k in PBFT] + [("epoch", k) for k in EPOCH]
)
SAMPLE_IDS = [f"{p}-{k}" for p, k in SAMPLES]


def refused(proto: str, d: object, match: str) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError, match=match) as ei:
        DECODE[proto](d)
    assert ei.value.code == C.ERR_MALFORMED
    return ei.value


# -- valid messages round-trip -------------------------------------------------------------------------------
def test_every_message_type_has_a_sample():
    assert set(RAFT) | {"forward"} == set(W.RAFT_SCHEMAS)
    assert set(PBFT) == set(W.PBFT_SCHEMAS)
    assert {k.split("-")[0] for k in EPOCH} == set(W.EPOCH_SCHEMAS)


@pytest.mark.parametrize("k", RAFT)
def test_raft_round_trip(k):
    w = raft_wire(k)
    m = W.raft_from_wire(w)
    assert m == RAFT[k]
    assert isinstance(m, raft.Msg) and W.raft_to_wire(m) == w


def test_forward_round_trip():
    w = raft_wire("forward")
    assert w == {"type": "forward", "src": "n3", "data": FORWARD.data.hex()}
    assert W.raft_from_wire(w) == FORWARD


@pytest.mark.parametrize("k", PBFT)
def test_pbft_round_trip(k):
    w = pbft_wire(k)
    assert W.pbft_from_wire(w) == pbft.Msg.from_wire(w) == PBFT[k]
    assert W.pbft_from_wire(w).to_wire() == w


@pytest.mark.parametrize("k", EPOCH)
def test_epoch_round_trip(k):
    w = epoch_wire(k)
    assert epoch_from_wire(w) == EPOCH[k]
    assert W.epoch_to_wire(epoch_from_wire(w)) == w


def test_the_wire_format_is_the_one_it_always_was():
    """Field names and spelling are those the earlier encoders wrote (mixed versions, stored PBFT state)."""
    assert raft_wire("append") == {
        "type": "append", "src": "n1", "dst": "n2.dc-1", "term": 7, "prev_index": 3, "prev_term": 2, "commit": 3,
        "read_seq": 9, "entries": [[7, 4, "data", b'{"op":"x"}'.hex()], [7, 5, "noop", ""], [7, 6, "conf", "00"]],
    }  # fmt: skip
    assert raft_wire("snap") == {
        "type": "snap", "src": "n1", "dst": "n2.dc-1", "term": 7, "snap_index": 100, "snap_term": 6, "read_seq": 1,
        "voters": ["n1", "n2.dc-1", "n3"], "offset": 4096, "done": True, "data": b"chunk".hex(),
    }  # fmt: skip
    assert pbft_wire("prepare") == {"t": "prepare", "s": "n2", "v": 1, "n": 5, "d": DIGEST, "sig": SIG.hex(),
                                    "aux": AUX.hex()}  # fmt: skip
    assert pbft_wire("request")["data"] == base64.b64encode(_REQ.data).decode()
    assert epoch_wire("state_req") == {"type": "epoch", "epoch": 3, "src": "n1", "dst": "n2", "kind": "state_req",
                                       "want": 5}  # fmt: skip


def test_a_snap_message_without_its_metadata_encodes_empty_metadata():
    """raft_to_wire of a SNAP_RESP built without ``snap`` (the core always sets it) writes index 0, which the
    receiver refuses: a snapshot's index is at least 1."""
    w = W.raft_to_wire(rmsg(MsgType.SNAP_RESP))
    assert (w["snap_index"], w["snap_term"]) == (0, 0)
    refused("raft", w, "field 'snap_index' is not a positive int64")


def test_edges_are_accepted():
    big = b"\xff" * W.RAFT_MAX_DATA
    m = rmsg(MsgType.APPEND, prev_index=W.INT64_MAX, entries=(Entry(W.INT64_MAX, W.INT64_MAX, "data", big),))
    assert W.raft_from_wire(W.raft_to_wire(m)) == m
    voters = tuple(f"n{i}" for i in range(W.RAFT_MAX_VOTERS))
    m = rmsg(MsgType.SNAP, snap=SnapshotMeta(1, 0, voters), data=big)
    assert W.raft_from_wire(W.raft_to_wire(m)) == m
    m = rmsg(MsgType.READ_INDEX, ctx=b"c" * W.RAFT_MAX_CTX)
    assert W.raft_from_wire(W.raft_to_wire(m)) == m
    m = pbft.Msg(PT.REQUEST, "A" * 64, data=b"d" * W.PBFT_MAX_DATA)
    assert W.pbft_from_wire(m.to_wire()) == m
    for n in range(4):  # every padding of base64
        m = pbft.Msg(PT.REQUEST, "n1", data=b"d" * n)
        assert W.pbft_from_wire(m.to_wire()) == m


# -- rule 1: schemas (discriminator, unknown and missing fields) -------------------------------------------
@pytest.mark.parametrize("proto, k", SAMPLES, ids=SAMPLE_IDS)
def test_an_unknown_field_is_refused(proto, k):
    refused(proto, {**WIRE[proto](k), "zz": 1}, "unknown field 'zz'")


@pytest.mark.parametrize(
    "proto, k, field",
    [
        ("raft", "append", "granted"),  # another type's field
        ("raft", "vote", "entries"),
        ("raft", "forward", "dst"),
        ("pbft", "commit", "p"),  # only a REQUEST carries data, only a PREPARE aux, proofs only some
        ("pbft", "prepare", "data"),
        ("pbft", "request", "aux"),
        ("epoch", "hint", "body"),
        ("epoch", "state", "want"),
    ],
)
def test_a_field_of_another_type_is_refused(proto, k, field):
    refused(proto, {**WIRE[proto](k), field: 0}, f"unknown field '{field}'")


def test_an_unknown_field_is_named_without_printing_it_whole():
    e = refused("raft", {**raft_wire("vote"), "x" * 1000: 1}, "unknown field 'xxx")
    assert len(str(e)) < 200


def _required() -> list:
    out = []
    for proto, k in SAMPLES:
        schemas = {"raft": W.RAFT_SCHEMAS, "pbft": W.PBFT_SCHEMAS, "epoch": W.EPOCH_SCHEMAS}[proto]
        key = {"raft": "type", "pbft": "t", "epoch": "kind"}[proto]
        sample = WIRE[proto](k)
        for field, (_, required) in schemas[sample[key]].fields.items():
            if required:
                out.append(pytest.param(proto, k, field, id=f"{proto}-{k}-{field}"))
    return out


@pytest.mark.parametrize("proto, k, field", _required())
def test_a_missing_required_field_is_refused(proto, k, field):
    d = WIRE[proto](k)
    del d[field]
    refused(proto, d, f"missing field '{field}'")


@pytest.mark.parametrize("k", ["request", "pre_prepare", "prepare", "view_change", "new_view", "entries"])
def test_optional_pbft_fields_may_be_left_out(k):
    d = pbft_wire(k)
    for f in ("data", "aux", "p"):
        d.pop(f, None)
    assert W.pbft_from_wire(d).to_wire() == d


@pytest.mark.parametrize("proto", DECODE)
@pytest.mark.parametrize("d", [None, [], "append", 3, 1.5, True, b"{}"], ids=repr)
def test_what_is_not_a_json_object_is_refused(proto, d):
    refused(proto, d, "not a JSON object")


@pytest.mark.parametrize(
    "proto, d, match",
    [
        ("raft", {"src": "n1"}, "raft message: missing field 'type'"),
        ("raft", {"type": "boom"}, "raft message: field 'type' is 'boom', not one of vote, "),
        ("raft", {"type": "epoch"}, "field 'type' is 'epoch'"),  # an epoch envelope sent to a Raft node
        ("raft", {"type": ["append"]}, "field 'type' is list"),
        ("pbft", {"s": "n1"}, "pbft message: missing field 't'"),
        ("pbft", {"t": "vote"}, "pbft message: field 't' is 'vote'"),
        ("epoch", {"type": "epoch"}, "epoch envelope: missing field 'kind'"),
        ("epoch", {"type": "epoch", "kind": "gossip"}, "field 'kind' is 'gossip'"),
    ],
)
def test_the_discriminator_chooses_the_schema(proto, d, match):
    refused(proto, d, match)


def test_an_epoch_envelope_is_of_type_epoch():
    refused(
        "epoch",
        {**epoch_wire("hint"), "type": "append"},
        "epoch hint envelope: field 'type' is not one of epoch",
    )


# -- rule 2: kinds ------------------------------------------------------------------------------------------
INT_FIELDS = [("raft", "vote", "term"), ("raft", "append", "commit"), ("raft", "snap", "offset"),
              ("pbft", "prepare", "v"), ("pbft", "checkpoint", "n"), ("epoch", "hint", "epoch"),
              ("epoch", "state_req", "want")]  # fmt: skip


@pytest.mark.parametrize("proto, k, field", INT_FIELDS)
@pytest.mark.parametrize("v", [-1, 2**63, 2**70, True, False, 1.0, "3", None, [1]], ids=repr)
def test_an_int_is_a_non_negative_int64_and_never_a_bool(proto, k, field, v):
    refused(proto, {**WIRE[proto](k), field: v}, f"field '{field}' is not a non-negative int64")


@pytest.mark.parametrize("v", [0, -1, True, 1.5])
def test_a_snapshot_index_is_positive(v):
    refused("raft", {**raft_wire("snap_resp"), "snap_index": v}, "field 'snap_index' is not a positive int64")


@pytest.mark.parametrize("field", ["granted"])
@pytest.mark.parametrize("v", [0, 1, "true", None])
def test_a_bool_is_true_or_false(field, v):
    refused("raft", {**raft_wire("vote_resp"), field: v}, f"field '{field}' is not a bool")


ID_FIELDS = [("raft", "vote", "src"), ("raft", "vote", "dst"), ("raft", "forward", "src"), ("pbft", "commit", "s"),
             ("epoch", "hint", "src"), ("epoch", "hint", "dst")]  # fmt: skip
BAD_IDS = ["", "n 1", "n1\n", "nœud", "x" * 65, "a/b", "a;b", 1, None, ["n1"]]


@pytest.mark.parametrize("proto, k, field", ID_FIELDS)
@pytest.mark.parametrize("v", BAD_IDS, ids=repr)
def test_a_node_id_matches_the_id_pattern(proto, k, field, v):
    refused(proto, {**WIRE[proto](k), field: v}, f"field '{field}' is not a node id")


@pytest.mark.parametrize("v", BAD_IDS, ids=repr)
def test_every_voter_is_a_node_id(v):
    refused("raft", {**raft_wire("snap"), "voters": ["n1", v]}, r"field 'voters' \[1\] is not a node id")


@pytest.mark.parametrize(
    "v", [DIGEST.upper(), DIGEST[:-1], DIGEST + "0", "g" * 64, DIGEST[:-1] + "\n", 5, None]
)
def test_a_digest_is_64_lowercase_hex_digits_or_empty(v):
    refused("pbft", {**pbft_wire("commit"), "d": v}, "field 'd' is not 64 lowercase hex digits or empty")


@pytest.mark.parametrize("field", ["sig", "aux"])
@pytest.mark.parametrize("v", [SIG.hex().upper(), SIG.hex()[:-2], SIG.hex() + "00", "ab cd" * 26, "zz" * 64, 1],
                         ids=repr)  # fmt: skip
def test_a_signature_is_128_lowercase_hex_digits(field, v):
    refused("pbft", {**pbft_wire("prepare"), field: v}, f"field '{field}' is not lowercase hex of")


def test_only_a_signature_field_may_be_empty():
    assert W.pbft_from_wire({**pbft_wire("prepare"), "sig": ""}).sig == b""
    refused("pbft", {**pbft_wire("prepare"), "aux": ""}, "field 'aux' is not lowercase hex of 64 bytes")


HEX_FIELDS = [("raft", "snap", "data"), ("raft", "read_index", "ctx"), ("raft", "forward", "data"),
              ("epoch", "forward", "data"), ("epoch", "state", "data")]  # fmt: skip


@pytest.mark.parametrize("proto, k, field", HEX_FIELDS)
@pytest.mark.parametrize("v", ["AB", "abc", "ab cd", " ab", "ab\n", "zz", "éé", 12, None, [1]], ids=repr)
def test_bytes_are_lowercase_hex_in_one_spelling(proto, k, field, v):
    refused(proto, {**WIRE[proto](k), field: v}, f"field '{field}' is not lowercase hex")


@pytest.mark.parametrize(
    "proto, k, field, limit",
    [("raft", "snap", "data", W.RAFT_MAX_DATA), ("raft", "read_index", "ctx", W.RAFT_MAX_CTX),
     ("raft", "forward", "data", W.RAFT_MAX_DATA), ("epoch", "forward", "data", W.RAFT_MAX_DATA)],
)  # fmt: skip
def test_bytes_are_bounded_before_they_are_decoded(proto, k, field, limit):
    d = WIRE[proto](k)
    assert DECODE[proto]({**d, field: "00" * limit})
    refused(
        proto,
        {**d, field: "zz" * (limit + 1)},
        f"field '{field}' is not lowercase hex of at most {limit} bytes",
    )


def test_epoch_state_is_bounded_by_max_state_bytes():
    e = refused("epoch", {**epoch_wire("state"), "data": "0" * (2 * MAX_STATE_BYTES + 2)}, "field 'data'")
    assert f"at most {MAX_STATE_BYTES} bytes" in str(e)


@pytest.mark.parametrize(
    "v",
    [
        "AB==",  # padding bits set: not what b64encode writes
        "QQ",  # unpadded
        "QQ=",
        "Q===",
        "QQ==QQ==",  # padding inside
        "QUJD\n",
        "QU JD",
        "QUJ-",  # urlsafe alphabet
        "ÀÀÀÀ",
        5,
        None,
    ],
    ids=repr,
)
def test_request_data_is_canonical_base64(v):
    refused("pbft", {**pbft_wire("request"), "data": v}, "field 'data' is not canonical base64")


def test_request_data_is_bounded_before_it_is_decoded():
    ok = base64.b64encode(b"\0" * W.PBFT_MAX_DATA).decode()
    assert len(W.pbft_from_wire({**pbft_wire("request"), "data": ok}).data) == W.PBFT_MAX_DATA
    over = base64.b64encode(b"\0" * (W.PBFT_MAX_DATA + 1)).decode()  # within the length of 64 KiB + 2
    refused("pbft", {**pbft_wire("request"), "data": over}, "field 'data' is not canonical base64 of at most")
    refused("pbft", {**pbft_wire("request"), "data": "A" * 200_000}, "field 'data' is not canonical base64")


@pytest.mark.parametrize(
    "entry, match",
    [
        ([1, 2, "data"], "is not a .term, index, kind, hex data. entry"),
        ([1, 2, "data", "", 5], "is not a .term, index, kind, hex data. entry"),
        ("x", "is not a .term, index, kind, hex data. entry"),
        ({"term": 1}, "is not a .term, index, kind, hex data. entry"),
        ([-1, 2, "data", ""], "has a term or an index that is not a non-negative int64"),
        ([1, 2**63, "data", ""], "has a term or an index that is not a non-negative int64"),
        ([True, 2, "data", ""], "has a term or an index"),
        ([1, 2.0, "data", ""], "has a term or an index"),
        ([1, 2, "other", ""], "has a kind that is not one of data, noop, conf"),
        ([1, 2, ["data"], ""], "has a kind that is not one of"),
        ([1, 2, "data", 5], "has data that is not lowercase hex of at most"),
        ([1, 2, "data", "AB"], "has data that is not lowercase hex"),
        ([1, 2, "data", "0" * (2 * W.RAFT_MAX_DATA + 2)], "has data that is not lowercase hex of at most"),
    ],
)
def test_an_entry_is_term_index_kind_and_hex_data(entry, match):
    good = raft_wire("append")["entries"][0]
    refused("raft", {**raft_wire("append"), "entries": [good, entry]}, r"field 'entries' \[1\] " + match)


@pytest.mark.parametrize(
    "k, field, v, match",
    [
        (
            "append",
            "entries",
            [[1, 2, "noop", ""]] * (W.RAFT_MAX_ENTRIES + 1),
            "is not a list of 0..1024 items",
        ),
        ("append", "entries", {}, "is not a list of 0..1024 items"),
        ("snap", "voters", [], "is not a list of 1..256 items"),
        ("snap", "voters", ["n1"] * (W.RAFT_MAX_VOTERS + 1), "is not a list of 1..256 items"),
        ("snap", "voters", "n1", "is not a list"),
    ],
)
def test_lists_are_bounded_before_their_items_are_looked_at(k, field, v, match):
    refused("raft", {**raft_wire(k), field: v}, f"field '{field}' {match}")


def test_no_value_is_converted():
    refused("epoch", {**epoch_wire("hint"), "epoch": "3"}, "field 'epoch' is not a non-negative int64")
    refused(
        "raft", {**raft_wire("vote"), "last_index": 1.0}, "field 'last_index' is not a non-negative int64"
    )


# -- rule 3: nesting and budgets ---------------------------------------------------------------------------
def _nest(levels: int) -> dict:
    w = pbft_wire("commit")
    for _ in range(levels):
        w = {**pbft_wire("new_view"), "p": [w]}
    return w


def test_pbft_proofs_nest_at_most_three_deep():
    assert W.pbft_from_wire(_nest(W.PBFT_MAX_DEPTH))
    e = refused("pbft", _nest(W.PBFT_MAX_DEPTH + 1), f"nests messages more than {W.PBFT_MAX_DEPTH} deep")
    assert str(e).count("field 'p' [0]: ") == W.PBFT_MAX_DEPTH  # the error says where


def test_a_deep_bomb_is_refused_without_recursing_into_it():
    w: Any = {}
    for _ in range(100_000):  # far past Python's recursion limit
        w = {**pbft_wire("new_view"), "p": [w]}
    refused("pbft", w, "nests messages more than")


def test_pbft_messages_in_one_are_bounded():
    commit = pbft_wire("commit")
    ok = {**pbft_wire("new_view"), "p": [commit] * (W.PBFT_MAX_MSGS - 1)}
    assert len(W.pbft_from_wire(ok).proofs) == W.PBFT_MAX_MSGS - 1
    refused("pbft", {**ok, "p": [commit] * W.PBFT_MAX_MSGS}, f"more than {W.PBFT_MAX_MSGS} messages in one")
    refused("pbft", {**ok, "p": [commit] * (W.PBFT_MAX_MSGS + 1)}, "field 'p' is not a list of at most 8192")
    vc = {**pbft_wire("view_change"), "p": [commit] * 5000}  # 2 x 5000 nested: the total counts
    refused("pbft", {**pbft_wire("new_view"), "p": [vc, vc]}, "more than 8192 messages in one")


def test_pbft_bytes_in_one_are_bounded():
    req = {**pbft_wire("request"), "data": base64.b64encode(b"\0" * W.PBFT_MAX_DATA).decode()}
    n = W.PBFT_MAX_BYTES // W.PBFT_MAX_DATA  # requests that fit, with their signatures
    refused("pbft", {**pbft_wire("new_view"), "p": [req] * (n + 1)}, "exceeds what one message may carry")


def test_raft_bytes_in_one_are_bounded():
    e = [1, 2, "data", "00" * W.RAFT_MAX_DATA]
    k = W.RAFT_MAX_BYTES // W.RAFT_MAX_DATA
    assert len(W.raft_from_wire({**raft_wire("append"), "entries": [e] * k}).entries) == k
    refused("raft", {**raft_wire("append"), "entries": [e] * (k + 1)}, "exceeds what one message may carry")


def test_an_engine_body_is_decoded_within_its_own_protocols_bounds():
    refused("epoch", {**epoch_wire("engine-bft"), "body": _nest(W.PBFT_MAX_DEPTH + 1)}, "more than 3 deep")
    refused("epoch", {**epoch_wire("engine-raft"), "body": {**raft_wire("vote"), "term": -1}},
            "field 'body' is not an engine message: raft vote message: field 'term'")  # fmt: skip


# -- epochs: the engine body ----------------------------------------------------------------------------------
def test_an_engine_body_is_a_message_of_the_algorithm_its_epoch_runs():
    refused("epoch", {**epoch_wire("engine-raft"), "body": pbft_wire("commit")},
            "field 'body' is not a raft message, and epoch 3 runs raft here")  # fmt: skip
    refused("epoch", {**epoch_wire("engine-bft"), "body": raft_wire("vote")},
            "field 'body' is not a bft message, and epoch 4 runs bft here")  # fmt: skip


@pytest.mark.parametrize("body", ["raft", "pbft"])
def test_the_body_of_an_epoch_this_node_does_not_run_is_checked_then_dropped(body):
    good = raft_wire("vote") if body == "raft" else pbft_wire("commit")
    assert epoch_from_wire({**epoch_wire("engine-raft"), "epoch": 9, "body": good}).body is None
    bad = {**good, "zz": 1}
    refused("epoch", {**epoch_wire("engine-raft"), "epoch": 9, "body": bad}, "unknown field 'zz'")


@pytest.mark.parametrize("body", [{}, {"x": 1}, [], "vote", None, raft_wire("forward")], ids=repr)
def test_an_engine_body_is_a_raft_or_pbft_engine_message(body):
    refused(
        "epoch",
        {**epoch_wire("engine-raft"), "body": body},
        "field 'body' is (not a raft or a pbft|a raft forward)",
    )


# -- rule 4: nothing but RemoteProtocolError, whatever comes in ------------------------------------------------
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["n1", "", DIGEST, SIG.hex(), "AAAA", "00", "data", "epoch", *W.RAFT_SCHEMAS, *W.PBFT_SCHEMAS]
    )
)
json_any = st.recursive(json_leaf, lambda ch: st.lists(ch, max_size=5) | st.dictionaries(st.text(max_size=5), ch, max_size=6),
                        max_leaves=30)  # fmt: skip
FIELDS = sorted(
    {f for s in (W.RAFT_SCHEMAS, W.PBFT_SCHEMAS, W.EPOCH_SCHEMAS) for sc in s.values() for f in sc.fields}
)


def decodes_or_refuses(proto: str, d: object) -> None:
    """Rule 4, and what a decoded message is: one that encodes to what decodes to it again."""
    try:
        m = DECODE[proto](d)
    except RemoteProtocolError as exc:
        assert exc.code == C.ERR_MALFORMED
        return
    if isinstance(m, raft.Msg):
        assert W.raft_from_wire(jsonly(W.raft_to_wire(m))) == m
    elif isinstance(m, pbft.Msg):
        assert W.pbft_from_wire(jsonly(m.to_wire())) == m
    elif isinstance(m, Envelope):
        assert epoch_from_wire(jsonly(W.epoch_to_wire(m))) == m
    else:
        assert isinstance(m, W.Forward)


@pytest.mark.parametrize("proto", DECODE)
@given(d=json_any)
def test_any_json_value_is_a_message_or_a_remote_protocol_error(proto, d):
    decodes_or_refuses(proto, d)


@pytest.mark.parametrize("proto", DECODE)
@given(d=st.dictionaries(st.sampled_from(FIELDS), json_any, max_size=12))
def test_any_object_of_known_fields_is_a_message_or_a_remote_protocol_error(proto, d):
    decodes_or_refuses(proto, d)


def _paths(d: Any, at: tuple = ()) -> list[tuple]:
    """Every place inside a wire message a value sits at (dict keys and list indexes)."""
    out = [at]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*at, k))
    elif isinstance(d, list):
        for i, v in enumerate(d[:3]):
            out += _paths(v, (*at, i))
    return out


mutation = st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "delete", "add"]), st.sampled_from([*FIELDS, "zz"]), json_any)  # fmt: skip


@given(st.sampled_from(SAMPLES), st.lists(mutation, min_size=1, max_size=4))
def test_a_mutated_message_is_a_message_or_a_remote_protocol_error(sample, muts):
    proto, k = sample
    d = copy.deepcopy(WIRE[proto](k))
    for pick, op, field, value in muts:
        paths = _paths(d)
        path = paths[pick % len(paths)]
        if not path:
            d = value if op == "set" else d
            continue
        parent = d
        for step in path[:-1]:
            parent = parent[step]
        if op == "set":
            parent[path[-1]] = value
        elif op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[field] = value
    decodes_or_refuses(proto, d)


def test_a_value_of_any_shape_in_an_error_is_named_not_printed():
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    e = refused("raft", {**raft_wire("vote"), "type": deep}, "field 'type' is list")
    assert len(str(e)) < 200
    refused("raft", deep, "not a JSON object but list")


# -- rule 6: the id of a committed command ----------------------------------------------------------------
@pytest.mark.parametrize(
    "data, cid",
    [
        (b'{"op":"version","key":"k","id":"0123456789abcdef"}', "0123456789abcdef"),  # propose's: sliced
        (b'{"id": "x-1", "op": "version"}', "x-1"),  # anywhere else: parsed
        (b'{"op":"version"}', None),
        (b'{"id": 5}', None),
        (b'["id"]', None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"", None),
        (b"[" * 200_000 + b"]" * 200_000, None),  # too deep for the parser: RecursionError, caught
    ],
)
def test_command_id_never_raises(data, cid):
    assert W.command_id(data) == cid
