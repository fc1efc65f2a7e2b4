"""Path traces: what every send measured of its path, kept per path, and the forecast made from them.

A *path* is a peer ("host:port") reached through an egress NIC: the same peer over another NIC is
another path.  Each has one small JSON file, ``<dir>/traces/<path id>.json``::

    {"version": 1, "peer": "10.0.0.2:7070", "nic": "eth0",
     "sends":   [{"at", "seconds", "bytes", "goodput", "stream_bytes_per_s", "rtt_s",
                  "retrans_fraction", "streams", "streams_initial", "chunk_size", "settle_s"}, ...],
     "samples": [[t, goodput, rtt_s, retrans, streams, chunk_size], ...],
     "anomalies": [{Anomaly.to_json()}, ...]}

Rules:

1. A send adds one record to ``sends`` (bulk sends only: a delta's few small chunks say little of
   the path) and its interval samples (every ``SAMPLE_S`` of the transfer: goodput in bytes/s over
   every stream, the streams' median smoothed RTT, the fraction of the interval's bytes TCP sent
   again, the stream count, the chunk size) to ``samples``.  ``t`` is Unix time.
2. Bounded: the newest ``MAX_SENDS`` records, ``MAX_SAMPLES`` samples and ``MAX_ANOMALIES``
   anomalies per path, and at most ``MAX_PATHS`` paths (the least recently written file goes).
3. Reading never raises: a missing file is an empty trace; a damaged file or record is skipped
   with a warning (the transport keeps its defaults).  Writing is atomic (temporary file, fsync,
   rename) and a failure to write costs only the next send's tuning, never the send.
4. The forecast of a path (``PathForecast``): each series of its sends -- total goodput, goodput
   per stream, RTT, retransmitted fraction, the stream count the controller ended at -- is
   forecast by the model with the lowest rolling backtest error on that series
   (``dwcp.transport.predict.choose``), over the last ``HISTORY`` sends no older than
   ``max_age_s``.  One send is a history of one: the forecast is that send's value.
5. The egress NIC is the kernel's route to the peer (``/proc/net/route``, ``/proc/net/ipv6_route``:
   no netlink round trip before the HELLO), "lo" for a loopback address, "?" when unknown.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dwcp.durable import write_atomic

from .chunking import PATH_MAX_AGE_S, PathStats
from .predict import Forecast, choose

__all__ = ["PathTraces", "PathTrace", "PathForecast", "SendRecord", "route_nic", "path_id", "SAMPLE_S"]

log = logging.getLogger("dwcp.transport")

SAMPLE_S = 0.5  # the sender's sampling interval (its stream controller's)
MAX_SENDS = 128
MAX_SAMPLES = 2048  # 17 minutes of transfer at SAMPLE_S
MAX_ANOMALIES = 32
MAX_PATHS = 256
HISTORY = 64  # sends a forecast backtests over
MAX_FILE_BYTES = 4 << 20  # a trace file larger than this is damaged (a full one is ~150 kB)
SERIES = ("goodput", "stream_bytes_per_s", "rtt_s", "retrans_fraction", "streams")


@dataclass(frozen=True)
class SendRecord:
    """What one finished bulk send measured of its path (rule 1)."""

    at: float  # Unix time it finished
    seconds: float
    bytes: int  # raw bytes of the object
    goodput: float  # raw bytes/s over the whole send
    stream_bytes_per_s: float  # wire bytes/s per stream, at the count it ended with
    rtt_s: float
    retrans_fraction: float
    streams: int  # the count it ended with
    streams_initial: int
    chunk_size: int
    settle_s: float | None  # seconds until goodput first held 90% of its median (None: never)

    def __post_init__(self) -> None:
        for name in ("at", "seconds", "goodput", "stream_bytes_per_s", "rtt_s", "retrans_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("streams", "streams_initial"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 256:
                raise ValueError(f"{name} must be an int in [1, 256], got {v!r}")
        if not isinstance(self.bytes, int) or self.bytes < 0 or not isinstance(self.chunk_size, int):
            raise ValueError("bytes and chunk_size must be ints >= 0")
        if self.settle_s is not None and not (isinstance(self.settle_s, (int, float)) and self.settle_s >= 0):
            raise ValueError(f"settle_s must be None or >= 0, got {self.settle_s!r}")

    def stats(self) -> PathStats:
        return PathStats(rtt_s=self.rtt_s, retrans_fraction=self.retrans_fraction,
                         stream_bytes_per_s=self.stream_bytes_per_s, streams=self.streams, at=self.at)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class PathTrace:
    """One path's trace (see the module docstring for the file)."""

    peer: str
    nic: str
    sends: list[SendRecord] = field(default_factory=list)
    samples: list[list] = field(default_factory=list)
    anomalies: list[dict] = field(default_factory=list)

    def last(self) -> SendRecord | None:
        return self.sends[-1] if self.sends else None

    def forecast(self, *, now: float, max_age_s: float = PATH_MAX_AGE_S) -> PathForecast | None:
        """Rule 4: the forecast of the next send over this path (None: no recent send)."""
        recent = [s for s in self.sends[-HISTORY:] if now - s.at <= max_age_s]
        if not recent:
            return None
        fc = {k: choose([float(getattr(s, k)) for s in recent]) for k in SERIES}
        return PathForecast(n=len(recent), last_at=recent[-1].at, by=fc)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "peer": self.peer, "nic": self.nic, "sends": [s.to_json() for s in self.sends],
                "samples": self.samples, "anomalies": self.anomalies}  # fmt: skip


