"""MSG_ZEROCOPY sends (dwcp.transport.zerocopy) on loopback TCP, and their completion bookkeeping.

Loopback always copies: every completion comes back flagged COPIED, which these tests check; that the
pages really go unpinned to a NIC needs one, and is the kernel's business.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading

import pytest

from dwcp.transport import zerocopy as Z
from dwcp.transport.framesock import FrameSocket
from dwcp.transport.zerocopy import MSG_ZEROCOPY, PayloadBuffers, ZeroCopySender

MiB = 1 << 20


def _zerocopy_works() -> bool:
    with socket.socket() as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, Z.SO_ZEROCOPY, 1)
            return bool(s.getsockopt(socket.SOL_SOCKET, Z.SO_ZEROCOPY))
        except OSError:
            return False


needs_zerocopy = pytest.mark.skipif(not _zerocopy_works(), reason="SO_ZEROCOPY needs Linux >= 4.14")


@pytest.fixture
def tcp_pair():
    ls = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    c.settimeout(10)
    s.settimeout(10)
    yield c, s
    c.close()
    s.close()


class Receiver(threading.Thread):
    """Reads everything the other end sends until it closes; ``pause`` holds it back (the sender's pages stay
    pinned while its bytes wait in its own socket)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.got = bytearray()
        self.go = threading.Event()
        self.go.set()

    def run(self) -> None:
        while True:
            self.go.wait()
            b = self.sock.recv(MiB)
            if not b:
                return
            self.got += b


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        assert b, f"closed after {len(out)} of {n} bytes"
        out += b
    return bytes(out)


class Wrapped:
    """A real socket, but for the methods a test overrides (socket.socket takes no attributes)."""

    def __init__(self, sock: socket.socket) -> None:
        self._s = sock

    def __getattr__(self, name):
        return getattr(self._s, name)


@needs_zerocopy
def test_bytes_arrive_intact_when_each_buffer_is_rewritten_as_soon_as_it_is_free(tcp_pair):
    c, s = tcp_pair
    rx = Receiver(s)
    rx.start()
    zc = ZeroCopySender(c)
    assert zc.enabled and zc.why_not is None
    bufs = [bytearray(256 * 1024) for _ in range(3)]
    tokens = [0, 0, 0]
    want = bytearray()
    for i in range(60):
        k = i % 3
        if not zc.buffer_free(tokens[k]):
            zc.wait_completions(tokens[k])
        assert zc.buffer_free(tokens[k])
        bufs[k][:] = bytes([i]) * len(bufs[k])  # the kernel let go of it: rewrite it at once
        header = struct.pack("<Q", i) * 8
        tokens[k] = zc.send(header, bufs[k])
        assert tokens[k] > 0
        want += header + bufs[k]
    zc.wait_completions()
    for buf in bufs:  # whatever the kernel still had to send is sent: scribbling changes nothing received
        buf[:] = b"\xff" * len(buf)
    c.shutdown(socket.SHUT_WR)
    rx.join(10)
    assert rx.got == want
    st = zc.stats()
    assert st["sends"] == 60 and st["calls"] >= 60 and st["completed"] == st["calls"]
    assert st["copied"] == st["calls"]  # loopback always copies
    assert st["bytes"] == len(want) and st["fallbacks"] == 0 and zc.outstanding == 0


@needs_zerocopy
def test_the_pool_reuses_buffers_only_once_free_while_the_receiver_holds_back(tcp_pair):
    c, s = tcp_pair
    rx = Receiver(s)
    rx.go.clear()  # it reads nothing for a while: the kernel keeps the pages of what it could not deliver
    rx.start()
    zc = ZeroCopySender(c)
    pool = PayloadBuffers(zc)
    want = bytearray()
    done = threading.Event()

    def send_all():
        for i in range(40):
            mv = pool.take(MiB, limit=3)
            mv[:] = bytes([i]) * MiB  # a reused buffer is rewritten at once
            tok = zc.send(b"h" * 64, mv)
            want.extend(b"h" * 64 + mv)
            pool.give_back(mv, tok)
        zc.wait_completions()
        done.set()

    tx = threading.Thread(target=send_all, daemon=True)
    tx.start()
    assert not done.wait(0.3)  # held back
    rx.go.set()
    tx.join(20)
    assert done.is_set()
    c.shutdown(socket.SHUT_WR)
    rx.join(10)
    assert rx.got == want
    assert pool.allocated <= 3 and zc.completed == zc.calls >= 40


