"""The pump (dwcp/_fast/engine.pyx rules 9-10, dwcp/_fast/pump.h; twin: dwcp/_ref/engine.py) on both
backends and both kinds: many streams through few slots, a stalled stream that times out without
holding up the others (and whose socket io_uring lets go of), a peer that closes mid-block, a file or a
socket that fails, the same errors as the module's kernel, sealed records, close() under a blocked call and
under load, bad arguments, and no thread or descriptor left behind (closed or dropped)."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import socket
import struct
import tempfile
import threading
import time

import pytest
import xxhash

from dwcp.digest import LEAF_BYTES, chunk_hash
from dwcp.errors import ClosedResourceError, StorageError


@contextlib.contextmanager
def scratch_fd():
    """A read-write descriptor of an unlinked temporary file."""
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        yield fd
    finally:
        os.close(fd)


def feed(sock: socket.socket, payload: bytes, close: bool = True, pieces: int = 0, pause: float = 0.0):
    """Send ``payload`` from a thread (in ``pieces`` parts ``pause`` s apart), then shut the writing side
    down; quiet when the test has given up on the stream."""

    def send() -> None:
        with contextlib.suppress(OSError):
            if pieces:
                step = -(-len(payload) // pieces)
                for i in range(0, len(payload), step):
                    sock.sendall(payload[i : i + step])
                    time.sleep(pause)
            else:
                sock.sendall(payload)
            if close:
                sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def block_hashes(data: bytes, block: int) -> bytes:
    return b"".join(xxhash.xxh3_128_digest(data[i : i + block]) for i in range(0, len(data), block))


def small_stream_works(pump, n: int = 5000) -> None:
    """The pump still carries a stream end to end."""
    payload = os.urandom(n)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            t = feed(a, payload)
            got, blocks, chash = pump.recv_blocks(b.fileno(), n, fd, 0, 5000)
            t.join(5)
            assert got == n and os.pread(fd, n + 1, 0) == payload
            assert chash == xxhash.xxh3_64_intdigest(blocks) and blocks == block_hashes(
                payload, pump.info()["block"]
            )
    finally:
        a.close()
        b.close()


def _pick(fast, ref, backend: str, kind: str):
    if backend == "fast" and kind == "uring" and not fast.uring_available():
        pytest.skip("io_uring does not work here (fast.uring_available() is False): no fast uring pump")
    return {"fast": fast, "ref": ref}[backend]


PUMP_CASES_PARAMS = [pytest.param(b, k, id=f"{b}-{k}") for b in ("fast", "ref") for k in ("uring", "epoll")]


def _outcome(fn, *args, **kw):
    """``fn(*args, **kw)``'s result, or (exception's type name, its text, its errno)."""
    try:
        return fn(*args, **kw)
    except Exception as exc:
        return type(exc).__name__, str(exc), getattr(exc, "errno", None)


# -- many streams, few slots ---------------------------------------------------------------------------


def test_many_streams_share_a_pump_with_fewer_slots(make_pump):
    streams, size, block = 12, 2 * LEAF_BYTES + 12_345, LEAF_BYTES
    pump = make_pump(3, block)
    before = pump.info()
    assert (before["slots"], before["block"], before["jobs"], before["bytes"]) == (3, block, 0, 0)
    payloads = [random.Random(i).randbytes(size) for i in range(streams)]
    pairs = [socket.socketpair() for _ in range(streams)]
    fds = []
    results: list[object] = [None] * streams
    try:
        for _ in range(streams):
            fd, path = tempfile.mkstemp()
            os.unlink(path)
            fds.append(fd)

        def receive(i: int) -> None:
            try:
                results[i] = pump.recv_blocks(pairs[i][1].fileno(), size, fds[i], 1000 * i, 10_000)
            except Exception as exc:  # reported below
                results[i] = exc

        # paced senders: the streams overlap, and all but 3 wait for a slot at first
        feeders = [feed(pairs[i][0], payloads[i], pieces=16, pause=0.002) for i in range(streams)]
        receivers = [threading.Thread(target=receive, args=(i,), daemon=True) for i in range(streams)]
        for t in receivers:
            t.start()
        for t in receivers + feeders:
            t.join(30)
            assert not t.is_alive(), "a stream hung"
        for i in range(streams):
            assert isinstance(results[i], tuple), results[i]
            got, blocks, chash = results[i]  # type: ignore[misc]
            assert got == size
            assert os.pread(fds[i], size + 10, 1000 * i) == payloads[i], f"stream {i}'s file"
            assert blocks == block_hashes(payloads[i], block)
            assert chash == xxhash.xxh3_64_intdigest(blocks) == chunk_hash(payloads[i])[0]
        info = pump.info()
        assert info["jobs"] == streams
        assert info["bytes"] == streams * size
        assert info["ops"] >= streams * 3  # at least one recv completion per block
        assert info["wakeups"] >= 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        for fd in fds:
            os.close(fd)


def test_a_far_offset_in_a_sparse_file(make_pump):
    pump = make_pump(2, 4096)
    payload = os.urandom(10_000)
    off = (5 << 30) + 3  # past 32 bits
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            t = feed(a, payload)
            got, _, chash = pump.recv_blocks(b.fileno(), len(payload), fd, off, 2000)
            t.join(5)
            assert got == len(payload) and chash != 0
            assert os.pread(fd, len(payload) + 1, off) == payload
    finally:
        a.close()
        b.close()


# -- timeouts ------------------------------------------------------------------------------------------


def test_a_stalled_stream_times_out_and_the_pump_lets_go_of_its_socket(make_pump):
    pump = make_pump(2, 4096)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            a.sendall(b"x" * 100)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match=r"no payload bytes for 0\.1 s \(100 of 200 received\)"):
                pump.recv_blocks(b.fileno(), 200, fd, 0, 100)
            took = time.monotonic() - t0
            assert 0.09 <= took < 2.0, took
            assert os.fstat(fd).st_size == 0  # a partial block is never written
        # the wait was cancelled: what comes next is the caller's, not the pump's
        time.sleep(0.05)
        a.sendall(b"after the timeout")
        b.settimeout(2)
        assert b.recv(100) == b"after the timeout"
        # a stalled wait on a silent peer (nothing at all)
        with scratch_fd() as fd:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match=r"\(0 of 10 received\)"):
                pump.recv_blocks(b.fileno(), 10, fd, 0, 100)
            assert time.monotonic() - t0 < 2.0
        a.sendall(b"still mine")
        assert b.recv(100) == b"still mine"
        assert pump.info()["jobs"] == 2
        small_stream_works(pump)
    finally:
        a.close()
        b.close()


def test_a_stall_after_whole_blocks_counts_them(make_pump):
    pump = make_pump(2, 4096)
    payload = os.urandom(3 * 4096 + 10)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            a.sendall(payload)
            with pytest.raises(TimeoutError, match=rf"\({len(payload)} of 20000 received\)"):
                pump.recv_blocks(b.fileno(), 20_000, fd, 5, 150)
            assert os.pread(fd, 20_000, 0) == bytes(5) + payload[: 3 * 4096]  # the whole blocks, written
    finally:
        a.close()
        b.close()


def test_a_stalled_stream_does_not_hold_up_another(make_pump):
    pump = make_pump(2, 4096)
    stalled_a, stalled_b = socket.socketpair()
    live_a, live_b = socket.socketpair()
    payload = os.urandom(512 * 1024)
    ends: dict[str, float] = {}
    outcome: list[BaseException | None] = [None]
    try:
        with scratch_fd() as fd1, scratch_fd() as fd2:
            stalled_a.sendall(b"s" * 100)

            def stalled() -> None:
                try:
                    pump.recv_blocks(stalled_b.fileno(), 200, fd1, 0, 1000)
                except BaseException as exc:  # expected: TimeoutError
                    outcome[0] = exc
                ends["stalled"] = time.monotonic()

            t0 = time.monotonic()
            t = threading.Thread(target=stalled, daemon=True)
            t.start()
            time.sleep(0.1)  # the stalled job is in the loop
            f = feed(live_a, payload, pieces=32, pause=0.003)
            got, blocks, chash = pump.recv_blocks(live_b.fileno(), len(payload), fd2, 0, 2000)
            ends["live"] = time.monotonic()
            f.join(5)
            t.join(5)
            assert not t.is_alive()
            assert got == len(payload) and os.pread(fd2, len(payload) + 1, 0) == payload
            assert chash == xxhash.xxh3_64_intdigest(blocks)
            assert isinstance(outcome[0], TimeoutError), outcome[0]
            assert ends["live"] < ends["stalled"], "the live stream waited for the stalled one"
            assert 0.9 <= ends["stalled"] - t0 < 3.0
    finally:
        for s in (stalled_a, stalled_b, live_a, live_b):
            s.close()


def test_the_timeout_bounds_each_wait_not_the_call(make_pump):
    """Rule 2: a peer that trickles (a byte or three every 40 ms, 0.4 s in all) never waits 100 ms."""
    pump = make_pump(2, 16)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            t = feed(a, b"t" * 30, pieces=10, pause=0.04)
            t0 = time.monotonic()
            got, blocks, chash = pump.recv_blocks(b.fileno(), 30, fd, 0, 100)
            assert time.monotonic() - t0 >= 0.3
            t.join(5)
            assert (got, blocks) == (30, block_hashes(b"t" * 30, 16)) and chash != 0
            assert os.pread(fd, 100, 0) == b"t" * 30
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend,kind", PUMP_CASES_PARAMS)
def test_timeout_zero_takes_what_is_already_there(fast, ref, backend, kind):
    """Rule 2: timeout_ms bounds a wait for the next byte; bytes already in the socket need no wait."""
    impl = _pick(fast, ref, backend, kind)
    pump = impl.Pump(kind, 2, 4096)
    try:
        for n in (100, 3 * 4096 + 5):
            payload = os.urandom(n)
            outs = []
            for how in ("pump", "module"):
                a, b = socket.socketpair()
                try:
                    with scratch_fd() as fd:
                        a.sendall(payload)
                        if how == "pump":
                            outs.append(_outcome(pump.recv_blocks, b.fileno(), n, fd, 0, 0))
                        else:
                            outs.append(
                                _outcome(impl.recv_blocks, b.fileno(), bytearray(4096), n, fd, 0, 0, 4096)
                            )
                finally:
                    a.close()
                    b.close()
            assert outs[1][0] == n  # the module takes it
            assert outs[0] == outs[1]
    finally:
        pump.close()


# -- the peer closes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [10_000, 8192, 0, 1])
def test_the_peer_closes_mid_stream(case, make_pump, sent):
    impl, _ = case
    pump = make_pump(2, 4096)
    payload = os.urandom(sent)
    whole = sent - sent % 4096
    outcomes = []
    for how in ("pump", "module"):
        a, b = socket.socketpair()
        try:
            with scratch_fd() as fd:
                t = feed(a, payload)
                if how == "pump":
                    r = pump.recv_blocks(b.fileno(), 20_000, fd, 3, 5000)
                else:
                    r = impl.recv_blocks(b.fileno(), bytearray(4096), 20_000, fd, 3, 5000, 4096)
                t.join(5)
                outcomes.append((r, os.fstat(fd).st_size, os.pread(fd, 30_000, 0)))
        finally:
            a.close()
            b.close()
    assert outcomes[0] == outcomes[1]  # as the module's kernel says
    (got, blocks, chash), size, data = outcomes[0]
    assert got == sent and chash == 0
    assert blocks == block_hashes(payload[:whole], 4096)  # whole blocks only
    assert size == (3 + whole if whole else 0) and data[3:] == payload[:whole]


def test_an_empty_payload_reads_nothing(make_pump):
    pump = make_pump(2, 4096)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            a.sendall(b"not the pump's")
            assert pump.recv_blocks(b.fileno(), 0, fd, 0, 1000) == (0, b"", xxhash.xxh3_64_intdigest(b""))
            b.settimeout(2)
            assert b.recv(100) == b"not the pump's"
            assert os.fstat(fd).st_size == 0
    finally:
        a.close()
        b.close()


# -- failures of the file and of the socket ------------------------------------------------------------


def test_a_file_that_cannot_be_written_is_a_storage_error(make_pump):
    pump = make_pump(2, 4096)
    fd, path = tempfile.mkstemp()
    try:
        ro = os.open(path, os.O_RDONLY)
        for how in ("read-only", "not open"):
            a, b = socket.socketpair()
            try:
                if how == "read-only":
                    bad = ro
                else:
                    bad = os.dup(fd)
                    os.close(bad)  # a descriptor number that is not open (nothing opens one before the call)
                t = feed(a, b"y" * 5000)
                with pytest.raises(StorageError, match="writing at offset 7"):
                    pump.recv_blocks(b.fileno(), 5000, bad, 7, 2000)
                t.join(5)
            finally:
                a.close()
                b.close()
        os.close(ro)
        assert os.path.getsize(path) == 0
        small_stream_works(pump)
        assert pump.info()["jobs"] == 3
    finally:
        os.close(fd)
        os.unlink(path)


def test_a_descriptor_that_is_not_a_socket_is_an_oserror(make_pump):
    pump = make_pump(2, 4096)
    with scratch_fd() as fd, scratch_fd() as not_a_socket:
        os.write(not_a_socket, b"z" * 100)
        with pytest.raises(OSError) as e:
            pump.recv_blocks(not_a_socket, 10, fd, 0, 1000)
        assert not isinstance(e.value, TimeoutError)
        # io_uring's RECV says ENOTSOCK; epoll refuses a regular file (EPERM) before any recv
        assert e.value.errno == (errno.ENOTSOCK if pump.kind == "uring" else errno.EPERM), e.value
        assert str(e.value).endswith("(0 of 10 payload bytes received)")
        small_stream_works(pump)


def test_a_closed_socket_is_an_oserror(make_pump):
    pump = make_pump(2, 4096)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd:
            gone = b.fileno()
            b.close()  # (after the file: its number stays free)
            with pytest.raises(OSError) as e:
                pump.recv_blocks(gone, 10, fd, 0, 1000)
            assert not isinstance(e.value, TimeoutError)
            assert e.value.errno == errno.EBADF, e.value
        small_stream_works(pump)
    finally:
        a.close()
        b.close()


def test_a_reset_connection_is_an_oserror_with_its_errno(make_pump):
    pump = make_pump(2, 4096)
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname(), timeout=5)
    conn, _ = srv.accept()
    try:
        with scratch_fd() as fd:
            cli.sendall(b"r" * 5000)
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.05)  # let the first block through, then reset the connection
            box: list[object] = []

            def receive() -> None:
                try:
                    box.append(pump.recv_blocks(conn.fileno(), 50_000, fd, 0, 5000))
                except BaseException as exc:
                    box.append(exc)

            t = threading.Thread(target=receive, daemon=True)
            t.start()
            time.sleep(0.1)
            cli.close()  # RST
            t.join(5)
            assert not t.is_alive()
            (r,) = box
            assert isinstance(r, OSError) and not isinstance(r, TimeoutError), r
            assert r.errno == errno.ECONNRESET, r
            assert str(r).endswith("(5000 of 50000 payload bytes received)"), r  # all that came, counted
        small_stream_works(pump)
    finally:
        cli.close()
        conn.close()
        srv.close()


@pytest.mark.parametrize("backend,kind", PUMP_CASES_PARAMS)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the ref-uring bug's
def test_a_negative_socket_number_is_an_oserror_and_the_pump_lives_on(fast, ref, backend, kind):
    impl = _pick(fast, ref, backend, kind)
    pump = impl.Pump(kind, 2, 4096)
    try:
        with scratch_fd() as fd:
            r = _outcome(pump.recv_blocks, -1, 10, fd, 0, 1000)
        assert r == ("OSError", "[Errno 9] Bad file descriptor (0 of 10 payload bytes received)", errno.EBADF)
        assert not pump.closed
        small_stream_works(pump)
    finally:
        pump.close()


@pytest.mark.parametrize("backend,kind", PUMP_CASES_PARAMS)
def test_info_counts_a_job_that_failed_on_its_socket(fast, ref, backend, kind):
    impl = _pick(fast, ref, backend, kind)
    pump = impl.Pump(kind, 2, 4096)
    a, b = socket.socketpair()
    try:
        with scratch_fd() as fd, scratch_fd() as not_a_socket:
            gone = b.fileno()
            b.close()
            for sock_fd in (not_a_socket, gone):
                with pytest.raises(OSError):
                    pump.recv_blocks(sock_fd, 10, fd, 0, 1000)
        assert pump.info()["jobs"] == 2
    finally:
        a.close()
        b.close()
        pump.close()


def test_errors_read_as_the_module_kernels_do(case, make_pump, fast):
    """Rule 9: a call raises exactly as the module's recv_blocks -- the same exception, errno and text."""
    impl, _ = case
    pump = make_pump(2, 4096)

    def both(prepare, n: int, file_fd_of, file_off: int, timeout_ms: int):
        out = []
        for how in ("pump", impl, fast):
            a, b = socket.socketpair()
            try:
                with scratch_fd() as fd:
                    sock_fd = prepare(a, b)
                    ffd = file_fd_of(fd)
                    if how == "pump":
                        out.append(_outcome(pump.recv_blocks, sock_fd, n, ffd, file_off, timeout_ms))
                    else:
                        out.append(
                            _outcome(
                                how.recv_blocks, sock_fd, bytearray(4096), n, ffd, file_off, timeout_ms, 4096
                            )
                        )
            finally:
                a.close()
                b.close()
        pump_r, module_r, fast_module_r = out
        # the same exception and errno as the module of its backend, and the text of the C kernel (the ref
        # module kernel words a socket error without "(k of n payload bytes received)")
        assert (pump_r[0], pump_r[2]) == (module_r[0], module_r[2])
        assert pump_r == fast_module_r
        return pump_r

    def stall(a, b):
        a.sendall(b"s" * 5000)
        return b.fileno()

    def closed_peer(a, b):
        a.sendall(b"c" * 5000)
        a.shutdown(socket.SHUT_WR)
        return b.fileno()

    def gone(a, b):
        n = b.fileno()
        b.close()
        return n

    ro = os.open(os.devnull, os.O_RDONLY)
    try:
        r = both(stall, 9000, lambda fd: fd, 0, 120)
        assert r == ("TimeoutError", "no payload bytes for 0.12 s (5000 of 9000 received)", None)
        r = both(closed_peer, 5000, lambda fd: ro, 11, 2000)
        assert r[0] == "StorageError" and r[1].endswith("(writing at offset 11)")
        r = both(gone, 10, lambda fd: fd, 0, 2000)
        assert r[0] == "OSError" and r[2] == errno.EBADF
        assert r[1] == "[Errno 9] Bad file descriptor (0 of 10 payload bytes received)"
    finally:
        os.close(ro)


