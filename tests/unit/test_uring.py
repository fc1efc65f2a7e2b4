"""The io_uring core (dwcp/_fast/uring.pyx)."""

from __future__ import annotations

import socket

import pytest

uring = pytest.importorskip("dwcp._fast.uring")
pytestmark = pytest.mark.skipif(not uring.uring_available(), reason="this kernel refuses io_uring_setup")


def test_socketpair_round_trip():
    a, b = socket.socketpair()
    with a, b, uring.Ring(8) as r:
        buf = bytearray(16)
        r.prep_recv(b.fileno(), buf, 0, 1)
        r.prep_send(a.fileno(), b"hello uring", 0, 2)
        assert r.submit_and_wait(2, timeout_s=5) == 2
        cqes = sorted(r.reap())
        assert cqes == [(1, 11, 0), (2, 11, 0)]
        assert bytes(buf[:11]) == b"hello uring"
        assert r.inflight == 0