@needs_zerocopy
def test_small_payloads_and_headers_alone_are_copied(tcp_pair):
    c, s = tcp_pair
    zc = ZeroCopySender(c, min_bytes=64 * 1024)
    assert zc.send(b"x" * 64) == 0 and zc.send(b"x" * 64, b"y" * 1000) == 0
    assert zc.calls == 0 and zc.sends == 0
    assert recv_exact(s, 1128) == b"x" * 128 + b"y" * 1000


@needs_zerocopy
def test_enobufs_with_calls_outstanding_waits_for_a_completion_and_retries(tcp_pair):
    c, s = tcp_pair
    rx = Receiver(s)
    rx.start()
    w = Wrapped(c)
    refuse = [0]  # ENOBUFS answers to give

    def sendmsg(bufs, anc=(), flags=0):
        if flags & MSG_ZEROCOPY and refuse[0]:
            refuse[0] -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return c.sendmsg(bufs, anc, flags)

    w.sendmsg = sendmsg
    zc = ZeroCopySender(w)
    payload = b"a" * MiB
    zc.send(b"1" * 64, payload)
    refuse[0] = 1
    zc.send(b"2" * 64, b"b" * MiB)  # ENOBUFS: waits for the first payload's calls, retries, goes
    assert zc.enobufs == 1 and zc.fallbacks == 0 and zc.sends == 2
    zc.wait_completions()
    refuse[0] = 2
    zc.send(b"3" * 64, b"c" * MiB)  # ENOBUFS with nothing outstanding: copied
    assert zc.enobufs == 2 and zc.fallbacks == 1 and zc.sends == 2
    zc.send(b"4" * 64, b"d" * MiB)  # one more ENOBUFS, then (nothing outstanding) copied too
    assert zc.enobufs == 3 and zc.fallbacks == 2 and zc.enabled
    zc.wait_completions()
    c.shutdown(socket.SHUT_WR)
    rx.join(10)
    assert rx.got == b"".join(
        h * 64 + p * MiB for h, p in ((b"1", b"a"), (b"2", b"b"), (b"3", b"c"), (b"4", b"d"))
    )


@needs_zerocopy
def test_enobufs_with_nothing_outstanding_sends_the_payload_the_normal_way(tcp_pair):
    c, s = tcp_pair
    w = Wrapped(c)

    def sendmsg(bufs, anc=(), flags=0):
        if flags & MSG_ZEROCOPY:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return c.sendmsg(bufs, anc, flags)

    w.sendmsg = sendmsg
    zc = ZeroCopySender(w)
    assert zc.send(b"h" * 64, b"p" * MiB) == 0  # copied: free at once
    assert (zc.enobufs, zc.fallbacks, zc.sends, zc.calls) == (1, 1, 0, 0) and zc.enabled
    assert recv_exact(s, 64 + MiB) == b"h" * 64 + b"p" * MiB


def test_a_socket_refusing_so_zerocopy_gets_a_sender_that_copies(tcp_pair):
    c, s = tcp_pair
    w = Wrapped(c)

    def setsockopt(level, opt, value):
        if (level, opt) == (socket.SOL_SOCKET, Z.SO_ZEROCOPY):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        return c.setsockopt(level, opt, value)

    w.setsockopt = setsockopt
    sent_flags = []
    w.sendmsg = lambda bufs, anc=(), flags=0: (sent_flags.append(flags), c.sendmsg(bufs, anc, flags))[1]
    zc = ZeroCopySender(w)
    assert not zc.enabled and "SO_ZEROCOPY" in (zc.why_not or "") and "Protocol not available" in zc.why_not
    assert zc.send(b"h" * 64, b"p" * MiB) == 0
    assert zc.fallbacks == 1 and zc.calls == 0 and not any(f & MSG_ZEROCOPY for f in sent_flags)
    assert recv_exact(s, 64 + MiB) == b"h" * 64 + b"p" * MiB


