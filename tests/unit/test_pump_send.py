"""The pump's sending side (dwcp/_fast/engine.pyx rule 11, dwcp/_fast/pump.h; twin: dwcp/_ref/engine.py) on both
backends and both kinds: many senders through few slots, a peer that does not read (a timeout that counts
what went, without holding up another sender), a peer that closed (an OSError, never a SIGPIPE), empty
headers and payloads, a slow peer (the timeout bounds each wait), close() under a blocked send, the
sealer's record counter, an opening Aead, receives and sends at once on one pump, and payloads of 4 GiB."""

from __future__ import annotations

import contextlib
import errno
import gc
import mmap
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
import xxhash

from dwcp.errors import ClosedResourceError

TAG = 16


@pytest.fixture
def sealing(case, aead_both):
    """This case's backend with AES-GCM loaded (its Aead seals for its pump)."""
    return aead_both[case[0].name]


@contextlib.contextmanager
def socket_pair():
    """A connected AF_UNIX stream pair, closed at the end."""
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Reader:
    """Reads a socket from a thread until EOF (or an error), ``chunk`` bytes per recv and ``pause`` s between
    reads; ``start=False``: it does not read until ``go()`` (a peer that does not read)."""

    def __init__(self, sock: socket.socket, chunk: int = 1 << 18, pause: float = 0.0, start: bool = True):
        self.sock, self.chunk, self.pause = sock, chunk, pause
        self.data = bytearray()
        self.error: BaseException | None = None
        self._go = threading.Event()
        if start:
            self._go.set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if not self._go.wait(30):
            return
        self.sock.settimeout(10)
        try:
            while chunk := self.sock.recv(self.chunk):
                self.data += chunk
                if self.pause:
                    time.sleep(self.pause)
        except OSError as exc:  # reported by join()
            self.error = exc

    def go(self) -> None:
        self._go.set()

    def join(self, timeout: float = 10.0) -> bytes:
        """Everything read, once the peer shut its side down."""
        self._go.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the reader hung"
        assert self.error is None, self.error
        return bytes(self.data)


def fill(sock: socket.socket) -> int:
    """Write into ``sock`` until it takes no more (its peer does not read); the bytes it took."""
    sock.setblocking(False)
    n = 0
    try:
        while True:
            n += sock.send(b"f" * 65536)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return n


def expected_wire(impl, header: bytes, payload: bytes, key: bytes | None, counter: int = 0) -> bytes:
    """What a send of (header, payload) puts on the wire: the header, then the payload or its record."""
    if key is None:
        return header + payload
    sealer = impl.Aead(key, True)
    for _ in range(counter):
        sealer.seal(b"")
    return header + sealer.seal(payload)


def send_count(exc: BaseException, n: int) -> int:
    """The ``k`` of an exception's "(k of n ... sent)"."""
    m = re.search(rf"\((\d+) of {n} (?:payload bytes )?sent\)$", str(exc))
    assert m, f"no '(k of {n} sent)' in {exc!r}"
    return int(m.group(1))


def small_send_works(pump, n: int = 5000) -> None:
    """The pump still carries a send end to end."""
    payload = os.urandom(n)
    with socket_pair() as (a, b):
        reader = Reader(b)
        pump.send(a.fileno(), b"hdr", payload, 5000)
        a.shutdown(socket.SHUT_WR)
        assert reader.join() == b"hdr" + payload


def block_hashes(data: bytes, block: int) -> bytes:
    return b"".join(xxhash.xxh3_128_digest(data[i : i + block]) for i in range(0, len(data), block))


# -- many senders, few slots ---------------------------------------------------------------------------


