"""Pure-Python XBZRLE and chunk delta: the oracle for dwcp/_fast/xorzrle.pyx.

Formats are documented in dwcp/_fast/xorzrle.pyx.  Obviously correct
rather than fast: byte loops over memoryviews, numpy only to find dirty pages.
"""

from __future__ import annotations

from dwcp.errors import RemoteProtocolError
from dwcp.wire.consts import ERR_MALFORMED

__all__ = ["xbzrle_encode", "xbzrle_decode", "scan_dirty", "delta_encode", "delta_decode",
           "pages_encode", "delta_bound"]  # fmt: skip

MAX_XBZRLE_PAGE = 65536
KIND_XBZRLE = 1
KIND_RAW = 2

_DELTA_ERRORS = {
    -1: "truncated or overlong ULEB128 in a delta record",
    -2: "delta record points past the last page",
    -3: "truncated delta record",
    -4: "unknown delta record kind",
    -5: "XBZRLE record length outside the page",
    -6: "malformed XBZRLE page encoding",
}


class _Malformed(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _u8(b, writable: bool = False) -> memoryview:
    mv = memoryview(b)
    if not mv.c_contiguous:
        raise ValueError("ndarray is not C-contiguous")
    if writable and mv.readonly:
        raise TypeError("buffer is read-only")
    return mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv


def _uleb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _uleb_get(src: memoryview, i: int, maxbytes: int) -> tuple[int, int] | None:
    """(value, bytes read) or None when truncated or longer than maxbytes."""
    v = 0
    for k in range(maxbytes):
        if i + k >= len(src):
            return None
        b = src[i + k]
        v |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            return v, k + 1
    return None


def _check_page_size(page_size: int) -> None:
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two in [512, 65536], got {page_size}")


def _encode_page(old: memoryview, new: memoryview) -> bytes:
    """The exact XBZRLE encoding (no budget)."""
    out = bytearray()
    n = len(old)
    i = 0
    while i < n:
        z = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        zrun = i - z
        s = i
        while i < n and old[i] != new[i]:
            i += 1
        out += _uleb(zrun) + _uleb(i - s) + bytes(new[s:i])
    return bytes(out)


def xbzrle_encode(old, new, out) -> int:
    o, nw, d = _u8(old), _u8(new), _u8(out, writable=True)
    if len(nw) != len(o):
        raise ValueError(f"old and new pages differ in length ({len(o)} != {len(nw)})")
    if not 1 <= len(o) <= MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be in [1, {MAX_XBZRLE_PAGE}], got {len(o)}")
    enc = _encode_page(o, nw)
    if len(enc) > len(d):
        return -1
    d[: len(enc)] = enc
    return len(enc)


def _decode_into(src: memoryview, page: memoryview) -> int:
    i = d = 0
    while i < len(src):
        got = _uleb_get(src, i, 3)
        if got is None or (i and got[0] == 0):
            raise _Malformed(-6)
        z, k = got
        i += k
        if z > len(page) - d:
            raise _Malformed(-6)
        d += z
        got = _uleb_get(src, i, 3)
        if got is None or got[0] == 0:
            raise _Malformed(-6)
        nz, k = got
        i += k
        if nz > len(page) - d or nz > len(src) - i:
            raise _Malformed(-6)
        page[d : d + nz] = src[i : i + nz]
        d += nz
        i += nz
    return d


def xbzrle_decode(src, page) -> int:
    s, p = _u8(src), _u8(page, writable=True)
    if len(p) > MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be at most {MAX_XBZRLE_PAGE}, got {len(p)}")
    try:
        return _decode_into(s, p)
    except _Malformed:
        raise RemoteProtocolError("malformed XBZRLE page encoding", ERR_MALFORMED) from None


def scan_dirty(old, new, page_size: int = 4096) -> bytearray:
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    o, nw = _u8(old), _u8(new)
    if len(nw) != len(o):
        raise ValueError(f"old and new differ in length ({len(o)} != {len(nw)})")
    return bytearray(int(o[i : i + page_size] != nw[i : i + page_size]) for i in range(0, len(o), page_size))


def delta_bound(length: int, page_size: int = 4096) -> int:
    _check_page_size(page_size)
    if length < 0:
        raise ValueError("length must be >= 0")
    return length + 11 * ((length + page_size - 1) // page_size)


def _pages(n: int, ps: int):
    for p in range((n + ps - 1) // ps):
        off = p * ps
        yield p, off, min(ps, n - off)


def delta_encode(old, new, out, page_size: int = 4096) -> int:
    _check_page_size(page_size)
    o, nw, d = _u8(old), _u8(new), _u8(out, writable=True)
    if len(nw) != len(o):
        raise ValueError(f"old and new differ in length ({len(o)} != {len(nw)})")
    payload = bytearray()
    last = 0
    for p, off, ln in _pages(len(o), page_size):
        op, np_ = o[off : off + ln], nw[off : off + ln]
        if op == np_:
            continue
        enc = _encode_page(op, np_)
        head = _uleb(p - last)
        if len(enc) <= ln and len(enc) + len(_uleb(len(enc))) < ln:
            payload += head + bytes([KIND_XBZRLE]) + _uleb(len(enc)) + enc
        else:
            payload += head + bytes([KIND_RAW]) + bytes(np_)
        last = p + 1
        if len(payload) > len(d):
            return -1
    d[: len(payload)] = payload
    return len(payload)


def pages_encode(new, dirty, out, page_size: int = 4096) -> int:
    _check_page_size(page_size)
    nw, dm, d = _u8(new), _u8(dirty), _u8(out, writable=True)
    npages = (len(nw) + page_size - 1) // page_size
    if len(dm) != npages:
        raise ValueError(f"dirty map has {len(dm)} entries for {npages} pages")
    payload = bytearray()
    last = 0
    for p, off, ln in _pages(len(nw), page_size):
        if not dm[p]:
            continue
        payload += _uleb(p - last) + bytes([KIND_RAW]) + bytes(nw[off : off + ln])
        last = p + 1
        if len(payload) > len(d):
            return -1
    d[: len(payload)] = payload
    return len(payload)


def _apply(src: memoryview, out: memoryview, n: int, ps: int) -> int:
    npages = (n + ps - 1) // ps
    i = page = count = 0
    while i < len(src):
        got = _uleb_get(src, i, 10)
        if got is None:
            raise _Malformed(-1)
        skip, k = got
        i += k
        if page >= npages or skip >= npages - page:
            raise _Malformed(-2)
        p = page + skip
        if i >= len(src):
            raise _Malformed(-3)
        kind = src[i]
        i += 1
        off = p * ps
        ln = min(ps, n - off)
        if kind == KIND_XBZRLE:
            got = _uleb_get(src, i, 10)
            if got is None:
                raise _Malformed(-1)
            nb, k = got
            i += k
            if nb == 0 or nb > ln:
                raise _Malformed(-5)
            if nb > len(src) - i:
                raise _Malformed(-3)
            _decode_into(src[i : i + nb], out[off : off + ln])
            i += nb
        elif kind == KIND_RAW:
            if ln > len(src) - i:
                raise _Malformed(-3)
            out[off : off + ln] = src[i : i + ln]
            i += ln
        else:
            raise _Malformed(-4)
        page = p + 1
        count += 1
    return count


def _addr(mv: memoryview) -> int:
    import numpy as np

    return int(np.frombuffer(mv, np.uint8).__array_interface__["data"][0])


def delta_decode(payload, base, out, page_size: int = 4096) -> int:
    _check_page_size(page_size)
    src, b, o = _u8(payload), _u8(base), _u8(out, writable=True)
    n = len(b)
    if len(o) != n:
        raise ValueError(f"out has {len(o)} bytes, base has {n}")
    if n:
        ab, ao = _addr(b), _addr(o)
        if ab != ao and ao < ab + n and ab < ao + n:
            raise ValueError("out and base overlap partially")
        if ab != ao:
            o[:] = b
    try:
        return _apply(src, o, n, page_size)
    except _Malformed as m:
        raise RemoteProtocolError(_DELTA_ERRORS[m.code], ERR_MALFORMED) from None
