# cython: language_level=3
"""XBZRLE page encoding and the fused chunk delta, in C (dwcp/_fast/xorzrle.h).

Formats (shared with the pure-Python twin dwcp/_ref/xorzrle.py)
---------------------------------------------------------------
XBZRLE, one page (QEMU's format, docs/devel/migration/xbzrle.rst)::

    page  := zrun nzrun | zrun nzrun page
    zrun  := uleb128(length of a run where old == new)   (0 only first)
    nzrun := uleb128(length of a run where old != new) + the NEW bytes

with no trailing zero run; identical pages encode to nothing.  ULEB128
values here take at most 3 bytes (pages up to 64 KiB); for pages up to
16383 bytes the output is byte-identical to QEMU's.

Chunk delta (CODEC_XBZRLE / CODEC_PAGES / CODEC_SPARSE payloads)::

    payload := record*
    record  := uleb128(skip) kind body
    skip    := unchanged pages since the previous record (or page 0)
    kind    := 0x01 XBZRLE  body = uleb128(n) + n bytes of xbzrle_encode
             | 0x02 RAW     body = the new page verbatim (page or short last page)

A dirty page is XBZRLE when its encoding fits in the page and
``n + ulebsize(n) < len(page)``, RAW otherwise.

Every ``def`` validates its buffers once, then the work runs in C with the
GIL released.  Malformed input raises RemoteProtocolError(ERR_MALFORMED).
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from dwcp.errors import RemoteProtocolError
from dwcp.wire.consts import ERR_MALFORMED

__all__ = ["xbzrle_encode", "xbzrle_decode", "scan_dirty", "delta_encode", "delta_decode",
           "pages_encode", "delta_bound"]

cdef extern from "xorzrle.h" nogil:
    ptrdiff_t dwcp_xbzrle_encode(const uint8_t *old, const uint8_t *new_, size_t slen, uint8_t *dst, size_t dlen)
    ptrdiff_t dwcp_xbzrle_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
    ptrdiff_t dwcp_delta_encode(const uint8_t *old, const uint8_t *new_, size_t n, size_t ps,
                                uint8_t *dst, size_t dlen, uint8_t *scratch)
    ptrdiff_t dwcp_pages_encode(const uint8_t *new_, size_t n, size_t ps, const uint8_t *dirty,
                                uint8_t *dst, size_t dlen)
    ptrdiff_t dwcp_delta_apply(const uint8_t *src, size_t slen, uint8_t *out, size_t n, size_t ps)
    int memcmp(const void *a, const void *b, size_t n)

cdef enum:
    MAX_XBZRLE_PAGE = 65536
    NOGIL_MIN = 16384

_DELTA_ERRORS = {
    -1: "truncated or overlong ULEB128 in a delta record",
    -2: "delta record points past the last page",
    -3: "truncated delta record",
    -4: "unknown delta record kind",
    -5: "XBZRLE record length outside the page",
    -6: "malformed XBZRLE page encoding",
}

cdef uint8_t _EMPTY = 0


cdef inline const uint8_t *_ptr(const uint8_t[::1] b) noexcept:
    return &b[0] if b.shape[0] else &_EMPTY


cdef inline uint8_t *_wptr(uint8_t[::1] b) noexcept:
    return &b[0] if b.shape[0] else <uint8_t*>&_EMPTY


cdef int _check_page_size(Py_ssize_t page_size) except -1:
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two in [512, 65536], got {page_size}")
    return 0


def xbzrle_encode(const uint8_t[::1] old, const uint8_t[::1] new, uint8_t[::1] out):
    """Encode one page; 0 if identical, -1 if longer than len(out), else the length."""
    cdef size_t n = old.shape[0]
    if new.shape[0] != n:
        raise ValueError(f"old and new pages differ in length ({n} != {new.shape[0]})")
    if n < 1 or n > MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be in [1, {MAX_XBZRLE_PAGE}], got {n}")
    cdef ptrdiff_t r
    cdef const uint8_t *po = &old[0]
    cdef const uint8_t *pn = &new[0]
    cdef uint8_t *pd = _wptr(out)
    cdef size_t dlen = out.shape[0]
    with nogil:
        r = dwcp_xbzrle_encode(po, pn, n, pd, dlen)
    return r


def xbzrle_decode(const uint8_t[::1] src, uint8_t[::1] page):
    """Apply an encoding onto ``page`` (holding the old page) in place; returns bytes covered."""
    if page.shape[0] > MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be at most {MAX_XBZRLE_PAGE}, got {page.shape[0]}")
    cdef ptrdiff_t r
    cdef const uint8_t *ps = _ptr(src)
    cdef uint8_t *pp = _wptr(page)
    cdef size_t sl = src.shape[0], pl = page.shape[0]
    with nogil:
        r = dwcp_xbzrle_decode(ps, sl, pp, pl)
    if r < 0:
        raise RemoteProtocolError("malformed XBZRLE page encoding", ERR_MALFORMED)
    return r


def scan_dirty(const uint8_t[::1] old, const uint8_t[::1] new, Py_ssize_t page_size=4096):
    """One byte per page: 1 where old and new differ."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    cdef Py_ssize_t n = old.shape[0]
    if new.shape[0] != n:
        raise ValueError(f"old and new differ in length ({n} != {new.shape[0]})")
    cdef Py_ssize_t npages = (n + page_size - 1) // page_size
    out = bytearray(npages)
    if not npages:
        return out
    cdef uint8_t[::1] o = out
    cdef const uint8_t *po = &old[0]
    cdef const uint8_t *pn = &new[0]
    cdef Py_ssize_t p, off, ln
    with nogil:
        for p in range(npages):
            off = p * page_size
            ln = n - off if n - off < page_size else page_size
            o[p] = memcmp(po + off, pn + off, <size_t>ln) != 0
    return out


