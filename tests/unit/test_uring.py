"""The io_uring core: dwcp/_fast/uring.pyx and its twin dwcp/_ref/uring.py, on both backends."""

from __future__ import annotations

import errno
import gc
import os
import socket
import threading
import time
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.errors import ClosedResourceError, SubmissionQueueFullError

only_ref = os.environ.get("DWCP_IMPL", "auto") == "ref"


def _kernel_has_uring() -> bool:
    try:
        from dwcp._fast import uring
    except ImportError:
        return False
    return bool(uring.uring_available())


HAS_URING = _kernel_has_uring()


@pytest.fixture
def K(impl):
    """The kernels of one backend; the fast one only where the kernel allows io_uring."""
    if impl.name == "fast" and not HAS_URING:
        pytest.skip("this kernel refuses io_uring_setup (ENOSYS, or io_uring_disabled)")
    return impl


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _wait_all(ring, n: int, timeout_s: float = 5.0) -> list[tuple[int, int, int]]:
    """Submit, then reap until ``n`` CQEs have arrived (bounded in time)."""
    out: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout_s
    ring.submit()
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} CQEs within {timeout_s}s: {out}"
        ring.submit_and_wait(1, timeout_s=left)
        out += ring.reap()
    return out


def test_socketpair_round_trip(K, pair):
    a, b = pair
    with K.Ring(8) as r:
        buf = bytearray(16)
        r.prep_recv(b.fileno(), buf, 0, 1)
        r.prep_send(a.fileno(), b"hello uring", 0, 2)
        assert r.inflight == 2
        assert r.submit_and_wait(2, timeout_s=5) == 2
        assert sorted(r.reap()) == [(1, 11, 0), (2, 11, 0)]
        assert bytes(buf[:11]) == b"hello uring"
        assert r.inflight == 0


def test_many_ops_with_distinct_user_data(K):
    pairs = [socket.socketpair() for _ in range(8)]
    try:
        with K.Ring(64) as r:
            bufs = []
            expect = {}
            for i, (a, b) in enumerate(pairs):
                buf = bytearray(64)
                bufs.append(buf)
                # the recv is queued before its send: it waits for data, the send does not
                r.prep_recv(b.fileno(), buf, 0, 1000 + i)
                msg = bytes([i]) * (i + 1)
                r.prep_send(a.fileno(), msg, 0, 2000 + i)
                expect[1000 + i] = expect[2000 + i] = len(msg)
            for i in range(16):
                r.prep_nop(3000 + i)
                expect[3000 + i] = 0
            cqes = _wait_all(r, len(expect))
            assert {ud: res for ud, res, _ in cqes} == expect
            assert len(cqes) == len(expect)
            for i, buf in enumerate(bufs):
                assert bytes(buf[: i + 1]) == bytes([i]) * (i + 1)
            assert r.inflight == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_read_fixed_into_a_registered_slot(K, tmp_path):
    data = os.urandom(8192)
    path = tmp_path / "src"
    path.write_bytes(data)
    slots = [bytearray(4096), bytearray(4096)]
    fd = os.open(path, os.O_RDONLY)
    try:
        with K.Ring(8) as r:
            r.register_buffers(slots)
            r.prep_read_fixed(fd, 1, 100, 500, 1000, 7)
            r.prep_read_fixed(fd, 0, 0, 4096, 8000, 8)  # past the end: a short read
            assert sorted(_wait_all(r, 2)) == [(7, 500, 0), (8, 192, 0)]
            assert bytes(slots[1][100:600]) == data[1000:1500]
            assert bytes(slots[1][:100]) == bytes(100)
            assert bytes(slots[0][:192]) == data[8000:]
            with pytest.raises(ValueError):
                r.prep_read_fixed(fd, 1, 4000, 500, 0, 9)  # beyond the slot
            with pytest.raises(IndexError):
                r.prep_read_fixed(fd, 2, 0, 1, 0, 9)
            with pytest.raises(OSError) as ei:
                r.register_buffers([bytearray(16)])  # already registered
            assert ei.value.errno == errno.EBUSY
            r.unregister_buffers()
            with pytest.raises(IndexError):
                r.prep_read_fixed(fd, 0, 0, 1, 0, 9)
    finally:
        os.close(fd)