@needs_zerocopy
def test_a_sendmsg_refusing_the_flag_disables_zerocopy_for_good(tcp_pair):
    c, s = tcp_pair
    w = Wrapped(c)

    def sendmsg(bufs, anc=(), flags=0):
        if flags & MSG_ZEROCOPY:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return c.sendmsg(bufs, anc, flags)

    w.sendmsg = sendmsg
    zc = ZeroCopySender(w)
    assert zc.send(b"h" * 64, b"p" * MiB) == 0 and not zc.enabled and "refused MSG_ZEROCOPY" in zc.why_not
    assert zc.send(b"h" * 64, b"q" * MiB) == 0 and zc.fallbacks == 2
    assert recv_exact(s, 2 * (64 + MiB)) == b"h" * 64 + b"p" * MiB + b"h" * 64 + b"q" * MiB


@needs_zerocopy
def test_framesock_sends_zerocopy_only_when_asked(tcp_pair):
    c, s = tcp_pair
    fs = FrameSocket(c, timeout_s=10)
    assert fs.send(b"h" * 64, b"p" * MiB, zerocopy=True) == 0  # not enabled yet: the normal path
    zc = fs.enable_zerocopy()
    tok = fs.send(b"h" * 64, b"q" * MiB, zerocopy=True)
    assert tok == 1 and fs.send(b"h" * 64, b"r" * MiB) == 0 and zc.calls == 1
    assert fs.bytes_sent == 3 * (64 + MiB)
    assert recv_exact(s, 3 * (64 + MiB)) == b"".join(b"h" * 64 + x * MiB for x in (b"p", b"q", b"r"))
    zc.wait_completions(tok)
    assert zc.buffer_free(tok)


@needs_zerocopy
def test_a_queued_completion_is_not_a_readable_ack_and_waits_do_not_spin(tcp_pair):
    """Rule 7: a completion on the error queue raises POLLERR.  readable() must not take it for an ACK
    (a stream would stop sending until one came), and a read must wait, not spin on EAGAIN."""
    import time

    c, s = tcp_pair
    fs = FrameSocket(c, timeout_s=0.3)
    zc = fs.enable_zerocopy()
    fs.send(b"h" * 64, b"z" * MiB, zerocopy=True)
    assert recv_exact(s, 64 + MiB)[-1:] == b"z"
    p = select.poll()
    p.register(c.fileno(), 0)
    deadline = time.monotonic() + 5
    while not p.poll(50) and time.monotonic() < deadline:  # the completion is queued: POLLERR is up
        pass
    assert p.poll(0), "no completion came"
    assert zc.completed == 0  # not read yet
    assert not fs.readable(0.05)  # nothing to read: the completion was taken in, not reported as data
    assert zc.completed == 1
    fs.send(b"h" * 64, b"y" * MiB, zerocopy=True)
    assert recv_exact(s, 64 + MiB)[-1:] == b"y"
    while not p.poll(50) and time.monotonic() < deadline:
        pass
    cpu0 = time.process_time()
    with pytest.raises(TimeoutError):
        fs.recv_header()  # no frame comes: it waits out the socket's timeout
    assert time.process_time() - cpu0 < 0.15  # waited in poll; the old code spun for all 0.3 s
    assert zc.completed == 2
    s.sendall(b"\x00" * 10)
    assert fs.readable(1.0)  # a real byte still is


# -- the bookkeeping, with a socket that answers what a test tells it ----------------------------------


class FakeSock:
    """Accepts every MSG_ZEROCOPY call whole; its error queue holds what ``complete`` put there."""

    def __init__(self) -> None:
        self._a, self._b = socket.socketpair()  # a descriptor to poll: never ready
        self.queue: list[bytes] = []
        self.timeout: float | None = 0.2

    def setsockopt(self, *a):
        pass

    def getsockopt(self, level, opt, *a):
        return 1 if opt == Z.SO_ZEROCOPY else 0

    def sendmsg(self, bufs, anc=(), flags=0):
        return sum(memoryview(b).nbytes for b in bufs)

    def recvmsg(self, n, anc, flags):
        assert flags & Z.MSG_ERRQUEUE and self.timeout == 0.0
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        return b"", [(socket.IPPROTO_IP, 11, self.queue.pop(0))], 0, None

    def complete(self, lo: int, hi: int, copied: bool = False) -> None:
        self.queue.append(Z._EE.pack(0, Z.SO_EE_ORIGIN_ZEROCOPY, 0, int(copied), 0, lo, hi))

    def gettimeout(self):
        return self.timeout

    def settimeout(self, t):
        self.timeout = t

    def fileno(self):
        return self._a.fileno()