def test_many_senders_share_a_pump_with_fewer_slots(make_pump, sealing):
    """10 senders (every third sealed, some on non-blocking sockets, headers of 0-63 bytes) of ~2 MB each
    through 3 slots: every peer gets exactly its header and payload (or record)."""
    impl = sealing
    senders, block = 10, 65536
    pump = make_pump(3, block)
    rnd = random.Random(7)
    headers = [rnd.randbytes(7 * i) for i in range(senders)]
    payloads = [rnd.randbytes(2_000_000 + 1001 * i) for i in range(senders)]
    keys = [os.urandom(32) if i % 3 == 1 else None for i in range(senders)]
    pairs = [socket.socketpair() for _ in range(senders)]
    results: list[object] = [None] * senders
    try:
        for i in range(0, senders, 2):
            pairs[i][0].setblocking(False)  # the pump works either way
        readers = [Reader(b) for _, b in pairs]

        def send(i: int) -> None:
            try:
                key = keys[i]
                sealer = impl.Aead(key, True) if key is not None else None
                pump.send(pairs[i][0].fileno(), memoryview(headers[i]), payloads[i], 10_000, sealer=sealer)
                pairs[i][0].shutdown(socket.SHUT_WR)
                results[i] = "ok" if sealer is None or sealer.counter == 1 else f"counter {sealer.counter}"
            except Exception as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a send hung"
        assert results == ["ok"] * senders, results
        total = 0
        for i in range(senders):
            want = expected_wire(impl, headers[i], payloads[i], keys[i])
            assert readers[i].join() == want, f"sender {i}'s peer"
            total += len(want)
        info = pump.info()
        assert (info["slots"], info["jobs"], info["bytes"]) == (3, senders, total)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- a peer that does not read -------------------------------------------------------------------------


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_a_peer_that_does_not_read_times_out_while_another_send_flows(make_pump, sealing, sealed):
    """The stalled send raises TimeoutError after its timeout with the count of what went (exactly what the
    peer then reads: a plain send counts every payload byte, a sealed one the blocks the socket took whole);
    the other send on the same pump is not held up; the stalled socket is the caller's again."""
    impl = sealing
    block = 4096
    pump = make_pump(2, block)
    header, n = b"H" * 37, 3_000_000
    payload = random.Random(1).randbytes(n)
    key = os.urandom(32) if sealed else None
    ends: dict[str, float] = {}
    box: list[BaseException | None] = [None]
    with socket_pair() as (stalled_a, stalled_b), socket_pair() as (live_a, live_b):

        def stalled() -> None:
            sealer = impl.Aead(key, True) if key is not None else None
            try:
                pump.send(stalled_a.fileno(), header, payload, 400, sealer=sealer)
            except BaseException as exc:  # expected: TimeoutError
                box[0] = exc
            ends["stalled"] = time.monotonic()

        t0 = time.monotonic()
        t = threading.Thread(target=stalled, daemon=True)
        t.start()
        time.sleep(0.1)  # the stalled send is in the loop, its socket full
        live_payload = random.Random(2).randbytes(1_000_000)
        live_key = os.urandom(32) if sealed else None
        reader = Reader(live_b)
        pump.send(
            live_a.fileno(),
            b"live",
            live_payload,
            5000,
            sealer=impl.Aead(live_key, True) if live_key is not None else None,
        )
        ends["live"] = time.monotonic()
        live_a.shutdown(socket.SHUT_WR)
        assert reader.join() == expected_wire(impl, b"live", live_payload, live_key)
        t.join(5)
        assert not t.is_alive(), "the stalled send outlived its timeout"
        exc = box[0]
        assert isinstance(exc, TimeoutError), repr(exc)
        assert str(exc).startswith("the socket took no byte for 0.4 s (")
        k = send_count(exc, n)
        assert ends["live"] < ends["stalled"], "the live send waited for the stalled one"
        assert 0.38 <= ends["stalled"] - t0 < 3.0, ends["stalled"] - t0
        # the peer reads what went: nothing more comes after the timeout (io_uring: the SEND was cancelled)
        drain = Reader(stalled_b)
        time.sleep(0.1)
        stalled_a.sendall(b"the caller's")
        stalled_a.shutdown(socket.SHUT_WR)
        got = drain.join()
        assert got.endswith(b"the caller's")
        got = got[: -len(b"the caller's")]
        want = expected_wire(impl, header, payload, key)
        assert 0 < len(got) < len(want) and got == want[: len(got)]
        if not sealed:
            assert k == len(got) - len(header)  # every payload byte that went, counted
        else:
            assert k % block == 0 and k <= n  # the blocks taken whole
            assert k <= len(got) - len(header) < k + block
    small_send_works(pump)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_timeout_zero_sends_what_the_socket_takes_at_once(make_pump, sealing, sealed):
    """A timeout of 0 is no wait at all: a small send into an empty socket goes whole; into a full one it
    raises TimeoutError at once, having sent nothing of the payload."""
    impl = sealing
    pump = make_pump(2, 4096)
    key = os.urandom(32) if sealed else None
    payload = os.urandom(3000)
    for _ in range(5):
        with socket_pair() as (a, b):
            reader = Reader(b)
            pump.send(a.fileno(), b"h", payload, 0, sealer=impl.Aead(key, True) if key else None)
            a.shutdown(socket.SHUT_WR)
            assert reader.join() == expected_wire(impl, b"h", payload, key)
    with socket_pair() as (a, b):
        fill(a)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"for 0\.0 s \(0 of 3000 sent\)"):
            pump.send(a.fileno(), b"", payload, 0, sealer=impl.Aead(key, True) if key else None)
        assert time.monotonic() - t0 < 2.0
    small_send_works(pump)


