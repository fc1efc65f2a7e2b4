"""TLS 1.3 contexts with mutual authentication for the data port.

Theory of operation
-------------------
Both sides present a certificate signed by the cluster CA and require one
from the peer (``CERT_REQUIRED`` on both contexts).  Membership of the
cluster -- a chain to the cluster CA -- is what authenticates a peer, and
its node id is the certificate's CN (:func:`peer_identity`).  Hostname
checking is therefore off by default; ``verify_hostname`` turns it on for
deployments that also want the peer's address pinned by its SAN.

Nothing here ever produces a plaintext connection.  Running the data port
without TLS is the caller's decision, taken only on an explicit
``security.plaintext = true`` (see ``dwcp.config``).

Rules
-----
1. TLS 1.3 only, on both sides: no downgrade to 1.2 or older.
2. The cipher suite is OpenSSL's TLS 1.3 default list (AES-GCM or
   ChaCha20-Poly1305, all AEAD); Python offers no API to narrow it and none
   of the choices is weak.
3. No session tickets: the data port's connections are long-lived, so
   resumption would save little and a ticket key would be one more secret.
4. A failure to load the identity is a ConfigError naming the files.

In TLS 1.3 the client finishes its handshake before the server has checked
the client's certificate: a refused client learns it on its first read (an
alert such as ``TLSV1_ALERT_UNKNOWN_CA``), never by a successful one.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from dwcp.errors import ConfigError, RemoteProtocolError

from .certs import check_key_permissions, valid_node_id

__all__ = ["TLSConfig", "server_context", "client_context", "peer_identity"]


@dataclass(frozen=True)
class TLSConfig:
    """Paths of this node's TLS identity and of the cluster CA, validated on construction."""

    ca_cert: str
    cert: str
    key: str
    verify_hostname: bool = False

    def __post_init__(self) -> None:
        for what in ("ca_cert", "cert", "key"):
            p = getattr(self, what)
            if isinstance(p, os.PathLike):
                object.__setattr__(self, what, p := os.fspath(p))
            if not isinstance(p, str) or not p:
                raise ConfigError(f"security.{what}: expected a file path, got {p!r}")
            if not os.path.isfile(p):
                raise ConfigError(f"security.{what}: {p} is not a file")
        check_key_permissions(self.key)


def _load(ctx: ssl.SSLContext, cfg: TLSConfig) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_COMPRESSION  # already OpenSSL's default; said here so nobody has to check
    try:
        ctx.load_verify_locations(cafile=cfg.ca_cert)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the cluster CA {cfg.ca_cert}: {exc}") from None
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS identity ({cfg.cert}, {cfg.key}): {exc}") from None
    return ctx


def server_context(cfg: TLSConfig) -> ssl.SSLContext:
    """The data port's context: TLS 1.3, and a client certificate from the cluster CA is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # TLS 1.3 sends tickets after the handshake unless told not to
    return _load(ctx, cfg)


def client_context(cfg: TLSConfig, server_hostname_check: bool | None = None) -> ssl.SSLContext:
    """A sender's context: TLS 1.3, presents our certificate, requires the server's from the cluster CA.

    ``server_hostname_check`` defaults to ``cfg.verify_hostname``.  When it
    is on, wrap sockets with ``server_hostname=`` the address the peer's
    certificate names in its SAN.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = cfg.verify_hostname if server_hostname_check is None else bool(server_hostname_check)
    return _load(ctx, cfg)


def peer_identity(conn: ssl.SSLSocket | ssl.SSLObject) -> str:
    """The node id (certificate CN) of the verified peer of a handshaken ``SSLSocket``/``SSLObject``.

    Raises RemoteProtocolError (code 0) when the peer presented no
    certificate or one without exactly one valid node id.
    """
    cert = conn.getpeercert()
    if not cert:
        raise RemoteProtocolError("the peer presented no certificate", code=0)
    subject: Any = cert.get("subject", ())  # ((("commonName", "node-1"),), ...): a tuple of RDNs
    cns = [v for rdn in subject for k, v in rdn if k == "commonName"]
    if len(cns) != 1:
        raise RemoteProtocolError(f"the peer's certificate has {len(cns)} common names, expected 1", code=0)
    if not valid_node_id(cns[0]):
        raise RemoteProtocolError(f"the peer's certificate names an invalid node id {cns[0]!r}", code=0)
    return cns[0]
