"""Helpers for transfer tests: configs for loopback receivers, and send reports to feed what reads them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dwcp.config import Config, from_dict

if TYPE_CHECKING:
    from dwcp.transport.session import TransferReport

__all__ = ["server_config", "tx_config", "stored", "transfer_report"]


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


def transfer_report(**fields: Any) -> TransferReport:
    """A TransferReport of a plausible 4 MiB full send in 4 chunks over 2 streams; ``fields`` override
    (``streams`` may be a dict of StreamsReport fields to override)."""
    from dwcp.transport.session import CodecReport, StreamsReport, TransferReport

    streams = fields.pop("streams", {})
    if isinstance(streams, dict):
        streams = StreamsReport(**{"initial": 2, "max": 2, "final": 2, "auto": False, "decisions": (),
                                   "samples": (), **streams})  # fmt: skip
    doc = {
        "key": "k", "to": "127.0.0.1:1", "mode": "full", "size": 4 << 20, "digest": "00" * 16, "verified": True,
        "wire_bytes": 4 << 20, "ratio": 1.0, "seconds": 1.0, "throughput_bytes_per_s": float(4 << 20),
        "chunks": 4, "chunk_size": 1 << 20, "chunk_size_reason": "1024 KiB (fixed)", "chunks_sent": 4,
        "chunks_resent": 0, "resumed_chunks": 0, "stream_errors": (), "streams": streams, "rtt_ms": 1.0,
        "tls": False, "socket": {}, "chunk_latency_ms": None, "nic": None, "relayed": None,
        "tcp_info": (), "refresh": None, "delta_chain": None,
        "codec": CodecReport(zstd_level="adaptive", zstd_levels_used={}, compress_workers=1, encodes_at_once_max=1),
    }  # fmt: skip
    return TransferReport(**{**doc, **fields})