def test_register_buffers_wants_writable_ones(K):
    with K.Ring(4) as r, pytest.raises(BufferError):
        r.register_buffers([b"read-only"])


def test_splice_socket_to_pipe_to_file(K, pair, tmp_path):
    a, b = pair
    payload = os.urandom(3000)
    a.sendall(payload)
    rfd, wfd = os.pipe()
    out = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        with K.Ring(8) as r:
            r.prep_splice(b.fileno(), -1, wfd, -1, len(payload), 0, 1)
            assert _wait_all(r, 1) == [(1, len(payload), 0)]
            r.prep_splice(rfd, -1, out, 10, len(payload), 0, 2)
            assert _wait_all(r, 1) == [(2, len(payload), 0)]
        assert (tmp_path / "dst").read_bytes() == bytes(10) + payload
    finally:
        for fd in (rfd, wfd, out):
            os.close(fd)


def test_write_at_file_offsets(K, tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with K.Ring(8) as r:
            r.prep_write(fd, b"aaaa", 0, 1)
            r.prep_write(fd, memoryview(b"xxbbbbxx")[2:6], 100, 2)
            r.prep_write(fd, bytearray(b"cc"), 50, 3)
            assert sorted(_wait_all(r, 3)) == [(1, 4, 0), (2, 4, 0), (3, 2, 0)]
        assert (tmp_path / "f").read_bytes() == b"aaaa" + bytes(46) + b"cc" + bytes(48) + b"bbbb"
    finally:
        os.close(fd)


def test_full_submission_queue(K):
    with K.Ring(3) as r:  # rounded up to 4
        assert r.sq_entries == 4 and r.cq_entries == 8
        for i in range(4):
            r.prep_nop(i)
        with pytest.raises(SubmissionQueueFullError):
            r.prep_nop(4)
        assert r.inflight == 4  # the refused one is not queued
        assert r.submit() == 4
        r.prep_nop(4)  # room again
        assert sorted(_wait_all(r, 5)) == [(i, 0, 0) for i in range(5)]


def test_probe_has_send_and_recv(K):
    with K.Ring(4) as r:
        ops = r.probe()
    assert {K.IORING_OP_SEND, K.IORING_OP_RECV, K.IORING_OP_NOP} <= ops


def test_closed_fd_is_a_negative_res(K, tmp_path):
    with K.Ring(4) as r:
        fd = os.open(tmp_path / "gone", os.O_RDWR | os.O_CREAT)
        os.close(fd)  # after the ring's own fd, which would take the number; nothing else opens one
        r.prep_send(fd, b"x", 0, 1)
        r.prep_write(fd, b"x", 0, 2)
        r.prep_recv(fd, bytearray(1), 0, 3)
        assert sorted(_wait_all(r, 3)) == [(i, -errno.EBADF, 0) for i in (1, 2, 3)]


def test_not_a_socket_is_a_negative_res(K, tmp_path):
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    try:
        with K.Ring(4) as r:
            r.prep_send(fd, b"x", 0, 1)
            assert _wait_all(r, 1) == [(1, -errno.ENOTSOCK, 0)]
    finally:
        os.close(fd)


@pytest.mark.parametrize("ext_arg", [True, False], ids=["ext_arg", "timeout_sqe"])
def test_timeout_returns_with_no_cqe(K, pair, ext_arg):
    a, b = pair
    with K.Ring(4) as r:
        r._set_ext_arg(ext_arg)
        buf = bytearray(8)
        r.prep_recv(b.fileno(), buf, 0, 1)
        t0 = time.monotonic()
        assert r.submit_and_wait(1, timeout_s=0.05) == 1
        assert 0.04 <= time.monotonic() - t0 < 2.0
        assert r.reap() == []  # the Ring's own timeout CQE is not the caller's
        assert r.inflight == 1
        assert r.submit_and_wait(1, timeout_s=0) == 0  # a zero timeout only polls
        a.send(b"late")
        assert _wait_all(r, 1) == [(1, 4, 0)]


def test_buffers_stay_referenced_until_reaped(K, pair):
    class Buf(bytearray):  # bytearray itself takes no weak references
        pass

    a, b = pair
    with K.Ring(4) as r:
        buf = Buf(32)
        ref = weakref.ref(buf)
        r.prep_recv(b.fileno(), buf, 0, 1)
        del buf
        gc.collect()
        r.submit_and_wait(1, timeout_s=0.01)
        gc.collect()
        assert ref() is not None  # the kernel may still write into it
        with pytest.raises(BufferError):
            ref().extend(b"no resizing while the kernel has it")  # type: ignore[union-attr]
        a.send(b"now")
        assert _wait_all(r, 1) == [(1, 3, 0)]
        gc.collect()
        assert ref() is None


def test_user_data_rules(K):
    with K.Ring(4) as r:
        r.prep_nop(5)
        with pytest.raises(ValueError, match="in flight"):
            r.prep_nop(5)
        with pytest.raises(ValueError, match="reserved"):
            r.prep_nop(K.URING_RESERVED_USER_DATA)
        with pytest.raises(OverflowError):
            r.prep_nop(-1)
        with pytest.raises(OverflowError):
            r.prep_nop(1 << 64)
        r.prep_nop((1 << 64) - 2)
        assert sorted(_wait_all(r, 2)) == [(5, 0, 0), ((1 << 64) - 2, 0, 0)]
        r.prep_nop(5)  # reaped: reusable
        with pytest.raises(ValueError):
            r.submit_and_wait(r.cq_entries + 1)
        with pytest.raises(ValueError):
            r.submit_and_wait(0, timeout_s=-1)


def test_send_zc_gives_a_result_and_a_notification(K):
    with K.Ring(4) as r:
        if K.IORING_OP_SEND_ZC not in r.probe():
            pytest.skip("no IORING_OP_SEND_ZC on this kernel")
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        try:
            r.prep_send_zc(c.fileno(), b"z" * 5000, 0, 1)
            cqes = _wait_all(r, 2)
            assert cqes == [(1, 5000, K.IORING_CQE_F_MORE), (1, 0, K.IORING_CQE_F_NOTIF)]
            assert r.inflight == 0
            got = b""
            while len(got) < 5000:
                got += s.recv(5000)
            assert got == b"z" * 5000
        finally:
            for x in (srv, c, s):
                x.close()


def test_recv_waitall_and_eof(K, pair):
    a, b = pair
    with K.Ring(4) as r:
        buf = bytearray(10)
        r.prep_recv(b.fileno(), buf, socket.MSG_WAITALL, 1)
        r.submit()
        a.send(b"12345")
        assert r.submit_and_wait(1, timeout_s=0.05) == 0
        assert r.reap() == []
        a.send(b"67890")
        assert _wait_all(r, 1) == [(1, 10, 0)]
        assert buf == b"1234567890"
        a.shutdown(socket.SHUT_WR)
        r.prep_recv(b.fileno(), buf, 0, 2)
        assert _wait_all(r, 1) == [(2, 0, 0)]


def test_close(K, pair):
    a, b = pair
    r = K.Ring(4)
    r.prep_recv(b.fileno(), bytearray(8), 0, 1)  # submitted, never completes
    r.submit()
    r.prep_nop(2)  # queued, never submitted
    r.close()
    r.close()  # idempotent
    assert r.closed and r.inflight == 0
    for call in (r.reap, r.probe, lambda: r.prep_nop(3), lambda: r.submit_and_wait(0)):
        with pytest.raises(ClosedResourceError):
            call()
    with pytest.raises(ClosedResourceError):
        with r:
            pass
    # the cancelled recv took nothing from the socket
    a.send(b"still here")
    assert b.recv(64) == b"still here"


def test_another_thread_is_refused_while_waiting(K, pair):
    a, b = pair
    with K.Ring(4) as r:
        r.prep_recv(b.fileno(), bytearray(8), 0, 1)
        t = threading.Thread(target=r.submit_and_wait, args=(1, 2.0))
        t.start()
        try:
            time.sleep(0.2)  # the waiter is in io_uring_enter (or select) by now
            with pytest.raises(RuntimeError, match="another thread"):
                r.prep_nop(2)
            with pytest.raises(RuntimeError):
                r.reap()
        finally:
            a.send(b"x")
            t.join(5)
        assert not t.is_alive()


def test_setup_errors(K):
    with pytest.raises(OSError) as ei:
        K.Ring(0)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        K.Ring(1 << 20)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.skipif(only_ref or not HAS_URING, reason="the kernel ring's setup flags")
def test_setup_flags_the_ring_does_not_handle_are_refused(fast):
    for flag in (1 << 0, 1 << 1, 1 << 10, 1 << 11):  # IOPOLL, SQPOLL, SQE128, CQE32
        with pytest.raises(ValueError, match="not supported"):
            fast.Ring(4, flag)


@pytest.mark.skipif(only_ref, reason="compares the fast backend with the reference")
def test_twins_share_constants(fast, ref):
    names = [n for n in dir(ref) if n.startswith(("IORING_", "URING_"))]
    assert len(names) == 13
    assert {n: getattr(fast, n) for n in names} == {n: getattr(ref, n) for n in names}


def test_backend_features_say_whether_io_uring_is_used():
    import dwcp

    assert dwcp.backend_features["io_uring"] is (dwcp.backend == "fast" and HAS_URING)


# -- the reference is the oracle ---------------------------------------------------------------

SLOT = 512  # writes of one batch go to distinct SLOT-sized regions, so their order cannot matter
_send = st.tuples(st.just("send"), st.integers(1, 3000), st.integers(0, 255))
_write = st.tuples(st.just("write"), st.integers(0, 15), st.integers(0, SLOT - 1), st.integers(1, SLOT))
_batch = st.lists(st.one_of(_send, _write), min_size=1, max_size=12)


def _run_ops(K, batches, tmp) -> tuple[list, bytes, bytes]:
    """Run the batches on one backend: (each batch's CQEs by user_data, bytes received, file content)."""
    a, b = socket.socketpair()
    path = os.path.join(tmp, f"f-{K.name}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    results = []
    received = bytearray()
    try:
        with K.Ring(16) as r:
            ud = 0
            for batch in batches:
                used_slots: set[int] = set()
                n = 0
                for op in batch:
                    ud += 1
                    if op[0] == "send":
                        _, size, byte = op
                        r.prep_send(a.fileno(), bytes([byte]) * size, 0, ud)
                    else:
                        _, slot, start, size = op
                        if slot in used_slots:
                            continue
                        used_slots.add(slot)
                        size = min(size, SLOT - start)
                        data = bytes([(ud + i) & 0xFF for i in range(size)])
                        r.prep_write(fd, data, slot * SLOT + start, ud)
                    n += 1
                results.append(sorted(_wait_all(r, n)))
                b.setblocking(False)
                try:
                    while True:
                        received += b.recv(65536)
                except BlockingIOError:
                    pass
        with open(path, "rb") as f:
            content = f.read()
    finally:
        os.close(fd)
        a.close()
        b.close()
    return results, bytes(received), content


@pytest.mark.skipif(
    only_ref or not HAS_URING, reason="compares the fast backend (io_uring) with the reference"
)
@settings(max_examples=40, deadline=None)
@given(st.lists(_batch, min_size=1, max_size=5))
def test_fast_matches_ref_on_random_op_sequences(fast, ref, tmp_path_factory, batches):
    tmp = str(tmp_path_factory.mktemp("uring"))
    # a batch sends at most 12 * 3000 bytes: less than a socketpair buffers, so no send is short
    assert _run_ops(fast, batches, tmp) == _run_ops(ref, batches, tmp)


@pytest.mark.skipif(only_ref or not HAS_URING, reason="the kernel ring's teardown (the twin has none)")
def test_dropping_a_ring_with_work_in_flight_cancels_it(fast, pair):
    from dwcp._fast import uring

    class Buf(bytearray):
        pass

    a, b = pair
    r = fast.Ring(4)
    buf = Buf(8)
    ref = weakref.ref(buf)
    r.prep_recv(b.fileno(), buf, 0, 1)
    r.submit()
    del r, buf
    gc.collect()
    assert ref() is None and uring._leaked == []  # cancelled and drained, not leaked
    a.send(b"ok")
    assert b.recv(8) == b"ok"