def test_out_of_order_completions_free_a_token_only_when_every_call_before_it_is_released():
    f = FakeSock()
    zc = ZeroCopySender(f)
    t = [zc.send(b"h", b"p" * MiB) for _ in range(4)]
    assert t == [1, 2, 3, 4] and zc.outstanding == 4
    f.complete(2, 3, copied=True)
    assert not zc.buffer_free(t[0]) and not zc.buffer_free(t[3]) and zc.outstanding == 2
    f.complete(0, 1)
    assert zc.buffer_free(t[3]) and zc.outstanding == 0 and (zc.completed, zc.copied) == (4, 2)
    f.complete(0, 1)  # seen already: not counted again
    zc.poll()
    assert zc.completed == 4


def test_the_32_bit_counter_wraps():
    f = FakeSock()
    zc = ZeroCopySender(f)
    zc._next = zc._done_below = (1 << 32) - 2  # as after four billion calls
    toks = [
        zc.send(b"h", b"p" * MiB) for _ in range(4)
    ]  # calls 2**32-2 .. 2**32+1: numbered ...fe, ...ff, 0, 1
    f.complete(0xFFFFFFFE, 1)
    assert zc.buffer_free(toks[-1]) and zc.completed == 4 and zc.outstanding == 0


def test_waiting_without_a_completion_times_out_with_the_socket_timeout():
    f = FakeSock()
    zc = ZeroCopySender(f)
    tok = zc.send(b"h", b"p" * MiB)
    with pytest.raises(TimeoutError, match="no MSG_ZEROCOPY completion"):
        zc.wait_completions(tok)
    with pytest.raises(ValueError):
        zc.wait_completions(tok + 1)


def test_the_sender_keeps_what_it_pinned_until_it_is_released():
    f = FakeSock()
    zc = ZeroCopySender(f)
    payload = bytearray(MiB)
    tok = zc.send(b"h", payload)
    assert any(payload is objs[1] for _, objs in zc._held)
    f.complete(0, 0)
    assert zc.buffer_free(tok) and not zc._held


def test_the_pool_waits_for_the_oldest_buffer_at_its_limit():
    f = FakeSock()
    zc = ZeroCopySender(f)
    pool = PayloadBuffers(zc)
    a = pool.take(MiB, limit=2)
    pool.give_back(a, zc.send(b"h", a))
    b = pool.take(MiB, limit=2)  # a is still the kernel's: a second buffer
    assert b.obj is not a.obj and pool.allocated == 2
    pool.give_back(b, zc.send(b"h", b))
    with pytest.raises(TimeoutError):  # at the limit, and no completion comes
        pool.take(MiB, limit=2)
    f.complete(0, 0)
    c = pool.take(MiB, limit=2)
    assert c.obj is a.obj and pool.allocated == 2
    pool.give_back(c, 0)  # it went copied (compressed, say): free at once
    assert pool.take(100, limit=2).obj is a.obj  # free, though b is older


def test_poll_is_select_poll_for_pollerr():
    # rule 5's premise: an idle socket with a queued completion is reported by poll(2) with no events asked
    if not _zerocopy_works():
        pytest.skip("SO_ZEROCOPY needs Linux >= 4.14")
    ls = socket.create_server(("127.0.0.1", 0))
    with ls, socket.create_connection(ls.getsockname()) as c:
        s, _ = ls.accept()
        with s:
            zc = ZeroCopySender(c)
            s.settimeout(10)
            zc.send(b"h", b"p" * MiB)
            assert len(recv_exact(s, 1 + MiB)) == 1 + MiB
            p = select.poll()
            p.register(c.fileno(), 0)
            assert p.poll(5000) and p.poll(0)[0][1] & select.POLLERR
            zc.wait_completions()


# -- sends: rule 8 of dwcp.transport.sender ------------------------------------------------------------


