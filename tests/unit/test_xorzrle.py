"""XBZRLE and the chunk delta: documented vectors, the record rules and every
error path, on both backends (the ``impl`` fixture)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from dwcp.errors import RemoteProtocolError
from dwcp.wire import consts as C

PAGE = 4096


def _uleb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _encode(impl, old, new, budget: int | None = None) -> bytes | int:
    out = bytearray(len(old) * 2 + 16 if budget is None else budget)
    n = impl.xbzrle_encode(old, new, out)
    return n if n < 0 else bytes(out[:n])


def _delta(impl, old, new, ps: int = PAGE) -> bytes:
    out = bytearray(impl.delta_bound(len(old), ps))
    n = impl.delta_encode(old, new, out, ps)
    assert n >= 0
    return bytes(out[:n])


# -- XBZRLE, one page -------------------------------------------------------------


def qemu_example() -> tuple[bytes, bytes, bytes]:
    """The example of QEMU's docs/devel/migration/xbzrle.rst (formerly docs/xbzrle.txt), byte for byte."""
    old = (
        bytes(1001)
        + bytes.fromhex("05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 68 00 00 6b 00 6d")
        + bytes(3074)
    )
    new = (
        bytes(1001)
        + bytes.fromhex("01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 68 00 00 67 00 69")
        + bytes(3074)
    )
    enc = bytes.fromhex("e9 07 0f 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 03 01 67 01 01 69")
    assert len(old) == len(new) == PAGE and len(enc) == 24  # "encoded length 24"
    return old, new, enc


def test_qemu_documented_example(impl):
    old, new, enc = qemu_example()
    out = bytearray(PAGE)
    assert impl.xbzrle_encode(old, new, out) == 24
    assert bytes(out[:24]) == enc
    page = bytearray(old)
    # covered: zrun 1001, nzrun 15, zrun 3, nzrun 1, zrun 1, nzrun 1
    assert impl.xbzrle_decode(enc, page) == 1001 + 15 + 3 + 1 + 1 + 1
    assert bytes(page) == new


def test_identical_page_is_zero(impl):
    p = bytes(range(256)) * 16
    assert impl.xbzrle_encode(p, p, bytearray(PAGE)) == 0
    assert impl.xbzrle_encode(p, p, bytearray()) == 0  # identical is 0 whatever the budget
    page = bytearray(p)
    assert impl.xbzrle_decode(b"", page) == 0 and page == p


@pytest.mark.parametrize("pos", [0, 1, 7, 8, 127, 128, 2047, 4088, 4095])
def test_one_byte_changed(impl, pos):
    old = bytes(PAGE)
    new = bytearray(old)
    new[pos] = 0xAB
    enc = _encode(impl, old, bytes(new))
    # zrun (pos; 0 allowed first), nzrun 1, the new byte; no trailing zero run
    assert enc == _uleb(pos) + b"\x01\xab"
    page = bytearray(old)
    assert impl.xbzrle_decode(enc, page) == pos + 1
    assert page == new


def test_runs_are_the_new_bytes_not_the_xor(impl):
    old = bytes([0x10, 0x20, 0x30, 0x40]) * 4
    new = bytearray(old)
    new[5:7] = b"\xff\xfe"
    assert _encode(impl, old, bytes(new)) == b"\x05\x02\xff\xfe"


def test_word_boundaries_and_long_runs(impl):
    """Runs that start, end and cross 8-byte words, and runs of 128+ bytes (2-byte ULEB128)."""
    old = bytes(PAGE)
    new = bytearray(old)
    new[3:13] = b"\x01" * 10  # crosses a word boundary
    new[14] = 2  # one equal byte between two non-zero runs
    new[200:500] = b"\x03" * 300  # 2-byte lengths
    enc = _encode(impl, old, bytes(new))
    assert enc == (
        b"\x03\x0a" + b"\x01" * 10 + b"\x01\x01\x02" + _uleb(200 - 15) + _uleb(300) + b"\x03" * 300
    )
    page = bytearray(old)
    impl.xbzrle_decode(enc, page)
    assert page == new


def test_largest_page_uses_3_byte_lengths(impl):
    old = bytes(65536)
    new = bytearray(old)
    new[-1] = 1
    enc = _encode(impl, old, bytes(new))
    assert enc == b"\xff\xff\x03\x01\x01"  # zrun 65535 in 3 bytes
    page = bytearray(old)
    assert impl.xbzrle_decode(enc, page) == 65536 and page == new


