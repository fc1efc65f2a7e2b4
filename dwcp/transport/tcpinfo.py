"""TCP_INFO per stream (Linux struct tcp_info, include/uapi/linux/tcp.h)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = ["TcpInfo", "read_tcp_info"]

TCP_INFO = getattr(socket, "TCP_INFO", 11)
# u8 x8 (state..delivery_rate_app_limited bits), then u32 x24, then u64 fields
_HEAD = struct.Struct("<8B24I")
# after the 24 u32: pacing_rate, max_pacing_rate, bytes_acked, bytes_received (u64),
# segs_out, segs_in, notsent_bytes, min_rtt, data_segs_in, data_segs_out (u32),
# delivery_rate (u64), busy_time, rwnd_limited, sndbuf_limited (u64),
# delivered, delivered_ce (u32), bytes_sent, bytes_retrans (u64), dsack_dups, reord_seen (u32)
_TAIL = struct.Struct("<QQQQ6IQQQQIIQQII")


@dataclass(frozen=True)
class TcpInfo:
    state: int
    retransmits: int
    rtt_us: int
    rttvar_us: int
    snd_cwnd: int
    total_retrans: int
    lost: int
    pacing_rate_bytes_per_s: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    min_rtt_us: int | None = None
    delivery_rate_bytes_per_s: int | None = None
    busy_time_us: int | None = None
    delivered: int | None = None
    bytes_retrans: int | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_tcp_info(sock) -> TcpInfo | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(raw) < _HEAD.size:
        return None
    h = _HEAD.unpack_from(raw)
    # u32 fields after the 8 u8: rto ato snd_mss rcv_mss unacked sacked lost retrans fackets
    # last_data_sent last_ack_sent last_data_recv last_ack_recv pmtu rcv_ssthresh rtt rttvar
    # snd_ssthresh snd_cwnd advmss reordering rcv_rtt rcv_space total_retrans
    u = h[8:]
    kw = dict(state=h[0], retransmits=h[2], lost=u[6], rtt_us=u[15], rttvar_us=u[16], snd_cwnd=u[18],
              total_retrans=u[23])  # fmt: skip
    if len(raw) >= _HEAD.size + _TAIL.size:
        t = _TAIL.unpack_from(raw, _HEAD.size)
        kw.update(pacing_rate_bytes_per_s=t[0], bytes_acked=t[2], bytes_received=t[3], min_rtt_us=t[7],
                  delivery_rate_bytes_per_s=t[10], busy_time_us=t[11], delivered=t[14], bytes_retrans=t[17])  # fmt: skip
    return TcpInfo(**kw)
