/* XBZRLE (QEMU's XOR-based zero-run-length page encoding) and the fused
 * chunk delta, in portable C.  The formats and the rules are in the module
 * docstring of dwcp/_fast/xorzrle.pyx; dwcp/_ref/xorzrle.py is the
 * pure-Python twin and the test oracle.
 *
 * Theory of operation
 * -------------------
 * Every function here takes raw pointers that the Cython entry points have
 * already validated (lengths, page size, no overlap) and runs without the
 * GIL.  Decoders trust nothing in ``src``: every length is checked against
 * both the source and the destination before a byte moves, so no input can
 * make them read or write out of bounds.
 *
 * Word-at-a-time scanning reads 8 bytes with memcpy (no alignment
 * assumptions; gcc turns it into one load) and finds the first differing /
 * first equal byte with count-trailing-zeros, which is why the kernels
 * require a little-endian host.  Clean pages are rejected with memcmp
 * first: libc's memcmp is vectorised and clean pages are the common case.
 */
#ifndef DWCP_XORZRLE_H
#define DWCP_XORZRLE_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <assert.h>

#include "debug.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dwcp's XBZRLE kernels assume a little-endian host"
#endif

#if DWCP_DEBUG
#define DWCP_X_ASSERT(c) assert(c)
#else
#define DWCP_X_ASSERT(c) ((void)0)
#endif

#define DWCP_ONES  0x0101010101010101ULL
#define DWCP_HIGHS 0x8080808080808080ULL

#define DWCP_KIND_XBZRLE 1
#define DWCP_KIND_RAW 2

/* Negative results of dwcp_delta_apply (messages in xorzrle.pyx). */
#define DWCP_DE_ULEB (-1)     /* truncated, longer than allowed, or >= 2**64 */
#define DWCP_DE_PAGE (-2)     /* record points past the last page */
#define DWCP_DE_TRUNC (-3)    /* record body runs past the payload */
#define DWCP_DE_KIND (-4)     /* unknown record kind */
#define DWCP_DE_XLEN (-5)     /* XBZRLE body length 0 or longer than the page */
#define DWCP_DE_XBZRLE (-6)   /* malformed XBZRLE body */

static inline uint64_t dwcp_x_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Length of the run of equal bytes at the start of a/b (n bytes at most). */
static inline size_t dwcp_equal_run(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t x = dwcp_x_ld64(a + i) ^ dwcp_x_ld64(b + i);
        if (x) return i + ((size_t)__builtin_ctzll(x) >> 3);
        i += 8;
    }
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Length of the run of differing bytes at the start of a/b (n bytes at most). */
static inline size_t dwcp_diff_run(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t x = dwcp_x_ld64(a + i) ^ dwcp_x_ld64(b + i);
        /* "has a zero byte": a borrow can flag a 0x01 byte *above* a zero
         * byte, never below one, so the lowest flag is the first zero byte. */
        uint64_t z = (x - DWCP_ONES) & ~x & DWCP_HIGHS;
        if (z) return i + ((size_t)__builtin_ctzll(z) >> 3);
        i += 8;
    }
    while (i < n && a[i] != b[i]) i++;
    return i;
}

static inline size_t dwcp_uleb_size(uint64_t v) {
    size_t k = 1;
    while (v >= 0x80) { v >>= 7; k++; }
    return k;
}

static inline size_t dwcp_uleb_put(uint8_t *p, uint64_t v) {
    size_t k = 0;
    while (v >= 0x80) { p[k++] = (uint8_t)(v | 0x80); v >>= 7; }
    p[k++] = (uint8_t)v;
    return k;
}

/* Decode a ULEB128 of at most maxbytes (<= 10) bytes from p[0..n).
 * Returns the number of bytes read, or 0 if it is truncated, longer than
 * maxbytes, or (10 bytes) its value does not fit in 64 bits. */
static inline size_t dwcp_uleb_get(const uint8_t *p, size_t n, size_t maxbytes, uint64_t *out) {
    uint64_t v = 0;
    size_t k;
    for (k = 0; k < n && k < maxbytes; k++) {
        uint8_t b = p[k];
        if (k == 9 && b > 1) return 0;   /* bits 64 and up */
        v |= (uint64_t)(b & 0x7f) << (7 * k);
        if (!(b & 0x80)) { *out = v; return k + 1; }
    }
    return 0;
}

/* XBZRLE-encode new_ against old (slen bytes) into dst (dlen bytes).
 * Returns 0 when identical, -1 when the encoding is longer than dlen (dst
 * then holds a prefix of it), else the encoded length. */
static inline ptrdiff_t dwcp_xbzrle_encode(const uint8_t *old, const uint8_t *new_, size_t slen,
                                           uint8_t *dst, size_t dlen) {
    size_t i = 0, d = 0;
    while (i < slen) {
        size_t z = dwcp_equal_run(old + i, new_ + i, slen - i);
        i += z;
        if (i == slen) break;                 /* no trailing zero run */
        size_t nz = dwcp_diff_run(old + i, new_ + i, slen - i);
        size_t need = dwcp_uleb_size(z) + dwcp_uleb_size(nz) + nz;
        if (need > dlen - d) return -1;
        d += dwcp_uleb_put(dst + d, z);
        d += dwcp_uleb_put(dst + d, nz);
        memcpy(dst + d, new_ + i, nz);
        d += nz;
        i += nz;
    }
    DWCP_X_ASSERT(d <= dlen);
    return (ptrdiff_t)d;
}

/* Apply an XBZRLE encoding (src, slen) onto dst (dlen bytes, holding the
 * old page).  Returns the number of bytes covered, or -1 if malformed. */
