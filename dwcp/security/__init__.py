"""Mutual TLS for the data port: a cluster CA, node certificates, SSL contexts.

``dwcp.security.certs`` makes the CA and node certificates (``cryptography``);
``dwcp.security.tls`` turns them into TLS 1.3 ``ssl.SSLContext`` objects with
mutual authentication (stdlib ``ssl``).  Plaintext is never chosen here: the
data port runs without TLS only when the configuration says
``security.plaintext = true``.
"""

from __future__ import annotations

from .certs import CAPaths, NodePaths, check_key_permissions, init_ca, issue_node, valid_node_id
from .tls import TLSConfig, client_context, peer_identity, server_context

__all__ = [
    "CAPaths",
    "NodePaths",
    "init_ca",
    "issue_node",
    "check_key_permissions",
    "valid_node_id",
    "TLSConfig",
    "server_context",
    "client_context",
    "peer_identity",
]
