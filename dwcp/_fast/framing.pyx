# cython: language_level=3
"""Frame-header pack/parse and xxh3 hashes, in C.

The header layout and its rules are documented in dwcp/wire/consts.py; the
pure-Python twin is dwcp/_ref/framing.py.  Hashes use the vendored
single-header xxHash (vendor/xxhash.h, XXH_INLINE_ALL) and run with the GIL
released, so stream workers hash chunks in parallel.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as _C

include "consts.pxi"
from .debug cimport DWCP_DEBUG

__all__ = [
    "FrameHeader",
    "pack_header",
    "pack_header_into",
    "parse_header",
    "xxh3_64",
    "xxh3_128",
    "page_hashes",
    "block_hashes",
    "is_zero",
    "nonzero_pages",
    "features",
]

from .xxh cimport (
    XXH3_64bits,
    XXH3_64bits_withSeed,
    XXH3_128bits,
    XXH128_canonical_t,
    XXH128_canonicalFromHash,
    XXH128_hash_t,
)

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    static inline uint64_t dwcp_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t dwcp_ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline void dwcp_st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
    static inline void dwcp_st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
    #if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #error "dwcp's native framing assumes a little-endian host"
    #endif
    """
    uint64_t dwcp_ld64(const uint8_t *p) noexcept nogil
    uint32_t dwcp_ld32(const uint8_t *p) noexcept nogil
    void dwcp_st64(uint8_t *p, uint64_t v) noexcept nogil
    void dwcp_st32(uint8_t *p, uint32_t v) noexcept nogil

DEF_ZERO_DIGEST = bytes(16)
# Work below this size is cheaper than a GIL round trip.
cdef enum:
    NOGIL_THRESHOLD = 65536


cdef class FrameHeader:
    """One parsed frame header (immutable; fields as in dwcp.wire.consts)."""

    cdef readonly int frame_type
    cdef readonly int codec
    cdef readonly int flags
    cdef readonly uint64_t transfer_id
    cdef readonly uint64_t offset
    cdef readonly uint32_t raw_len
    cdef readonly uint32_t enc_len
    cdef readonly uint32_t dict_id
    cdef readonly bytes base_digest
    cdef readonly uint64_t raw_hash

    def __init__(self, int frame_type, int codec, int flags, uint64_t transfer_id, uint64_t offset,
                 uint32_t raw_len, uint32_t enc_len, uint32_t dict_id, bytes base_digest,
                 uint64_t raw_hash):
        self.frame_type = frame_type
        self.codec = codec
        self.flags = flags
        self.transfer_id = transfer_id
        self.offset = offset
        self.raw_len = raw_len
        self.enc_len = enc_len
        self.dict_id = dict_id
        self.base_digest = base_digest
        self.raw_hash = raw_hash

    def astuple(self):
        return (self.frame_type, self.codec, self.flags, self.transfer_id, self.offset,
                self.raw_len, self.enc_len, self.dict_id, self.base_digest, self.raw_hash)

    def __eq__(self, other):
        if not isinstance(other, FrameHeader):
            return NotImplemented
        return self.astuple() == (<FrameHeader>other).astuple()

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self):
        return ("FrameHeader(frame_type=%d, codec=%d, flags=%d, transfer_id=%d, offset=%d, "
                "raw_len=%d, enc_len=%d, dict_id=%d, base_digest=%r, raw_hash=%d)" % self.astuple())


def features():
    return {"native_xxh3": True, "debug": bool(DWCP_DEBUG)}


def xxh3_64(const uint8_t[::1] data, uint64_t seed=0):
    cdef size_t n = data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef uint64_t h
    if n >= NOGIL_THRESHOLD:
        with nogil:
            h = XXH3_64bits_withSeed(p, n, seed)
    else:
        h = XXH3_64bits_withSeed(p, n, seed)
    return h


