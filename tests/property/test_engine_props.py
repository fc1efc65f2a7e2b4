"""The receive kernel (dwcp/_fast/engine.pyx) against its twin (dwcp/_ref/engine.py): the same bytes
land in the file, the same block and chunk hashes, the same outcome on a short stream, a stall and a
file that cannot be written."""

from __future__ import annotations

import os
import socket
import tempfile
import threading

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.digest import chunk_hash
from dwcp.errors import StorageError


def run(impl, payload: bytes, n: int, block: int, file_off: int, timeout_ms: int = 2000, fd=None):
    """Feed ``payload`` then close the peer; receive ``n`` bytes with ``impl``; (result, file bytes)."""
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: (a.sendall(payload), a.shutdown(socket.SHUT_WR)))
    t.start()
    own = fd is None
    if own:
        fd, path = tempfile.mkstemp()
        os.unlink(path)
    try:
        try:
            r = impl.recv_blocks(
                b.fileno(), bytearray(max(1, min(block, n))), n, fd, file_off, timeout_ms, block
            )
        except (TimeoutError, StorageError, OSError) as exc:
            r = (type(exc).__name__,)
        t.join()
        got = os.pread(fd, n + file_off, 0) if own else b""
        return r, got
    finally:
        a.close()
        b.close()
        if own:
            os.close(fd)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20000), st.integers(0, 20000), st.sampled_from([1, 7, 4096, 1 << 20]),
       st.integers(0, 5000))  # fmt: skip
def test_twins_agree_on_any_stream(fast, ref, payload, n, block, file_off):
    a, b = run(fast, payload, n, block, file_off), run(ref, payload, n, block, file_off)
    assert a == b
    (got, blocks, chash), data = a
    assert got == min(n, len(payload))
    whole = got if got == n else got - got % block
    assert data[file_off : file_off + whole] == payload[:whole]  # what was received whole is in the file
    assert blocks == b"".join(
        xxhash.xxh3_128_digest(payload[i : min(i + block, whole)]) for i in range(0, whole, block)
    )
    if got == n:  # the chunk hash of dwcp.digest rule 4 (at its block size)
        assert chash == xxhash.xxh3_64_intdigest(blocks)
        if block == 1 << 20:
            assert chash == chunk_hash(payload[:n])[0]
    else:
        assert chash == 0


@pytest.mark.parametrize("name", ["fast", "ref"])
def test_a_stalled_stream_times_out(name, fast, ref):
    impl = {"fast": fast, "ref": ref}[name]
    a, b = socket.socketpair()
    try:
        a.sendall(b"x" * 100)
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        with pytest.raises(TimeoutError, match="no payload bytes for 0.1 s"):
            impl.recv_blocks(b.fileno(), bytearray(4096), 200, fd, 0, 100, 4096)
        os.close(fd)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("name", ["fast", "ref"])
def test_a_file_that_cannot_be_written_is_a_storage_error(name, fast, ref):
    impl = {"fast": fast, "ref": ref}[name]
    rfd = os.open(os.devnull, os.O_RDONLY)  # EBADF for writing: the file's side, not the peer's
    try:
        r, _ = run(impl, b"y" * 5000, 5000, 4096, 0, fd=rfd)
    finally:
        os.close(rfd)
    assert r == ("StorageError",)


@pytest.mark.parametrize("name", ["fast", "ref"])
def test_caller_errors(name, fast, ref):
    impl = {"fast": fast, "ref": ref}[name]
    with pytest.raises(ValueError, match="slot holds"):
        impl.recv_blocks(0, bytearray(10), 100, 1, 0, 10, 64)
    with pytest.raises(ValueError, match="must be >= 0"):
        impl.recv_blocks(0, bytearray(10), -1, 1, 0, 10, 64)
    with pytest.raises(ValueError, match="block must be positive"):
        impl.recv_blocks(0, bytearray(10), 1, 1, 0, 10, 0)