def delta_bound(Py_ssize_t length, Py_ssize_t page_size=4096):
    """An upper bound on the delta payload of a ``length``-byte chunk."""
    _check_page_size(page_size)
    if length < 0:
        raise ValueError("length must be >= 0")
    return length + 11 * ((length + page_size - 1) // page_size)


def delta_encode(const uint8_t[::1] old, const uint8_t[::1] new, uint8_t[::1] out, Py_ssize_t page_size=4096):
    """The chunk delta of ``new`` against ``old`` into ``out``; its length, or -1 if it does not fit."""
    _check_page_size(page_size)
    cdef size_t n = old.shape[0]
    if new.shape[0] != n:
        raise ValueError(f"old and new differ in length ({n} != {new.shape[0]})")
    if n == 0:
        return 0
    cdef uint8_t *scratch = <uint8_t*>malloc(page_size)
    if scratch == NULL:
        raise MemoryError()
    cdef ptrdiff_t r
    cdef const uint8_t *po = &old[0]
    cdef const uint8_t *pn = &new[0]
    cdef uint8_t *pd = _wptr(out)
    cdef size_t dlen = out.shape[0], ps = page_size
    try:
        if n >= NOGIL_MIN:
            with nogil:
                r = dwcp_delta_encode(po, pn, n, ps, pd, dlen, scratch)
        else:
            r = dwcp_delta_encode(po, pn, n, ps, pd, dlen, scratch)
    finally:
        free(scratch)
    return r


def pages_encode(const uint8_t[::1] new, const uint8_t[::1] dirty, uint8_t[::1] out, Py_ssize_t page_size=4096):
    """RAW records for every page whose ``dirty`` byte is non-zero; length or -1."""
    _check_page_size(page_size)
    cdef size_t n = new.shape[0]
    cdef size_t npages = (n + page_size - 1) // page_size
    if <size_t>dirty.shape[0] != npages:
        raise ValueError(f"dirty map has {dirty.shape[0]} entries for {npages} pages")
    if n == 0:
        return 0
    cdef ptrdiff_t r
    cdef const uint8_t *pn = &new[0]
    cdef const uint8_t *pdirty = &dirty[0]
    cdef uint8_t *pd = _wptr(out)
    cdef size_t dlen = out.shape[0], ps = page_size
    with nogil:
        r = dwcp_pages_encode(pn, n, ps, pdirty, pd, dlen)
    return r


def delta_decode(const uint8_t[::1] payload, const uint8_t[::1] base, uint8_t[::1] out, Py_ssize_t page_size=4096):
    """Rebuild the chunk into ``out`` from ``base`` and the delta; returns the pages patched."""
    _check_page_size(page_size)
    cdef size_t n = base.shape[0]
    if <size_t>out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} bytes, base has {n}")
    cdef const uint8_t *pb = _ptr(base)
    cdef uint8_t *po = _wptr(out)
    cdef const uint8_t *pp = _ptr(payload)
    cdef size_t plen = payload.shape[0]
    cdef ptrdiff_t r
    if n and <const uint8_t*>po != pb:
        if <const uint8_t*>po < pb + n and pb < <const uint8_t*>po + n:
            raise ValueError("out and base overlap partially")
    with nogil:
        if n and <const uint8_t*>po != pb:
            memcpy(po, pb, n)
        r = dwcp_delta_apply(pp, plen, po, n, page_size)
    if r < 0:
        raise RemoteProtocolError(_DELTA_ERRORS[r], ERR_MALFORMED)
    return r
