from typing_extensions import Buffer

__all__ = [
    "FrameHeader",
    "pack_header",
    "pack_header_into",
    "parse_header",
    "xxh3_64",
    "xxh3_128",  # noqa: E501
    "page_hashes",
    "block_hashes",
    "is_zero",
    "nonzero_pages",
    "features",
]

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
    def __init__(
        self,
        frame_type: int,
        codec: int,
        flags: int,
        transfer_id: int,
        offset: int,
        raw_len: int,
        enc_len: int,
        dict_id: int,
        base_digest: bytes,
        raw_hash: int,
    ) -> None: ...
    def astuple(self) -> tuple[int, int, int, int, int, int, int, int, bytes, int]: ...

def features() -> dict[str, object]: ...
def xxh3_64(data: Buffer, seed: int = 0) -> int: ...
def xxh3_128(data: Buffer) -> bytes: ...
def page_hashes(data: Buffer, page_size: int = 4096) -> bytes: ...
def block_hashes(data: Buffer, block: int = 1048576) -> bytes: ...
def is_zero(data: Buffer) -> bool: ...
def nonzero_pages(data: Buffer, page_size: int = 4096) -> bytearray: ...
def pack_header_into(
    buf: Buffer,
    pos: int,
    frame_type: int,
    codec: int,
    flags: int,
    transfer_id: int,
    offset: int,
    raw_len: int,
    enc_len: int,
    dict_id: int = 0,
    base_digest: Buffer = ...,
    raw_hash: int = 0,
) -> None: ...
def pack_header(
    frame_type: int,
    codec: int,
    flags: int,
    transfer_id: int,
    offset: int,
    raw_len: int,
    enc_len: int,
    dict_id: int = 0,
    base_digest: Buffer = ...,
    raw_hash: int = 0,
) -> bytes: ...
def parse_header(buf: Buffer, pos: int = 0) -> FrameHeader: ...
