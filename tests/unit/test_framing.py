"""Frame header pack/parse: every rule of dwcp.wire.consts, on both backends."""

from __future__ import annotations

import os
import re

import pytest
import xxhash

from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C

DIGEST = bytes(range(1, 17))


def data_header(impl, codec=C.CODEC_ZSTD, **kw):
    args = dict(
        frame_type=C.FRAME_DATA, codec=codec, flags=0, transfer_id=42, offset=8192,
        raw_len=4096, enc_len=100, dict_id=0, base_digest=C.ZERO_DIGEST, raw_hash=0xDEADBEEF,
    )  # fmt: skip
    args.update(kw)
    return impl.pack_header(**args)


def reseal(hdr: bytes) -> bytes:
    """Recompute the header checksum after editing fields (to reach later rules)."""
    body = hdr[:60]
    return body + (xxhash.xxh3_64_intdigest(body) & 0xFFFFFFFF).to_bytes(4, "little")


def test_layout_is_documented_struct(impl):
    import struct

    h = data_header(impl, codec=C.CODEC_XBZRLE, base_digest=DIGEST, flags=C.FLAG_LAST)
    assert len(h) == C.HEADER_SIZE
    fields = struct.unpack(C.HEADER_STRUCT, h)
    assert fields[:12] == (C.MAGIC, C.VERSION, C.FRAME_DATA, C.CODEC_XBZRLE, C.FLAG_LAST, 42, 8192,
                           4096, 100, 0, DIGEST, 0xDEADBEEF)  # fmt: skip
    assert fields[12] == xxhash.xxh3_64_intdigest(h[:60]) & 0xFFFFFFFF


def test_roundtrip(impl):
    h = data_header(impl, codec=C.CODEC_ZSTD_DICT, dict_id=77)
    fh = impl.parse_header(h)
    assert fh.astuple() == (C.FRAME_DATA, C.CODEC_ZSTD_DICT, 0, 42, 8192, 4096, 100, 77, C.ZERO_DIGEST,
                            0xDEADBEEF)  # fmt: skip
    # at an offset inside a larger buffer
    buf = bytearray(200)
    impl.pack_header_into(buf, 100, C.FRAME_DATA, C.CODEC_RAW, 0, 1, 2, 3, 3)
    assert impl.parse_header(bytes(buf), 100).astuple()[:7] == (C.FRAME_DATA, C.CODEC_RAW, 0, 1, 2, 3, 3)


def test_bad_magic(impl):
    h = bytearray(data_header(impl))
    h[0:4] = b"\x28\xb5\x2f\xfd"  # a zstd frame's magic: never taken for a dwcp frame
    with pytest.raises(RemoteProtocolError) as ei:
        impl.parse_header(bytes(h))
    assert ei.value.code == C.ERR_BAD_MAGIC


@pytest.mark.parametrize("byte", [4, 5, 8, 20, 30, 40, 55, 61])
def test_any_flipped_byte_fails_the_header_checksum(impl, byte):
    h = bytearray(data_header(impl))
    h[byte] ^= 0x40
    with pytest.raises(RemoteProtocolError) as ei:
        impl.parse_header(bytes(h))
    assert ei.value.code == C.ERR_BAD_HEADER_CHECKSUM


@pytest.mark.parametrize(
    "offset,value,code",
    [
        (4, 2, C.ERR_BAD_VERSION),
        (5, 0, C.ERR_BAD_FRAME_TYPE),
        (5, 200, C.ERR_BAD_FRAME_TYPE),
        (6, 10, C.ERR_BAD_CODEC),
        (7, 0x80, C.ERR_BAD_FLAGS),
    ],
)
def test_field_rules_on_parse(impl, offset, value, code):
    h = bytearray(data_header(impl))
    h[offset] = value
    with pytest.raises(RemoteProtocolError) as ei:
        impl.parse_header(reseal(bytes(h)))
    assert ei.value.code == code


def _with_u32(h: bytes, off: int, v: int) -> bytes:
    b = bytearray(h)
    b[off : off + 4] = v.to_bytes(4, "little")
    return reseal(bytes(b))


