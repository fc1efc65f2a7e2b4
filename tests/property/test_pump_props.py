"""The pump (dwcp/_fast/engine.pyx rules 9-10, dwcp/_fast/pump.h) against the module's receive kernel and
against its twin (dwcp/_ref/engine.py): for any stream, a pump's ``recv_blocks`` returns what the module's
``recv_blocks`` of the same backend returns with ``block`` = the pump's, and writes the same bytes where
asked -- on io_uring and on epoll, fast and ref alike; sealed records cross the twins through the pump."""

from __future__ import annotations

import contextlib
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
from dwcp.errors import BrokenResourceError, ClosedResourceError, ForgedRecordError, StorageError
from dwcp.wire.consts import ERR_FORGED

KINDS = ["uring", "epoll"]
BACKENDS = ["fast", "ref"]
BLOCKS = [16, 4096, 65536]  # a pump's block is >= 16
TIMEOUT_MS = 5000  # a bound for a stream that would hang; none of these streams stalls


def _feed(sock: socket.socket, payload: bytes) -> threading.Thread:
    """Send ``payload`` then close the writing side, from a thread (ends quietly if the test gave up)."""

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def _receive(call, payload: bytes, n: int, file_off: int):
    """Feed ``payload`` then close the peer; ``call(sock_fd, file_fd)`` receives; (result, file bytes)."""
    a, b = socket.socketpair()
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        t = _feed(a, payload)
        try:
            r = call(b.fileno(), fd)
        except (TimeoutError, StorageError, OSError, BrokenResourceError, ClosedResourceError) as exc:
            r = (type(exc).__name__,)
        t.join(10)
        assert not t.is_alive(), "the feeding thread hung"
        return r, os.pread(fd, n + file_off + 10, 0)
    finally:
        a.close()
        b.close()
        os.close(fd)


def via_pump(pump, payload: bytes, n: int, file_off: int):
    return _receive(lambda s, f: pump.recv_blocks(s, n, f, file_off, TIMEOUT_MS), payload, n, file_off)


def via_module(impl, payload: bytes, n: int, block: int, file_off: int):
    return _receive(
        lambda s, f: impl.recv_blocks(s, bytearray(max(1, min(block, n))), n, f, file_off, TIMEOUT_MS, block),
        payload,
        n,
        file_off,
    )


# payloads: small ones of any bytes, and larger ones (to ~40 KB, spread evenly over the range, and at the
# block sizes' edges) of seeded random bytes
LENGTHS = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 999)).map(lambda t: t[0] * 1000 + t[1]),
    st.sampled_from([4095, 4096, 4097, 8192, 12289, 32768, 40_000]),
)
PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.tuples(LENGTHS, st.integers(0, 2**32)).map(lambda t: random.Random(t[1]).randbytes(t[0])),
)


@st.composite
def streams(draw):
    """(payload, n, block, file_off): n at, around, below or above the payload's length, or anything."""
    payload = draw(PAYLOADS)
    block = draw(st.sampled_from(BLOCKS))
    k = len(payload)
    n = draw(
        st.one_of(
            st.just(k),
            st.integers(max(0, k - 20), k + 20),
            st.sampled_from(sorted({0, block - 1, block, block + 1, 2 * block, k - k % block})).filter(
                lambda v: v >= 0
            ),
            LENGTHS,
        )
    )
    return payload, n, block, draw(st.integers(0, 5000))


def _check_against_payload(result, data: bytes, payload: bytes, n: int, block: int, file_off: int) -> None:
    got, blocks, chash = result
    assert got == min(n, len(payload))
    whole = got if got == n else got - got % block  # a partial block is neither hashed nor written
    assert data[file_off : file_off + whole] == payload[:whole]
    assert len(data) == (file_off + whole if whole else 0)  # nothing else was written
    assert blocks == b"".join(
        xxhash.xxh3_128_digest(payload[i : min(i + block, whole)]) for i in range(0, whole, block)
    )
    assert chash == (xxhash.xxh3_64_intdigest(blocks) if got == n else 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=80, deadline=None)
