/* XBZRLE (QEMU's XOR-based zero-run-length page encoding) and the fused
 * chunk delta, in portable C.  See dwcp/_fast/xorzrle.pyx for the formats;
 * dwcp/_ref/xorzrle.py is the pure-Python twin and the test oracle.
 *
 * Word-at-a-time scanning reads 8 bytes with memcpy (no alignment
 * assumptions) and finds the first differing / first equal byte with
 * count-trailing-zeros on little-endian hosts.
 */
#ifndef DWCP_XORZRLE_H
#define DWCP_XORZRLE_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dwcp's XBZRLE kernels assume a little-endian host"
#endif

#define DWCP_ONES  0x0101010101010101ULL
#define DWCP_HIGHS 0x8080808080808080ULL

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
        /* the lowest flagged byte of the haszero trick is exactly the first zero byte */
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

/* Decode a ULEB128 of at most maxbytes bytes from p[0..n).  Returns the
 * number of bytes read, or 0 if truncated / too long. */
static inline size_t dwcp_uleb_get(const uint8_t *p, size_t n, size_t maxbytes, uint64_t *out) {
    uint64_t v = 0;
    size_t k;
    for (k = 0; k < n && k < maxbytes; k++) {
        v |= (uint64_t)(p[k] & 0x7f) << (7 * k);
        if (!(p[k] & 0x80)) { *out = v; return k + 1; }
    }
    return 0;
}

/* XBZRLE-encode new against old (slen bytes) into dst (dlen bytes).
 * Returns 0 when identical, -1 when the encoding is longer than dlen,
 * else the encoded length. */
static inline ptrdiff_t dwcp_xbzrle_encode(const uint8_t *old, const uint8_t *new_, size_t slen,
                                           uint8_t *dst, size_t dlen) {
    size_t i = 0, d = 0;
    while (i < slen) {
        size_t z = dwcp_equal_run(old + i, new_ + i, slen - i);
        i += z;
        if (i == slen) return (ptrdiff_t)d;   /* no trailing zero run; d == 0: identical */
        size_t nz = dwcp_diff_run(old + i, new_ + i, slen - i);
        size_t need = dwcp_uleb_size(z) + dwcp_uleb_size(nz) + nz;
        if (d + need > dlen) return -1;
        d += dwcp_uleb_put(dst + d, z);
        d += dwcp_uleb_put(dst + d, nz);
        memcpy(dst + d, new_ + i, nz);
        d += nz;
        i += nz;
    }
    return (ptrdiff_t)d;
}

/* Apply an XBZRLE encoding (src, slen) onto dst (dlen bytes, holding the
 * old page).  Returns the number of bytes covered, or -1 if malformed. */
static inline ptrdiff_t dwcp_xbzrle_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen) {
    size_t i = 0, d = 0, k;
    uint64_t z, nz;
    while (i < slen) {
        k = dwcp_uleb_get(src + i, slen - i, 3, &z);
        if (!k || (i && !z)) return -1;
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

#define DWCP_KIND_XBZRLE 1
#define DWCP_KIND_RAW 2

/* The fused chunk delta; see xorzrle.pyx.  scratch holds page_size bytes.
 * Returns the payload length, or -1 if it does not fit in dlen. */
static inline ptrdiff_t dwcp_delta_encode(const uint8_t *old, const uint8_t *new_, size_t n, size_t ps,
                                          uint8_t *dst, size_t dlen, uint8_t *scratch) {
    size_t npages = (n + ps - 1) / ps, d = 0, last = 0, p;
    for (p = 0; p < npages; p++) {
        size_t off = p * ps, ln = n - off < ps ? n - off : ps;
        if (memcmp(old + off, new_ + off, ln) == 0) continue;
        size_t skip = p - last;
        ptrdiff_t r = dwcp_xbzrle_encode(old + off, new_ + off, ln, scratch, ln);
        if (r > 0 && (size_t)r + dwcp_uleb_size((uint64_t)r) < ln) {
            size_t need = dwcp_uleb_size(skip) + 1 + dwcp_uleb_size((uint64_t)r) + (size_t)r;
            if (d + need > dlen) return -1;
            d += dwcp_uleb_put(dst + d, skip);
            dst[d++] = DWCP_KIND_XBZRLE;
            d += dwcp_uleb_put(dst + d, (uint64_t)r);
            memcpy(dst + d, scratch, (size_t)r);
            d += (size_t)r;
        } else {
            size_t need = dwcp_uleb_size(skip) + 1 + ln;
            if (d + need > dlen) return -1;
            d += dwcp_uleb_put(dst + d, skip);
            dst[d++] = DWCP_KIND_RAW;
            memcpy(dst + d, new_ + off, ln);
            d += ln;
        }
        last = p + 1;
    }
    return (ptrdiff_t)d;
}

static inline ptrdiff_t dwcp_pages_encode(const uint8_t *new_, size_t n, size_t ps, const uint8_t *dirty,
                                          uint8_t *dst, size_t dlen) {
    size_t npages = (n + ps - 1) / ps, d = 0, last = 0, p;
    for (p = 0; p < npages; p++) {
        if (!dirty[p]) continue;
        size_t off = p * ps, ln = n - off < ps ? n - off : ps;
        size_t skip = p - last;
        size_t need = dwcp_uleb_size(skip) + 1 + ln;
        if (d + need > dlen) return -1;
        d += dwcp_uleb_put(dst + d, skip);
        dst[d++] = DWCP_KIND_RAW;
        memcpy(dst + d, new_ + off, ln);
        d += ln;
        last = p + 1;
    }
    return (ptrdiff_t)d;
}

/* Apply a chunk delta onto out (n bytes, already holding the base).
 * Returns the number of pages patched, or a negative error:
 * -1 truncated/overlong uleb, -2 page past the end, -3 truncated body,
 * -4 unknown kind, -5 bad xbzrle length, -6 malformed xbzrle. */
static inline ptrdiff_t dwcp_delta_apply(const uint8_t *src, size_t slen, uint8_t *out, size_t n, size_t ps) {
    size_t npages = (n + ps - 1) / ps, i = 0, page = 0, k;
    ptrdiff_t count = 0;
    uint64_t skip, nb;
    while (i < slen) {
        k = dwcp_uleb_get(src + i, slen - i, 10, &skip);
        if (!k) return -1;
        i += k;
        if (page >= npages || skip >= npages - page) return -2;
        size_t p = page + (size_t)skip;
        if (i >= slen) return -3;
        uint8_t kind = src[i++];
        size_t off = p * ps, ln = n - off < ps ? n - off : ps;
        if (kind == DWCP_KIND_XBZRLE) {
            k = dwcp_uleb_get(src + i, slen - i, 10, &nb);
            if (!k) return -1;
            i += k;
            if (nb == 0 || nb > ln) return -5;
            if (nb > slen - i) return -3;
            if (dwcp_xbzrle_decode(src + i, (size_t)nb, out + off, ln) < 0) return -6;
            i += (size_t)nb;
        } else if (kind == DWCP_KIND_RAW) {
            if (ln > slen - i) return -3;
            memcpy(out + off, src + i, ln);
            i += ln;
        } else {
            return -4;
        }
        page = p + 1;
        count++;
    }
    return count;
}

#endif