def xxh3_128(const uint8_t[::1] data):
    cdef size_t n = data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef XXH128_hash_t h
    cdef XXH128_canonical_t c
    if n >= NOGIL_THRESHOLD:
        with nogil:
            h = XXH3_128bits(p, n)
    else:
        h = XXH3_128bits(p, n)
    XXH128_canonicalFromHash(&c, h)
    return PyBytes_FromStringAndSize(<char*>c.digest, 16)


def block_hashes(const uint8_t[::1] data, Py_ssize_t block=1048576):
    """The canonical xxh3-128 of each ``block``-byte piece of ``data`` from its start (the last one
    shorter), concatenated: 16 bytes a block.  A DATA frame's chunk hash is the xxh3-64 of this
    (dwcp/wire/consts.py), and a leaf-aligned chunk's blocks are the object's tree leaves."""
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t nb = (n + block - 1) // block
    out = PyBytes_FromStringAndSize(NULL, nb * 16)
    cdef uint8_t *o = <uint8_t*>PyBytes_AS_STRING(out)
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef Py_ssize_t i, ln
    cdef XXH128_canonical_t c
    with nogil:
        for i in range(nb):
            ln = block if (i + 1) * block <= n else n - i * block
            XXH128_canonicalFromHash(&c, XXH3_128bits(p + i * block, ln))
            memcpy(o + i * 16, c.digest, 16)
    return out


def page_hashes(const uint8_t[::1] data, Py_ssize_t page_size=PAGE_SIZE):
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t npages = (n + page_size - 1) // page_size
    out = PyBytes_FromStringAndSize(NULL, npages * 8)
    cdef uint8_t *o = <uint8_t*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i, ln
    cdef const uint8_t *p
    if npages:
        p = &data[0]
        with nogil:
            for i in range(npages):
                ln = n - i * page_size
                if ln > page_size:
                    ln = page_size
                dwcp_st64(o + 8 * i, XXH3_64bits(p + i * page_size, <size_t>ln))
    return out


cdef inline bint _zero_span(const uint8_t *p, size_t n) noexcept nogil:
    # The first 16 bytes are zero, and every byte equals the one 16 before it.
    cdef size_t i
    if n <= 16:
        for i in range(n):
            if p[i]:
                return False
        return True
    if (dwcp_ld64(p) | dwcp_ld64(p + 8)) != 0:
        return False
    return memcmp(p, p + 16, n - 16) == 0


def is_zero(const uint8_t[::1] data):
    """True when every byte of ``data`` is zero (an empty buffer is zero)."""
    cdef size_t n = data.shape[0]
    cdef bint r
    if n == 0:
        return True
    if n >= NOGIL_THRESHOLD:
        with nogil:
            r = _zero_span(&data[0], n)
    else:
        r = _zero_span(&data[0], n)
    return r


