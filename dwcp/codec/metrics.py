"""Codec metrics: plain counters under one lock, read at scrape time.

Kept out of prometheus-client on purpose (STYLE rule 23): the hot path does
one lock round trip per chunk, and a Collector (dwcp.daemon.metrics) turns a
``snapshot()`` into metric families when Prometheus scrapes.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from dwcp.wire.consts import CODEC_NAMES

__all__ = ["CodecMetrics", "CodecCounters"]


@dataclass
class CodecCounters:
    frames: int = 0
    bytes_raw: int = 0
    bytes_wire: int = 0  # payload bytes, headers excluded
    seconds: float = 0.0


@dataclass
class CodecMetrics:
    """Encode/decode counters per codec name; safe to share between threads."""

    encode: dict[str, CodecCounters] = field(default_factory=lambda: defaultdict(CodecCounters))
    decode: dict[str, CodecCounters] = field(default_factory=lambda: defaultdict(CodecCounters))
    checksum_failures: int = 0
    malformed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_encode(self, codec: int, raw: int, wire: int, seconds: float) -> None:
        with self._lock:
            c = self.encode[CODEC_NAMES[codec]]
            c.frames += 1
            c.bytes_raw += raw
            c.bytes_wire += wire
            c.seconds += seconds

    def record_decode(self, codec: int, raw: int, wire: int, seconds: float) -> None:
        with self._lock:
            c = self.decode[CODEC_NAMES[codec]]
            c.frames += 1
            c.bytes_raw += raw
            c.bytes_wire += wire
            c.seconds += seconds

    def record_failure(self, checksum: bool) -> None:
        with self._lock:
            if checksum:
                self.checksum_failures += 1
            else:
                self.malformed += 1

    def snapshot(self) -> dict:
        """A consistent copy: {"encode": {codec: {...}}, "decode": ..., totals, ratio}."""
        with self._lock:
            enc = {k: vars(v).copy() for k, v in self.encode.items()}
            dec = {k: vars(v).copy() for k, v in self.decode.items()}
            fails = self.checksum_failures
            malformed = self.malformed
        raw = sum(v["bytes_raw"] for v in enc.values())
        wire = sum(v["bytes_wire"] for v in enc.values())
        return {
            "encode": enc,
            "decode": dec,
            "bytes_raw_total": raw,
            "bytes_wire_total": wire,
            "ratio": (raw / wire) if wire else (float("inf") if raw else 1.0),
            "checksum_failures_total": fails,
            "malformed_total": malformed,
        }