@dataclass(frozen=True)
class PathForecast:
    """Each series' forecast for the next send over a path (rule 4)."""

    n: int  # sends it was made from
    last_at: float
    by: dict[str, Forecast]

    def value(self, series: str) -> float:
        return max(0.0, self.by[series].value)

    def streams(self, lo: int, hi: int) -> int:
        return max(lo, min(hi, round(self.value("streams"))))

    def stats(self) -> PathStats:
        """The forecast as the ``PathStats`` the chunk rule reads (dwcp.transport.chunking)."""
        return PathStats(rtt_s=self.value("rtt_s"), retrans_fraction=min(1.0, self.value("retrans_fraction")),
                         stream_bytes_per_s=self.value("stream_bytes_per_s"),
                         streams=max(1, min(256, round(self.value("streams")))), at=self.last_at)  # fmt: skip

    def why(self, series: str) -> str:
        f = self.by[series]
        if not math.isfinite(f.mae):
            return f"{f.model} of {self.n} send{'s' * (self.n != 1)}"
        return f"{f.model} of {self.n} sends, backtest MAE {f.mae:.3g} vs last-value {f.naive_mae:.3g}"

    def to_json(self) -> dict[str, Any]:
        return {"sends": self.n, **{k: f.to_json() for k, f in self.by.items()}}


def path_id(peer: str, nic: str) -> str:
    """A file name for the path (readable, and unique by a hash of the exact pair)."""
    tag = hashlib.blake2s(f"{peer}\0{nic}".encode(), digest_size=4).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', peer)[:80]}@{re.sub(r'[^A-Za-z0-9._-]', '_', nic)[:16]}-{tag}"


def _parse_trace(raw: Any, peer: str, nic: str, where: str) -> PathTrace:
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("sends"), list):
        log.warning("ignoring %s: not a path trace", where)
        return PathTrace(peer, nic)
    sends = []
    for d in raw["sends"][-MAX_SENDS:]:
        try:
            sends.append(SendRecord(**d))
        except (TypeError, ValueError):
            continue  # one bad record does not cost the others
    samples = [r for r in raw.get("samples") or [] if isinstance(r, list) and len(r) == 6][-MAX_SAMPLES:]
    anomalies = [a for a in raw.get("anomalies") or [] if isinstance(a, dict)][-MAX_ANOMALIES:]
    return PathTrace(str(raw.get("peer", peer)), str(raw.get("nic", nic)), sends, samples, anomalies)


