"""The receive kernel (dwcp/_fast/engine.pyx) against its twin (dwcp/_ref/engine.py): the same bytes
land in the file, the same block and chunk hashes, the same outcome on a short stream, a stall and a
file that cannot be written."""

from __future__ import annotations

import os
import random
import socket
import tempfile
import threading

import pytest
import xxhash
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dwcp._testbase.sealed import sealed_run
from dwcp.digest import chunk_hash
from dwcp.errors import BrokenResourceError, ForgedRecordError, StorageError
from dwcp.wire.consts import ERR_FORGED


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


# -- sealed records: send_sealed of one backend, recv_blocks(opener=...) of the other ----------------


def _sealed_run(
    tx, rx, key: bytes, payload: bytes, slot: int, block: int, file_off: int, flip: int | None = None
):
    """dwcp._testbase.sealed.sealed_run, received by ``rx``'s recv_blocks (a ``block``-byte slot)."""

    def receive(sock_fd: int, n: int, fd: int, off: int, opener):
        return rx.recv_blocks(
            sock_fd, bytearray(max(1, min(block, n))), n, fd, off, 5000, block, opener=opener
        )

    return sealed_run(tx, rx, key, payload, slot, file_off, receive, flip)


PAIRS = [("fast", "fast"), ("fast", "ref"), ("ref", "fast"), ("ref", "ref")]
# payload sizes: around the block and slot sizes, and anything up to 3 MiB
SIZES = st.one_of(
    st.sampled_from(
        [0, 1, 999, 1000, 4097, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) - 5, 3 << 20]
    ),
    st.integers(0, 3 << 20).map(lambda n: n if n > 5000 else n << 9),
)
SLOTS = [1000, 4096, 1 << 20]  # the sender's slot: records span several of them, or fit in one
BLOCKS = [4096, 65536, 1 << 20]  # the receiver's block (its slot)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(PAIRS), SIZES, st.integers(0, 2**32),
       st.sampled_from(SLOTS), st.sampled_from(BLOCKS), st.integers(0, 5000))  # fmt: skip
def test_sealed_records_cross_the_twins(aead_both, pair, n, seed, slot, block, file_off):
    tx, rx = aead_both[pair[0]], aead_both[pair[1]]
    payload = random.Random(seed).randbytes(n)
    event(f"{n >> 20} MiB, {pair[0]} -> {pair[1]}")
    header, r, data, counter, sent = _sealed_run(
        tx, rx, seed.to_bytes(32, "big"), payload, slot, block, file_off
    )
    assert not sent, sent
    assert header == bytes(range(64))
    assert not isinstance(r, Exception), r
    got, blocks, chash = r
    assert got == n and data == payload  # decrypted in place, written where asked
    assert counter == 2  # two records, both opened
    # the hashes are those of the plaintext, as recv_blocks of an unsealed stream gives them
    plain, plain_data = run(rx, payload, n, block, 0)
    assert (got, blocks, chash) == plain[:3] and plain_data == payload
    assert blocks == b"".join(xxhash.xxh3_128_digest(payload[i : i + block]) for i in range(0, n, block))
    assert chash == xxhash.xxh3_64_intdigest(blocks)
    if block == 1 << 20:
        assert chash == chunk_hash(payload)[0]


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(PAIRS), SIZES.filter(bool), st.integers(0, 2**32), st.sampled_from(SLOTS),
       st.sampled_from(BLOCKS), st.data())  # fmt: skip
def test_a_flipped_bit_in_transit_is_a_forged_record(aead_both, pair, n, seed, slot, block, data):
    tx, rx = aead_both[pair[0]], aead_both[pair[1]]
    payload = random.Random(seed).randbytes(n)
    flip = data.draw(st.one_of(st.integers(0, n - 1), st.integers(n, n + 15)), label="flip")
    event(
        f"{n >> 20} MiB, {pair[0]} -> {pair[1]}, {'tag' if flip >= n else 'ciphertext'}"
    )  # a ciphertext byte, or one of the tag
    _, r, written, _, _ = _sealed_run(tx, rx, seed.to_bytes(32, "big"), payload, slot, block, 0, flip=flip)
    assert isinstance(r, ForgedRecordError), r
    assert r.code == ERR_FORGED == 19
    # rules 4/5: the bytes were written before the tag was checked -- and AES-GCM's counter mode
    # carried the flipped ciphertext bit to the same plaintext bit
    want = bytearray(payload)
    if flip < n:
        want[flip] ^= 0x04
    assert written == bytes(want)


