"""Pure-Python XBZRLE and chunk delta: the oracle for dwcp/_fast/xorzrle.pyx.

The formats and the Rules are in the module docstring of
dwcp/_fast/xorzrle.pyx.  Obviously correct rather than fast: byte loops over
memoryviews.  Arguments are converted the way Cython converts the typed
arguments of the fast twin (``_buf``, and ``ssize`` from ``_cyargs``), in
signature order, so a wrong argument raises the same exception type in both.
"""

from __future__ import annotations

import re

from dwcp.errors import RemoteProtocolError
from dwcp.wire.consts import ERR_MALFORMED

from ._cyargs import request_buffer, ssize

__all__ = ["xbzrle_encode", "xbzrle_decode", "scan_dirty", "delta_encode", "delta_decode",
           "pages_encode", "delta_bound"]  # fmt: skip

MAX_XBZRLE_PAGE = 65536
KIND_XBZRLE = 1
KIND_RAW = 2

_DELTA_ERRORS = {
    -1: "truncated, overlong or overflowing ULEB128 in a delta record",
    -2: "delta record points past the last page",
    -3: "truncated delta record",
    -4: "unknown delta record kind",
    -5: "XBZRLE record length outside the page",
    -6: "malformed XBZRLE page encoding",
}


class _Malformed(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


# -- arguments, as Cython converts them ---------------------------------------


# What Cython accepts for a uint8_t memoryview: unsigned char, char or bool
# items, with any byte-order prefix, or a struct of one such field.
_U8_FORMAT = re.compile(r"[@=<>!^]?(?:[Bc?]|T\{[@=<>!^]?[Bc?](?::[^:]*:)?\})")


def _buf(obj, writable: bool) -> tuple[memoryview, int]:
    """A 1-D C-contiguous uint8 argument as a flat memoryview, and its address."""
    addr = request_buffer(obj, writable)
    mv = memoryview(obj)
    if addr is None:  # not CPython: the address through numpy
        import numpy as np

        addr = np.frombuffer(mv.cast("B") if mv.nbytes else b"", np.uint8).ctypes.data
    if mv.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {mv.ndim})")
    if mv.itemsize != 1 or not _U8_FORMAT.fullmatch(mv.format):
        raise ValueError(f"Buffer dtype mismatch, expected 'uint8_t' but got {mv.format!r}")
    return (mv if mv.format == "B" else mv.cast("B")), addr


def _convert(bufs: tuple, ints: tuple = ()) -> list:
    """The arguments of a fast-twin function, converted as Cython's wrapper does.

    ``bufs`` are (name, object, writable) and come first in every signature
    here, then ``ints`` (Py_ssize_t).  Every argument is converted in order
    before the ``not None`` checks run.
    """
    views = [None if obj is None else _buf(obj, writable) for _, obj, writable in bufs]
    nums = [ssize(x) for x in ints]
    for (name, obj, _), _v in zip(bufs, views):
        if obj is None:
            raise TypeError(f"Argument '{name}' must not be None")
    return [*views, *nums]


def _overlap(a: int, na: int, b: int, nb: int) -> bool:
    return na != 0 and nb != 0 and a < b + nb and b < a + na


def _check_page_size(page_size: int) -> None:
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two in [512, 65536], got {page_size}")


def _npages(n: int, ps: int) -> int:
    return n // ps + (n % ps != 0)


# -- ULEB128 -------------------------------------------------------------------


def _uleb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _uleb_get(src: memoryview, i: int, maxbytes: int) -> tuple[int, int] | None:
    """(value, bytes read), or None when truncated, longer than maxbytes or >= 2**64."""
    v = 0
    for k in range(maxbytes):
        if i + k >= len(src):
            return None
        b = src[i + k]
        v |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            return (v, k + 1) if v < 1 << 64 else None
    return None


# -- XBZRLE, one page ------------------------------------------------------------


def _encode_page(old: memoryview, new: memoryview) -> bytes:
    """The exact XBZRLE encoding of new against old (no budget)."""
    out = bytearray()
    n = len(old)
    i = 0
    while i < n:
        start = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break  # no trailing zero run
        zrun = i - start
        start = i
        while i < n and old[i] != new[i]:
            i += 1
        out += _uleb(zrun) + _uleb(i - start) + new[start:i]
    return bytes(out)


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


def xbzrle_encode(old, new, out) -> int:
    (o, ao), (nw, an), (d, ad) = _convert((("old", old, False), ("new", new, False), ("out", out, True)))
    if len(nw) != len(o):
        raise ValueError(f"old and new pages differ in length ({len(o)} != {len(nw)})")
    if not 1 <= len(o) <= MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be in [1, {MAX_XBZRLE_PAGE}], got {len(o)}")
    if _overlap(ad, len(d), ao, len(o)) or _overlap(ad, len(d), an, len(nw)):
        raise ValueError("out overlaps old or new")
    enc = _encode_page(o, nw)
    if len(enc) > len(d):
        return -1
    d[: len(enc)] = enc
    return len(enc)