def test_absurd_lengths_rejected_before_allocation(impl):
    h = data_header(impl)
    for off, v in ((24, C.MAX_RAW_LEN + 1), (28, C.MAX_ENC_LEN + 1), (24, 0xFFFFFFFF), (28, 0xFFFFFFFF)):
        with pytest.raises(RemoteProtocolError) as ei:
            impl.parse_header(_with_u32(h, off, v))
        assert ei.value.code == C.ERR_BAD_LENGTH


def test_codec_length_rules(impl):
    raw = data_header(impl, codec=C.CODEC_RAW, raw_len=100, enc_len=100)
    with pytest.raises(RemoteProtocolError, match="raw frame"):
        impl.parse_header(_with_u32(raw, 28, 99))
    zero = data_header(impl, codec=C.CODEC_ZERO, raw_len=4096, enc_len=0)
    with pytest.raises(RemoteProtocolError, match="zero frame"):
        impl.parse_header(_with_u32(zero, 28, 1))
    with pytest.raises(RemoteProtocolError, match="empty payload"):
        impl.parse_header(_with_u32(data_header(impl), 28, 0))
    # an empty delta means "unchanged against the baseline": legal
    for codec in (C.CODEC_XBZRLE, C.CODEC_PAGES):
        h = data_header(impl, codec=codec, base_digest=DIGEST, enc_len=0)
        assert impl.parse_header(h).enc_len == 0
    with pytest.raises(RemoteProtocolError, match="empty payload"):
        impl.parse_header(_with_u32(data_header(impl, codec=C.CODEC_XBZRLE_ZSTD, base_digest=DIGEST), 28, 0))


def test_unused_fields_must_be_zero(impl):
    with pytest.raises(RemoteProtocolError) as ei:
        impl.parse_header(_with_u32(data_header(impl), 32, 5))  # dict id on plain zstd
    assert ei.value.code == C.ERR_BAD_FIELD
    b = bytearray(data_header(impl))
    b[36:52] = DIGEST  # baseline digest on a non-delta codec
    with pytest.raises(RemoteProtocolError) as ei:
        impl.parse_header(reseal(bytes(b)))
    assert ei.value.code == C.ERR_BAD_FIELD
    b = bytearray(data_header(impl, codec=C.CODEC_XBZRLE, base_digest=DIGEST))
    b[36:52] = bytes(16)  # a delta without its baseline
    with pytest.raises(RemoteProtocolError) as ei:
        impl.parse_header(reseal(bytes(b)))
    assert ei.value.code == C.ERR_BAD_FIELD


def test_control_frames_are_raw_and_bounded(impl):
    h = impl.pack_header(C.FRAME_HELLO, C.CODEC_RAW, 0, 1, 0, 10, 10)
    assert impl.parse_header(h).frame_type == C.FRAME_HELLO
    with pytest.raises(LocalProtocolError, match="control frame"):
        impl.pack_header(C.FRAME_HELLO, C.CODEC_ZSTD, 0, 1, 0, 10, 10)
    with pytest.raises(LocalProtocolError, match="control frame length"):
        impl.pack_header(C.FRAME_ACK, C.CODEC_RAW, 0, 1, 0, C.MAX_CONTROL_LEN + 1, C.MAX_CONTROL_LEN + 1)


def test_pack_refuses_what_parse_would_reject(impl):
    with pytest.raises(LocalProtocolError) as ei:
        impl.pack_header(C.FRAME_DATA, 10, 0, 0, 0, 1, 1)
    assert ei.value.code == C.ERR_BAD_CODEC
    with pytest.raises(LocalProtocolError):
        impl.pack_header(C.FRAME_DATA, C.CODEC_RAW, 2, 0, 0, 1, 1)
    with pytest.raises(LocalProtocolError):
        impl.pack_header(C.FRAME_DATA, C.CODEC_RAW, 0, 0, 2**64 - 1, 2, 2)  # offset overflow
    with pytest.raises(OverflowError):
        impl.pack_header(C.FRAME_DATA, C.CODEC_RAW, 0, -1, 0, 1, 1)
    with pytest.raises(OverflowError):
        impl.pack_header(C.FRAME_DATA, C.CODEC_RAW, 0, 0, 0, 2**32, 2**32)
    with pytest.raises(ValueError, match="16 bytes"):
        impl.pack_header(C.FRAME_DATA, C.CODEC_XBZRLE, 0, 0, 0, 1, 1, 0, b"short")