@pytest.mark.parametrize("name", ["fast", "ref"])
def test_a_sealed_stream_cut_short_is_a_short_read_not_a_forgery(name, aead_both):
    """A peer that closes inside the payload: rule 1 (received < n, chunk hash 0); inside or before the tag:
    BrokenResourceError (rule 5).  Never a forgery nor a hang."""
    impl = aead_both[name]
    key = os.urandom(32)
    payload = os.urandom(10_000)
    rec = impl.Aead(key, True).seal(payload)
    for cut, want_got, whole_blocks in ((5000, 5000, 1), (10_000, None, 3), (10_008, None, 3)):
        a, b = socket.socketpair()
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        try:
            a.sendall(rec[:cut])
            a.shutdown(socket.SHUT_WR)
            opener = impl.Aead(key, False)
            if want_got is None:
                with pytest.raises(BrokenResourceError, match="inside sealed record 0's tag"):
                    impl.recv_blocks(
                        b.fileno(), bytearray(4096), len(payload), fd, 0, 2000, 4096, opener=opener
                    )
                got = len(payload)
            else:
                got, blocks, chash = impl.recv_blocks(b.fileno(), bytearray(4096), len(payload), fd, 0, 2000, 4096,
                                                      opener=opener)  # fmt: skip
                assert (got, chash) == (want_got, 0), cut
                assert blocks == b"".join(
                    xxhash.xxh3_128_digest(payload[i : i + 4096]) for i in range(0, whole_blocks * 4096, 4096)
                )
            whole = min(got, whole_blocks * 4096)  # a partial block is never written
            assert os.pread(fd, len(payload), 0)[:whole] == payload[:whole]
        finally:
            os.close(fd)
            a.close()
            b.close()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5 * 512), st.lists(st.booleans(), max_size=6), st.sampled_from([1, 100, 512]),
       st.integers(0, 1000))  # fmt: skip
def test_write_pages_writes_the_flagged_pages_only_and_the_twins_agree(fast, ref, data, flags, page, off):
    npages = -(-len(data) // page)
    fl = bytes((flags + [False] * npages)[:npages])
    files = []
    for impl in (fast, ref):
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        os.pwrite(fd, b"\xee" * (off + len(data)), 0)  # what an unflagged page keeps
        n = impl.write_pages(fd, off, data, fl, page)
        files.append((n, os.pread(fd, off + len(data) + 10, 0)))
        os.close(fd)
    assert files[0] == files[1]
    n, got = files[0]
    want = bytearray(b"\xee" * (off + len(data)))
    for i, f in enumerate(fl):
        if f:
            want[off + i * page : off + min((i + 1) * page, len(data))] = data[i * page : (i + 1) * page]
    assert got == bytes(want) and n == sum(min(page, len(data) - i * page) for i, f in enumerate(fl) if f)


@pytest.mark.parametrize("name", ["fast", "ref"])
def test_write_pages_refuses_bad_arguments_and_reports_the_file(name, fast, ref):
    impl = {"fast": fast, "ref": ref}[name]
    with pytest.raises(ValueError, match="page flags for"):
        impl.write_pages(1, 0, b"x" * 5000, b"\x01", 4096)
    with pytest.raises(ValueError, match="page_size must be positive"):
        impl.write_pages(1, 0, b"x", b"\x01", 0)
    rfd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(StorageError, match="writing at offset 4096"):
            impl.write_pages(rfd, 0, b"x" * 8192, b"\x00\x01", 4096)
    finally:
        os.close(rfd)