def xbzrle_decode(src, page) -> int:
    (s, as_), (p, ap) = _convert((("src", src, False), ("page", page, True)))
    if len(p) > MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be at most {MAX_XBZRLE_PAGE}, got {len(p)}")
    if _overlap(as_, len(s), ap, len(p)):
        raise ValueError("src and page overlap")
    try:
        return _decode_into(s, p)
    except _Malformed:
        raise RemoteProtocolError("malformed XBZRLE page encoding", ERR_MALFORMED) from None


# -- chunks ---------------------------------------------------------------------


def scan_dirty(old, new, page_size: int = 4096) -> bytearray:
    (o, _), (nw, _), ps = _convert((("old", old, False), ("new", new, False)), (page_size,))
    if ps <= 0:
        raise ValueError(f"page_size must be positive, got {ps}")
    if len(nw) != len(o):
        raise ValueError(f"old and new differ in length ({len(o)} != {len(nw)})")
    return bytearray(int(o[i : i + ps] != nw[i : i + ps]) for i in range(0, len(o), ps))


def delta_bound(length: int, page_size: int = 4096) -> int:
    n, ps = _convert((), (length, page_size))
    _check_page_size(ps)
    if n < 0:
        raise ValueError("length must be >= 0")
    return n + 11 * _npages(n, ps)


def _pages(n: int, ps: int):
    """(index, offset, length) of every page of an n-byte chunk."""
    for p in range(_npages(n, ps)):
        yield p, p * ps, min(ps, n - p * ps)


def _emit(payload: bytearray, out: memoryview) -> int:
    if len(payload) > len(out):
        return -1
    out[: len(payload)] = payload
    return len(payload)


def delta_encode(old, new, out, page_size: int = 4096) -> int:
    (o, ao), (nw, an), (d, ad), ps = _convert(
        (("old", old, False), ("new", new, False), ("out", out, True)), (page_size,)
    )
    _check_page_size(ps)
    if len(nw) != len(o):
        raise ValueError(f"old and new differ in length ({len(o)} != {len(nw)})")
    if _overlap(ad, len(d), ao, len(o)) or _overlap(ad, len(d), an, len(nw)):
        raise ValueError("out overlaps old or new")
    payload = bytearray()
    last = 0
    for p, off, ln in _pages(len(o), ps):
        old_page, new_page = o[off : off + ln], nw[off : off + ln]
        if old_page == new_page:
            continue
        enc = _encode_page(old_page, new_page)  # fits the budget of ln bytes iff len(enc) <= ln
        if len(enc) <= ln and len(enc) + len(_uleb(len(enc))) < ln:
            payload += _uleb(p - last) + bytes([KIND_XBZRLE]) + _uleb(len(enc)) + enc
        else:
            payload += _uleb(p - last) + bytes([KIND_RAW]) + new_page
        last = p + 1
    return _emit(payload, d)


def pages_encode(new, dirty, out, page_size: int = 4096) -> int:
    (nw, an), (dm, adm), (d, ad), ps = _convert(
        (("new", new, False), ("dirty", dirty, False), ("out", out, True)), (page_size,)
    )
    _check_page_size(ps)
    if len(dm) != _npages(len(nw), ps):
        raise ValueError(f"dirty map has {len(dm)} entries for {_npages(len(nw), ps)} pages")
    if _overlap(ad, len(d), an, len(nw)) or _overlap(ad, len(d), adm, len(dm)):
        raise ValueError("out overlaps new or dirty")
    payload = bytearray()
    last = 0
    for p, off, ln in _pages(len(nw), ps):
        if dm[p]:
            payload += _uleb(p - last) + bytes([KIND_RAW]) + nw[off : off + ln]
            last = p + 1
    return _emit(payload, d)


def _apply(src: memoryview, out: memoryview, ps: int) -> int:
    """Apply the records of src onto out; the number of records."""
    n = len(out)
    npages = _npages(n, ps)
    i = page = count = 0
    while i < len(src):
        got = _uleb_get(src, i, 10)
        if got is None:
            raise _Malformed(-1)
        skip, k = got
        i += k
        p = page + skip
        if p >= npages:
            raise _Malformed(-2)
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


def delta_decode(payload, base, out, page_size: int = 4096) -> int:
    (src, asrc), (b, ab), (o, ao), ps = _convert(
        (("payload", payload, False), ("base", base, False), ("out", out, True)), (page_size,)
    )
    _check_page_size(ps)
    n = len(b)
    if len(o) != n:
        raise ValueError(f"out has {len(o)} bytes, base has {n}")
    copy = n != 0 and ao != ab
    if copy and _overlap(ao, n, ab, n):
        raise ValueError("out and base overlap partially")
    if _overlap(asrc, len(src), ao, n):
        raise ValueError("payload and out overlap")
    if copy:
        o[:] = b
    try:
        return _apply(src, o, ps)
    except _Malformed as m:
        raise RemoteProtocolError(_DELTA_ERRORS[m.code], ERR_MALFORMED) from None
