"""Helpers for transfer tests: configs for loopback receivers."""

from __future__ import annotations

from dwcp.config import Config, from_dict

__all__ = ["server_config", "tx_config", "stored"]


def server_config(data_dir, *, plaintext: bool = True, certs=None, node: str = "rx", listen: dict | None = None,
                  sections: dict | None = None, **transport) -> Config:  # fmt: skip
    """A receiver on 127.0.0.1 (any free port) with short, test-friendly timeouts.

    ``listen`` overrides [listen]; ``sections``: more settings by section
    ({"security": {"relay_allow": [...]}, ...}), merged in.
    """
    sec = (
        {"plaintext": True} if plaintext else {"ca_cert": certs.ca_cert, "cert": certs.cert, "key": certs.key}
    )
    t = {
        "stall_timeout_s": 5.0,
        "connect_timeout_s": 5.0,
        "idle_timeout_s": 30.0,
        "chunk_size_bytes": 1 << 20,
    }
    t.update(transport)
    cfg = {"node": {"id": node}, "listen": {"host": "127.0.0.1", "data_port": 0, **(listen or {})}, "security": sec,
           "storage": {"data_dir": str(data_dir)}, "transport": t}  # fmt: skip
    for name, values in (sections or {}).items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return from_dict(cfg)


def tx_config(**kw):
    """A sender's TransportConfig with test-friendly timeouts and 1 MiB chunks; ``kw`` overrides."""
    from dwcp.config import TransportConfig

    return TransportConfig(
        **{"stall_timeout_s": 5.0, "connect_timeout_s": 5.0, "chunk_size_bytes": 1 << 20, **kw}
    )


def stored(srv, key: str) -> bytes:
    """The bytes of ``key``'s latest verified version on DataServer ``srv`` (it must have one)."""
    info = srv.store.latest(key)
    assert info is not None, f"{key!r} is not stored"
    return bytes(srv.store.open_version(info))