# -- a peer that closed --------------------------------------------------------------------------------


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname(), timeout=5)
        b, _ = srv.accept()
    a.settimeout(None)
    return a, b


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("how", ["closed-before", "closes-mid-send", "tcp-reset"])
def test_a_peer_that_closed_is_an_oserror_with_the_count(make_pump, sealing, how, sealed):
    impl = sealing
    block = 4096
    pump = make_pump(2, block)
    header, n = b"head" * 5, 3_000_000
    payload = random.Random(3).randbytes(n)
    key = os.urandom(32) if sealed else None
    sealer = impl.Aead(key, True) if key is not None else None
    a, b = _tcp_pair() if how == "tcp-reset" else socket.socketpair()
    read = 0
    try:
        if how == "closed-before":
            b.close()
        elif how == "tcp-reset":
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b.close()  # an RST: the connection is reset
        else:

            def read_then_close() -> None:
                nonlocal read
                b.settimeout(5)
                with contextlib.suppress(OSError):
                    while read < 300_000:
                        chunk = b.recv(65536)
                        if not chunk:
                            break
                        read += len(chunk)
                b.close()

            t = threading.Thread(target=read_then_close, daemon=True)
            t.start()
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            pump.send(a.fileno(), header, payload, 5000, sealer=sealer)
        assert time.monotonic() - t0 < 3.0
        exc = info.value
        assert not isinstance(exc, TimeoutError)
        assert exc.errno in (errno.EPIPE, errno.ECONNRESET), exc
        assert re.fullmatch(
            rf"{re.escape(os.strerror(exc.errno))} \(\d+ of {n} payload bytes sent\)", exc.strerror
        )
        k = send_count(exc, n)
        if how == "closes-mid-send":
            t.join(5)
            assert read >= 300_000
            # what the peer read went; a sealed send counts the blocks the socket took whole
            assert k >= read - len(header) - (block if sealed else 0)
            assert k < n
        elif how == "closed-before":
            assert k == 0  # not even the header went
        else:
            assert k < n
        if sealer is not None:
            assert sealer.counter == 1  # the record was begun: its nonce is used
    finally:
        a.close()
        b.close()
    small_send_works(pump)  # the pump lives on


