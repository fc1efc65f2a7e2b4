# cython: language_level=3
"""XBZRLE page encoding and the fused chunk delta (C kernels in xorzrle.h).

Formats (shared with the pure-Python twin dwcp/_ref/xorzrle.py)
---------------------------------------------------------------
XBZRLE, one page (QEMU's format, docs/devel/migration/xbzrle.rst)::

    page  := zrun nzrun | zrun nzrun page
    zrun  := uleb128(length of a run where old == new, i.e. XOR is zero)
    nzrun := uleb128(length of a run where old != new) + the NEW bytes

A zero run is 0 only in the first position, a non-zero run is never 0, and
there is no trailing zero run, so identical pages encode to nothing.  Run
lengths are ULEB128 of at most 3 bytes (pages up to 64 KiB); for pages up
to 16383 bytes the output is byte-identical to QEMU's encoder.  Unlike
QEMU's encoder, whose overflow check is conservative, ``xbzrle_encode``
returns -1 exactly when the encoding is longer than ``out``.

Chunk delta (the CODEC_XBZRLE / CODEC_PAGES / CODEC_SPARSE payloads)::

    payload := record*
    record  := uleb128(skip) kind body
    skip    := unchanged pages between the previous record's page
               (exclusive) and this one; for the first record, its page index
    kind    := 0x01 XBZRLE  body = uleb128(n) + n bytes of xbzrle_encode (n >= 1)
             | 0x02 RAW     body = the new page verbatim (page_size bytes, or
                            the short last page's length)

Pages are ``page_size`` bytes (a power of two in [512, 65536]); the last
page of a chunk may be short.  ULEB128 here is the general unsigned form
(at most 10 bytes, value < 2**64).

Rules
-----
1. A dirty page is encoded with XBZRLE under a budget of len(page) bytes;
   it is an XBZRLE record if that fits and ``n + ulebsize(n) < len(page)``,
   else a RAW record.  Clean pages produce nothing.
2. Encoders return the payload length (0: nothing changed) or -1 when it
   does not fit in ``out``; after -1 the contents of ``out`` are
   unspecified (the twins may leave different prefixes there).
3. Decoders trust nothing: a truncated or overflowing ULEB128, a page past
   the end, a truncated body, an unknown kind, an XBZRLE body of 0 or more
   than len(page) bytes, a malformed XBZRLE body (zero-length zero run after
   the first, zero-length non-zero run, run past the page or the source) or
   trailing bytes raise RemoteProtocolError(code=ERR_MALFORMED).  The
   output is then partially patched; nothing outside it is ever written.
4. Caller mistakes (mismatched lengths, a bad page_size, overlapping
   output and input buffers) raise ValueError; ``delta_decode`` works in
   place when ``out`` is ``base``.

Every ``def`` validates its buffers once, then calls the C kernels; they
run with the GIL released once the input is NOGIL_MIN bytes or more (below
that, dropping and re-taking the GIL costs more than the work).
"""

from libc.stdint cimport uint8_t, uintptr_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from dwcp.errors import RemoteProtocolError
from dwcp.wire.consts import ERR_MALFORMED

__all__ = ["xbzrle_encode", "xbzrle_decode", "scan_dirty", "delta_encode", "delta_decode",
           "pages_encode", "delta_bound"]

cdef extern from "xorzrle.h" nogil:
    ptrdiff_t dwcp_xbzrle_encode(const uint8_t *old, const uint8_t *new_, size_t slen, uint8_t *dst, size_t dlen)
    ptrdiff_t dwcp_xbzrle_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
    void dwcp_scan_dirty(const uint8_t *a, const uint8_t *b, size_t n, size_t ps, uint8_t *dirty)
    ptrdiff_t dwcp_delta_encode(const uint8_t *old, const uint8_t *new_, size_t n, size_t ps,
                                uint8_t *dst, size_t dlen, uint8_t *scratch)
    ptrdiff_t dwcp_pages_encode(const uint8_t *new_, size_t n, size_t ps, const uint8_t *dirty,
                                uint8_t *dst, size_t dlen)
    ptrdiff_t dwcp_delta_apply(const uint8_t *src, size_t slen, uint8_t *out, size_t n, size_t ps)

cdef enum:
    MAX_XBZRLE_PAGE = 65536
    NOGIL_MIN = 16384