def nonzero_pages(const uint8_t[::1] data, Py_ssize_t page_size=PAGE_SIZE):
    """One byte per page (the last may be short): 1 where the page has a non-zero byte."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t npages = (n + page_size - 1) // page_size
    out = bytearray(npages)
    cdef uint8_t[::1] o = out
    cdef Py_ssize_t i, ln
    cdef const uint8_t *p
    if npages:
        p = &data[0]
        with nogil:
            for i in range(npages):
                ln = n - i * page_size
                if ln > page_size:
                    ln = page_size
                o[i] = not _zero_span(p + i * page_size, <size_t>ln)
    return out


cdef inline int _is_delta(int codec) noexcept nogil:
    return codec >= CODEC_XBZRLE and codec <= CODEC_MAX


cdef int _check(object err, int frame_type, int codec, int flags, uint64_t offset, uint64_t raw_len,
                uint64_t enc_len, uint64_t dict_id, bint has_digest) except -1:
    """The header rules shared by pack and parse; mirrors _ref/framing._check."""
    if frame_type < FRAME_DATA or frame_type > FRAME_MAX:
        raise err(f"unknown frame type {frame_type}", _C.ERR_BAD_FRAME_TYPE)
    if codec < 0 or codec > CODEC_MAX:
        raise err(f"unknown codec id {codec}", _C.ERR_BAD_CODEC)
    if flags & ~FLAGS_MASK:
        raise err(f"unknown flag bits 0x{flags & ~FLAGS_MASK:02x}", _C.ERR_BAD_FLAGS)
    if raw_len > MAX_RAW_LEN:
        raise err(f"raw length {raw_len} exceeds the maximum {MAX_RAW_LEN}", _C.ERR_BAD_LENGTH)
    if enc_len > MAX_ENC_LEN:
        raise err(f"encoded length {enc_len} exceeds the maximum {MAX_ENC_LEN}", _C.ERR_BAD_LENGTH)
    if frame_type != FRAME_DATA:
        if codec != CODEC_RAW:
            raise err(f"control frame with codec {codec}; control frames are raw", _C.ERR_BAD_CODEC)
        if enc_len > MAX_CONTROL_LEN:
            raise err(f"control frame length {enc_len} exceeds the maximum {MAX_CONTROL_LEN}",
                      _C.ERR_BAD_LENGTH)
    if codec == CODEC_RAW and enc_len != raw_len:
        raise err(f"raw frame with encoded length {enc_len} != raw length {raw_len}", _C.ERR_BAD_LENGTH)
    if codec == CODEC_ZERO and enc_len != 0:
        raise err(f"zero frame with a {enc_len}-byte payload", _C.ERR_BAD_LENGTH)
    if enc_len == 0 and not (codec == CODEC_RAW or codec == CODEC_ZERO or codec == CODEC_XBZRLE
                             or codec == CODEC_PAGES):
        raise err(f"codec {codec} frame with an empty payload", _C.ERR_BAD_LENGTH)
    if (dict_id != 0) != (codec == CODEC_ZSTD_DICT):
        raise err(f"dictionary id {dict_id} with codec {codec}", _C.ERR_BAD_FIELD)
    if has_digest != _is_delta(codec):
        raise err(f"baseline digest presence does not match codec {codec}", _C.ERR_BAD_FIELD)
    if offset > 0xFFFFFFFFFFFFFFFFULL - raw_len:
        raise err(f"offset {offset} + raw length {raw_len} overflows u64", _C.ERR_BAD_FIELD)
    return 0


cdef inline bint _nonzero16(const uint8_t *d) noexcept nogil:
    return (dwcp_ld64(d) | dwcp_ld64(d + 8)) != 0


def pack_header_into(uint8_t[::1] buf, Py_ssize_t pos, int frame_type, int codec, int flags,
                     uint64_t transfer_id, uint64_t offset, uint64_t raw_len, uint64_t enc_len,
                     uint64_t dict_id=0, const uint8_t[::1] base_digest=DEF_ZERO_DIGEST,
                     uint64_t raw_hash=0):
    if pos < 0 or pos + HEADER_SIZE > buf.shape[0]:
        raise ValueError(f"no room for a {HEADER_SIZE}-byte header at {pos} in {buf.shape[0]} bytes")
    if base_digest.shape[0] != 16:
        raise ValueError(f"base_digest must be 16 bytes, got {base_digest.shape[0]}")
    if not (0 <= frame_type < 256):
        raise OverflowError(f"frame_type={frame_type} does not fit in u8")
    if not (0 <= codec < 256):
        raise OverflowError(f"codec={codec} does not fit in u8")
    if not (0 <= flags < 256):
        raise OverflowError(f"flags={flags} does not fit in u8")
    if raw_len > 0xFFFFFFFFULL:
        raise OverflowError(f"raw_len={raw_len} does not fit in u32")
    if enc_len > 0xFFFFFFFFULL:
        raise OverflowError(f"enc_len={enc_len} does not fit in u32")
    if dict_id > 0xFFFFFFFFULL:
        raise OverflowError(f"dict_id={dict_id} does not fit in u32")
    _check(LocalProtocolError, frame_type, codec, flags, offset, raw_len, enc_len, dict_id,
           _nonzero16(&base_digest[0]))
    _pack(&buf[pos], frame_type, codec, flags, transfer_id, offset, <uint32_t>raw_len,
          <uint32_t>enc_len, <uint32_t>dict_id, &base_digest[0], raw_hash)


cdef inline void _pack(uint8_t *h, int frame_type, int codec, int flags, uint64_t transfer_id,
                       uint64_t offset, uint32_t raw_len, uint32_t enc_len, uint32_t dict_id,
                       const uint8_t *digest, uint64_t raw_hash) noexcept nogil:
    dwcp_st32(h, MAGIC_U32)
    h[4] = VERSION
    h[5] = <uint8_t>frame_type
    h[6] = <uint8_t>codec
    h[7] = <uint8_t>flags
    dwcp_st64(h + 8, transfer_id)
    dwcp_st64(h + 16, offset)
    dwcp_st32(h + 24, raw_len)
    dwcp_st32(h + 28, enc_len)
    dwcp_st32(h + 32, dict_id)
    memcpy(h + 36, digest, 16)
    dwcp_st64(h + 52, raw_hash)
    dwcp_st32(h + 60, <uint32_t>XXH3_64bits(h, 60))


def pack_header(int frame_type, int codec, int flags, uint64_t transfer_id, uint64_t offset,
                uint64_t raw_len, uint64_t enc_len, uint64_t dict_id=0,
                const uint8_t[::1] base_digest=DEF_ZERO_DIGEST, uint64_t raw_hash=0):
    out = bytearray(HEADER_SIZE)
    pack_header_into(out, 0, frame_type, codec, flags, transfer_id, offset, raw_len, enc_len,
                     dict_id, base_digest, raw_hash)
    return bytes(out)


def parse_header(const uint8_t[::1] buf, Py_ssize_t pos=0):
    if pos < 0 or pos + HEADER_SIZE > buf.shape[0]:
        raise ValueError(f"need {HEADER_SIZE} bytes at {pos}, have {max(0, buf.shape[0] - pos)}")
    cdef const uint8_t *h = &buf[pos]
    if dwcp_ld32(h) != MAGIC_U32:
        raise RemoteProtocolError(f"bad magic {PyBytes_FromStringAndSize(<char*>h, 4)!r}: not a dwcp frame",
                                  _C.ERR_BAD_MAGIC)
    if (XXH3_64bits(h, 60) & 0xFFFFFFFFULL) != dwcp_ld32(h + 60):
        raise RemoteProtocolError("frame header checksum mismatch", _C.ERR_BAD_HEADER_CHECKSUM)
    if h[4] != VERSION:
        raise RemoteProtocolError(f"unsupported frame version {h[4]} (this side speaks {VERSION})",
                                  _C.ERR_BAD_VERSION)
    cdef int frame_type = h[5], codec = h[6], flags = h[7]
    cdef uint64_t offset = dwcp_ld64(h + 16)
    cdef uint32_t raw_len = dwcp_ld32(h + 24), enc_len = dwcp_ld32(h + 28), dict_id = dwcp_ld32(h + 32)
    _check(RemoteProtocolError, frame_type, codec, flags, offset, raw_len, enc_len, dict_id,
           _nonzero16(h + 36))
    cdef FrameHeader fh = FrameHeader.__new__(FrameHeader)
    fh.frame_type = frame_type
    fh.codec = codec
    fh.flags = flags
    fh.transfer_id = dwcp_ld64(h + 8)
    fh.offset = offset
    fh.raw_len = raw_len
    fh.enc_len = enc_len
    fh.dict_id = dict_id
    fh.base_digest = PyBytes_FromStringAndSize(<char*>(h + 36), 16)
    fh.raw_hash = dwcp_ld64(h + 52)
    return fh