_NO_SIGPIPE = textwrap.dedent(
    """
    import os, signal, socket, sys, threading
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it: a write to a closed peer would kill us
    from dwcp._backend import load
    from dwcp.security import aead
    impl = load(sys.argv[1])
    path = aead._libcrypto()
    sealed = path is not None and impl.aead_load(path)
    pump = impl.Pump(sys.argv[2], 2, 4096)
    for sealer in [None] + ([impl.Aead(os.urandom(32), True)] if sealed else []):
        a, b = socket.socketpair()
        b.close()
        try:
            pump.send(a.fileno(), b"h", b"x" * 100_000, 2000, sealer=sealer)
        except OSError as exc:
            print("closed-before", exc.errno)
        a.close()
        a, b = socket.socketpair()
        t = threading.Timer(0.1, b.close)
        t.start()
        try:
            pump.send(a.fileno(), b"h", b"x" * 3_000_000, 2000, sealer=sealer)
        except OSError as exc:
            print("closes-mid-send", exc.errno)
        t.join()
        a.close()
    pump.close()
    print("alive")
    """
)


def test_no_sigpipe_for_a_closed_peer(case, tmp_path):
    """A send to a closed peer is an OSError, not a SIGPIPE (MSG_NOSIGNAL): checked in a child process whose
    SIGPIPE is not ignored (as Python ignores it in this one)."""
    from dwcp.cli.demo import same_dwcp_env

    impl, kind = case
    # the dwcp this process imported (an installed one in CI: a source tree as cwd would shadow it)
    r = subprocess.run([sys.executable, "-c", _NO_SIGPIPE, impl.name, kind], capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path), env=same_dwcp_env())  # fmt: skip
    assert r.returncode == 0, f"exit {r.returncode} (-13: SIGPIPE): {r.stdout}{r.stderr}"
    lines = r.stdout.splitlines()
    assert lines[-1] == "alive" and len(lines) in (3, 5), r.stdout  # plain, then sealed where AES-GCM is
    for line, what in zip(lines[:-1], ["closed-before", "closes-mid-send"] * 2):
        assert line in (f"{what} {errno.EPIPE}", f"{what} {errno.ECONNRESET}"), r.stdout


# -- empty pieces ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hlen,n,sealed",
    [(0, 0, False), (25, 0, False), (0, 5000, False), (0, 0, True), (25, 0, True), (0, 5000, True)],
    ids=["plain-nothing", "plain-header-only", "plain-payload-only", "sealed-tag-only", "sealed-header-tag",
         "sealed-no-header"],
)  # fmt: skip
def test_empty_header_and_empty_payload(make_pump, sealing, hlen, n, sealed):
    """An empty header is no bytes; a sealed empty payload is its 16-byte tag; a plain send of nothing
    returns at once, even on a full socket."""
    impl = sealing
    pump = make_pump(2, 4096)
    header, payload = os.urandom(hlen), os.urandom(n)
    key = os.urandom(32) if sealed else None
    want = expected_wire(impl, header, payload, key)
    assert len(want) == hlen + n + (TAG if sealed else 0)
    before = pump.info()
    with socket_pair() as (a, b):
        reader = Reader(b)
        sealer = impl.Aead(key, True) if key is not None else None
        pump.send(a.fileno(), header, payload, 5000, sealer=sealer)
        a.shutdown(socket.SHUT_WR)
        assert reader.join() == want
        if sealer is not None:
            assert sealer.counter == 1
            opener = impl.Aead(key, False)
            buf = bytearray(want[hlen : hlen + n])
            opener.open_into(buf, want[hlen + n :])
            assert buf == payload
    after = pump.info()
    assert after["jobs"] == before["jobs"] + 1 and after["bytes"] == before["bytes"] + len(want)
    if not want:
        with socket_pair() as (a, b):
            fill(a)
            t0 = time.monotonic()
            pump.send(a.fileno(), b"", b"", 100)  # nothing to send: no wait for room
            assert time.monotonic() - t0 < 1.0


