"""Pure-Python twin of dwcp/_fast/engine.pyx (the rules are in its docstring)."""

from __future__ import annotations

import errno
import os
import select

import xxhash

from dwcp.errors import StorageError

__all__ = ["recv_blocks"]


def recv_blocks(sock_fd: int, slot, n: int, file_fd: int, file_off: int, timeout_ms: int = -1,
                block: int = 1 << 20) -> tuple[int, bytes, int]:  # fmt: skip
    if n < 0 or file_off < 0:
        raise ValueError(f"n and file_off must be >= 0, got {n} and {file_off}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    sp = memoryview(slot).cast("B")
    if n and sp.nbytes < min(block, n):
        raise ValueError(f"the slot holds {sp.nbytes} bytes; a block needs {min(block, n)}")
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    hashes = bytearray()
    done = 0
    while done < n:
        want = min(block, n - done)
        got = 0
        while got < want:
            # wait first: on a blocking socket a read with nothing to read would never time out
            if not poller.poll(timeout_ms):
                raise TimeoutError(
                    f"no payload bytes for {timeout_ms / 1000} s ({done + got} of {n} received)"
                )
            try:
                r = os.readv(sock_fd, [sp[got:want]])
            except (BlockingIOError, InterruptedError):
                continue
            if r == 0:
                return done + got, bytes(hashes), 0
            got += r
        hashes += xxhash.xxh3_128_digest(sp[:want])
        w = 0
        while w < want:
            try:
                r = os.pwrite(file_fd, sp[w:want], file_off + done + w)
            except InterruptedError:
                continue
            except OSError as exc:
                raise StorageError(f"{exc.strerror} (writing at offset {file_off + done})") from exc
            if r == 0:
                raise StorageError(f"{os.strerror(errno.ENOSPC)} (writing at offset {file_off + done})")
            w += r
        done += want
    return done, bytes(hashes), xxhash.xxh3_64_intdigest(bytes(hashes))