# dwcp_delta_apply's negative results (DWCP_DE_* in xorzrle.h)
_DELTA_ERRORS = {
    -1: "truncated, overlong or overflowing ULEB128 in a delta record",
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
    # a zero-length output is never written to
    return &b[0] if b.shape[0] else <uint8_t*>&_EMPTY


cdef inline bint _overlap(const void *a, size_t na, const void *b, size_t nb) noexcept:
    cdef uintptr_t x = <uintptr_t>a, y = <uintptr_t>b
    return na != 0 and nb != 0 and x < y + nb and y < x + na


cdef int _check_page_size(Py_ssize_t page_size) except -1:
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two in [512, 65536], got {page_size}")
    return 0


cdef int _check_out(const uint8_t[::1] out, const uint8_t[::1] a, const uint8_t[::1] b, str what) except -1:
    if _overlap(_ptr(out), out.shape[0], _ptr(a), a.shape[0]) or _overlap(_ptr(out), out.shape[0], _ptr(b), b.shape[0]):
        raise ValueError(f"out overlaps {what}")
    return 0


def xbzrle_encode(const uint8_t[::1] old not None, const uint8_t[::1] new not None, uint8_t[::1] out not None):
    """XBZRLE-encode ``new`` against ``old`` into ``out``.

    Returns 0 when the pages are identical, -1 when the encoding is longer
    than ``len(out)``, else its length.
    """
    cdef size_t n = old.shape[0]
    if <size_t>new.shape[0] != n:
        raise ValueError(f"old and new pages differ in length ({n} != {new.shape[0]})")
    if n < 1 or n > MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be in [1, {MAX_XBZRLE_PAGE}], got {n}")
    _check_out(out, old, new, "old or new")
    cdef const uint8_t *po = &old[0]
    cdef const uint8_t *pn = &new[0]
    cdef uint8_t *pd = _wptr(out)
    cdef size_t dlen = out.shape[0]
    cdef ptrdiff_t r
    if n >= NOGIL_MIN:
        with nogil:
            r = dwcp_xbzrle_encode(po, pn, n, pd, dlen)
    else:
        r = dwcp_xbzrle_encode(po, pn, n, pd, dlen)
    return r


def xbzrle_decode(const uint8_t[::1] src not None, uint8_t[::1] page not None):
    """Apply the XBZRLE encoding ``src`` onto ``page`` (holding the old page) in place.

    Returns the number of bytes covered (up to the end of the last non-zero
    run; 0 for an empty ``src``).
    """
    cdef size_t sl = src.shape[0], pl = page.shape[0]
    if pl > MAX_XBZRLE_PAGE:
        raise ValueError(f"page length must be at most {MAX_XBZRLE_PAGE}, got {pl}")
    cdef const uint8_t *ps = _ptr(src)
    cdef uint8_t *pp = _wptr(page)
    if _overlap(ps, sl, pp, pl):
        raise ValueError("src and page overlap")
    cdef ptrdiff_t r
    if pl >= NOGIL_MIN:
        with nogil:
            r = dwcp_xbzrle_decode(ps, sl, pp, pl)
    else:
        r = dwcp_xbzrle_decode(ps, sl, pp, pl)
    if r < 0:
        raise RemoteProtocolError("malformed XBZRLE page encoding", ERR_MALFORMED)
    return r


def scan_dirty(const uint8_t[::1] old not None, const uint8_t[::1] new not None, Py_ssize_t page_size=4096):
    """One byte per page (the last may be short): 1 where ``old`` and ``new`` differ, else 0."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    cdef size_t n = old.shape[0], ps = page_size
    if <size_t>new.shape[0] != n:
        raise ValueError(f"old and new differ in length ({n} != {new.shape[0]})")
    cdef size_t npages = n // ps + (n % ps != 0)
    out = bytearray(npages)
    if not npages:
        return out
    cdef uint8_t[::1] o = out
    cdef const uint8_t *po = &old[0]
    cdef const uint8_t *pn = &new[0]
    cdef uint8_t *pd = &o[0]
    if n >= NOGIL_MIN:
        with nogil:
            dwcp_scan_dirty(po, pn, n, ps, pd)
    else:
        dwcp_scan_dirty(po, pn, n, ps, pd)
    return out


def delta_bound(Py_ssize_t length, Py_ssize_t page_size=4096):
    """An upper bound on the delta payload of any ``length``-byte chunk.

    Each dirty page costs at most its bytes plus a 10-byte skip and the kind.
    """
    _check_page_size(page_size)
    if length < 0:
        raise ValueError("length must be >= 0")
    npages = length // page_size + (length % page_size != 0)
    return <object>length + 11 * npages  # Python ints: no overflow near 2**63


def delta_encode(const uint8_t[::1] old not None, const uint8_t[::1] new not None, uint8_t[::1] out not None,
                 Py_ssize_t page_size=4096):
    """Write the chunk delta of ``new`` against ``old`` into ``out``.

    Returns its length (0 when nothing changed), or -1 when it does not fit
    in ``len(out)``; ``delta_bound(len(new), page_size)`` bytes always fit.
    """
    _check_page_size(page_size)
    cdef size_t n = old.shape[0]
    if <size_t>new.shape[0] != n:
        raise ValueError(f"old and new differ in length ({n} != {new.shape[0]})")
    _check_out(out, old, new, "old or new")
    if n == 0:
        return 0
    cdef const uint8_t *po = &old[0]
    cdef const uint8_t *pn = &new[0]
    cdef uint8_t *pd = _wptr(out)
    cdef size_t dlen = out.shape[0], ps = page_size
    cdef ptrdiff_t r
    cdef uint8_t *scratch = <uint8_t*>malloc(ps)  # one page's XBZRLE, before it is known to pay
    if scratch == NULL:
        raise MemoryError()
    if n >= NOGIL_MIN:
        with nogil:
            r = dwcp_delta_encode(po, pn, n, ps, pd, dlen, scratch)
    else:
        r = dwcp_delta_encode(po, pn, n, ps, pd, dlen, scratch)
    free(scratch)
    return r


def pages_encode(const uint8_t[::1] new not None, const uint8_t[::1] dirty not None, uint8_t[::1] out not None,
                 Py_ssize_t page_size=4096):
    """RAW records (the delta payload format) for every page whose ``dirty`` byte is non-zero.

    ``dirty`` has one byte per page (as ``scan_dirty`` returns).  Returns the
    payload length, or -1 when it does not fit in ``len(out)``.
    """
    _check_page_size(page_size)
    cdef size_t n = new.shape[0], ps = page_size
    cdef size_t npages = n // ps + (n % ps != 0)
    if <size_t>dirty.shape[0] != npages:
        raise ValueError(f"dirty map has {dirty.shape[0]} entries for {npages} pages")
    _check_out(out, new, dirty, "new or dirty")
    if n == 0:
        return 0
    cdef const uint8_t *pn = &new[0]
    cdef const uint8_t *pdirty = &dirty[0]
    cdef uint8_t *pd = _wptr(out)
    cdef size_t dlen = out.shape[0]
    cdef ptrdiff_t r
    if n >= NOGIL_MIN:
        with nogil:
            r = dwcp_pages_encode(pn, n, ps, pdirty, pd, dlen)
    else:
        r = dwcp_pages_encode(pn, n, ps, pdirty, pd, dlen)
    return r


def delta_decode(const uint8_t[::1] payload not None, const uint8_t[::1] base not None, uint8_t[::1] out not None,
                 Py_ssize_t page_size=4096):
    """Rebuild the new chunk into ``out``: a copy of ``base`` patched by ``payload``.

    ``out`` may be ``base`` itself (in place; no copy).  Returns the number
    of pages patched.
    """
    _check_page_size(page_size)
    cdef size_t n = base.shape[0], plen = payload.shape[0]
    if <size_t>out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} bytes, base has {n}")
    cdef const uint8_t *pb = _ptr(base)
    cdef uint8_t *po = _wptr(out)
    cdef const uint8_t *pp = _ptr(payload)
    cdef bint copy = n != 0 and <const uint8_t*>po != pb
    if copy and _overlap(po, n, pb, n):
        raise ValueError("out and base overlap partially")
    if _overlap(pp, plen, po, n):
        raise ValueError("payload and out overlap")
    cdef ptrdiff_t r
    if n + plen >= NOGIL_MIN:
        with nogil:
            if copy:
                memcpy(po, pb, n)
            r = dwcp_delta_apply(pp, plen, po, n, page_size)
    else:
        if copy:
            memcpy(po, pb, n)
        r = dwcp_delta_apply(pp, plen, po, n, page_size)
    if r < 0:
        raise RemoteProtocolError(_DELTA_ERRORS[r], ERR_MALFORMED)
    return r