def test_short_buffers_are_caller_errors(impl):
    h = data_header(impl)
    with pytest.raises(ValueError, match="need 64 bytes"):
        impl.parse_header(h[:63])
    with pytest.raises(ValueError, match="need 64 bytes"):
        impl.parse_header(h, 1)
    with pytest.raises(ValueError, match="no room"):
        impl.pack_header_into(bytearray(70), 10, C.FRAME_DATA, C.CODEC_RAW, 0, 0, 0, 1, 1)


def test_hashes_match_xxhash_package(impl):
    for n in (0, 1, 63, 4096, 70000, 3 * 4096 + 5):
        d = os.urandom(n)
        assert impl.xxh3_64(d) == xxhash.xxh3_64_intdigest(d)
        assert impl.xxh3_64(d, 7) == xxhash.xxh3_64_intdigest(d, 7)
        assert impl.xxh3_128(d) == xxhash.xxh3_128_digest(d)
        ph = impl.page_hashes(d, 4096)
        assert len(ph) == 8 * ((n + 4095) // 4096)
        for i in range(0, n, 4096):
            assert int.from_bytes(ph[i // 512 : i // 512 + 8], "little") == xxhash.xxh3_64_intdigest(
                d[i : i + 4096]
            )
    with pytest.raises(ValueError):
        impl.page_hashes(b"abc", 0)


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_block_hashes_are_the_xxh3_128_of_each_block(impl, n):
    d = os.urandom(n)
    bh = impl.block_hashes(d, 4096)
    assert bh == b"".join(xxhash.xxh3_128_digest(d[i : i + 4096]) for i in range(0, n, 4096))
    assert impl.block_hashes(d) == (xxhash.xxh3_128_digest(d) if n else b"")  # 1 MiB blocks by default
    with pytest.raises(ValueError):
        impl.block_hashes(b"abc", 0)


def test_consts_pxi_mirrors_python_consts():
    """dwcp/_fast/consts.pxi must say what dwcp/wire/consts.py says."""
    path = os.path.join(os.path.dirname(C.__file__), "..", "_fast", "consts.pxi")
    with open(path) as f:
        text = f.read()
    found = dict(
        (k, int(v, 0)) for k, v in re.findall(r"^\s+([A-Z_0-9]+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)", text, re.M)
    )
    expect = {
        "HEADER_SIZE": C.HEADER_SIZE, "VERSION": C.VERSION, "MAGIC_U32": C.MAGIC_U32,
        "MAX_RAW_LEN": C.MAX_RAW_LEN, "MAX_ENC_LEN": C.MAX_ENC_LEN, "MAX_CONTROL_LEN": C.MAX_CONTROL_LEN,
        "FRAME_DATA": C.FRAME_DATA, "FRAME_MAX": max(C.FRAME_TYPES), "CODEC_RAW": C.CODEC_RAW,
        "CODEC_ZERO": C.CODEC_ZERO, "CODEC_ZSTD_DICT": C.CODEC_ZSTD_DICT, "CODEC_XBZRLE": C.CODEC_XBZRLE,
        "CODEC_XBZRLE_ZSTD": C.CODEC_XBZRLE_ZSTD, "CODEC_PAGES": C.CODEC_PAGES, "CODEC_MAX": max(C.CODECS), "FLAGS_MASK": C.FLAGS_MASK,
        "PAGE_SIZE": C.PAGE_SIZE,
    }  # fmt: skip
    assert found == expect
    assert min(C.DELTA_CODECS) == C.CODEC_XBZRLE and max(C.DELTA_CODECS) == max(C.CODECS)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 4095, 4096, 4097, 70000])
def test_is_zero_and_nonzero_pages(impl, n):
    z = bytes(n)
    assert impl.is_zero(z) is True
    assert impl.nonzero_pages(z, 4096) == bytearray((n + 4095) // 4096)
    for pos in {0, n // 2, n - 1} if n else set():
        b = bytearray(n)
        b[pos] = 1
        assert impl.is_zero(b) is False
        expect = bytearray((n + 4095) // 4096)
        expect[pos // 4096] = 1
        assert impl.nonzero_pages(b, 4096) == expect
    with pytest.raises(ValueError):
        impl.nonzero_pages(z, 0)
