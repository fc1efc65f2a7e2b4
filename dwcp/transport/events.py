"""What the data plane reports as it works: the hooks behind metrics and health.

Sender and DataServer call these methods from their stream threads, at most
once per chunk (4 MiB by default) and once per stream or transfer, so an
implementation must be thread-safe and cheap.  ``TransferEvents`` itself
does nothing; ``dwcp.ops.metrics`` records them.  ``peer`` is the remote
node's certificate identity (mutual TLS), ``plaintext:ADDR``, or the
``HOST:PORT`` a sender sends to; ``codec`` a wire codec id
(``dwcp.wire.consts.CODEC_*``); ``direction`` "tx" or "rx".
"""

from __future__ import annotations

__all__ = ["TransferEvents", "OUTCOMES"]

# transfer outcomes, the values of the `outcome` label
OUTCOMES = ("ok", "failed", "integrity", "refused", "interrupted")


class TransferEvents:
    def chunk(self, direction: str, peer: str, codec: int, raw_bytes: int, wire_bytes: int) -> None:
        """A chunk was sent (tx) or received, verified and stored (rx)."""

    def chunk_retransmit(self, direction: str, peer: str, n: int = 1) -> None:
        """``n`` chunks will travel again (NACKed, or in flight on a stream that failed)."""

    def checksum_failure(self, peer: str) -> None:
        """A received chunk failed its xxh3-64 (it is NACKed and comes again)."""

    def protocol_error(self, peer: str, code: int) -> None:
        """A peer broke the protocol; its connection was closed."""

    def stream_opened(self, peer: str) -> None:
        """A data stream of a send started (the count per peer is a gauge)."""

    def stream_closed(self, peer: str, failed: bool) -> None:
        """That stream ended; ``failed``: it will be replaced (a reconnect)."""

    def tcp_info(self, peer: str, rtt_s: float, retransmits: int) -> None:
        """TCP_INFO of a data stream as it ended: smoothed RTT and total retransmitted segments."""

    def transfer_finished(self, direction: str, peer: str, outcome: str, seconds: float, raw_bytes: int,
                          wire_bytes: int) -> None:  # fmt: skip
        """A whole transfer ended with ``outcome`` (one of OUTCOMES)."""

    def path_anomaly(self, peer: str, nic: str, signal: str) -> None:
        """A send's anomaly detectors raised an anomaly on ``signal`` of the path to ``peer`` via ``nic``
        (dwcp.transport.anomaly; the evidence is in the path's trace and the send's report)."""

    def access_refused(self, reason: str) -> None:
        """A request was refused by policy: ``reason`` "acl" (security.acl) or "relay" (a forward target)."""


NO_EVENTS = TransferEvents()