# -- a slow peer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_a_slow_reader_does_not_time_out(make_pump, sealing, sealed):
    """A peer that reads 64 KB every 20 ms takes 1.5 MB in well over 200 ms: a 200 ms timeout bounds each
    wait for room, not the send."""
    impl = sealing
    pump = make_pump(2, 65536)
    payload = random.Random(4).randbytes(1_500_000)
    key = os.urandom(32) if sealed else None
    with socket_pair() as (a, b):
        reader = Reader(b, chunk=65536, pause=0.02)
        t0 = time.monotonic()
        pump.send(a.fileno(), b"slow", payload, 200, sealer=impl.Aead(key, True) if key else None)
        took = time.monotonic() - t0
        a.shutdown(socket.SHUT_WR)
        assert reader.join() == expected_wire(impl, b"slow", payload, key)
        assert took > 0.25, took  # the call outlived its timeout: the timeout is per wait


# -- close -----------------------------------------------------------------------------------------------


def test_close_ends_a_blocked_send_and_every_later_one(case, aead_both):
    impl, kind = case
    impl = aead_both[impl.name]
    pump = impl.Pump(kind, 1, 4096)  # one slot: the second sender waits for it
    n = 3_000_000
    payloads = [random.Random(10 + i).randbytes(n) for i in range(2)]
    pairs = [socket.socketpair() for _ in range(2)]
    box: list[object] = [None, None]
    try:

        def blocked(i: int) -> None:
            try:
                pump.send(pairs[i][0].fileno(), b"hdr", payloads[i])  # no timeout: only close() ends it
            except BaseException as exc:
                box[i] = exc

        threads = [threading.Thread(target=blocked, args=(i,), daemon=True) for i in range(2)]
        threads[0].start()
        time.sleep(0.1)  # the first has the slot
        threads[1].start()
        time.sleep(0.2)
        assert all(t.is_alive() for t in threads) and box == [None, None]
        t0 = time.monotonic()
        pump.close()
        for t in threads:
            t.join(5)
            assert not t.is_alive(), "a send outlived close()"
        assert time.monotonic() - t0 < 2.0
        for r in box:
            assert isinstance(r, ClosedResourceError), r
            # the running send: "closed (k of n payload bytes sent)"; the waiting one: that, or "is closed"
            assert re.fullmatch(
                rf"the {kind} pump (closed \(\d+ of {n} payload bytes sent\)|is closed)", str(r)
            ), r
        assert pump.closed
        # after close: a send raises (a sealer's counter untouched), close is idempotent, info says closed
        sealer = impl.Aead(os.urandom(32), True)
        with pytest.raises(ClosedResourceError):
            pump.send(pairs[0][0].fileno(), b"h", b"p", 100, sealer=sealer)
        assert sealer.counter == 0
        pump.close()
        assert pump.info() == {"kind": kind, "closed": True}
        # the pump lets go of the sockets: what the peers read next is the caller's (io_uring: the SEND was
        # cancelled), after a prefix of the first send and nothing of the second
        readers = [Reader(b) for _, b in pairs]
        time.sleep(0.1)
        for a, _ in pairs:
            a.sendall(b"after close")
            a.shutdown(socket.SHUT_WR)
        first, second = (r.join() for r in readers)
        assert second == b"after close"
        assert first.endswith(b"after close")
        went = first[: -len(b"after close")]
        assert len(went) > 3 and went == (b"hdr" + payloads[0])[: len(went)]
        assert send_count(box[0], n) <= len(went) - 3  # type: ignore[arg-type]
    finally:
        pump.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_close_counts_what_a_plain_send_sent(case):
    impl, kind = case
    pump = impl.Pump(kind, 1, 4096)
    n = 3_000_000
    payload = os.urandom(n)
    box: list[BaseException | None] = [None]
    try:
        with socket_pair() as (a, b):

            def blocked() -> None:
                try:
                    pump.send(a.fileno(), b"hdr", payload, 10_000)
                except BaseException as exc:
                    box[0] = exc

            t = threading.Thread(target=blocked, daemon=True)
            t.start()
            time.sleep(0.3)  # the socket took what it holds
            pump.close()
            t.join(5)
            assert not t.is_alive()
            assert isinstance(box[0], ClosedResourceError), box[0]
            reader = Reader(b)
            a.shutdown(socket.SHUT_WR)
            went = len(reader.join()) - 3
            assert went > 0
            assert send_count(box[0], n) == went
    finally:
        pump.close()


