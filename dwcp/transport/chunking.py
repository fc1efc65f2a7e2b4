"""Chunk size from what the path did last time, and the memory of paths it comes from.

A transfer's chunks all have one size (the receiver's bitmap, resume records
and the frame rules are per chunk), so the size is chosen once, before the
HELLO, from what the previous sends to the same peer measured.  Sans-IO: the
policy is a pure function of a ``PathStats``; ``PathMemory`` is the small
JSON file that keeps one per peer.

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
* no record, or one older than ``max_age_s``: the configured default.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from dwcp.durable import write_atomic

if TYPE_CHECKING:
    from .session import TransferReport

__all__ = ["PathStats", "PathMemory", "choose_chunk_size", "path_stats_from_send", "MiB", "PATH_MAX_AGE_S"]

log = logging.getLogger("dwcp.transport")

MiB = 1 << 20
LOSSY = 0.005  # retransmitted fraction above which chunks are halved again
MAX_PATHS = 256  # peers remembered; the oldest are forgotten first
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
                      max_age_s: float = PATH_MAX_AGE_S) -> tuple[int, str]:  # fmt: skip
    """The chunk size for a send over ``path`` and the reason, per the module rules."""
    if path is None:
        return default, f"{default >> 10} KiB (configured; no earlier send to this peer)"
    if now - path.at > max_age_s:
        return default, f"{default >> 10} KiB (configured; the last measurement of this path is too old)"
    target_s = min(0.5, max(0.05, 2.0 * path.rtt_s))
    lossy = path.retrans_fraction > LOSSY
    if lossy:
        target_s /= 2
    size = min(hi, max(lo, _pow2_floor(path.stream_bytes_per_s * target_s)))
    return size, (f"{size >> 10} KiB: ~{target_s * 1000:.0f} ms per chunk at the {path.stream_bytes_per_s / 1e6:.1f} MB/s "
                  f"per stream measured last time (RTT {path.rtt_s * 1000:.1f} ms, "
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


class PathMemory:
    """``<dir>/paths.json``: the last ``PathStats`` per peer ("host:port").

    Reading never raises (a missing or damaged file is an empty memory: the
    transport keeps its defaults); writing is atomic (temporary file, fsync,
    rename) and keeps at most ``MAX_PATHS`` peers, newest first.
    """

    FILE = "paths.json"

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, self.FILE)

    def _load(self) -> dict[str, PathStats]:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}
        out: dict[str, PathStats] = {}
        if not isinstance(raw, dict) or not isinstance(raw.get("paths"), dict):
            log.warning("ignoring %s: not a path memory", self.path)
            return {}
        for peer, d in raw["paths"].items():
            try:
                out[str(peer)] = PathStats(**d)
            except (TypeError, ValueError):
                continue  # one bad record does not cost the others
        return out

    def get(self, peer: str) -> PathStats | None:
        return self._load().get(peer)

    def put(self, peer: str, stats: PathStats) -> None:
        paths = self._load()
        paths[peer] = stats
        keep = sorted(paths.items(), key=lambda kv: kv[1].at, reverse=True)[:MAX_PATHS]
        doc = json.dumps({"version": 1, "paths": {p: asdict(s) for p, s in keep}}, indent=1) + "\n"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            write_atomic(self.path, doc)
        except OSError as exc:  # a path memory that cannot be written costs only the next send's tuning
            log.warning("could not remember the path to %s in %s: %s", peer, self.path, exc)