@given(stream=streams())
def test_a_pump_receives_as_the_module_kernel_does(fast, ref, pumps, backend, kind, stream):
    payload, n, block, file_off = stream
    impl = {"fast": fast, "ref": ref}[backend]
    pump = pumps(backend, kind, block)
    event(f"block {block}, {'short' if n > len(payload) else 'whole'}")
    event(
        f"payload {'< 4 KB' if len(payload) < 4096 else '4-20 KB' if len(payload) < 20_000 else '>= 20 KB'}"
    )
    r_pump, data_pump = via_pump(pump, payload, n, file_off)
    r_mod, data_mod = via_module(impl, payload, n, block, file_off)
    assert r_pump == r_mod
    assert data_pump == data_mod
    _check_against_payload(r_pump, data_pump, payload, n, block, file_off)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=80, deadline=None)
@given(stream=streams())
def test_the_fast_pump_and_the_ref_pump_agree(fast, ref, pumps, kind, stream):
    payload, n, block, file_off = stream
    a = via_pump(pumps("fast", kind, block), payload, n, file_off)
    b = via_pump(pumps("ref", kind, block), payload, n, file_off)
    assert a == b
    _check_against_payload(a[0], a[1], payload, n, block, file_off)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(stream=streams())
def test_uring_and_epoll_pumps_agree(fast, ref, pumps, backend, stream):
    payload, n, block, file_off = stream
    assert via_pump(pumps(backend, "uring", block), payload, n, file_off) == via_pump(
        pumps(backend, "epoll", block), payload, n, file_off
    )


# -- sealed records: send_sealed of one backend, the pump (opener=Aead) of the other ---------------------


def _sealed_pump_run(
    tx, rx, pump, key: bytes, payload: bytes, slot: int, file_off: int, flip: int | None = None
):
    """dwcp._testbase.sealed.sealed_run, received by ``pump`` with ``rx``'s opener."""

    def receive(sock_fd: int, n: int, fd: int, off: int, opener):
        return pump.recv_blocks(sock_fd, n, fd, off, TIMEOUT_MS, opener=opener)

    return sealed_run(tx, rx, key, payload, slot, file_off, receive, flip, transfer_id=7)


PAIRS = [("fast", "fast"), ("fast", "ref"), ("ref", "fast"), ("ref", "ref")]
SEALED_SIZES = st.one_of(
    st.sampled_from([0, 1, 15, 16, 17, 4095, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 5]),
    st.tuples(st.integers(0, 300), st.integers(0, 999)).map(lambda t: t[0] * 1000 + t[1]),
)
SENDER_SLOTS = [1000, 4096, 1 << 20]


def _sealed_case(draw_n: int, block: int) -> int:
    # a 16-byte block is one Python step per 16 bytes in the ref pump: keep those records small
    return draw_n % 6000 if block == 16 else draw_n


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PAIRS), SEALED_SIZES, st.integers(0, 2**32), st.sampled_from(SENDER_SLOTS),
       st.sampled_from(BLOCKS), st.integers(0, 5000))  # fmt: skip
def test_sealed_records_cross_the_twins_through_the_pump(
    aead_both, pumps, kind, pair, n, seed, slot, block, file_off
):
    n = _sealed_case(n, block)
    tx, rx = aead_both[pair[0]], aead_both[pair[1]]
    pump = pumps(pair[1], kind, block)
    payload = random.Random(seed).randbytes(n)
    event(f"{pair[0]} -> {pair[1]} pump, block {block}")
    event(f"{'< 64 KB' if n < 65536 else '>= 64 KB'}")
    header, r, data, counter, sent = _sealed_pump_run(
        tx, rx, pump, seed.to_bytes(32, "big"), payload, slot, file_off
    )
    assert not sent, sent
    assert header == bytes(range(64))
    assert not isinstance(r, Exception), repr(r)
    got, blocks, chash = r
    assert got == n and data == payload  # decrypted in place, written where asked
    assert counter == 2  # two records, both opened
    # the hashes are those of the plaintext, as the module kernel gives them for the unsealed stream
    plain, plain_data = via_module(rx, payload, n, block, 0)
    assert (got, blocks, chash) == plain and plain_data[:n] == payload
    assert blocks == b"".join(xxhash.xxh3_128_digest(payload[i : i + block]) for i in range(0, n, block))
    assert chash == xxhash.xxh3_64_intdigest(blocks)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None)
