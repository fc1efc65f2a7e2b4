"""XBZRLE and the chunk delta: documented vectors and every error path, on both backends."""

from __future__ import annotations

import numpy as np
import pytest

from dwcp.errors import RemoteProtocolError
from dwcp.wire import consts as C

PAGE = 4096


def qemu_example() -> tuple[bytes, bytes, bytes]:
    """The example of QEMU's docs/xbzrle.txt, byte for byte."""
    old = bytes(1001) + bytes.fromhex("05060708090a0b0c0d0e0f10111213" "6800006b006d") + bytes(3074)
    new = bytes(1001) + bytes.fromhex("0102030405060708090a0b0c0d0e0f" "680000670069") + bytes(3074)
    enc = bytes.fromhex("e9070f0102030405060708090a0b0c0d0e0f0301670101" "69")
    assert len(old) == len(new) == PAGE and len(enc) == 24
    return old, new, enc


def test_qemu_documented_example(impl):
    old, new, enc = qemu_example()
    out = bytearray(PAGE)
    assert impl.xbzrle_encode(old, new, out) == 24
    assert bytes(out[:24]) == enc
    page = bytearray(old)
    assert impl.xbzrle_decode(enc, page) == 1001 + 15 + 6
    assert bytes(page) == new


def test_identical_page_is_zero(impl):
    p = bytes(range(256)) * 16
    assert impl.xbzrle_encode(p, p, bytearray(PAGE)) == 0
    assert impl.xbzrle_decode(b"", bytearray(p)) == 0


@pytest.mark.parametrize("pos", [0, 1, 7, 8, 2047, 4088, 4095])
def test_one_byte_changed(impl, pos):
    old = bytes(PAGE)
    new = bytearray(old)
    new[pos] = 0xAB
    out = bytearray(PAGE)
    n = impl.xbzrle_encode(old, bytes(new), out)
    # zrun (pos, maybe 2 bytes) + nzrun (1) + the byte; no trailing zero run
    assert bytes(out[:n]) == _uleb(pos) + b"\x01\xab"
    page = bytearray(old)
    impl.xbzrle_decode(bytes(out[:n]), page)
    assert page == new


def _uleb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def test_budget_overflow_is_minus_one_exactly(impl):
    old = bytes(PAGE)
    new = bytes([1]) * PAGE  # one run of 4096 differing bytes: 1 + 2 + 4096 bytes
    assert impl.xbzrle_encode(old, new, bytearray(PAGE)) == -1
    assert impl.xbzrle_encode(old, new, bytearray(PAGE + 2)) == -1
    assert impl.xbzrle_encode(old, new, bytearray(PAGE + 3)) == PAGE + 3


