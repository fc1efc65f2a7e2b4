"""The pump's sending side (dwcp/_fast/engine.pyx rule 11, dwcp/_fast/pump.h; twin: dwcp/_ref/engine.py): for
any header and payload, ``Pump.send`` puts the header as it is and then the payload on the wire -- plain, or
sealed as exactly the record the module's ``send_sealed`` sends for the same key and record counter -- on
io_uring and on epoll, fast and ref alike; the fast and ref pumps put the same bytes on the wire, each
opens what the other sealed, and a pump's sealed send is received by the other backend's pump."""

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

KINDS = ["uring", "epoll"]
BACKENDS = ["fast", "ref"]
BLOCKS = [4096, 1 << 20]  # a small block (many per payload) and the default one (at most one)
TIMEOUT_MS = 5000  # a bound for a send that would hang; none of these peers stalls


def _usable_kind(fast, backend: str, kind: str) -> str:
    """``kind``, or epoll where the fast uring pump cannot run."""
    return "epoll" if backend == "fast" and kind == "uring" and not fast.uring_available() else kind


def _wire(send) -> bytes:
    """Run ``send(sock_fd)`` on one end of a socketpair while a thread reads the other end to EOF (the
    sending end is shut down after ``send``); the bytes that arrived."""
    a, b = socket.socketpair()
    got = bytearray()
    errors: list[BaseException] = []

    def read() -> None:
        b.settimeout(10)
        try:
            while chunk := b.recv(1 << 18):
                got.extend(chunk)
        except OSError as exc:  # reported to the test
            errors.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        send(a.fileno())
        a.shutdown(socket.SHUT_WR)
        t.join(10)
        assert not t.is_alive(), "the reading thread hung"
        assert not errors, errors
        return bytes(got)
    finally:
        with contextlib.suppress(OSError):
            a.shutdown(socket.SHUT_RDWR)  # a reader still waiting sees EOF
        t.join(10)
        a.close()
        b.close()


def _aead_at(impl, key: bytes, seal: bool, counter: int):
    """An Aead of ``impl`` over ``key`` whose next record is number ``counter``."""
    aead = impl.Aead(key, seal)
    if seal:
        for _ in range(counter):
            aead.seal(b"")
    else:
        sealer = impl.Aead(key, True)
        for _ in range(counter):
            aead.open_into(bytearray(), sealer.seal(b""))
    assert aead.counter == counter
    return aead


def _block_hashes(data: bytes, block: int) -> bytes:
    return b"".join(xxhash.xxh3_128_digest(data[i : i + block]) for i in range(0, len(data), block))


# payloads: small ones of any bytes (empty included), and larger ones of seeded random bytes: at the small
# block's edges, or of a length spread evenly over 1..100 KB (drawn from the seed: hypothesis favours small
# integers)
def _seeded(seed: int, length: int | None = None) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(rnd.randrange(1, 100_001) if length is None else length)


EDGES = [4095, 4096, 4097, 8191, 8192, 8193, 65536, 100_000]
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, 2**32), st.sampled_from(EDGES)).map(lambda t: _seeded(*t)),
    st.integers(0, 2**32).map(_seeded),
    st.integers(0, 2**32).map(_seeded),
)
HEADERS = st.binary(max_size=200)
# the buffer the caller hands in: bytes, a bytearray, or a view into the middle of a larger buffer
BUFFERS = st.sampled_from(["bytes", "bytearray", "view"])


def _as(how: str, data: bytes):
    if how == "bytes":
        return data
    if how == "bytearray":
        return bytearray(data)
    return memoryview(b"<" * 13 + data + b">" * 7)[13 : 13 + len(data)]


def _size(n: int) -> str:
    return "empty" if n == 0 else "< 4 KB" if n < 4096 else "4-64 KB" if n < 65536 else ">= 64 KB"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=100, deadline=None)