# -- the sealer ------------------------------------------------------------------------------------------


def test_the_sealer_counter_advances_by_one_per_send(make_pump, sealing):
    """Records are numbered per sealer: each send seals one (its nonce), a failed one too (a nonce is never
    used twice); the peer opens them in order with one opener."""
    impl = sealing
    pump = make_pump(2, 4096)
    key = os.urandom(32)
    sealer, opener = impl.Aead(key, True), impl.Aead(key, False)
    sizes = [0, 1, 4095, 4096, 10_000, 0, 70_001]
    payloads = [os.urandom(k) for k in sizes]
    headers = [bytes([i]) * i for i in range(len(sizes))]
    with socket_pair() as (a, b):
        reader = Reader(b)
        for i, (h, p) in enumerate(zip(headers, payloads)):
            pump.send(a.fileno(), h, p, 5000, sealer=sealer)
            assert sealer.counter == i + 1
        a.shutdown(socket.SHUT_WR)
        wire = memoryview(reader.join())
    for h, p in zip(headers, payloads):
        assert wire[: len(h)] == h
        buf = bytearray(wire[len(h) : len(h) + len(p)])
        opener.open_into(buf, wire[len(h) + len(p) : len(h) + len(p) + TAG])
        assert buf == p
        wire = wire[len(h) + len(p) + TAG :]
    assert len(wire) == 0 and opener.counter == len(sizes)
    # a send that fails still used its record's number
    with socket_pair() as (a, b):
        fill(a)
        with pytest.raises(TimeoutError):
            pump.send(a.fileno(), b"", b"x" * 100, 50, sealer=sealer)
        assert sealer.counter == len(sizes) + 1
        b.close()
        with pytest.raises(OSError) as info:
            pump.send(a.fileno(), b"", b"x" * 100, 1000, sealer=sealer)
        assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)
        assert sealer.counter == len(sizes) + 2


def test_an_opening_aead_is_not_a_sealer(make_pump, sealing):
    impl = sealing
    pump = make_pump(1, 4096)
    opener = impl.Aead(os.urandom(32), False)
    with socket_pair() as (a, b):
        with pytest.raises(ValueError, match="send needs a sealing Aead"):
            pump.send(a.fileno(), b"header", b"payload", 100, sealer=opener)
        assert opener.counter == 0
        assert pump.info()["jobs"] == 0  # refused before it took a slot
        a.shutdown(socket.SHUT_WR)
        b.settimeout(2)
        assert b.recv(100) == b""  # nothing went
    small_send_works(pump)


# -- receives and sends at once --------------------------------------------------------------------------


