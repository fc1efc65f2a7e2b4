"""Reference frame-header pack/parse and hashes (the oracle for _fast/framing).

See ``dwcp.wire.consts`` for the header layout and its rules.  ``parse_header``
raises ``RemoteProtocolError`` (the bytes came from a peer); ``pack_header``
applies the same rules but raises ``LocalProtocolError`` (we are about to
send something invalid).
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass

import xxhash

from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C

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

_HDR = struct.Struct(C.HEADER_STRUCT)
_BODY = struct.Struct(C.HEADER_STRUCT[:-1])  # everything but hdr_check


@dataclass(frozen=True, slots=True)
class FrameHeader:
    frame_type: int
    codec: int
    flags: int
    transfer_id: int
    offset: int
    raw_len: int
    enc_len: int
    dict_id: int
    base_digest: bytes
    raw_hash: int

    def astuple(self) -> tuple:
        return astuple(self)


def xxh3_64(data, seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(data, seed)


def xxh3_128(data) -> bytes:
    return xxhash.xxh3_128_digest(data)


def block_hashes(data, block: int = 1 << 20) -> bytes:
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    mv = memoryview(data).cast("B")
    return b"".join(xxhash.xxh3_128_digest(mv[i : i + block]) for i in range(0, mv.nbytes, block))


def page_hashes(data, page_size: int = C.PAGE_SIZE) -> bytes:
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    mv = memoryview(data).cast("B")
    out = bytearray()
    for i in range(0, len(mv), page_size):
        out += xxhash.xxh3_64_intdigest(mv[i : i + page_size]).to_bytes(8, "little")
    return bytes(out)


def is_zero(data) -> bool:
    mv = memoryview(data).cast("B")
    return mv.nbytes == 0 or mv.tobytes().count(0) == mv.nbytes


def nonzero_pages(data, page_size: int = C.PAGE_SIZE) -> bytearray:
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    mv = memoryview(data).cast("B")
    return bytearray(0 if is_zero(mv[i : i + page_size]) else 1 for i in range(0, len(mv), page_size))


def features() -> dict[str, object]:
    return {"native_xxh3": False, "debug": False}


def _check(err, frame_type, codec, flags, offset, raw_len, enc_len, dict_id, base_digest) -> None:
    """The header rules shared by pack and parse; ``err`` is the class to raise."""
    if frame_type not in C.FRAME_TYPES:
        raise err(f"unknown frame type {frame_type}", C.ERR_BAD_FRAME_TYPE)
    if codec not in C.CODECS:
        raise err(f"unknown codec id {codec}", C.ERR_BAD_CODEC)
    if flags & ~C.FLAGS_MASK:
        raise err(f"unknown flag bits 0x{flags & ~C.FLAGS_MASK:02x}", C.ERR_BAD_FLAGS)
    if raw_len > C.MAX_RAW_LEN:
        raise err(f"raw length {raw_len} exceeds the maximum {C.MAX_RAW_LEN}", C.ERR_BAD_LENGTH)
    if enc_len > C.MAX_ENC_LEN:
        raise err(f"encoded length {enc_len} exceeds the maximum {C.MAX_ENC_LEN}", C.ERR_BAD_LENGTH)
    if frame_type != C.FRAME_DATA:
        if codec != C.CODEC_RAW:
            raise err(f"control frame with codec {codec}; control frames are raw", C.ERR_BAD_CODEC)
        if enc_len > C.MAX_CONTROL_LEN:
            raise err(
                f"control frame length {enc_len} exceeds the maximum {C.MAX_CONTROL_LEN}", C.ERR_BAD_LENGTH
            )
    if codec == C.CODEC_RAW and enc_len != raw_len:
        raise err(f"raw frame with encoded length {enc_len} != raw length {raw_len}", C.ERR_BAD_LENGTH)
    if codec == C.CODEC_ZERO and enc_len != 0:
        raise err(f"zero frame with a {enc_len}-byte payload", C.ERR_BAD_LENGTH)
    if codec not in C.MAY_BE_EMPTY_CODECS and enc_len == 0:
        raise err(f"codec {codec} frame with an empty payload", C.ERR_BAD_LENGTH)
    if (dict_id != 0) != (codec == C.CODEC_ZSTD_DICT):
        raise err(f"dictionary id {dict_id} with codec {codec}", C.ERR_BAD_FIELD)
    if (base_digest != C.ZERO_DIGEST) != (codec in C.DELTA_CODECS):
        raise err(f"baseline digest presence does not match codec {codec}", C.ERR_BAD_FIELD)
    if offset > 0xFFFF_FFFF_FFFF_FFFF - raw_len:
        raise err(f"offset {offset} + raw length {raw_len} overflows u64", C.ERR_BAD_FIELD)


def pack_header_into(
    buf,
    pos: int,
    frame_type: int,
    codec: int,
    flags: int,
    transfer_id: int,
    offset: int,
    raw_len: int,
    enc_len: int,
    dict_id: int = 0,
    base_digest: bytes = C.ZERO_DIGEST,
    raw_hash: int = 0,
) -> None:
    mv = memoryview(buf)
    if mv.readonly:
        raise TypeError("pack_header_into needs a writable buffer")
    if pos < 0 or pos + C.HEADER_SIZE > mv.nbytes:
        raise ValueError(f"no room for a {C.HEADER_SIZE}-byte header at {pos} in {mv.nbytes} bytes")
    if len(base_digest) != 16:
        raise ValueError(f"base_digest must be 16 bytes, got {len(base_digest)}")
    base_digest = bytes(base_digest)
    for name, v, bits in (
        ("frame_type", frame_type, 8),
        ("codec", codec, 8),
        ("flags", flags, 8),
        ("transfer_id", transfer_id, 64),
        ("offset", offset, 64),
        ("raw_len", raw_len, 32),
        ("enc_len", enc_len, 32),
        ("dict_id", dict_id, 32),
        ("raw_hash", raw_hash, 64),
    ):
        if not 0 <= v < (1 << bits):
            raise OverflowError(f"{name}={v} does not fit in u{bits}")
    _check(LocalProtocolError, frame_type, codec, flags, offset, raw_len, enc_len, dict_id, base_digest)
    body = _BODY.pack(
        C.MAGIC, C.VERSION, frame_type, codec, flags, transfer_id, offset, raw_len, enc_len,
        dict_id, base_digest, raw_hash,
    )  # fmt: skip
    check = xxhash.xxh3_64_intdigest(body) & 0xFFFF_FFFF
    mv = mv.cast("B")
    mv[pos : pos + 60] = body
    mv[pos + 60 : pos + 64] = check.to_bytes(4, "little")


def pack_header(
    frame_type: int,
    codec: int,
    flags: int,
    transfer_id: int,
    offset: int,
    raw_len: int,
    enc_len: int,
    dict_id: int = 0,
    base_digest: bytes = C.ZERO_DIGEST,
    raw_hash: int = 0,
) -> bytes:
    out = bytearray(C.HEADER_SIZE)
    pack_header_into(
        out,
        0,
        frame_type,
        codec,
        flags,
        transfer_id,
        offset,
        raw_len,
        enc_len,
        dict_id,
        base_digest,
        raw_hash,
    )
    return bytes(out)


def parse_header(buf, pos: int = 0) -> FrameHeader:
    mv = memoryview(buf).cast("B")
    if pos < 0 or pos + C.HEADER_SIZE > len(mv):
        raise ValueError(f"need {C.HEADER_SIZE} bytes at {pos}, have {max(0, len(mv) - pos)}")
    raw = bytes(mv[pos : pos + C.HEADER_SIZE])
    (magic, version, frame_type, codec, flags, transfer_id, offset, raw_len, enc_len, dict_id,
     base_digest, raw_hash, check) = _HDR.unpack(raw)  # fmt: skip
    if magic != C.MAGIC:
        raise RemoteProtocolError(f"bad magic {magic!r}: not a dwcp frame", C.ERR_BAD_MAGIC)
    if xxhash.xxh3_64_intdigest(raw[:60]) & 0xFFFF_FFFF != check:
        raise RemoteProtocolError("frame header checksum mismatch", C.ERR_BAD_HEADER_CHECKSUM)
    if version != C.VERSION:
        raise RemoteProtocolError(
            f"unsupported frame version {version} (this side speaks {C.VERSION})", C.ERR_BAD_VERSION
        )
    _check(RemoteProtocolError, frame_type, codec, flags, offset, raw_len, enc_len, dict_id, base_digest)
    return FrameHeader(
        frame_type, codec, flags, transfer_id, offset, raw_len, enc_len, dict_id, base_digest, raw_hash
    )
