"""TCP_INFO per stream: the kernel's view of one connection (Linux ``struct tcp_info``).

Theory of operation
-------------------
``getsockopt(IPPROTO_TCP, TCP_INFO, 256)`` copies ``min(256, sizeof(struct
tcp_info))`` bytes; the struct has grown over kernel releases by appending
fields, so an older kernel returns a shorter buffer.  ``parse_tcp_info``
reads each field from its fixed offset (include/uapi/linux/tcp.h, native
byte order and alignment) when the buffer reaches that far, and leaves it
None otherwise.  It is pure, so it is tested on truncated buffers without a
socket.

Units are in the names; the kernel reports rates in bytes per second and
times in microseconds.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import asdict, dataclass

__all__ = ["TcpInfo", "read_tcp_info", "parse_tcp_info", "TCP_ESTABLISHED", "TCP_INFO_BUFLEN"]

TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_INFO_BUFLEN = 256  # covers every field read below; the kernel copies min(asked, its struct)
TCP_ESTABLISHED = 1  # tcpi_state, include/net/tcp_states.h

# (our field, struct format, byte offset) in struct tcp_info.  The head is
# 8 x u8 (state, ca_state, retransmits, probes, backoff, options, wscale
# bits, app_limited bits), then u32 from offset 8: rto ato snd_mss rcv_mss
# unacked sacked lost retrans fackets last_data_sent last_ack_sent
# last_data_recv last_ack_recv pmtu rcv_ssthresh rtt rttvar snd_ssthresh
# snd_cwnd advmss reordering rcv_rtt rcv_space total_retrans (ends at 104;
# Linux 2.6), then the fields later kernels appended.
_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("state", "B", 0),
    ("retransmits", "B", 2),
    ("lost", "I", 32),
    ("rtt_us", "I", 68),
    ("rttvar_us", "I", 72),
    ("snd_cwnd", "I", 80),
    ("total_retrans", "I", 100),
    ("pacing_rate_bytes_per_s", "Q", 104),  # 3.15
    ("bytes_acked", "Q", 120),  # 4.1
    ("bytes_received", "Q", 128),  # 4.1
    ("min_rtt_us", "I", 148),  # 4.6 (after segs_out, segs_in, notsent_bytes)
    ("delivery_rate_bytes_per_s", "Q", 160),  # 4.9 (after data_segs_in/out)
    ("busy_time_us", "Q", 168),  # 4.10
    ("delivered", "I", 192),  # 4.18 (after rwnd_limited, sndbuf_limited)
    ("bytes_sent", "Q", 200),  # 4.19 (after delivered_ce); retransmits included
    ("bytes_retrans", "Q", 208),  # 4.19
)
_STRUCTS = {fmt: struct.Struct("=" + fmt) for fmt in ("B", "I", "Q")}
# ~0ULL from the kernel means "not measured yet" for the pacing rate.
_UNSET_U64 = 2**64 - 1


@dataclass(frozen=True)
class TcpInfo:
    """One TCP_INFO snapshot; a field is None when the kernel's struct ends before it."""

    state: int
    retransmits: int  # tcpi_retransmits: consecutive RTO retransmits of the head segment, now
    rtt_us: int  # smoothed RTT
    rttvar_us: int
    snd_cwnd: int  # segments
    total_retrans: int  # segments retransmitted over the connection's life
    lost: int  # segments currently presumed lost
    pacing_rate_bytes_per_s: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    min_rtt_us: int | None = None
    delivery_rate_bytes_per_s: int | None = None
    busy_time_us: int | None = None
    delivered: int | None = None  # segments delivered, retransmits included
    bytes_sent: int | None = None  # payload bytes sent, retransmits included
    bytes_retrans: int | None = None

    @property
    def established(self) -> bool:
        return self.state == TCP_ESTABLISHED

    def as_dict(self) -> dict:
        return asdict(self)


def parse_tcp_info(raw: bytes) -> TcpInfo | None:
    """Parse a ``struct tcp_info`` prefix; None if it is too short to hold the 2.6 head."""
    if len(raw) < 104:
        return None
    kw: dict[str, int | None] = {}
    for name, fmt, off in _FIELDS:
        st = _STRUCTS[fmt]
        kw[name] = st.unpack_from(raw, off)[0] if off + st.size <= len(raw) else None
    if kw["pacing_rate_bytes_per_s"] == _UNSET_U64:
        kw["pacing_rate_bytes_per_s"] = None
    return TcpInfo(**kw)  # type: ignore[arg-type]


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """The kernel's TCP_INFO for ``sock``; None when it is not a Linux TCP socket.

    Accepts anything with ``getsockopt`` (an ``ssl.SSLSocket`` too).
    """
    if not sys.platform.startswith("linux"):
        return None
    if getattr(sock, "type", socket.SOCK_STREAM) != socket.SOCK_STREAM or getattr(
        sock, "family", socket.AF_INET
    ) not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_BUFLEN)
    except (OSError, AttributeError, ValueError):
        return None
    return parse_tcp_info(raw)