@given(st.sampled_from(PAIRS), SEALED_SIZES.filter(bool), st.integers(0, 2**32), st.sampled_from(SENDER_SLOTS),
       st.sampled_from(BLOCKS), st.data())  # fmt: skip
def test_a_flipped_bit_in_transit_is_a_forged_record_through_the_pump(
    aead_both, pumps, kind, pair, n, seed, slot, block, data
):
    n = max(1, _sealed_case(n, block))
    tx, rx = aead_both[pair[0]], aead_both[pair[1]]
    pump = pumps(pair[1], kind, block)
    payload = random.Random(seed).randbytes(n)
    flip = data.draw(st.one_of(st.integers(0, n - 1), st.integers(n, n + 15)), label="flip")
    event(f"{pair[0]} -> {pair[1]} pump, {'tag' if flip >= n else 'ciphertext'}")
    _, r, written, _, _ = _sealed_pump_run(
        tx, rx, pump, seed.to_bytes(32, "big"), payload, slot, 0, flip=flip
    )
    assert isinstance(r, ForgedRecordError), repr(r)
    assert r.code == ERR_FORGED
    # rules 4/5: the bytes were written before the tag was checked; counter mode carried the flipped
    # ciphertext bit to the same plaintext bit
    want = bytearray(payload)
    if flip < n:
        want[flip] ^= 0x04
    assert written == bytes(want)
    # the pump is not hurt by a forged record: the next stream goes through
    (got, _, chash), _ = via_pump(pump, b"z" * 100, 100, 0)
    assert got == 100 and chash != 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 20_000), st.sampled_from(BLOCKS[1:]), st.data())
def test_a_sealed_stream_cut_short_through_the_pump(aead_both, pumps, backend, kind, n, block, data):
    """Cut inside the payload: a short read (rule 1); cut after the ciphertext, inside or before the tag:
    BrokenResourceError (rule 5).  Never a forgery nor a hang -- and as the module kernel says."""
    impl = aead_both[backend]
    pump = pumps(backend, kind, block)
    key = os.urandom(32)
    payload = os.urandom(n)
    rec = impl.Aead(key, True).seal(payload)
    cut = data.draw(st.one_of(st.integers(0, n - 1), st.integers(n, n + 15)), label="cut")
    event("tag" if cut >= n else "payload")
    outcomes = []
    for how in ("pump", "module"):
        a, b = socket.socketpair()
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        try:
            a.sendall(rec[:cut])
            a.shutdown(socket.SHUT_WR)
            opener = impl.Aead(key, False)
            try:
                if how == "pump":
                    r = pump.recv_blocks(b.fileno(), n, fd, 0, TIMEOUT_MS, opener=opener)
                else:
                    r = impl.recv_blocks(
                        b.fileno(), bytearray(block), n, fd, 0, TIMEOUT_MS, block, opener=opener
                    )
            except BrokenResourceError as exc:
                assert "tag" in str(exc)
                r = "BrokenResourceError"
            outcomes.append((r, os.pread(fd, n + 10, 0)))
        finally:
            os.close(fd)
            a.close()
            b.close()
    assert outcomes[0] == outcomes[1]
    r, written = outcomes[0]
    if cut >= n:
        assert r == "BrokenResourceError"
        assert written == payload  # every payload byte came, and was written (rule 4)
    else:
        got, blocks, chash = r
        whole = cut - cut % block
        assert (got, chash) == (cut, 0)
        assert blocks == b"".join(
            xxhash.xxh3_128_digest(payload[i : i + block]) for i in range(0, whole, block)
        )
        assert written == payload[:whole]