static inline ptrdiff_t dwcp_xbzrle_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen) {
    size_t i = 0, d = 0, k;
    uint64_t z, nz;
    while (i < slen) {
        k = dwcp_uleb_get(src + i, slen - i, 3, &z);
        if (!k || (i && !z)) return -1;       /* a zero-length zero run only first */
        i += k;
        if (z > dlen - d) return -1;
        d += (size_t)z;
        k = dwcp_uleb_get(src + i, slen - i, 3, &nz);
        if (!k || !nz) return -1;
        i += k;
        if (nz > dlen - d || nz > slen - i) return -1;
        memcpy(dst + d, src + i, (size_t)nz);
        d += (size_t)nz;
        i += (size_t)nz;
    }
    return (ptrdiff_t)d;
}

/* dirty[p] = 1 where page p of a/b (n bytes, pages of ps bytes, the last
 * one short) differs, else 0. */
static inline void dwcp_scan_dirty(const uint8_t *a, const uint8_t *b, size_t n, size_t ps, uint8_t *dirty) {
    size_t off, p = 0;
    for (off = 0; off < n; off += ps, p++) {
        size_t ln = n - off < ps ? n - off : ps;
        dirty[p] = memcmp(a + off, b + off, ln) != 0;
    }
}

/* Write one record header (skip, kind) and return its length. */
static inline size_t dwcp_record_head(uint8_t *p, size_t skip, uint8_t kind) {
    size_t k = dwcp_uleb_put(p, skip);
    p[k] = kind;
    return k + 1;
}

/* The fused chunk delta.  scratch holds ps bytes.  Returns the payload
 * length, or -1 if it does not fit in dlen (dst then holds a prefix). */
static inline ptrdiff_t dwcp_delta_encode(const uint8_t *old, const uint8_t *new_, size_t n, size_t ps,
                                          uint8_t *dst, size_t dlen, uint8_t *scratch) {
    size_t d = 0, last = 0, p = 0, off;
    for (off = 0; off < n; off += ps, p++) {
        size_t ln = n - off < ps ? n - off : ps;
        if (memcmp(old + off, new_ + off, ln) == 0) continue;
        size_t skip = p - last;
        ptrdiff_t r = dwcp_xbzrle_encode(old + off, new_ + off, ln, scratch, ln);
        if (r > 0 && (size_t)r + dwcp_uleb_size((uint64_t)r) < ln) {
            size_t need = dwcp_uleb_size(skip) + 1 + dwcp_uleb_size((uint64_t)r) + (size_t)r;
            if (need > dlen - d) return -1;
            d += dwcp_record_head(dst + d, skip, DWCP_KIND_XBZRLE);
            d += dwcp_uleb_put(dst + d, (uint64_t)r);
            memcpy(dst + d, scratch, (size_t)r);
            d += (size_t)r;
        } else {
            size_t need = dwcp_uleb_size(skip) + 1 + ln;
            if (need > dlen - d) return -1;
            d += dwcp_record_head(dst + d, skip, DWCP_KIND_RAW);
            memcpy(dst + d, new_ + off, ln);
            d += ln;
        }
        last = p + 1;
    }
    DWCP_X_ASSERT(d <= dlen);
    return (ptrdiff_t)d;
}

/* RAW records for the pages whose dirty byte is non-zero; length or -1. */
static inline ptrdiff_t dwcp_pages_encode(const uint8_t *new_, size_t n, size_t ps, const uint8_t *dirty,
                                          uint8_t *dst, size_t dlen) {
    size_t d = 0, last = 0, p = 0, off;
    for (off = 0; off < n; off += ps, p++) {
        if (!dirty[p]) continue;
        size_t ln = n - off < ps ? n - off : ps;
        size_t need = dwcp_uleb_size(p - last) + 1 + ln;
        if (need > dlen - d) return -1;
        d += dwcp_record_head(dst + d, p - last, DWCP_KIND_RAW);
        memcpy(dst + d, new_ + off, ln);
        d += ln;
        last = p + 1;
    }
    DWCP_X_ASSERT(d <= dlen);
    return (ptrdiff_t)d;
}

/* Apply a chunk delta onto out (n bytes, already holding the base).
 * Returns the number of pages patched, or a DWCP_DE_* error; out is then
 * patched up to the bad record. */
static inline ptrdiff_t dwcp_delta_apply(const uint8_t *src, size_t slen, uint8_t *out, size_t n, size_t ps) {
    size_t npages = n / ps + (n % ps != 0), i = 0, page = 0, k;
    ptrdiff_t count = 0;
    uint64_t skip, nb;
    while (i < slen) {
        k = dwcp_uleb_get(src + i, slen - i, 10, &skip);
        if (!k) return DWCP_DE_ULEB;
        i += k;
        if (page >= npages || skip >= npages - page) return DWCP_DE_PAGE;
        size_t p = page + (size_t)skip;
        if (i >= slen) return DWCP_DE_TRUNC;
        uint8_t kind = src[i++];
        size_t off = p * ps, ln = n - off < ps ? n - off : ps;
        if (kind == DWCP_KIND_XBZRLE) {
            k = dwcp_uleb_get(src + i, slen - i, 10, &nb);
            if (!k) return DWCP_DE_ULEB;
            i += k;
            if (nb == 0 || nb > ln) return DWCP_DE_XLEN;
            if (nb > slen - i) return DWCP_DE_TRUNC;
            if (dwcp_xbzrle_decode(src + i, (size_t)nb, out + off, ln) < 0) return DWCP_DE_XBZRLE;
            i += (size_t)nb;
        } else if (kind == DWCP_KIND_RAW) {
            if (ln > slen - i) return DWCP_DE_TRUNC;
            memcpy(out + off, src + i, ln);
            i += ln;
        } else {
            return DWCP_DE_KIND;
        }
        page = p + 1;
        count++;
    }
    return count;
}

#endif