class PathTraces:
    """``<directory>/traces/``: one ``PathTrace`` per path (rules 1-3)."""

    DIR = "traces"

    def __init__(self, directory: str) -> None:
        self.dir = os.path.join(directory, self.DIR)
        self._cache: dict[
            str, tuple[int, int, PathTrace, PathForecast | None]
        ] = {}  # file -> (mtime, size, ...)

    def _file(self, peer: str, nic: str) -> str:
        return os.path.join(self.dir, path_id(peer, nic) + ".json")

    @staticmethod
    def _read(path: str, peer: str = "?", nic: str = "?") -> PathTrace | None:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None
        if len(data) > MAX_FILE_BYTES:
            log.warning("ignoring %s: larger than %d bytes", path, MAX_FILE_BYTES)
            return None
        try:
            raw = json.loads(data)
        except ValueError as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None
        return _parse_trace(raw, peer, nic, path)

    def load(self, peer: str, nic: str) -> PathTrace:
        return self._read(self._file(peer, nic), peer, nic) or PathTrace(peer, nic)

    def all(self, *, now: float) -> list[tuple[PathTrace, PathForecast | None]]:
        """Every path's trace and forecast (for metrics and health), newest written first.  A file is
        read and forecast again only when it changed since the last call (a scrape costs a stat per path)."""
        try:
            names = [n for n in os.listdir(self.dir) if n.endswith(".json")]
        except OSError:
            return []
        stamped = []
        for n in names:
            p = os.path.join(self.dir, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            stamped.append((st.st_mtime_ns, st.st_size, p))
        stamped.sort(reverse=True)
        cache = self._cache
        fresh: dict[str, tuple[int, int, PathTrace, PathForecast | None]] = {}
        for mt, size, p in stamped[:MAX_PATHS]:
            hit = cache.get(p)
            if hit is not None and hit[:2] == (mt, size):
                fresh[p] = hit
                continue
            t = self._read(p)
            if t is not None:
                fresh[p] = (mt, size, t, t.forecast(now=now))
        self._cache = fresh
        return [(t, fc) for _, _, t, fc in fresh.values()]

    def save(self, trace: PathTrace) -> bool:
        """Write ``trace`` (trimmed to the bounds); False (logged) when it could not be written."""
        trace.sends = trace.sends[-MAX_SENDS:]
        trace.samples = trace.samples[-MAX_SAMPLES:]
        trace.anomalies = trace.anomalies[-MAX_ANOMALIES:]
        path = self._file(trace.peer, trace.nic)
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            write_atomic(path, json.dumps(trace.to_json(), separators=(",", ":")) + "\n")
            self._evict()
        except OSError as exc:  # costs only the next send's tuning
            log.warning("could not write the trace of the path to %s via %s in %s: %s", trace.peer, trace.nic,
                        self.dir, exc)  # fmt: skip
            return False
        return True

    def _evict(self) -> None:
        names = [os.path.join(self.dir, n) for n in os.listdir(self.dir) if n.endswith(".json")]
        if len(names) <= MAX_PATHS:
            return
        for p in sorted(names, key=_mtime)[: len(names) - MAX_PATHS]:
            try:
                os.unlink(p)
            except OSError:
                pass


def _mtime(p: str) -> float:
    try:
        return os.stat(p).st_mtime
    except OSError:
        return 0.0


def settle_time(samples: Sequence[Sequence], *, start: float, frac: float = 0.9) -> float | None:
    """Seconds from ``start`` until the goodput (rows' [1]) first reached ``frac`` of the median goodput of
    the rows after it, held for two samples; None when it never did (or too few samples)."""
    g = [float(r[1]) for r in samples]
    if len(g) < 4:
        return None
    for i in range(len(g) - 1):
        rest = sorted(g[i:])
        med = rest[len(rest) // 2]
        if med > 0 and g[i] >= frac * med and g[i + 1] >= frac * med:
            return max(0.0, float(samples[i][0]) - start)
    return None


# -- the egress NIC (rule 5) ----------------------------------------------------------------------


def route_nic(host: str, proc_net: str = "/proc/net") -> str:
    """The NIC the kernel routes ``host`` through, by the longest matching prefix of the routing table."""
    try:
        addr = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
    except (OSError, ValueError, IndexError):
        return "?"
    if addr.is_loopback:
        return "lo"
    best: tuple[int, int, str] | None = None  # (prefix length, -metric, nic)
    try:
        if addr.version == 4:
            with open(os.path.join(proc_net, "route"), encoding="ascii") as f:
                next(f, None)
                for line in f:
                    p = line.split()
                    if len(p) < 8:
                        continue
                    # the kernel prints each address's bytes as a little-endian hex word
                    dst, mask = (struct.unpack("<I", bytes.fromhex(x))[0] for x in (p[1], p[7]))
                    if int(addr) & mask == dst and int(p[3], 16) & 1:  # RTF_UP
                        cand = (bin(mask).count("1"), -int(p[6]), p[0])
                        best = cand if best is None or cand[:2] > best[:2] else best
        else:
            with open(os.path.join(proc_net, "ipv6_route"), encoding="ascii") as f:
                for line in f:
                    p = line.split()
                    if len(p) < 10:
                        continue
                    net, plen = int(p[0], 16), int(p[1], 16)
                    if plen and int(addr) >> (128 - plen) != net >> (128 - plen):
                        continue
                    cand = (plen, -int(p[5], 16), p[9])
                    best = cand if best is None or cand[:2] > best[:2] else best
    except (OSError, ValueError):
        return "?"
    return best[2] if best is not None else "?"