# -- sealed records ------------------------------------------------------------------------------------


def test_a_sealed_stream_that_stalls_in_its_tag_times_out(case, make_pump, aead_both):
    impl, _ = case
    impl = aead_both[impl.name]
    pump = make_pump(2, 4096)
    key = os.urandom(32)
    payload = os.urandom(10_000)
    rec = impl.Aead(key, True).seal(payload)
    outs = []
    for how in ("pump", "module"):
        a, b = socket.socketpair()
        try:
            with scratch_fd() as fd:
                a.sendall(rec[: len(payload) + 7])  # 7 bytes of the tag, then silence
                opener = impl.Aead(key, False)
                t0 = time.monotonic()
                if how == "pump":
                    r = _outcome(pump.recv_blocks, b.fileno(), len(payload), fd, 0, 150, opener=opener)
                else:
                    r = _outcome(
                        impl.recv_blocks,
                        b.fileno(),
                        bytearray(4096),
                        len(payload),
                        fd,
                        0,
                        150,
                        4096,
                        opener=opener,
                    )
                assert time.monotonic() - t0 < 2.0
                outs.append((r, os.pread(fd, 20_000, 0)))
                a.sendall(b"the rest is the caller's")
                b.settimeout(2)
                assert b.recv(100) == b"the rest is the caller's"  # the tag's wait was cancelled
        finally:
            a.close()
            b.close()
    assert outs[0][0][0] == outs[1][0][0] == "TimeoutError" and outs[0][1] == outs[1][1]
    (r, written) = outs[0]
    # the C kernel's words (the ref module kernel counts the tag's 7 bytes in: "10007 of 10000")
    assert r == ("TimeoutError", "no payload bytes for 0.15 s (10000 of 10000 received)", None)
    assert written == payload  # every block was opened and written before the tag (rule 4)