@given(header=HEADERS, payload=PAYLOADS, block=st.sampled_from(BLOCKS), how=BUFFERS)
def test_a_plain_send_puts_the_header_then_the_payload_on_the_wire(
    pumps, backend, kind, header, payload, block, how
):
    pump = pumps(backend, kind, block)
    event(f"payload {_size(len(payload))}")
    event("no header" if not header else "a header")
    before = pump.info()
    wire = _wire(lambda fd: pump.send(fd, _as(how, header), _as(how, payload), TIMEOUT_MS))
    assert wire == header + payload
    after = pump.info()
    assert after["jobs"] == before["jobs"] + 1
    assert after["bytes"] == before["bytes"] + len(header) + len(payload)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(
    header=HEADERS,
    payload=PAYLOADS,
    block=st.sampled_from(BLOCKS),
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(0, 3),
    slot=st.sampled_from([1000, 4096, 1 << 20]),
)
def test_a_sealed_send_is_the_module_record_after_the_header(
    aead_both, pumps, kind, header, payload, block, key, counter, slot
):
    """Both pumps put ``header`` + the module send_sealed's record (either backend's, through any slot) on
    the wire, byte for byte; each backend's opener opens the other pump's record; each sealer advanced by
    one record."""
    fast, ref = aead_both["fast"], aead_both["ref"]
    event(f"payload {_size(len(payload))}, block {block}")
    wires = {}
    for name, impl in (("fast", fast), ("ref", ref)):
        pump = pumps(name, kind, block)
        sealer = _aead_at(impl, key, True, counter)
        wires[name] = _wire(lambda fd: pump.send(fd, header, payload, TIMEOUT_MS, sealer=sealer))  # noqa: B023
        assert sealer.counter == counter + 1
    oracles = {}
    for name, impl in (("fast", fast), ("ref", ref)):
        sealer = _aead_at(impl, key, True, counter)
        oracles[name] = _wire(lambda fd: impl.send_sealed(fd, sealer, payload, bytearray(slot), TIMEOUT_MS))  # noqa: B023
    assert oracles["fast"] == oracles["ref"]
    assert len(oracles["fast"]) == len(payload) + 16
    assert wires["fast"] == wires["ref"] == header + oracles["fast"]
    # crossing: the ref opener opens the fast pump's record and the fast opener the ref pump's
    h, n = len(header), len(payload)
    for sent_by, opened_by in (("fast", ref), ("ref", fast)):
        opener = _aead_at(opened_by, key, False, counter)
        wire = wires[sent_by]
        buf = bytearray(wire[h : h + n])
        opener.open_into(buf, wire[h + n :])
        assert buf == payload
        assert opener.counter == counter + 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pair", [("fast", "ref"), ("ref", "fast")], ids=["fast-to-ref", "ref-to-fast"])
@settings(max_examples=40, deadline=None)
@given(
    header=HEADERS,
    payload=PAYLOADS,
    tx_block=st.sampled_from(BLOCKS),
    rx_block=st.sampled_from(BLOCKS),
    rx_kind=st.sampled_from(KINDS),
    file_off=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_a_sealed_send_is_received_by_the_other_backends_pump(
    aead_both, fast, pumps, kind, pair, header, payload, tx_block, rx_block, rx_kind, file_off, seed
):
    """End to end through two pumps: one backend's pump sends (header, payload) sealed; the peer reads the
    header as it is, and the other backend's pump receives the record with an opener (rules 5 and 11)."""
    tx, rx = aead_both[pair[0]], aead_both[pair[1]]
    rx_kind = _usable_kind(fast, pair[1], rx_kind)
    tx_pump = pumps(pair[0], kind, tx_block)
    rx_pump = pumps(pair[1], rx_kind, rx_block)
    event(f"{pair[0]} {kind} -> {pair[1]} {rx_kind}, payload {_size(len(payload))}")
    key = random.Random(seed).randbytes(32)
    n = len(payload)
    a, b = socket.socketpair()
    sent: list[object] = []
    sealer = tx.Aead(key, True)

    def send() -> None:
        try:
            tx_pump.send(a.fileno(), header, payload, TIMEOUT_MS, sealer=sealer)
            a.shutdown(socket.SHUT_WR)
            sent.append("ok")
        except Exception as exc:  # reported to the test
            sent.append(exc)

    t = threading.Thread(target=send, daemon=True)
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        t.start()
        b.settimeout(10)
        got_header = bytearray()
        while len(got_header) < len(header):
            chunk = b.recv(len(header) - len(got_header))
            assert chunk, "the header did not arrive"
            got_header += chunk
        assert got_header == header
        opener = rx.Aead(key, False)
        r = rx_pump.recv_blocks(b.fileno(), n, fd, file_off, TIMEOUT_MS, opener=opener)
        t.join(10)
        assert not t.is_alive(), "the sending pump hung"
        assert sent == ["ok"], sent
        got, blocks, chash = r
        assert got == n
        assert os.pread(fd, n + 1, file_off) == payload  # opened in place, written where asked
        assert blocks == _block_hashes(payload, rx_block)  # the plaintext's block hashes
        assert chash == xxhash.xxh3_64_intdigest(blocks)
        assert opener.counter == sealer.counter == 1
        assert b.recv(10) == b""  # the record was all: nothing after the tag
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_RDWR)  # a sender still waiting on a full socket fails at once
        t.join(10)
        os.close(fd)
        a.close()
        b.close()
