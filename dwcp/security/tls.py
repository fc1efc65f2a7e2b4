"""TLS 1.3 contexts with mutual authentication for the data port.

Both sides present a certificate signed by the cluster CA and require one
from the peer.  Hostname checking is off by default: membership of the
cluster (the CA) is what authenticates a peer, and its node id is the
certificate's CN (``peer_identity``).  Plaintext is not configured here: the
caller runs without TLS only on an explicit ``security.plaintext = true``.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from dwcp.errors import ConfigError, RemoteProtocolError

from .certs import check_key_permissions

__all__ = ["TLSConfig", "server_context", "client_context", "peer_identity"]


@dataclass(frozen=True)
class TLSConfig:
    ca_cert: str
    cert: str
    key: str
    verify_hostname: bool = False

    def __post_init__(self) -> None:
        for what, p in (("ca_cert", self.ca_cert), ("cert", self.cert), ("key", self.key)):
            if not p or not os.path.isfile(p):
                raise ConfigError(f"security.{what}: {p!r} is not a file")
        check_key_permissions(self.key)


def _base(ctx: ssl.SSLContext, cfg: TLSConfig) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_COMPRESSION
    try:
        ctx.load_verify_locations(cfg.ca_cert)
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS identity ({cfg.cert}, {cfg.key}, CA {cfg.ca_cert}): {exc}") from None
    return ctx


def server_context(cfg: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_TICKET
    return _base(ctx, cfg)


def client_context(cfg: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = cfg.verify_hostname
    return _base(ctx, cfg)


def peer_identity(sock) -> str:
    """The verified peer's node id (the CN of its certificate)."""
    cert = sock.getpeercert()
    if not cert:
        raise RemoteProtocolError("the peer presented no certificate", 0)
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    raise RemoteProtocolError("the peer's certificate has no common name", 0)