def test_budget_overflow_is_minus_one_exactly(impl):
    old = bytes(PAGE)
    new = bytes([1]) * PAGE  # every byte changed: zrun 0 (1) + nzrun 4096 (2) + 4096 bytes
    assert impl.xbzrle_encode(old, new, bytearray(PAGE)) == -1
    assert impl.xbzrle_encode(old, new, bytearray(PAGE + 2)) == -1
    assert impl.xbzrle_encode(old, new, bytearray(PAGE + 3)) == PAGE + 3
    # a budget one byte short of the QEMU example
    old, new, enc = qemu_example()
    assert impl.xbzrle_encode(old, new, bytearray(23)) == -1
    assert impl.xbzrle_encode(old, new, bytearray(24)) == 24


def test_alternating_bytes_overflow(impl):
    """QEMU's documented overflow case: "changing every second byte"."""
    old = bytes(PAGE)
    new = bytes([0, 1]) * (PAGE // 2)
    assert impl.xbzrle_encode(old, new, bytearray(PAGE)) == -1


@pytest.mark.parametrize("n", [1, 3, 7, 9, 100, 4095, 4097, 16383])
def test_unaligned_lengths(impl, n):
    rng = np.random.default_rng(n)
    old = rng.integers(0, 256, n, dtype=np.uint8)
    new = old.copy()
    new[rng.integers(0, n, max(1, n // 10))] ^= 0x5A
    enc = _encode(impl, old, new)
    page = bytearray(old.tobytes())
    impl.xbzrle_decode(enc, page)
    assert page == new.tobytes()


def test_buffer_kinds(impl):
    """bytes, bytearray, memoryview, numpy arrays (also char and bool items) and ctypes arrays."""
    old = bytes(16)
    new = b"\x00" * 4 + b"\x01" + b"\x00" * 11
    want = b"\x04\x01\x01"
    for o, n in [
        (bytearray(old), memoryview(new)),
        (np.frombuffer(old, np.uint8), np.frombuffer(new, np.uint8)),
        (memoryview(old).cast("c"), np.frombuffer(new, np.bool_)),
        ((ctypes.c_ubyte * 16)(), (ctypes.c_char * 16).from_buffer_copy(new)),
    ]:
        out = np.zeros(32, np.uint8)
        assert impl.xbzrle_encode(o, n, out) == 3 and out[:3].tobytes() == want


def test_page_argument_errors(impl):
    with pytest.raises(ValueError, match="differ in length"):
        impl.xbzrle_encode(b"ab", b"abc", bytearray(10))
    with pytest.raises(ValueError, match="page length"):
        impl.xbzrle_encode(b"", b"", bytearray(10))
    with pytest.raises(ValueError, match="page length"):
        impl.xbzrle_encode(bytes(65537), bytes(65537), bytearray(10))
    with pytest.raises(ValueError, match="page length"):
        impl.xbzrle_decode(b"", bytearray(65537))
    with pytest.raises(BufferError):
        impl.xbzrle_encode(b"a", b"b", b"readonly-out")
    with pytest.raises(ValueError):
        impl.xbzrle_decode(b"", np.zeros(4, np.uint8)[::2])  # not contiguous
    with pytest.raises(ValueError, match="dtype"):
        impl.xbzrle_encode(np.zeros(4, np.int8), bytes(4), bytearray(8))
    with pytest.raises(ValueError, match="dimensions"):
        impl.xbzrle_encode(np.zeros((2, 2), np.uint8), bytes(4), bytearray(8))
    with pytest.raises(TypeError, match="must not be None"):
        impl.xbzrle_encode(None, b"a", bytearray(8))
    buf = bytearray(64)
    mv = memoryview(buf)
    with pytest.raises(ValueError, match="overlaps"):
        impl.xbzrle_encode(mv[:16], mv[16:32], mv[30:60])
    with pytest.raises(ValueError, match="overlap"):
        impl.xbzrle_decode(mv[:8], mv[4:20])
    assert impl.xbzrle_encode(mv[:16], mv[16:32], mv[32:64]) == 0  # adjacent is fine


@pytest.mark.parametrize(
    "enc",
    [
        b"\x80",  # truncated zrun ULEB128
        b"\x05",  # zrun with no nzrun
        b"\x05\x81",  # truncated nzrun ULEB128
        b"\x00\x00",  # zero-length nzrun
        b"\x00\x01",  # nzrun of 1 but no byte
        b"\x00\x01\xaa\x00\x01\xbb",  # a zero-length zrun after the first
        b"\x80\x80\x80\x01\x01\xaa",  # a ULEB128 longer than 3 bytes
        b"\xff\x7f\x01\xaa",  # zrun past the page end
        b"\xff\x1f\x02\xaa\xbb",  # nzrun past the page end (zrun 4095, nzrun 2)
        b"\x00\xff\x7f" + bytes(20),  # nzrun past the source end
        b"\x01\x01\xaa\x01",  # trailing zrun with nothing after it
    ],
)
def test_malformed_encodings(impl, enc):
    with pytest.raises(RemoteProtocolError, match="malformed XBZRLE") as ei:
        impl.xbzrle_decode(enc, bytearray(PAGE))
    assert ei.value.code == C.ERR_MALFORMED


def test_decode_accepts_what_qemu_accepts(impl):
    page = bytearray(8)
    assert impl.xbzrle_decode(b"\x80\x00\x01\xaa", page) == 1  # a non-minimal ULEB128 zero
    assert impl.xbzrle_decode(b"\x07\x01\xbb", page) == 8  # a run ending at the page end
    assert page == b"\xaa" + bytes(6) + b"\xbb"
    with pytest.raises(RemoteProtocolError):
        impl.xbzrle_decode(b"\x00\x01\xaa", bytearray())  # nothing fits in an empty page


# -- scan_dirty -------------------------------------------------------------------


def test_scan_dirty(impl):
    old = np.zeros(3 * PAGE + 100, np.uint8)
    new = old.copy()
    new[PAGE + 5] = 1
    new[3 * PAGE + 99] = 1  # the short last page
    assert impl.scan_dirty(old, new, PAGE) == bytearray([0, 1, 0, 1])
    assert impl.scan_dirty(old, new) == bytearray([0, 1, 0, 1])
    assert impl.scan_dirty(old, new, 1000) == bytearray([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    assert impl.scan_dirty(old, new, 1 << 62) == bytearray([1])
    assert impl.scan_dirty(b"", b"", PAGE) == bytearray()
    with pytest.raises(ValueError, match="differ in length"):
        impl.scan_dirty(b"a", b"ab")
    with pytest.raises(ValueError, match="positive"):
        impl.scan_dirty(b"a", b"a", 0)
    with pytest.raises(TypeError):
        impl.scan_dirty(b"a", b"a", 4096.0)


# -- the chunk delta ----------------------------------------------------------------


def test_delta_records(impl):
    old = np.zeros(4 * PAGE, np.uint8)
    new = old.copy()
    new[PAGE + 10] = 7  # page 1: a tiny change -> XBZRLE
    new[3 * PAGE :] = 0x33  # page 3: rewritten -> RAW
    p = _delta(impl, old, new)
    rec1 = b"\x01" + b"\x01" + b"\x03" + b"\x0a\x01\x07"  # skip 1, XBZRLE, n=3: zrun 10, nzrun 1, the byte
    rec3 = b"\x01" + b"\x02" + bytes([0x33]) * PAGE  # skip 1 (page 2 unchanged), RAW
    assert p == rec1 + rec3
    back = np.empty_like(old)
    assert impl.delta_decode(p, old, back) == 2
    assert (back == new).all()
    base = old.copy()  # in place on the base
    assert impl.delta_decode(p, base, base) == 2 and (base == new).all()


def test_delta_multibyte_skip(impl):
    ps = 512
    old = np.zeros(300 * ps, np.uint8)
    new = old.copy()
    new[200 * ps] = 1
    new[299 * ps + 511] = 2
    p = _delta(impl, old, new, ps)
    assert p == _uleb(200) + b"\x01\x03\x00\x01\x01" + _uleb(98) + b"\x01\x04" + _uleb(511) + b"\x01\x02"
    assert impl.delta_decode(p, old, np.empty_like(old), ps) == 2


@pytest.mark.parametrize("run,kind", [(506, 1), (507, 2)])
def test_xbzrle_or_raw_threshold(impl, run, kind):
    """XBZRLE iff n + ulebsize(n) < len(page): on a 512-byte page a run of 506 costs
    n = 1 + 2 + 506 = 509 (+2 = 511: XBZRLE), a run of 507 costs 510 (+2 = 512: RAW)."""
    old = np.zeros(512, np.uint8)
    new = old.copy()
    new[:run] = 9
    p = _delta(impl, old, new, 512)
    assert p[:2] == bytes([0, kind])
    if kind == 1:
        assert p[2:4] == _uleb(509) and len(p) == 4 + 509
    else:
        assert p[2:] == new.tobytes()
    assert impl.delta_decode(p, old, np.empty_like(old), 512) == 1


def test_delta_identical_and_empty(impl):
    a = np.arange(PAGE * 2, dtype=np.uint8)
    assert impl.delta_encode(a, a.copy(), bytearray(0)) == 0
    assert impl.delta_encode(b"", b"", bytearray()) == 0
    out = bytearray(len(a))
    assert impl.delta_decode(b"", a, out) == 0 and out == a.tobytes()
    assert impl.delta_decode(b"", b"", bytearray()) == 0
    with pytest.raises(RemoteProtocolError, match="past the last page"):
        impl.delta_decode(b"\x00\x02", b"", bytearray())


def test_delta_too_small_out_is_minus_one(impl):
    old = np.zeros(2 * PAGE, np.uint8)
    new = np.full(2 * PAGE, 9, np.uint8)
    need = len(_delta(impl, old, new))
    assert need == 2 * (2 + PAGE)
    assert impl.delta_encode(old, new, bytearray(need - 1)) == -1
    assert impl.delta_encode(old, new, bytearray(need)) == need


def test_short_last_page(impl):
    old = np.zeros(PAGE + 100, np.uint8)
    new = old.copy()
    new[3] = 5
    new[PAGE:] = 1  # the whole 100-byte last page: 102 bytes of XBZRLE, so RAW
    p = _delta(impl, old, new)
    assert p == b"\x00\x01\x03\x03\x01\x05" + b"\x00\x02" + new[PAGE:].tobytes()
    back = np.empty_like(old)
    assert impl.delta_decode(p, old, back) == 2
    assert (back == new).all()
    new[PAGE : PAGE + 50] = 0  # now 50 bytes: 52 bytes of XBZRLE, + 1 < 100
    p = _delta(impl, old, new)
    assert p == b"\x00\x01\x03\x03\x01\x05" + b"\x00\x01\x34\x32\x32" + b"\x01" * 50
    assert impl.delta_decode(p, old, back) == 2
    assert (back == new).all()


def test_delta_bound(impl):
    assert impl.delta_bound(0) == 0
    assert impl.delta_bound(1) == 12
    assert impl.delta_bound(PAGE) == PAGE + 11
    assert impl.delta_bound(PAGE + 1, 512) == PAGE + 1 + 11 * 9
    assert impl.delta_bound((1 << 63) - 1, 512) == (1 << 63) - 1 + 11 * (1 << 54)  # no C overflow
    # the worst case really fits: every page dirty, RAW
    old = np.zeros(5 * 512 + 3, np.uint8)
    assert len(_delta(impl, old, old + 1, 512)) <= impl.delta_bound(len(old), 512)
    with pytest.raises(ValueError, match="length"):
        impl.delta_bound(-1)
    with pytest.raises(OverflowError):
        impl.delta_bound(1 << 63)


def test_pages_encode(impl):
    theirs = np.zeros(3 * PAGE, np.uint8)
    mine = theirs.copy()
    mine[2 * PAGE :] = 5
    out = np.empty(impl.delta_bound(len(mine)), np.uint8)
    n = impl.pages_encode(mine, bytes([0, 0, 1]), out)
    assert out[:n].tobytes() == b"\x02\x02" + bytes([5]) * PAGE
    back = np.empty_like(mine)
    assert impl.delta_decode(out[:n], theirs, back) == 1
    assert (back == mine).all()
    assert impl.pages_encode(mine, bytes(3), out) == 0
    assert impl.pages_encode(b"", b"", bytearray()) == 0
    n = impl.pages_encode(mine, bytes([7, 0, 255]), out)  # any non-zero byte is dirty
    assert out[:n].tobytes() == b"\x00\x02" + bytes(PAGE) + b"\x01\x02" + bytes([5]) * PAGE
    with pytest.raises(ValueError, match="dirty map"):
        impl.pages_encode(mine, b"\x01", out)
    assert impl.pages_encode(mine, bytes([1, 1, 1]), bytearray(10)) == -1


_PAGE2 = bytes(PAGE)


@pytest.mark.parametrize(
    "payload,msg",
    [
        (b"\x80", "ULEB128"),  # truncated skip
        (b"\xff" * 11, "ULEB128"),  # longer than 10 bytes
        (b"\x80" * 9 + b"\x02" + b"\x02" + _PAGE2, "ULEB128"),  # a skip of 2**64 (would wrap to 0)
        (b"\x00\x01" + b"\x80" * 9 + b"\x7f", "ULEB128"),  # an XBZRLE length >= 2**64
        (b"\x00\x01\x80", "ULEB128"),  # truncated XBZRLE length
        (b"\x02\x02", "past the last page"),
        (b"\x80" * 9 + b"\x01\x02", "past the last page"),  # 2**63
        (b"\x00\x02" + _PAGE2 + b"\x00\x02" + _PAGE2 + b"\x00\x02", "past the last page"),
        (b"\x00", "truncated"),  # no kind
        (b"\x00\x02" + bytes(100), "truncated"),  # short RAW body
        (b"\x00\x01\x05\x00\x01", "truncated"),  # XBZRLE body past the payload
        (b"\x00\x07", "unknown"),
        (b"\x00\x00" + _PAGE2, "unknown"),
        (b"\x00\x01\x00", "length outside"),  # n == 0
        (b"\x00\x01\x81\x20" + bytes(PAGE + 1), "length outside"),  # n > len(page)
        (b"\x00\x01\x02\x00\x00", "malformed XBZRLE"),
        (b"\x00\x01\x05\x00\x01\x07\x00\x01", "malformed XBZRLE"),  # zero-length zrun inside
        (b"\x00\x01\x03\x0a\x01\x07" + b"\x00", "truncated"),  # a trailing byte
    ],
    ids=lambda v: v if isinstance(v, str) else f"{len(v)}B",
)
def test_malformed_deltas(impl, payload, msg):
    base = np.zeros(2 * PAGE, np.uint8)
    with pytest.raises(RemoteProtocolError, match=msg) as ei:
        impl.delta_decode(payload, base, np.empty_like(base))
    assert ei.value.code == C.ERR_MALFORMED


def test_delta_xbzrle_body_cannot_cross_into_the_next_page(impl):
    ps = 512
    base = np.zeros(2 * ps, np.uint8)
    body = _uleb(510) + b"\x04" + b"\x01" * 4  # zrun 510 + nzrun 4 = 514 > 512
    with pytest.raises(RemoteProtocolError, match="malformed XBZRLE"):
        impl.delta_decode(b"\x00\x01" + _uleb(len(body)) + body, base, np.empty_like(base), ps)
    out = np.zeros(ps + 100, np.uint8)  # nor past a short last page
    body = _uleb(98) + b"\x03" + b"\x01" * 3
    with pytest.raises(RemoteProtocolError, match="malformed XBZRLE"):
        impl.delta_decode(b"\x01\x01" + _uleb(len(body)) + body, np.zeros_like(out), out, ps)


def test_delta_argument_errors(impl):
    base = np.zeros(2 * PAGE, np.uint8)
    for ps in (0, 256, 3000, 131072, -4096):
        with pytest.raises(ValueError, match="power of two"):
            impl.delta_encode(base, base, bytearray(10), ps)
        with pytest.raises(ValueError, match="power of two"):
            impl.delta_decode(b"", base, np.empty_like(base), ps)
        with pytest.raises(ValueError, match="power of two"):
            impl.pages_encode(base, b"\x00\x00", bytearray(10), ps)
        with pytest.raises(ValueError, match="power of two"):
            impl.delta_bound(10, ps)
    with pytest.raises(OverflowError):
        impl.delta_encode(base, base, bytearray(10), 1 << 64)
    with pytest.raises(ValueError, match="differ in length"):
        impl.delta_encode(base, base[:-1], bytearray(10))
    with pytest.raises(ValueError, match="out has"):
        impl.delta_decode(b"", base, bytearray(10))
    with pytest.raises((BufferError, ValueError)):
        impl.delta_decode(b"", bytes(10), bytes(10))  # read-only out
    with pytest.raises(TypeError, match="must not be None"):
        impl.delta_decode(None, base, base)


def test_overlapping_buffers(impl):
    buf = np.zeros(4 * PAGE, np.uint8)
    with pytest.raises(ValueError, match="overlap partially"):
        impl.delta_decode(b"", buf[: PAGE + 8], buf[8 : PAGE + 16])
    with pytest.raises(ValueError, match="payload and out overlap"):
        impl.delta_decode(buf[2 * PAGE + 9 : 2 * PAGE + 19], buf[:PAGE], buf[2 * PAGE : 3 * PAGE])
    with pytest.raises(ValueError, match="out overlaps"):
        impl.delta_encode(buf[:PAGE], buf[PAGE : 2 * PAGE], buf[PAGE + 10 :])
    with pytest.raises(ValueError, match="out overlaps"):
        impl.pages_encode(buf[:PAGE], b"\x01", buf[100:])
    # in place, and a payload inside base (not out), are fine
    assert impl.delta_decode(b"", buf[: 2 * PAGE], buf[: 2 * PAGE]) == 0
    buf[10:16] = np.frombuffer(b"\x00\x01\x03\x00\x01\x09", np.uint8)  # page 0, byte 0 := 9
    assert impl.delta_decode(buf[10:16], buf[: 2 * PAGE], buf[2 * PAGE :]) == 1
    assert buf[2 * PAGE] == 9 and (buf[2 * PAGE + 1 :] == buf[1 : 2 * PAGE]).all()
