from typing_extensions import Buffer

__all__ = ["recv_blocks"]

def recv_blocks(
    sock_fd: int,
    slot: Buffer,
    n: int,
    file_fd: int,
    file_off: int,
    timeout_ms: int = -1,
    block: int = 1048576,
) -> tuple[int, bytes, int]: ...
