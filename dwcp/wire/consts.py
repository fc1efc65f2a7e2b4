"""Frame header layout and wire constants (protocol version 1).

Rules
-----
1. Every frame starts with a fixed 64-byte little-endian header; nothing on
   the wire is ever interpreted without one.  Layout::

       off size field
         0    4 magic         b"DWCF"
         4    1 version       VERSION (1)
         5    1 frame_type    FRAME_*
         6    1 codec         CODEC_*  (explicit; a decoder never guesses)
         7    1 flags         FLAG_*   (unknown bits are an error)
         8    8 transfer_id   u64
        16    8 offset        u64, byte offset of the chunk in the object
        24    4 raw_len       u32, length of the decoded bytes
        28    4 enc_len       u32, length of the payload that follows
        32    4 dict_id       u32, zstd dictionary id (CODEC_ZSTD_DICT only)
        36   16 base_digest   xxh3-128 of the baseline (delta codecs only)
        52    8 raw_hash      u64, DATA: the chunk hash of the raw bytes
                              (dwcp.digest rule 4: xxh3-64 of the
                              xxh3-128s of its 1 MiB blocks); other
                              frames: xxh3-64 of the payload
        60    4 hdr_check     u32, low 32 bits of xxh3-64(header[0:60])

2. Lengths are bounded before anything is allocated: ``raw_len`` <=
   MAX_RAW_LEN and ``enc_len`` <= MAX_ENC_LEN, and per-codec rules hold
   (CODEC_RAW: enc_len == raw_len; CODEC_ZERO: enc_len == 0, raw_hash ==
   xxh3-64 of raw_len zero bytes is *not* required to be recomputed, it is
   checked like any other).
3. Fields that a codec does not use must be zero (dict_id outside
   CODEC_ZSTD_DICT, base_digest outside the delta codecs).  A header that
   breaks a rule raises ``RemoteProtocolError`` with one of the ERR_* codes.

This module is the single source of these numbers for Python; the Cython
kernels mirror them in ``dwcp/_fast/consts.pxi`` and a test checks that the
two agree.
"""

from __future__ import annotations

MAGIC = b"DWCF"
MAGIC_U32 = int.from_bytes(MAGIC, "little")
VERSION = 1
HEADER_SIZE = 64
HEADER_STRUCT = "<4sBBBBQQIII16sQI"  # documentation and the _ref twin use it

# Frame types.  DATA carries one encoded chunk; the others are the transfer
# session's control frames (JSON, defined by dwcp.wire.messages; PAGE_HASHES
# and DICT carry raw bytes, checked by the header's raw_hash).
FRAME_DATA = 1
FRAME_HELLO = 2
FRAME_WELCOME = 3
FRAME_ACK = 4
FRAME_NACK = 5
FRAME_DONE = 6
FRAME_ERROR = 7
FRAME_PAGE_HASHES = 8
FRAME_CLOSE = 9
FRAME_RAFT = 10  # a consensus message between cluster nodes (JSON), on a stream opened with HELLO op "raft"
FRAME_DICT = 11  # a zstd dictionary the receiver lacks (raw bytes; offset = its zstd id), after WELCOME
FRAME_TYPES = frozenset(range(FRAME_DATA, FRAME_DICT + 1))

# Codecs.  Each id names the whole decode stack, so the decoder dispatches
# on it and nothing else.
CODEC_RAW = 0  # payload is the raw bytes
CODEC_ZERO = 1  # payload empty; raw bytes are raw_len zeros
CODEC_ZSTD = 2  # zstd frame of the raw bytes
CODEC_ZSTD_DICT = 3  # zstd frame compressed with dictionary dict_id
CODEC_SPARSE = 4  # page list over an all-zero chunk: only non-zero pages travel
CODEC_SPARSE_ZSTD = 5  # zstd frame of a CODEC_SPARSE payload
CODEC_XBZRLE = 6  # chunk delta (dwcp/_ref/xorzrle.py format) vs base_digest
CODEC_XBZRLE_ZSTD = 7  # zstd frame of a CODEC_XBZRLE payload
CODEC_PAGES = 8  # page list over the receiver's version base_digest
CODEC_PAGES_ZSTD = 9  # zstd frame of a CODEC_PAGES payload
CODECS = frozenset(range(CODEC_RAW, CODEC_PAGES_ZSTD + 1))
# The delta codecs are the contiguous top of the range (the C check relies on it).
DELTA_CODECS = frozenset(range(CODEC_XBZRLE, CODEC_PAGES_ZSTD + 1))
# An empty payload is legal only where it has a meaning: raw/zero of length
# 0, or a delta/page list with no changed page (the chunk equals its base).
MAY_BE_EMPTY_CODECS = frozenset({CODEC_RAW, CODEC_ZERO, CODEC_XBZRLE, CODEC_PAGES})
ZSTD_CODECS = frozenset({CODEC_ZSTD, CODEC_ZSTD_DICT, CODEC_SPARSE_ZSTD, CODEC_XBZRLE_ZSTD, CODEC_PAGES_ZSTD})
CODEC_NAMES = {
    CODEC_RAW: "raw",
    CODEC_ZERO: "zero",
    CODEC_ZSTD: "zstd",
    CODEC_ZSTD_DICT: "zstd+dict",
    CODEC_SPARSE: "sparse",
    CODEC_SPARSE_ZSTD: "sparse+zstd",
    CODEC_XBZRLE: "xbzrle",
    CODEC_XBZRLE_ZSTD: "xbzrle+zstd",
    CODEC_PAGES: "pages",
    CODEC_PAGES_ZSTD: "pages+zstd",
}

# Flags.
FLAG_LAST = 0x01  # the last chunk of the object (informational)
FLAGS_MASK = FLAG_LAST

# Bounds.  A chunk is at most 64 MiB raw; an encoded payload may exceed its
# raw length only by the codec's worst-case expansion, bounded here.
PAGE_SIZE = 4096
MAX_RAW_LEN = 64 * 1024 * 1024
MAX_ENC_LEN = MAX_RAW_LEN + MAX_RAW_LEN // 64 + 65536
MAX_CONTROL_LEN = 16 * 1024 * 1024  # non-DATA frames

ZERO_DIGEST = bytes(16)

# Wire error codes (RemoteProtocolError.code).
ERR_BAD_MAGIC = 1
ERR_BAD_VERSION = 2
ERR_BAD_HEADER_CHECKSUM = 3
ERR_BAD_FRAME_TYPE = 4
ERR_BAD_CODEC = 5
ERR_BAD_FLAGS = 6
ERR_BAD_LENGTH = 7
ERR_BAD_FIELD = 8
ERR_CHECKSUM = 9
ERR_MALFORMED = 10
ERR_UNKNOWN_DICT = 11
ERR_UNKNOWN_BASELINE = 12
ERR_TRUNCATED = 13
ERR_UNAVAILABLE = 14  # the receiver is draining (shutting down): retry elsewhere or later
ERR_STORAGE = 15  # the receiver cannot store the object (disk full, I/O error): the message says why
ERR_FORBIDDEN = 16  # the peer's identity has no right to this key (security.acl) or target (relay)
ERR_BUSY = 17  # another transfer holds the key's write lease: retry later (the message says how long)
ERR_TOO_LARGE = 18  # the object exceeds the receiver's limit (storage.max_object_bytes)
ERR_FORGED = 19  # a sealed record of a data stream failed authentication (dwcp.security.aead)
ERR_CONFLICT = 20  # a concurrent write of the key was committed first (cluster.conflicts = "reject")
