"""The one way out: every connection dwcp opens to a peer's data port.

Sends and their data streams, fetches, relays (a relay is a send), consensus
peer links and cluster probes all dial through a ``Dialer``: it owns the TLS
client context (mutual authentication, built once from the node's identity),
the socket tuning (buffers, congestion control), the source address or
interface to bind, and the connect timeout.  Nobody else builds a client
context or connects a data-port socket.

Rules
-----
1. A ``Dialer`` made from a ``SecurityConfig`` without ``plaintext = true``
   always wraps in TLS 1.3 with the node's certificate; ``plaintext`` says so
   on purpose (``Dialer.plaintext``, for a plaintext cluster and tests).
2. ``reconfigure`` changes the transport settings of the next dial (a reload);
   the identity does not change without a restart.
"""

from __future__ import annotations

import errno
import socket
import ssl

from dwcp.config import SecurityConfig, TransportConfig
from dwcp.errors import AuthenticationError, PeerUnreachableError

from .framesock import FrameSocket

__all__ = ["Dialer"]


class Dialer:
    def __init__(self, transport: TransportConfig, security: SecurityConfig) -> None:
        self.transport, self.security = transport, security
        self.tls: ssl.SSLContext | None = None  # None: plaintext, on purpose (rule 1)
        if not security.plaintext:
            from dwcp.security.tls import TLSConfig, client_context

            self.tls = client_context(
                TLSConfig(ca_cert=security.ca_cert, cert=security.cert, key=security.key)
            )

    @classmethod
    def plaintext(cls, transport: TransportConfig | None = None) -> Dialer:
        """A dialer without TLS, for a cluster that runs ``security.plaintext = true`` (and tests)."""
        return cls(transport or TransportConfig(), SecurityConfig(plaintext=True))

    def reconfigure(self, transport: TransportConfig) -> None:
        self.transport = transport

    def dial(self, host: str, port: int, *, bdp_bytes: int | None = None, timeout_s: float | None = None,
             buffer_bytes: int | None = None) -> tuple[FrameSocket, dict]:  # fmt: skip
        """Connect, tune and (unless plaintext) wrap one stream to ``host:port``.

        ``buffer_bytes``: SO_SNDBUF/SO_RCVBUF for this stream when ``transport.socket_buffer_bytes``
        sets none (a send's NIC profile: dwcp.transport.nicplan); the config's wins.

        Returns the stream -- its reads time out after ``transport.stall_timeout_s`` (or ``timeout_s``)
        -- and the socket settings applied.  ``timeout_s`` bounds the connect and the handshake
        instead of ``transport.connect_timeout_s`` (a probe's short deadline).
        """
        from .sockopts import bind_source, tune_socket

        tp = self.transport
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout_s if timeout_s is not None else tp.connect_timeout_s)
            if tp.source_address or tp.interface:
                bind_source(s, source_address=tp.source_address or None, interface=tp.interface or None)
            applied = tune_socket(s, bdp_bytes=bdp_bytes, buffer_bytes=tp.socket_buffer_bytes or buffer_bytes or None,
                                  congestion=tp.congestion or None)  # fmt: skip
            try:
                s.connect((host, port))
            except OSError as exc:
                raise _unreachable(host, port, exc) from exc
            if self.tls is not None:
                try:
                    s = self.tls.wrap_socket(s, server_hostname=host)
                except ssl.SSLCertVerificationError as exc:
                    raise AuthenticationError(
                        f"{_target(host, port)}: its certificate did not verify against our CA "
                        f"({self.security.ca_cert}): {exc.verify_message} -- is it a node of this cluster "
                        "(issued by the same `dwcp certs init` CA)?") from exc  # fmt: skip
                except ssl.SSLError as exc:
                    raise AuthenticationError(f"{_target(host, port)}: the TLS handshake failed: {exc.reason or exc} "
                                              "-- does it run with mutual TLS and our CA?") from exc  # fmt: skip
                except (ConnectionResetError, BrokenPipeError) as exc:
                    raise AuthenticationError(f"{_target(host, port)}: the peer closed the connection during the TLS "
                                              "handshake -- is it a plaintext daemon (security.plaintext)?") from exc  # fmt: skip
        except BaseException:
            s.close()
            raise
        return FrameSocket(s, timeout_s=timeout_s if timeout_s is not None else tp.stall_timeout_s), applied


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HINTS = {
    errno.ECONNREFUSED: "is dwcpd running there, on that port?",
    errno.EHOSTUNREACH: "no route to that host (ip route get HOST)",
    errno.ENETUNREACH: "no route to that network (ip route get HOST)",
    errno.EADDRNOTAVAIL: "transport.source_address is not an address of this host",
}


def _unreachable(host: str, port: int, exc: OSError) -> PeerUnreachableError:
    """A failed connect as a PeerUnreachableError naming the target and a hint."""
    if isinstance(exc, TimeoutError | socket.timeout):
        why, hint = "timed out", "is the host up, and the port open through its firewall?"
    else:
        why = (exc.strerror or str(exc)).lower()
        hint = _HINTS.get(exc.errno or 0, "")
    err = PeerUnreachableError(
        f"cannot connect to {_target(host, port)}: {why}" + (f" -- {hint}" if hint else "")
    )
    err.errno = exc.errno
    return err