def test_receives_and_sends_at_once_on_one_pump(make_pump, sealing):
    """4 recv_blocks jobs and 4 send jobs (half of each sealed) through one pump of 3 slots, at the same
    time on different sockets: every byte where it belongs."""
    impl = sealing
    block = 65536
    pump = make_pump(3, block)
    streams, size = 4, 1_500_000
    rnd = random.Random(5)
    rx_payloads = [rnd.randbytes(size + i) for i in range(streams)]
    tx_payloads = [rnd.randbytes(size + 7 * i) for i in range(streams)]
    rx_keys = [os.urandom(32) if i % 2 else None for i in range(streams)]
    tx_keys = [os.urandom(32) if i % 2 == 0 else None for i in range(streams)]
    rx_pairs = [socket.socketpair() for _ in range(streams)]
    tx_pairs = [socket.socketpair() for _ in range(streams)]
    fds: list[int] = []
    results: dict[tuple[str, int], object] = {}
    try:
        for _ in range(streams):
            fd, path = tempfile.mkstemp()
            os.unlink(path)
            fds.append(fd)
        readers = [Reader(b) for _, b in tx_pairs]

        def feed(i: int) -> None:  # the peer of a receive: plain bytes, or one record
            try:
                rx_pairs[i][0].sendall(expected_wire(impl, b"", rx_payloads[i], rx_keys[i]))
                rx_pairs[i][0].shutdown(socket.SHUT_WR)
            except OSError as exc:
                results["feed", i] = exc

        def receive(i: int) -> None:
            key = rx_keys[i]
            try:
                results["rx", i] = pump.recv_blocks(
                    rx_pairs[i][1].fileno(),
                    len(rx_payloads[i]),
                    fds[i],
                    0,
                    10_000,
                    opener=impl.Aead(key, False) if key is not None else None,
                )
            except Exception as exc:  # reported below
                results["rx", i] = exc

        def send(i: int) -> None:
            key = tx_keys[i]
            try:
                pump.send(
                    tx_pairs[i][0].fileno(),
                    b"tx%d" % i,
                    tx_payloads[i],
                    10_000,
                    sealer=impl.Aead(key, True) if key is not None else None,
                )
                tx_pairs[i][0].shutdown(socket.SHUT_WR)
                results["tx", i] = "ok"
            except Exception as exc:  # reported below
                results["tx", i] = exc

        threads = [
            threading.Thread(target=f, args=(i,), daemon=True)
            for i in range(streams)
            for f in (feed, receive, send)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a stream hung"
        for i in range(streams):
            assert ("feed", i) not in results, results["feed", i]
            assert results["tx", i] == "ok", results["tx", i]
            assert readers[i].join() == expected_wire(impl, b"tx%d" % i, tx_payloads[i], tx_keys[i])
            r = results["rx", i]
            assert isinstance(r, tuple), r
            got, blocks, chash = r
            assert got == len(rx_payloads[i]) and os.pread(fds[i], size + 10, 0) == rx_payloads[i]
            assert blocks == block_hashes(rx_payloads[i], block) and chash == xxhash.xxh3_64_intdigest(blocks)
        assert pump.info()["jobs"] == 2 * streams
    finally:
        for a, b in rx_pairs + tx_pairs:
            a.close()
            b.close()
        for fd in fds:
            os.close(fd)


# -- 4 GiB and more --------------------------------------------------------------------------------------


def test_a_plain_payload_of_4_gib_and_more(case):
    """A plain payload past 32 bits (zero pages, never touched): it goes until the peer, having read
    1 MiB, closes -- then EPIPE or ECONNRESET counting at least what the peer read."""
    impl, kind = case
    n = (1 << 32) + 16
    try:
        big = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    except OSError as exc:
        pytest.skip(f"cannot map {n} bytes of address space: {exc}")
    pump = impl.Pump(kind, 2, 4096)
    view = memoryview(big)
    read = 0
    try:
        with socket_pair() as (a, b):

            def read_then_close() -> None:
                nonlocal read
                b.settimeout(5)
                with contextlib.suppress(OSError):
                    while read < 1 << 20:
                        chunk = b.recv(65536)
                        if not chunk:
                            break
                        read += len(chunk)
                b.shutdown(socket.SHUT_RDWR)

            t = threading.Thread(target=read_then_close, daemon=True)
            t.start()
            exc: BaseException | None = None
            try:
                pump.send(a.fileno(), b"hdr", view, 5000)
            except Exception as e:
                exc = e
                e.__traceback__ = None  # its frames hold views of the map (the ref pump's job)
            a.shutdown(socket.SHUT_RDWR)
            t.join(5)
            assert isinstance(exc, OSError) and not isinstance(exc, TimeoutError), repr(exc)
            assert exc.errno in (errno.EPIPE, errno.ECONNRESET), exc
            assert read >= 1 << 20, read
            assert send_count(exc, n) >= read - 3
        small_send_works(pump)
    finally:
        pump.close()
        exc = None
        gc.collect()
        with contextlib.suppress(BufferError):  # a view still held somewhere: the map goes with it
            view.release()
            big.close()
