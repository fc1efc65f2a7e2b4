"""Chunk size from what the path is forecast to do (dwcp.transport.trace keeps the paths' traces).

A transfer's chunks all have one size (the receiver's bitmap, resume records
and the frame rules are per chunk), so the size is chosen once, before the
HELLO, from what the previous sends over the same path measured.  Sans-IO: the
policy is a pure function of a ``PathStats`` (the path's forecast, made by
dwcp.transport.trace from its trace).

Rules (measured on the emulated WAN, ``perf/sla.py --chunk-sweep``):

* goodput hardly depends on the chunk size between 1 and 16 MiB at 1 Gbit/s
  and 50 ms, at 0.1% or 1% loss -- but each chunk's latency (send -> ACK) and
  the transfer's tail grow in proportion to it: the last chunks finish at
  different times on streams of different speeds, and a stream stalled in a
  retransmission timeout holds its whole unacknowledged window until it is
  replaced (and then that window travels again);
* so a chunk should take about ``target_s`` on one stream: two RTTs, within
  [50 ms, 500 ms], halved when the path lost more than 0.5% of what it sent
  (stalls are likelier, and cost a window of chunks each);
* the size is a power of two within [``lo``, ``hi``] (1 MiB to 16 MiB): big
  enough that per-chunk work (header, hash, ACK, bookkeeping) stays small
  beside the bytes, small enough to bound resends and the tail;
* no record, or one older than ``max_age_s``: the configured default;
* under a rate cap (``--rate``, ``rate_limit_bytes_per_s``, a repair's rate) a stream goes no faster
  than the cap, so the per-stream rate is at most the cap, and with no record the default shrinks to
  at most ``target_s`` (500 ms) of the cap: the token bucket passes a whole chunk at once, so a chunk
  is the cap's burst, and a chunk of seconds at the cap would let the first seconds go uncapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import TransferReport

__all__ = ["PathStats", "choose_chunk_size", "path_stats_from_send", "MiB", "PATH_MAX_AGE_S"]

MiB = 1 << 20
LOSSY = 0.005  # retransmitted fraction above which chunks are halved again
PATH_MAX_AGE_S = 7 * 86400.0  # an older measurement says nothing of the path today


@dataclass(frozen=True)
class PathStats:
    """What one finished send measured on its path (all per stream, so they survive a change of count)."""

    rtt_s: float
    retrans_fraction: float  # bytes retransmitted / bytes sent, over all streams
    stream_bytes_per_s: float  # goodput per stream
    streams: int  # the count the send ended with
    at: float  # time.time() when measured

    def __post_init__(self) -> None:
        for name in ("rtt_s", "retrans_fraction", "stream_bytes_per_s", "at"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.streams, int) or not 1 <= self.streams <= 256:
            raise ValueError(f"streams must be an int in [1, 256], got {self.streams!r}")


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(n, 1.0)))))


def choose_chunk_size(path: PathStats | None, default: int, *, now: float, lo: int = MiB, hi: int = 16 * MiB,
                      max_age_s: float = PATH_MAX_AGE_S, rate_cap: float | None = None) -> tuple[int, str]:  # fmt: skip
    """The chunk size for a send over ``path`` (at most ``rate_cap`` bytes/s, if given) and the reason,
    per the module rules."""
    if path is None or now - path.at > max_age_s:
        why = (
            "no earlier send to this peer" if path is None else "the last measurement of this path is too old"
        )
        if rate_cap and default > lo and default > rate_cap * 0.5:
            size = max(lo, _pow2_floor(rate_cap * 0.5))
            return size, f"{size >> 10} KiB (~500 ms at the {rate_cap / 1e6:.1f} MB/s cap; {why})"
        return default, f"{default >> 10} KiB (configured; {why})"
    target_s = min(0.5, max(0.05, 2.0 * path.rtt_s))
    lossy = path.retrans_fraction > LOSSY
    if lossy:
        target_s /= 2
    capped = rate_cap is not None and 0 < rate_cap < path.stream_bytes_per_s
    rate = float(rate_cap) if capped and rate_cap is not None else path.stream_bytes_per_s
    size = min(hi, max(lo, _pow2_floor(rate * target_s)))
    at = (
        f"the {rate / 1e6:.1f} MB/s cap"
        if capped
        else f"the {rate / 1e6:.1f} MB/s per stream measured last time"
    )
    return size, (f"{size >> 10} KiB: ~{target_s * 1000:.0f} ms per chunk at {at} "
                  f"(RTT {path.rtt_s * 1000:.1f} ms, "
                  f"{path.retrans_fraction * 100:.2f}% retransmitted{', lossy: halved' if lossy else ''})")  # fmt: skip


def path_stats_from_send(report: TransferReport, *, now: float) -> PathStats | None:
    """Digest a finished send's report (``Sender.send``'s) into a ``PathStats``; None if it says too little."""
    infos = report.tcp_info
    sent = sum(int(i.get("bytes_sent") or 0) for i in infos)
    wire, secs = report.wire_bytes, report.seconds
    # the count that carried the bulk of the transfer: what the controller ended with
    n = int(report.streams.final or report.streams.max or 0)
    if sent <= 0 or wire <= 0 or secs <= 0 or n < 1 or report.chunks_sent < 4:
        return None  # too small a send to say anything about the path
    retrans = 0.0
    for i in infos:
        if i.get("bytes_retrans") is not None:
            retrans += i["bytes_retrans"]
        else:  # kernels before 4.19: segments, at a typical MSS
            retrans += int(i.get("total_retrans") or 0) * 1448
    rtts = sorted(int(i.get("rtt_us") or 0) for i in infos if i.get("rtt_us"))
    rtt_s = rtts[len(rtts) // 2] / 1e6 if rtts else report.rtt_ms / 1000
    return PathStats(rtt_s=rtt_s, retrans_fraction=min(1.0, retrans / sent), stream_bytes_per_s=wire / secs / n,
                     streams=min(256, n), at=now)  # fmt: skip
