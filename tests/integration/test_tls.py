"""Mutual TLS 1.3 on real sockets (127.0.0.1, port 0): who gets in and who does not.

Each test runs a one-connection server in a thread.  Every socket has a
timeout and every join is bounded, so a regression fails instead of hanging.
In TLS 1.3 a client's handshake completes before the server has judged the
client's certificate, so a refused client finds out on its first read.
"""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from dwcp.security.certs import NodePaths, init_ca, issue_node
from dwcp.security.tls import TLSConfig, client_context, peer_identity, server_context

TIMEOUT_S = 5.0
PING = b"ping"


def tls(n: NodePaths, **kw) -> TLSConfig:
    return TLSConfig(n.ca_cert, n.cert, n.key, **kw)


@pytest.fixture
def nodes(tmp_path):
    """Two nodes of the cluster CA, and one node of a foreign CA."""
    init_ca(tmp_path / "ca", cluster_name="test")
    init_ca(tmp_path / "evil", cluster_name="evil")
    return {
        "rx": issue_node(tmp_path / "ca", "rx"),
        "tx": issue_node(tmp_path / "ca", "tx"),
        "mallory": issue_node(tmp_path / "evil", "mallory"),
    }


class OneShotServer(threading.Thread):
    """Accept one connection, handshake, read PING, answer with the peer's node id."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT_S)
        self.port = self.listener.getsockname()[1]
        self.peer: str | None = None
        self.version: str | None = None
        self.received = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(TIMEOUT_S)
            with self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) as s:
                s.do_handshake()
                self.version = s.version()
                self.peer = peer_identity(s)
                while len(self.received) < len(PING):
                    chunk = s.recv(len(PING) - len(self.received))
                    if not chunk:
                        break
                    self.received += chunk
                s.sendall(b"hello " + self.peer.encode())
        except BaseException as exc:  # reported to the test
            self.error = exc
        finally:
            self.listener.close()

    def finish(self) -> OneShotServer:
        self.join(2 * TIMEOUT_S)
        assert not self.is_alive(), "the server thread hung"
        return self


def exchange(ctx: ssl.SSLContext, port: int, server_hostname: str | None = None) -> tuple[bytes, str]:
    """Connect, send PING, return the server's answer and the server's node id."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            assert s.version() == "TLSv1.3"
            server_id = peer_identity(s)
            s.sendall(PING)
            answer = b""
            while True:
                chunk = s.recv(64)
                if not chunk:
                    return answer, server_id
                answer += chunk


def serve(ctx: ssl.SSLContext) -> OneShotServer:
    srv = OneShotServer(ctx)
    srv.start()
    return srv


def assert_refused(
    srv: OneShotServer,
    client_error: BaseException,
    server_says: str,
    client_says: str,
    *,
    eof_ok: bool = False,
) -> None:
    """Both sides failed the handshake, for the stated reasons, and no application data got through.

    ``eof_ok``: a refused *client* has already sent PING when the server
    rejects its certificate; the server closes with PING unread, and the
    resulting RST can overtake the alert, so the client may see an abrupt EOF
    or a reset instead of the alert's reason.
    """
    srv.finish()
    assert isinstance(srv.error, ssl.SSLError), srv.error
    assert server_says in str(srv.error), srv.error
    assert srv.peer is None and srv.received == b"", "the server accepted application data"
    if eof_ok and isinstance(client_error, ssl.SSLEOFError | ConnectionError):
        return
    assert client_says in str(client_error), client_error


def test_two_nodes_of_one_cluster(nodes):
    srv = serve(server_context(tls(nodes["rx"])))
    answer, server_id = exchange(client_context(tls(nodes["tx"])), srv.port)
    srv.finish()
    assert srv.error is None
    assert (server_id, srv.peer) == ("rx", "tx")
    assert srv.version == "TLSv1.3" and srv.received == PING
    assert answer == b"hello tx"


def test_client_from_another_ca_is_refused(nodes):
    srv = serve(server_context(tls(nodes["rx"])))
    # Mallory trusts our CA (so her side of the handshake completes) but holds a foreign certificate.
    evil = TLSConfig(nodes["rx"].ca_cert, nodes["mallory"].cert, nodes["mallory"].key)
    with pytest.raises((ssl.SSLError, ConnectionError)) as exc:
        exchange(client_context(evil), srv.port)
    assert_refused(srv, exc.value, "CERTIFICATE_VERIFY_FAILED", "UNKNOWN_CA", eof_ok=True)


def test_client_without_a_certificate_is_refused(nodes):
    srv = serve(server_context(tls(nodes["rx"])))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(nodes["rx"].ca_cert)
    with pytest.raises((ssl.SSLError, ConnectionError)) as exc:
        exchange(anonymous, srv.port)
    assert_refused(srv, exc.value, "PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED", eof_ok=True)


def test_server_from_another_ca_is_refused_by_the_client(nodes):
    # The impostor even trusts our CA, so only the client's check can stop this.
    impostor = TLSConfig(nodes["tx"].ca_cert, nodes["mallory"].cert, nodes["mallory"].key)
    srv = serve(server_context(impostor))
    with pytest.raises(ssl.SSLCertVerificationError) as exc:
        exchange(client_context(tls(nodes["tx"])), srv.port)
    assert_refused(srv, exc.value, "UNKNOWN_CA", "unable to get local issuer certificate")


def test_tls12_client_is_refused(nodes):
    srv = serve(server_context(tls(nodes["rx"])))
    old = client_context(tls(nodes["tx"]))
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError) as exc:
        exchange(old, srv.port)
    assert_refused(srv, exc.value, "UNSUPPORTED_PROTOCOL", "PROTOCOL_VERSION")


def test_hostname_check_when_asked_for(nodes):
    """verify_hostname pins the server's address to its SAN (127.0.0.1 and localhost by default)."""
    srv = serve(server_context(tls(nodes["rx"])))
    answer, server_id = exchange(
        client_context(tls(nodes["tx"], verify_hostname=True)), srv.port, "127.0.0.1"
    )
    srv.finish()
    assert srv.error is None and (answer, server_id) == (b"hello tx", "rx")

    srv = serve(server_context(tls(nodes["rx"])))
    strict = client_context(tls(nodes["tx"]), server_hostname_check=True)
    with pytest.raises(ssl.SSLCertVerificationError) as exc:
        exchange(strict, srv.port, "rx.elsewhere.example")
    assert_refused(srv, exc.value, "BAD_CERTIFICATE", "Hostname mismatch")