def test_alternating_bytes_overflow(impl):
    old = bytes(PAGE)
    new = bytes([0, 1]) * (PAGE // 2)  # "changing every second byte": QEMU's overflow example
    assert impl.xbzrle_encode(old, new, bytearray(PAGE)) == -1


@pytest.mark.parametrize("n", [1, 3, 9, 100, 4097 - 1])
def test_unaligned_lengths(impl, n):
    rng = np.random.default_rng(n)
    old = rng.integers(0, 256, n, dtype=np.uint8)
    new = old.copy()
    new[rng.integers(0, n, max(1, n // 10))] ^= 0x5A
    out = bytearray(2 * n + 8)
    k = impl.xbzrle_encode(old, new, out)
    page = bytearray(old.tobytes())
    impl.xbzrle_decode(bytes(out[:k]), page)
    assert page == new.tobytes()


def test_page_argument_errors(impl):
    with pytest.raises(ValueError, match="differ in length"):
        impl.xbzrle_encode(b"ab", b"abc", bytearray(10))
    with pytest.raises(ValueError, match="page length"):
        impl.xbzrle_encode(b"", b"", bytearray(10))
    with pytest.raises(ValueError, match="page length"):
        impl.xbzrle_encode(bytes(65537), bytes(65537), bytearray(10))
    with pytest.raises((TypeError, ValueError, BufferError)):
        impl.xbzrle_encode(b"a", b"b", b"readonly-out")


@pytest.mark.parametrize(
    "enc",
    [
        b"\x80",  # truncated uleb
        b"\x05",  # zrun with no nzrun
        b"\x00\x00",  # zero-length nzrun
        b"\x00\x01",  # nzrun length 1 but no byte
        b"\x00\x01\xaa\x00\x01\xbb",  # a zero-length zrun after the first
        b"\x80\x80\x80\x01\x01\xaa",  # uleb longer than 3 bytes
        b"\xff\x7f\x01\xaa",  # zrun past the page end
        b"\x00\xff\x7f" + bytes(20),  # nzrun past the source end
    ],
)
def test_malformed_encodings(impl, enc):
    with pytest.raises(RemoteProtocolError) as ei:
        impl.xbzrle_decode(enc, bytearray(PAGE))
    assert ei.value.code == C.ERR_MALFORMED


def test_scan_dirty(impl):
    old = np.zeros(3 * PAGE + 100, np.uint8)
    new = old.copy()
    new[PAGE + 5] = 1
    new[3 * PAGE + 99] = 1
    assert impl.scan_dirty(old, new, PAGE) == bytearray([0, 1, 0, 1])
    assert impl.scan_dirty(b"", b"", PAGE) == bytearray()
    with pytest.raises(ValueError):
        impl.scan_dirty(b"a", b"ab")
    with pytest.raises(ValueError):
        impl.scan_dirty(b"a", b"a", 0)


def test_delta_records(impl):
    old = np.zeros(4 * PAGE, np.uint8)
    new = old.copy()
    new[PAGE + 10] = 7  # page 1: tiny change -> XBZRLE
    new[3 * PAGE :] = 0x33  # page 3: rewritten -> RAW
    out = np.empty(impl.delta_bound(len(old)), np.uint8)
    n = impl.delta_encode(old, new, out)
    p = out[:n].tobytes()
    rec1 = b"\x01" + b"\x01" + _uleb(4) + b"\x0a\x01\x07" + b""  # skip 1, XBZRLE, n=4 (zrun 10, nzrun 1, byte)
    rec1 = b"\x01\x01\x03\x0a\x01\x07"
    rec3 = b"\x01\x02" + bytes([0x33]) * PAGE  # skip 1 (page 2 unchanged), RAW
    assert p == rec1 + rec3
    back = np.empty_like(old)
    assert impl.delta_decode(p, old, back) == 2
    assert (back == new).all()
    # in place on the base
    base = old.copy()
    assert impl.delta_decode(p, base, base) == 2 and (base == new).all()


def test_delta_identical_and_empty(impl):
    a = np.arange(PAGE * 2, dtype=np.uint8)
    assert impl.delta_encode(a, a.copy(), bytearray(10)) == 0
    assert impl.delta_encode(b"", b"", bytearray()) == 0
    out = bytearray(len(a))
    assert impl.delta_decode(b"", a, out) == 0 and out == a.tobytes()


def test_delta_too_small_out_is_minus_one(impl):
    old = np.zeros(2 * PAGE, np.uint8)
    new = np.full(2 * PAGE, 9, np.uint8)
    assert impl.delta_encode(old, new, bytearray(PAGE)) == -1


def test_short_last_page(impl):
    old = np.zeros(PAGE + 100, np.uint8)
    new = old.copy()
    new[PAGE + 50 :] = 1
    out = np.empty(impl.delta_bound(len(old)), np.uint8)
    n = impl.delta_encode(old, new, out)
    back = np.empty_like(old)
    impl.delta_decode(out[:n], old, back)
    assert (back == new).all()


def test_pages_encode(impl):
    theirs = np.zeros(3 * PAGE, np.uint8)
    mine = theirs.copy()
    mine[2 * PAGE :] = 5
    out = np.empty(impl.delta_bound(len(mine)), np.uint8)
    n = impl.pages_encode(mine, bytes([0, 0, 1]), out)
    assert out[:n].tobytes() == b"\x02\x02" + bytes([5]) * PAGE
    back = np.empty_like(mine)
    impl.delta_decode(out[:n], theirs, back)
    assert (back == mine).all()
    with pytest.raises(ValueError, match="dirty map"):
        impl.pages_encode(mine, b"\x01", out)
    assert impl.pages_encode(mine, bytes([1, 1, 1]), bytearray(10)) == -1


@pytest.mark.parametrize(
    "payload,msg",
    [
        (b"\x80", "ULEB128"),
        (b"\x09\x02", "past the last page"),
        (b"\x00", "truncated"),
        (b"\x00\x07", "unknown"),
        (b"\x00\x01\x00", "length outside"),
        (b"\x00\x01\x05\x00\x01", "truncated"),
        (b"\x00\x01\x02\x00\x00", "malformed XBZRLE"),
        (b"\x00\x02" + bytes(100), "truncated"),
        (b"\x00\x02" + bytes(PAGE) * 1 + b"\x00\x02" + bytes(PAGE) + b"\x00\x02", "past the last page"),
        (b"\xff" * 11, "ULEB128"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{len(v)}B",
)
def test_malformed_deltas(impl, payload, msg):
    base = np.zeros(2 * PAGE, np.uint8)
    with pytest.raises(RemoteProtocolError, match=msg) as ei:
        impl.delta_decode(payload, base, np.empty_like(base))
    assert ei.value.code == C.ERR_MALFORMED


def test_delta_argument_errors(impl):
    base = np.zeros(2 * PAGE, np.uint8)
    with pytest.raises(ValueError, match="power of two"):
        impl.delta_encode(base, base, bytearray(10), 3000)
    with pytest.raises(ValueError, match="power of two"):
        impl.delta_bound(10, 256)
    with pytest.raises(ValueError, match="out has"):
        impl.delta_decode(b"", base, bytearray(10))
    with pytest.raises(ValueError, match="overlap"):
        impl.delta_decode(b"", base[: PAGE + 8], base[8 : PAGE + 16])
    assert impl.delta_bound(0) == 0 and impl.delta_bound(PAGE) == PAGE + 11
