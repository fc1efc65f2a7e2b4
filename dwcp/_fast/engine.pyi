from typing_extensions import Buffer

__all__ = [
    "recv_blocks",
    "send_sealed",
    "write_pages",
    "Aead",
    "aead_load",
    "AEAD_TAG_BYTES",
    "AEAD_KEY_BYTES",
    "Pump",
    "PUMP_KINDS",
]

PUMP_KINDS: tuple[str, ...]

AEAD_TAG_BYTES: int
AEAD_KEY_BYTES: int

def aead_load(path: str) -> bool: ...

class Aead:
    sealing: bool
    def __init__(self, key: Buffer, seal: bool) -> None: ...
    @property
    def counter(self) -> int: ...
    def seal(self, data: Buffer) -> bytes: ...
    def open_into(self, buf: Buffer, tag: Buffer) -> None: ...

def recv_blocks(
    sock_fd: int,
    slot: Buffer,
    n: int,
    file_fd: int,
    file_off: int,
    timeout_ms: int = -1,
    block: int = 1048576,
    opener: Aead | None = None,
) -> tuple[int, bytes, int]: ...
def send_sealed(sock_fd: int, sealer: Aead, payload: Buffer, slot: Buffer, timeout_ms: int = -1) -> None: ...
def write_pages(file_fd: int, file_off: int, data: Buffer, flags: Buffer, page_size: int = 4096) -> int: ...

class Pump:
    kind: str
    def __init__(self, kind: str, slots: int = 16, block: int = 1048576, register: bool = True) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def native_id(self) -> int: ...
    def info(self) -> dict: ...
    def close(self) -> None: ...
    def recv_blocks(
        self,
        sock_fd: int,
        n: int,
        file_fd: int,
        file_off: int,
        timeout_ms: int = -1,
        opener: Aead | None = None,
    ) -> tuple[int, bytes, int]: ...
    def send(
        self, sock_fd: int, header: Buffer, payload: Buffer, timeout_ms: int = -1, sealer: Aead | None = None
    ) -> None: ...