def _object(tmp_path, mib: int = 24):
    """A file of ``mib`` MiB: random (raw chunks, MSG_ZEROCOPY) but for its last 3 MiB, which compress."""
    import numpy as np

    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, mib * MiB, dtype=np.uint8)
    data[-3 * MiB :] = np.frombuffer((b"dwcp zerocopy " * (3 * MiB // 14 + 1))[: 3 * MiB], np.uint8)
    path = tmp_path / "obj.bin"
    data.tofile(path)
    return path, data


def _sender(**kw):
    from dwcp._testbase.transfer import tx_config
    from dwcp.config import SecurityConfig
    from dwcp.transport.sender import Sender

    zl, codec = kw.pop("zerocopy_loopback", False), kw.pop("codec", None)
    return Sender(
        tx_config(adaptive_chunks=False, **kw),
        SecurityConfig(plaintext=True),
        zerocopy_loopback=zl,
        codec=codec,
    )


@needs_zerocopy
def test_a_file_sent_with_zerocopy_forced_on_loopback_arrives_byte_exact_and_the_report_counts_it(
    server, tmp_path
):
    from dwcp._testbase.transfer import stored
    from dwcp.config import CodecSettings
    from dwcp.transport.source import FileSource

    path, data = _object(tmp_path)
    with FileSource.open(
        str(path)
    ) as src:  # zstd level 1: the 3 compressible chunks copy, the rest go zero-copy
        r = _sender(zerocopy_loopback=True, codec=CodecSettings(zstd_level=1)).send(
            src, *server.address, "zc/file", streams=4
        )
    assert stored(server, "zc/file") == data.tobytes()
    so = r.socket
    assert so["zerocopy_available"] is True and so["zerocopy_used"] is True
    assert r.streams.max == 4 and so["zerocopy_sends"] == 21 and r.chunks == 24
    assert so["zerocopy_calls"] >= so["zerocopy_sends"] and so["zerocopy_fallbacks"] == 0
    assert so["zerocopy_completions"] == so["zerocopy_calls"] == so["zerocopy_copied"]  # loopback copies all
    assert so["zerocopy_reason"] == (
        f"MSG_ZEROCOPY on {so['zerocopy_sends']} payloads ({so['zerocopy_calls']} sendmsg calls); "
        "the kernel copied all of them (loopback always copies)"
    )


@needs_zerocopy
def test_a_buffer_sent_with_zerocopy_forced_arrives_byte_exact(server, tmp_path):
    from dwcp._testbase.transfer import stored

    _, data = _object(tmp_path, 8)
    r = _sender(zerocopy_loopback=True).send(data, *server.address, "zc/buf", streams=2)
    assert stored(server, "zc/buf") == data.tobytes()
    assert r.socket["zerocopy_used"] is True and r.socket["zerocopy_sends"] >= 1


@needs_zerocopy
def test_loopback_sends_copy_unless_forced_and_zerocopy_false_reports_as_before(server, tmp_path):
    from dwcp._testbase.transfer import stored
    from dwcp.transport.source import FileSource

    path, data = _object(tmp_path, 4)
    with FileSource.open(str(path)) as src:
        auto = _sender().send(src, *server.address, "zc/auto", streams=2).socket
        off = (
            _sender(zerocopy=False, chunk_size_bytes=MiB)
            .send(src, *server.address, "zc/off", streams=2)
            .socket
        )
    assert stored(server, "zc/auto") == stored(server, "zc/off") == data.tobytes()
    assert auto["zerocopy_available"] is True and auto["zerocopy_used"] is False
    assert "loopback" in auto["zerocopy_reason"] and "every send copies" in auto["zerocopy_reason"]
    assert not any(k.startswith("zerocopy_") and k not in ("zerocopy_available", "zerocopy_reason",
                                                           "zerocopy_used") for k in auto)  # fmt: skip
    assert {k: v for k, v in off.items() if k.startswith("zerocopy")} == {
        "zerocopy_available": None, "zerocopy_reason": "transport.zerocopy = false: not probed",
        "zerocopy_used": False}  # fmt: skip


@pytest.mark.parametrize(
    ("peer", "local", "interface", "loopback"),
    [
        ("127.0.0.1", "127.0.0.1", None, True),
        ("127.0.0.2", "127.0.0.1", None, True),
        ("::1", "::1", None, True),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", None, True),
        ("10.1.2.3", "10.1.2.3", None, True),  # one of this host's own addresses: routed through lo
        ("10.0.0.2", "10.0.0.1", None, False),
        ("10.0.0.2", "10.0.0.1", "lo", True),
        ("fe80::2%eth0", "fe80::1%eth0", None, False),
    ],
)
def test_which_peers_count_as_loopback(peer, local, interface, loopback):
    from dwcp.transport.sender import _egress_is_loopback

    class Sock:
        def getpeername(self):
            return (peer, 7700)

        def getsockname(self):
            return (local, 40000)

    assert _egress_is_loopback(Sock(), interface) is loopback
