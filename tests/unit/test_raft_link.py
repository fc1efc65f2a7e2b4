"""The consensus drivers' peer links: a restarted peer gets the very next message on a new stream."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

from dwcp.consensus.driver import _peer_closed, _PeerLink
from dwcp.transport.dialer import Dialer


def pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    ls = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(ls.getsockname(), timeout=5)
    s, _ = ls.accept()
    return ls, c, s


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return False


def test_peer_closed_sees_fin_and_rst_and_consumes_nothing():
    ls, c, s = pair()
    try:
        assert not _peer_closed(c)
        s.sendall(b"x")  # data from the peer: alive, and still there to read
        assert wait_for(lambda: socket.socket.recv(c, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"x")
        assert not _peer_closed(c) and c.recv(1) == b"x"
        s.close()  # FIN
        assert wait_for(lambda: _peer_closed(c))
    finally:
        c.close()
        ls.close()
    assert _peer_closed(c)  # our own closed socket (fileno -1) counts as closed, never raises


def test_peer_closed_over_tls_ignores_tls_records(tmp_path):
    from dwcp.security.certs import init_ca, issue_node
    from dwcp.security.tls import TLSConfig, client_context, server_context

    init_ca(tmp_path / "ca", cluster_name="test")
    a, b = issue_node(tmp_path / "ca", "a"), issue_node(tmp_path / "ca", "b")
    ls, c, s = pair()
    box: list = []
    t = threading.Thread(target=lambda: box.append(
        server_context(TLSConfig(b.ca_cert, b.cert, b.key)).wrap_socket(s, server_side=True)))  # fmt: skip
    t.start()
    tc = client_context(TLSConfig(a.ca_cert, a.cert, a.key), server_hostname_check=False).wrap_socket(c)
    t.join(5)
    ts = box[0]
    try:
        time.sleep(0.05)  # TLS 1.3: the server's session tickets arrive after the handshake
        assert not _peer_closed(tc)
        ts.sendall(b"app")
        assert wait_for(
            lambda: tc.pending() or socket.socket.recv(tc, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        )
        assert not _peer_closed(tc) and tc.recv(3) == b"app"  # nothing consumed below the TLS layer
        ts.close()
        s.close()
        assert wait_for(lambda: _peer_closed(tc))
    finally:
        tc.close()
        ls.close()


def test_a_restarted_peer_gets_the_next_message_on_a_new_stream():
    """Kill -9 of a peer closes its streams; its successor listens on the same port.  A write on the old
    stream would be taken by the kernel and answered with an RST: the message lost (a BFT primary that
    missed a forwarded request made its backups time out and change the view)."""
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(5)
    driver = SimpleNamespace(id="a", dialer=Dialer.plaintext(), ssl_ctx=None, stopped=threading.Event())
    link = _PeerLink(driver, "b", f"127.0.0.1:{ls.getsockname()[1]}")
    link.start()
    try:
        link.send(b"<first>")
        conn, _ = ls.accept()
        got = b""
        while b"<first>" not in got:
            chunk = conn.recv(65536)
            assert chunk, "the link closed its stream"
            got += chunk
        conn.close()  # the peer died; a new one listens on the same port
        time.sleep(0.05)  # its FIN has arrived
        link.send(b"<second>")
        conn, _ = ls.accept()
        conn.settimeout(5)
        got = b""
        while b"<second>" not in got:
            chunk = conn.recv(65536)
            assert chunk, "the new stream closed without the message"
            got += chunk
        conn.close()
    finally:
        driver.stopped.set()
        link.join(5)
        ls.close()
