"""The one Dialer: its transport settings shape every connection, and TLS is there unless plaintext is chosen."""

from __future__ import annotations

import dataclasses
import errno
import socket
import ssl
import threading

import pytest

from dwcp.config import SecurityConfig, TransportConfig
from dwcp.errors import PeerUnreachableError
from dwcp.transport.dialer import Dialer


@pytest.fixture
def listener():
    srv = socket.create_server(("127.0.0.1", 0))
    peers: list[tuple[str, int]] = []

    def accept():
        while True:
            try:
                c, addr = srv.accept()
            except OSError:
                return
            peers.append(addr)
            c.close()

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    yield srv.getsockname(), peers
    srv.close()
    th.join(5)


def test_the_transport_settings_shape_each_dial_and_a_reload_the_next(listener):
    addr, peers = listener
    d = Dialer.plaintext(TransportConfig(source_address="127.0.0.3", socket_buffer_bytes=1 << 20,
                                         stall_timeout_s=7.0))  # fmt: skip
    fs, applied = d.dial(*addr)
    try:
        assert d.tls is None and not isinstance(fs.sock, ssl.SSLSocket)
        assert fs.sock.getsockname()[0] == "127.0.0.3" and fs.sock.gettimeout() == 7.0
        assert fs.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 << 20  # Linux stores twice
    finally:
        fs.close()
    d.reconfigure(dataclasses.replace(d.transport, source_address="127.0.0.4"))
    fs, _ = d.dial(*addr, timeout_s=2.0)  # a probe's short deadline replaces the stall timeout
    try:
        assert fs.sock.getsockname()[0] == "127.0.0.4" and fs.sock.gettimeout() == 2.0
    finally:
        fs.close()


def test_a_dialer_with_an_identity_always_speaks_tls(pki):
    rx = pki["tx"]
    d = Dialer(TransportConfig(), SecurityConfig(ca_cert=rx.ca_cert, cert=rx.cert, key=rx.key))
    assert isinstance(d.tls, ssl.SSLContext) and d.tls.minimum_version == ssl.TLSVersion.TLSv1_3


def test_a_refused_dial_closes_its_socket():
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    d = Dialer.plaintext()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(PeerUnreachableError, match=f"cannot connect to 127.0.0.1:{port}: connection refused "
                                                       "-- is dwcpd running there") as ei:  # fmt: skip
            d.dial("127.0.0.1", port)
        assert ei.value.errno == errno.ECONNREFUSED and isinstance(ei.value, ConnectionError)
    assert len(os.listdir("/proc/self/fd")) == before
