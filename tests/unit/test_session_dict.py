"""Session rules 11 and 12, without sockets: a HELLO naming a zstd dictionary, WELCOME asking for it,
the FRAME_DICT that must be the announced one, and DATA frames compressed with it."""

from __future__ import annotations

import pytest

from dwcp._backend import impl as K
from dwcp.codec.dictionaries import samples_of, train
from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.transport.session import (
    ADMIT_BUSY,
    ADMIT_CLAIMED,
    CAPS,
    DictRef,
    Plan,
    ReceiveSession,
    SendSession,
    parse_send,
)
from dwcp.wire import consts as C
from dwcp.wire.messages import _validate, decode_control, encode_control, encode_dict

KiB = 1 << 10
DIGEST = b"\x01" * 16


@pytest.fixture(scope="module")
def d():
    return train("cfg", samples_of(b'{"name": "item-%d", "size": %d, "tags": ["a", "b"]}' % (i, i * 7)
                                   for i in range(400)), 1024)  # fmt: skip


def ref_of(d) -> DictRef:
    return DictRef(d.id, d.digest, len(d.data))


def sender(d, **kw) -> SendSession:
    return SendSession(7, "cfg/1", 8 * KiB, DIGEST, 4 * KiB, node="tx", dictionary=ref_of(d), **kw)


def receiver(hello: dict, *, held=None, welcomed: bool = True) -> ReceiveSession:
    req = parse_send(7, decode_control(*_split(encode_control(C.FRAME_HELLO, 7, hello))))
    rx = ReceiveSession(req, Plan("full", None, 4 * KiB, ""), held=b"", zero_filled=True, seeded=False,
                        now=0.0, dictionary=held)  # fmt: skip
    if welcomed:
        rx.welcome("t" * 64, "rx")
    return rx


def _split(frame: bytes):
    return K.parse_header(frame[: C.HEADER_SIZE]), frame[C.HEADER_SIZE :]


def dict_header(d, raw_len=4 * KiB, offset=0, dict_id=None):
    raw = K.pack_header(C.FRAME_DATA, C.CODEC_ZSTD_DICT, 0, 7, offset, raw_len, 100,
                        dict_id if dict_id is not None else d.id, raw_hash=0)  # fmt: skip
    return K.parse_header(raw)


def test_hello_names_the_dictionary_and_the_receiver_asks_for_what_it_lacks(d):
    tx = sender(d)
    h = tx.hello()
    assert h["dict"] == {"id": d.id, "digest": d.digest.hex(), "size": len(d.data)} and "zdict" in h["caps"]
    rx = receiver(h, welcomed=False)
    assert rx.hello.dictionary == ref_of(d) and rx.needs_dict
    w = rx.welcome("t" * 64, "rx")
    assert w["need_dict"] is True
    tx.on_welcome(decode_control(*_split(encode_control(C.FRAME_WELCOME, 7, w))))
    assert tx.dict_needed
    holding = receiver(h, held=d, welcomed=False)
    assert not holding.needs_dict and "need_dict" not in holding.welcome("t" * 64, "rx")


def test_a_dictionary_without_the_capability_is_refused(d):
    h = sender(d).hello()
    h["caps"] = sorted(CAPS - {"zdict"})
    with pytest.raises(RemoteProtocolError, match="zdict") as ei:
        parse_send(7, h)
    assert ei.value.code == C.ERR_BAD_FIELD


def test_welcome_asking_for_a_dictionary_we_did_not_name_fails_the_send():
    tx = SendSession(7, "k", 8 * KiB, DIGEST, 4 * KiB, node="tx")
    tx.hello()
    with pytest.raises(RemoteProtocolError, match="did not name"):
        tx.on_welcome({"mode": "full", "token": "t" * 64, "chunk_size": 4 * KiB, "need_dict": True})
    assert tx.failed


def test_the_dictionary_frame_must_be_the_announced_one(d):
    rx = receiver(sender(d).hello())
    good = _split(encode_dict(7, d.id, d.data))[0]
    assert rx.check_dict_frame(good) == ref_of(d)
    for h, code in [
        (_split(encode_dict(7, d.id + 1, d.data))[0], C.ERR_UNKNOWN_DICT),
        (_split(encode_dict(7, d.id, d.data + b"x"))[0], C.ERR_UNKNOWN_DICT),
        (_split(encode_dict(8, d.id, d.data))[0], C.ERR_BAD_FRAME_TYPE),  # another transfer's
        (_split(encode_control(C.FRAME_DONE, 7, {"ok": True}))[0], C.ERR_BAD_FRAME_TYPE),
    ]:
        with pytest.raises(RemoteProtocolError) as ei:
            rx.check_dict_frame(h)
        assert ei.value.code == code
    holding = receiver(sender(d).hello(), held=d)
    with pytest.raises(RemoteProtocolError, match="did not ask for"):
        holding.check_dict_frame(good)
    with pytest.raises(LocalProtocolError):
        rx.dictionary_arrived(train("x", samples_of([bytes(range(256)) * 40] * 10), 512))


def test_dictionary_chunks_wait_for_the_dictionary_and_must_name_it(d):
    rx = receiver(sender(d).hello())
    assert rx.admit(dict_header(d)) == (ADMIT_BUSY, 0)  # rule 12: not decodable yet, sent again later
    with pytest.raises(RemoteProtocolError) as ei:
        rx.admit(dict_header(d, dict_id=d.id ^ 1))
    assert ei.value.code == C.ERR_UNKNOWN_DICT
    rx.dictionary_arrived(d)
    assert not rx.needs_dict and rx.dictionary is d
    assert rx.admit(dict_header(d)) == (ADMIT_CLAIMED, 0)
    plain = receiver(SendSession(7, "k", 8 * KiB, DIGEST, 4 * KiB, node="tx").hello())
    with pytest.raises(RemoteProtocolError, match="announced none"):
        plain.admit(dict_header(d))


@pytest.mark.parametrize(
    "bad",
    [{"id": 0, "digest": "0" * 32, "size": 10}, {"id": 1, "digest": "0" * 31, "size": 10},
     {"id": 1, "digest": "0" * 32, "size": (1 << 20) + 1}, {"id": 1, "digest": "0" * 32},
     {"id": True, "digest": "0" * 32, "size": 10}, {"id": 1 << 32, "digest": "0" * 32, "size": 10}],
)  # fmt: skip
def test_the_hello_schema_bounds_the_dictionary_reference(d, bad):
    h = sender(d).hello()
    h["dict"] = bad
    with pytest.raises(RemoteProtocolError, match="dict must be"):  # as the receiver reads it
        _validate(C.FRAME_HELLO, h)
    with pytest.raises(LocalProtocolError, match="dict must be"):  # as a sender would write it
        encode_control(C.FRAME_HELLO, 7, h)