def test_sealed_streams_of_the_other_twin_share_a_pump(case, make_pump, aead_both):
    """Several sealed streams at once through two slots, each with its own opener (this backend's), sealed
    by the other backend's send_sealed."""
    impl, _ = case
    rx = aead_both[impl.name]
    tx = aead_both["ref" if impl.name == "fast" else "fast"]
    pump = make_pump(2, 65536)
    streams, size = 6, 300_000 + 17
    keys = [os.urandom(32) for _ in range(streams)]
    payloads = [random.Random(100 + i).randbytes(size) for i in range(streams)]
    pairs = [socket.socketpair() for _ in range(streams)]
    fds: list[int] = []
    results: list[object] = [None] * streams
    errors: list[BaseException] = []
    try:
        for _ in range(streams):
            fd, path = tempfile.mkstemp()
            os.unlink(path)
            fds.append(fd)

        def send(i: int) -> None:
            try:
                tx.send_sealed(
                    pairs[i][0].fileno(), tx.Aead(keys[i], True), payloads[i], bytearray(4096), 10_000
                )
            except OSError as exc:
                errors.append(exc)

        def receive(i: int) -> None:
            try:
                results[i] = pump.recv_blocks(
                    pairs[i][1].fileno(), size, fds[i], 0, 10_000, opener=rx.Aead(keys[i], False)
                )
            except Exception as exc:  # reported below
                results[i] = exc

        threads = [
            threading.Thread(target=f, args=(i,), daemon=True)
            for i in range(streams)
            for f in (send, receive)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a stream hung"
        assert not errors, errors
        for i in range(streams):
            assert isinstance(results[i], tuple), results[i]
            got, blocks, chash = results[i]  # type: ignore[misc]
            assert got == size and os.pread(fds[i], size + 1, 0) == payloads[i]
            assert blocks == block_hashes(payloads[i], 65536) and chash == xxhash.xxh3_64_intdigest(blocks)
        assert pump.info()["jobs"] == streams
        assert pump.info()["bytes"] == streams * (size + 16)  # the tags are received too
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        for fd in fds:
            os.close(fd)


# -- close ---------------------------------------------------------------------------------------------


def test_close_ends_a_blocked_call_and_every_later_one(case):
    impl, kind = case
    pump = impl.Pump(kind, 1, 4096)  # one slot: the second caller waits for it
    pairs = [socket.socketpair() for _ in range(2)]
    box: list[object] = [None, None]
    try:
        with scratch_fd() as fd:
            pairs[0][0].sendall(b"q" * 10)  # some of a block, then silence

            def blocked(i: int) -> None:
                try:
                    box[i] = pump.recv_blocks(pairs[i][1].fileno(), 100, fd, 0)  # no timeout
                except BaseException as exc:
                    box[i] = exc

            threads = [threading.Thread(target=blocked, args=(i,), daemon=True) for i in range(2)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            assert all(t.is_alive() for t in threads) and box == [None, None]
            assert not pump.closed
            t0 = time.monotonic()
            pump.close()
            for t in threads:
                t.join(5)
                assert not t.is_alive(), "a call outlived close()"
            assert time.monotonic() - t0 < 2.0
            assert all(isinstance(r, ClosedResourceError) for r in box), box
            assert pump.closed
            # after close: a call raises, close is idempotent, info says closed
            with pytest.raises(ClosedResourceError):
                pump.recv_blocks(pairs[0][1].fileno(), 10, fd, 0, 100)
            pump.close()
            pump.close()
            assert pump.info() == {"kind": kind, "closed": True}
            # the pump does not read the sockets any more (io_uring: its RECV was cancelled)
            for a, b in pairs:
                a.sendall(b"after close")
                b.settimeout(2)
            assert pairs[0][1].recv(100) == b"after close"
            assert pairs[1][1].recv(100) == b"after close"
    finally:
        pump.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_close_of_an_idle_pump(case):
    impl, kind = case
    pump = impl.Pump(kind)
    assert pump.kind == kind and not pump.closed
    info = pump.info()
    assert (info["kind"], info["slots"], info["block"], info["jobs"], info["bytes"]) == (
        kind,
        16,
        1 << 20,
        0,
        0,
    )
    t0 = time.monotonic()
    pump.close()
    assert time.monotonic() - t0 < 2.0
    assert pump.closed and pump.info() == {"kind": kind, "closed": True}
    with pytest.raises(ClosedResourceError):
        pump.recv_blocks(0, 0, 1, 0)


def test_close_under_load(case):
    """close() while streams flow and others wait for a slot: every call ends (a result, or
    ClosedResourceError), promptly; what was received whole is in its file."""
    impl, kind = case
    pump = impl.Pump(kind, 3, 65536)
    streams, size = 8, 2 << 20
    payloads = [random.Random(200 + i).randbytes(size) for i in range(streams)]
    pairs = [socket.socketpair() for _ in range(streams)]
    fds: list[int] = []
    results: list[object] = [None] * streams
    try:
        for _ in range(streams):
            fd, path = tempfile.mkstemp()
            os.unlink(path)
            fds.append(fd)

        def receive(i: int) -> None:
            try:
                results[i] = pump.recv_blocks(pairs[i][1].fileno(), size, fds[i], 0, 10_000)
            except Exception as exc:  # reported below
                results[i] = exc

        feeders = [feed(pairs[i][0], payloads[i], pieces=64, pause=0.003) for i in range(streams)]
        receivers = [threading.Thread(target=receive, args=(i,), daemon=True) for i in range(streams)]
        for t in receivers:
            t.start()
        time.sleep(0.08)
        t0 = time.monotonic()
        pump.close()
        for t in receivers:
            t.join(5)
            assert not t.is_alive(), "a call outlived close()"
        assert time.monotonic() - t0 < 3.0
        assert pump.closed
        closed = 0
        for i in range(streams):
            r = results[i]
            if isinstance(r, ClosedResourceError):
                closed += 1
                continue
            assert isinstance(r, tuple), r
            assert r[0] == size and os.pread(fds[i], size + 1, 0) == payloads[i]
        assert closed >= 1  # 8 paced streams of 2 MiB do not all end in 80 ms
        for a, b in pairs:  # the feeders stop (a shutdown wakes a blocked send; a close would not)
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for t in feeders:
            t.join(5)
            assert not t.is_alive()
    finally:
        pump.close()
        for a, b in pairs:
            a.close()
            b.close()
        for fd in fds:
            os.close(fd)


# -- bad arguments -------------------------------------------------------------------------------------


def test_bad_arguments_are_value_errors(case, make_pump):
    impl, kind = case
    with pytest.raises(ValueError, match="pump kind"):
        impl.Pump("kqueue")
    with pytest.raises(ValueError, match="pump kind"):
        impl.Pump("URING")
    for slots in (0, -1, 65):
        with pytest.raises(ValueError, match="slots must be in 1..64"):
            impl.Pump(kind, slots, 4096)
    for block in (0, 15, (1 << 30) + 1):
        with pytest.raises(ValueError, match="block must be in 16..2"):
            impl.Pump(kind, 2, block)
    pump = make_pump(1, 16)  # the edges are fine
    make_pump(64, 16).close()
    with pytest.raises(ValueError, match="must be >= 0"):
        pump.recv_blocks(0, -1, 1, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        pump.recv_blocks(0, 10, 1, -1)
    assert pump.info()["jobs"] == 0  # refused before it took a slot
    small_stream_works(pump, 100)


def test_a_sealing_aead_is_not_an_opener(case, make_pump, aead_both):
    impl, _ = case
    impl = aead_both[impl.name]
    pump = make_pump(1, 4096)
    with pytest.raises(ValueError, match="needs an opening Aead"):
        pump.recv_blocks(0, 10, 1, 0, 100, opener=impl.Aead(os.urandom(32), True))
    small_stream_works(pump)


# -- nothing left behind -------------------------------------------------------------------------------


def _os_threads() -> int:
    """The process's threads, less io_uring's own workers (iou-wrk-*, iou-sqp-*: the kernel's, they come
    and go by themselves)."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("iou-"):
                    continue
        except OSError:  # it just ended
            continue
        n += 1
    return n


def _counts() -> tuple[int, int, int]:
    return threading.active_count(), _os_threads(), len(os.listdir("/proc/self/fd"))


def test_no_thread_nor_descriptor_outlives_a_closed_pump(case):
    impl, kind = case
    warm = impl.Pump(kind, 2, 4096)  # imports, caches and the like, made once
    try:
        small_stream_works(warm, 100)
    finally:
        warm.close()
    gc.collect()  # what earlier tests dropped goes now, not while this one counts
    before = _counts()
    for i in range(20):
        p = impl.Pump(kind, 1 + i % 4, 4096)
        try:
            if i % 5 == 0:
                small_stream_works(p, 100)
        finally:
            p.close()
    deadline = time.monotonic() + 3.0  # the ref pump's thread may take a moment to leave the OS's list
    while _counts() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _counts() == before


@pytest.mark.parametrize("backend,kind", PUMP_CASES_PARAMS)
def test_a_dropped_pump_leaves_nothing_behind(fast, ref, backend, kind):
    impl = _pick(fast, ref, backend, kind)
    before = _counts()
    p = impl.Pump(kind, 2, 4096)
    small_stream_works(p, 100)
    del p
    gc.collect()
    deadline = time.monotonic() + 1.0
    while _counts() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _counts() == before


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm (tmpfs) here")
def test_a_file_on_tmpfs_is_written_as_on_any_other(case):
    """pump.h writes the blocks of a tmpfs file with pwrite in the loop (tmpfs takes no non-blocking
    buffered write, so io_uring would punt each WRITE): the same bytes, hashes and errors."""
    impl, kind = case
    pump = impl.Pump(kind, 2, 4096)
    payload = os.urandom(3 * 4096 + 123)
    fd, path = tempfile.mkstemp(dir="/dev/shm")
    os.unlink(path)
    a, b = socket.socketpair()
    try:
        t = threading.Thread(target=lambda: (a.sendall(payload), a.shutdown(socket.SHUT_WR)))
        t.start()
        got, blocks, chash = pump.recv_blocks(b.fileno(), len(payload), fd, 100, 2000)
        t.join(10)
        assert got == len(payload) and os.pread(fd, len(payload), 100) == payload
        assert blocks == b"".join(
            xxhash.xxh3_128_digest(payload[i : i + 4096]) for i in range(0, len(payload), 4096)
        )
        assert chash == xxhash.xxh3_64_intdigest(blocks)
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            a2, b2 = socket.socketpair()
            try:
                a2.sendall(b"x" * 10)
                with pytest.raises(StorageError, match="writing at offset 7"):
                    pump.recv_blocks(b2.fileno(), 10, ro, 7, 2000)
            finally:
                a2.close()
                b2.close()
        finally:
            os.close(ro)
    finally:
        a.close()
        b.close()
        os.close(fd)
        pump.close()
