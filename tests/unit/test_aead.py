"""Sealed records' cryptography (dwcp.security.aead, the Aead of dwcp/_fast/engine.pyx and its twin):
HKDF-SHA256 against RFC 5869, the per-stream keys, AES-256-GCM against an independent implementation,
and every way a record can be forged, replayed or misused."""

from __future__ import annotations

import os

import pytest

from dwcp.errors import ForgedRecordError, RemoteProtocolError
from dwcp.security import aead
from dwcp.wire import consts as C


@pytest.fixture(params=["fast", "ref"])
def k(request, aead_both):
    """One backend with AES-GCM loaded."""
    return aead_both[request.param]


def nonce(i: int) -> bytes:
    return bytes(4) + i.to_bytes(8, "big")


# -- HKDF-SHA256: RFC 5869 appendix A, test cases 1-3 --------------------------------------------

RFC5869 = [
    (  # A.1: basic
        bytes([0x0B] * 22),
        bytes(range(0x00, 0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (  # A.2: longer inputs and output
        bytes(range(0x00, 0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (  # A.3: zero-length salt and info
        bytes([0x0B] * 22),
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize("ikm,salt,info,length,okm", RFC5869, ids=["A.1", "A.2", "A.3"])
def test_hkdf_sha256_rfc5869(ikm, salt, info, length, okm):
    assert aead.hkdf_sha256(ikm, salt, info, length) == bytes.fromhex(okm)
    # a prefix of the output is the output at that length (expand is a stream)
    assert aead.hkdf_sha256(ikm, salt, info, 7) == bytes.fromhex(okm)[:7]


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_length_bounds(length):
    with pytest.raises(ValueError, match="HKDF-SHA256 gives"):
        aead.hkdf_sha256(b"k", b"s", b"i", length)
    assert len(aead.hkdf_sha256(b"k", b"s", b"i", 255 * 32)) == 255 * 32


# -- stream keys ------------------------------------------------------------------------------------


def test_stream_keys_two_directions_bound_to_secret_and_transfer():
    secret = bytes(range(32))
    s2r, r2s = aead.stream_keys(secret, 0x1122334455667788)
    assert len(s2r) == len(r2s) == 32 and s2r != r2s
    assert aead.stream_keys(secret, 0x1122334455667788) == (s2r, r2s)  # deterministic: both sides agree
    other_secret = aead.stream_keys(bytes(31) + b"\x01", 0x1122334455667788)
    other_transfer = aead.stream_keys(secret, 0x1122334455667789)
    for keys in (other_secret, other_transfer):
        assert not {s2r, r2s} & set(keys)
    # the documented derivation: PRK = Extract(salt = transfer_id as u64 BE, secret), info "dwcp sealed v1 <dir>"
    salt = (0x1122334455667788).to_bytes(8, "big")
    assert s2r == aead.hkdf_sha256(secret, salt, b"dwcp sealed v1 s2r", 32)
    assert r2s == aead.hkdf_sha256(secret, salt, b"dwcp sealed v1 r2s", 32)


def test_stream_keys_match_an_independent_hkdf():
    hkdf = pytest.importorskip("cryptography.hazmat.primitives.kdf.hkdf")
    hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
    secret = os.urandom(32)
    s2r, r2s = aead.stream_keys(secret, 7)
    for key, d in ((s2r, b"s2r"), (r2s, b"r2s")):
        want = hkdf.HKDF(hashes.SHA256(), 32, (7).to_bytes(8, "big"), b"dwcp sealed v1 " + d).derive(secret)
        assert key == want


@pytest.mark.parametrize("n", [0, 16, 31, 33, 64])
def test_stream_keys_refuse_a_secret_of_the_wrong_length(n):
    with pytest.raises(ValueError, match="32 bytes"):
        aead.stream_keys(bytes(n), 1)


def test_new_secret_is_32_fresh_bytes():
    a, b = aead.new_secret(), aead.new_secret()
    assert len(a) == len(b) == aead.SECRET_BYTES == 32 and a != b


# -- Aead: known answers, twins -----------------------------------------------------------------------

SIZES = [0, 1, 15, 16, 17, 4096 + 3, 70_000]


def test_aead_known_answer_against_cryptography(k):
    AESGCM = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead").AESGCM
    key = bytes(range(100, 132))
    sealer = k.Aead(key, True)
    assert sealer.sealing and sealer.counter == 0
    for i, n in enumerate(SIZES):
        data = os.urandom(n)
        rec = sealer.seal(data)
        assert len(rec) == n + k.AEAD_TAG_BYTES == n + 16
        assert rec == AESGCM(key).encrypt(nonce(i), data, None)  # nonce 0^32 || i (BE u64), no AAD
        assert sealer.counter == i + 1
    # and records sealed by AESGCM open here, in order
    opener = k.Aead(key, False)
    assert not opener.sealing
    for i, n in enumerate(SIZES):
        data = os.urandom(n)
        rec = AESGCM(key).encrypt(nonce(i), data, None)
        buf = bytearray(rec[:n])
        opener.open_into(buf, rec[n:])
        assert buf == data and opener.counter == i + 1


def test_both_backends_seal_alike_and_open_each_other(aead_both):
    fast, ref = aead_both["fast"], aead_both["ref"]
    key = os.urandom(32)
    msgs = [os.urandom(n) for n in SIZES]
    fs, rs = fast.Aead(key, True), ref.Aead(key, True)
    fo, ro = fast.Aead(key, False), ref.Aead(key, False)
    for m in msgs:
        a, b = fs.seal(m), rs.seal(bytearray(m))  # any buffer
        assert a == b
        x, y = bytearray(a[: len(m)]), memoryview(bytearray(a[: len(m)]))
        ro.open_into(x, a[len(m) :])  # fast's record opened by ref
        fo.open_into(y, bytearray(b[len(m) :]))  # and ref's by fast
        assert x == m and y.tobytes() == m
    assert fs.counter == rs.counter == fo.counter == ro.counter == len(msgs)


# -- Aead: forgeries --------------------------------------------------------------------------------


def _records(k, key, msgs):
    s = k.Aead(key, True)
    return [s.seal(m) for m in msgs]


def _open(opener, rec: bytes) -> bytearray:
    buf = bytearray(rec[:-16])
    opener.open_into(buf, rec[-16:])
    return buf


def _assert_forged(exc_info) -> None:
    assert isinstance(exc_info.value, RemoteProtocolError)
    assert exc_info.value.code == C.ERR_FORGED == 19
    assert "failed authentication" in str(exc_info.value)


@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_an_altered_record_is_forged(k, where):
    key = os.urandom(32)
    (rec,) = _records(k, key, [b"a frame header, 64 bytes, give or take" * 2])
    bad = bytearray(rec)
    bad[3 if where == "ciphertext" else len(bad) - 5] ^= 0x01
    opener = k.Aead(key, False)
    with pytest.raises(ForgedRecordError) as e:
        _open(opener, bytes(bad))
    _assert_forged(e)


def test_an_empty_record_with_an_altered_tag_is_forged(k):
    key = os.urandom(32)
    (rec,) = _records(k, key, [b""])
    assert _open(k.Aead(key, False), rec) == b""
    with pytest.raises(ForgedRecordError) as e:
        _open(k.Aead(key, False), rec[:-1] + bytes([rec[-1] ^ 0x80]))
    _assert_forged(e)


def test_a_replayed_record_is_forged(k):
    key = os.urandom(32)
    r0, r1 = _records(k, key, [b"first", b"second"])
    opener = k.Aead(key, False)
    assert _open(opener, r0) == b"first"
    with pytest.raises(ForgedRecordError) as e:  # record 0 again: the counter moved on to 1
        _open(opener, r0)
    _assert_forged(e)
    assert "sealed record 1 " in str(e.value)


def test_records_out_of_order_are_forged(k):
    key = os.urandom(32)
    r0, r1 = _records(k, key, [b"first", b"second"])
    opener = k.Aead(key, False)
    with pytest.raises(ForgedRecordError) as e:
        _open(opener, r1)
    _assert_forged(e)
    with pytest.raises(ForgedRecordError):  # nor does the one skipped open afterwards
        _open(opener, r0)


def test_a_record_under_another_key_or_direction_is_forged(k):
    s2r, r2s = aead.stream_keys(os.urandom(32), 3)
    (rec,) = _records(k, s2r, [b"hello"])
    assert _open(k.Aead(s2r, False), rec) == b"hello"
    with pytest.raises(ForgedRecordError) as e:
        _open(k.Aead(r2s, False), rec)  # a reflected record: the other direction's key
    _assert_forged(e)


# -- Aead: misuse -----------------------------------------------------------------------------------


def test_an_aead_does_one_direction_only(k):
    key = os.urandom(32)
    with pytest.raises(ValueError, match="cannot seal"):
        k.Aead(key, False).seal(b"x")
    with pytest.raises(ValueError, match="cannot open"):
        k.Aead(key, True).open_into(bytearray(1), bytes(16))
    opener = k.Aead(key, False)
    with pytest.raises(ValueError, match="a tag has 16 bytes"):
        opener.open_into(bytearray(1), bytes(15))
    assert opener.counter == 0  # refused before a record number was used


@pytest.mark.parametrize("n", [0, 16, 31, 33])
def test_a_key_of_the_wrong_length(k, n):
    with pytest.raises(ValueError, match="32 bytes"):
        k.Aead(bytes(n), True)
    with pytest.raises(ValueError, match="32 bytes"):
        k.Aead(bytes(n), False)
