# Mirrors dwcp/wire/consts.py; tests/unit/test_consts.py checks they agree.
cdef enum:
    HEADER_SIZE = 64
    VERSION = 1
    MAGIC_U32 = 0x46435744  # b"DWCF" read as little-endian u32
    MAX_RAW_LEN = 67108864
    MAX_ENC_LEN = 68222976
    MAX_CONTROL_LEN = 16777216
    FRAME_DATA = 1
    FRAME_MAX = 11
    CODEC_RAW = 0
    CODEC_ZERO = 1
    CODEC_ZSTD_DICT = 3
    CODEC_XBZRLE = 6
    CODEC_XBZRLE_ZSTD = 7
    CODEC_PAGES = 8
    CODEC_MAX = 9
    FLAGS_MASK = 1
    PAGE_SIZE = 4096
