"""Prometheus metrics of a dwcp node: hot-path counters in C memory, read at scrape time.

``Metrics`` is the data plane's ``TransferEvents``: each event adds to slots
of a ``CounterBlock`` (one relaxed atomic add per count, no lock, no
prometheus_client object per update); a label set gets its slot once, under
a lock, and every later update is a dict lookup and an add.  A custom
Collector turns the slots into metric families when Prometheus scrapes
``/metrics``; gauges owned elsewhere (health, breakers, baselines, the
daemon's reloads) come from callables registered with ``add_source``.

Names follow ``dwcp_<subsystem>_<name>_<unit>``, counters end in ``_total``::

    dwcp_transfer_raw_bytes_total{direction,peer,codec}      counter
    dwcp_transfer_wire_bytes_total{direction,peer,codec}     counter
    dwcp_transfer_completed_total{direction,outcome}         counter
    dwcp_transfer_duration_seconds{direction}                histogram
    dwcp_transfer_chunk_retransmits_total{direction,peer}    counter
    dwcp_transfer_checksum_failures_total{peer}              counter
    dwcp_transport_protocol_errors_total{code}               counter
    dwcp_security_refused_total{reason}                      counter (acl, relay)
    dwcp_transport_streams{peer}                             gauge
    dwcp_transport_stream_reconnects_total{peer}             counter
    dwcp_transport_rtt_seconds{peer}                         gauge (last stream's smoothed RTT)
    dwcp_transport_retransmits_total{peer}                   counter (TCP segments)
    dwcp_codec_compression_ratio{codec}                      gauge (raw / wire so far)
    dwcp_path_anomalies_total{peer,nic,signal}               counter (this process's sends' detectors)
    dwcp_build_info{version,backend,python}                  gauge = 1
    + the registered sources (dwcp_health_status{check}, dwcp_cluster_breaker_state{peer},
      dwcp_transport_connections_refused_total{reason}, dwcp_transport_connections_unauthenticated, ...)

Race-freedom under reconfiguration: ``reconfigure(per_peer=False)`` (a
reload) makes later updates use the peer label "*" while data-plane threads
keep counting; the slot map is only replaced under the lock and a reader
that raced it still adds to a live slot, so no increment is ever lost.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

import dwcp
from dwcp._backend import impl as _k
from dwcp.transport.events import OUTCOMES, TransferEvents
from dwcp.wire import consts as C

__all__ = ["Metrics", "DURATION_BUCKETS_S", "Sample"]

DURATION_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_BLOCK = 4096
_US = 1_000_000

# (name, type, help, label names)
_CATALOGUE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dwcp_transfer_raw_bytes_total": ("counter", "Object bytes moved, before encoding", ("direction", "peer", "codec")),
    "dwcp_transfer_wire_bytes_total": ("counter", "Bytes on the wire (frame headers included)",
                                       ("direction", "peer", "codec")),
    "dwcp_transfer_completed_total": ("counter", "Transfers that ended, by outcome", ("direction", "outcome")),
    "dwcp_transfer_chunk_retransmits_total": ("counter", "Chunks sent again (NACKed, or in flight on a failed stream)",
                                              ("direction", "peer")),
    "dwcp_transfer_checksum_failures_total": ("counter", "Received chunks that failed their xxh3-64", ("peer",)),
    "dwcp_transport_protocol_errors_total": ("counter", "Connections closed over a protocol error", ("code",)),
    "dwcp_security_refused_total": ("counter", "Requests refused by policy (security.acl, relay targets)",
                                    ("reason",)),
    "dwcp_transport_streams": ("gauge", "Data streams open to a peer", ("peer",)),
    "dwcp_transport_stream_reconnects_total": ("counter", "Data streams that failed and were replaced", ("peer",)),
    "dwcp_transport_rtt_seconds": ("gauge", "Smoothed TCP RTT of the last data stream to a peer", ("peer",)),
    "dwcp_transport_retransmits_total": ("counter", "TCP segments retransmitted on data streams", ("peer",)),
    "dwcp_path_anomalies_total": ("counter", "Anomalies a send's detectors raised on a path, by signal",
                                  ("peer", "nic", "signal")),
}  # fmt: skip

Sample = tuple[dict[str, str], float]  # labels, value: what a source returns per series


class _Slots:
    """label key -> slot in a list of CounterBlocks (allocation under a lock, lookups without)."""

    def __init__(self) -> None:
        self.blocks = [_k.CounterBlock(_BLOCK)]
        self.index: dict[tuple, tuple[object, int]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def slot(self, key: tuple) -> tuple[object, int]:
        s = self.index.get(key)
        if s is not None:
            return s
        with self._lock:
            s = self.index.get(key)
            if s is None:
                if self._next == _BLOCK:
                    self.blocks.append(_k.CounterBlock(_BLOCK))
                    self._next = 0
                s = (self.blocks[-1], self._next)
                self._next += 1
                self.index = {**self.index, key: s}  # readers see the old or the new map, both whole
            return s


class Metrics(TransferEvents):
    def __init__(self, *, per_peer: bool = True, buckets_s: Iterable[float] = DURATION_BUCKETS_S) -> None:
        self.per_peer = per_peer
        self.buckets_s = tuple(sorted(buckets_s))
        self._slots = _Slots()
        self._sources: list[tuple[str, str, str, Callable[[], list[Sample]]]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        # the process's CPU, memory, descriptors and start time (wall clock), and the Python platform:
        # what every Prometheus exporter offers, so the usual dashboards and alerts work
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        for direction in ("rx", "tx"):  # every known outcome is a series from the start: rates need a 0
            for outcome in OUTCOMES:
                self._add("dwcp_transfer_completed_total", (direction, outcome), 0)

    # -- configuration ---------------------------------------------------------
    def reconfigure(self, *, per_peer: bool | None = None) -> None:
        """Change what later updates are labelled with (live, under load)."""
        if per_peer is not None:
            self.per_peer = per_peer

    def add_source(self, name: str, kind: str, help_text: str, fn: Callable[[], list]) -> None:
        """A metric computed at scrape time: ``fn()`` returns [(labels, value), ...] for a gauge or a
        counter, [(labels, (bucket bounds, counts per bucket and one past the last, sum))] for a
        histogram (its counts are cumulated here)."""
        if kind not in ("gauge", "counter", "histogram"):
            raise ValueError("kind must be gauge, counter or histogram")
        self._sources.append((name, kind, help_text, fn))

    # -- the hot path ------------------------------------------------------------
    def _add(self, name: str, labels: tuple, v: int = 1) -> None:
        block, i = self._slots.slot((name, *labels))
        block.add(i, v)  # type: ignore[attr-defined]

    def _set(self, name: str, labels: tuple, v: int) -> None:
        block, i = self._slots.slot((name, *labels))
        block.set_gauge(i, v)  # type: ignore[attr-defined]

    def _peer(self, peer: str) -> str:
        return peer if self.per_peer else "*"

    def chunk(self, direction: str, peer: str, codec: int, raw_bytes: int, wire_bytes: int) -> None:
        lab = (direction, self._peer(peer), C.CODEC_NAMES.get(codec, str(codec)))
        self._add("dwcp_transfer_raw_bytes_total", lab, raw_bytes)
        self._add("dwcp_transfer_wire_bytes_total", lab, wire_bytes)

    def chunk_retransmit(self, direction: str, peer: str, n: int = 1) -> None:
        self._add("dwcp_transfer_chunk_retransmits_total", (direction, self._peer(peer)), n)

    def checksum_failure(self, peer: str) -> None:
        self._add("dwcp_transfer_checksum_failures_total", (self._peer(peer),))

    def protocol_error(self, peer: str, code: int) -> None:
        self._add("dwcp_transport_protocol_errors_total", (str(code),))  # not by peer: anyone can send junk

    def access_refused(self, reason: str) -> None:
        self._add("dwcp_security_refused_total", (reason,))  # not by peer: the refused one may be anyone

    # a gauge is kept by the real peer (an open and its close must meet in one slot even if the
    # labelling changes in between) and folded into "*" at scrape time when per_peer is off
    def stream_opened(self, peer: str) -> None:
        self._add("dwcp_transport_streams", (peer,), 1)

    def stream_closed(self, peer: str, failed: bool) -> None:
        self._add("dwcp_transport_streams", (peer,), (1 << 64) - 1)  # -1, modulo 2**64
        if failed:
            self._add("dwcp_transport_stream_reconnects_total", (self._peer(peer),))

    def tcp_info(self, peer: str, rtt_s: float, retransmits: int) -> None:
        self._set("dwcp_transport_rtt_seconds", (self._peer(peer),), int(rtt_s * _US))
        if retransmits:
            self._add("dwcp_transport_retransmits_total", (self._peer(peer),), retransmits)

    def path_anomaly(self, peer: str, nic: str, signal: str) -> None:
        self._add("dwcp_path_anomalies_total", (self._peer(peer), nic, signal))

    def transfer_finished(self, direction: str, peer: str, outcome: str, seconds: float, raw_bytes: int,
                          wire_bytes: int) -> None:  # fmt: skip
        self._add("dwcp_transfer_completed_total", (direction, outcome))
        for b in self.buckets_s:
            if seconds <= b:
                self._add("_duration_bucket", (direction, b))
                break
        else:
            self._add("_duration_bucket", (direction, float("inf")))
        self._add("_duration_sum_us", (direction,), int(seconds * _US))

    # -- reading -------------------------------------------------------------------
    def compression_ratio(self) -> float | None:
        """Raw over wire bytes of every chunk so far (None before the first)."""
        raw = wire = 0
        for key, v in self.values().items():
            if key[0] == "dwcp_transfer_raw_bytes_total":
                raw += v
            elif key[0] == "dwcp_transfer_wire_bytes_total":
                wire += v
        return raw / wire if wire else None

    def values(self) -> dict[tuple, int]:
        """Every slot's value by label key (counters unsigned; gauges signed)."""
        index = self._slots.index  # first: every block it names exists before the snapshot below
        snaps = {id(b): b.snapshot() for b in list(self._slots.blocks)}  # type: ignore[attr-defined]
        out = {}
        for key, (block, i) in index.items():
            v = snaps[id(block)][i]
            out[key] = v - (1 << 64) if v >= 1 << 63 else v
        return out


class _Collector(Collector):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self):
        m = self.m
        vals = m.values()
        fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, (kind, help_text, labels) in _CATALOGUE.items():
            base = name[: -len("_total")] if kind == "counter" else name
            fams[name] = (CounterMetricFamily(base, help_text, labels=labels) if kind == "counter"
                          else GaugeMetricFamily(name, help_text, labels=labels))  # fmt: skip
        raw: dict[str, int] = {}
        wire: dict[str, int] = {}
        streams: dict[str, int] = {}
        for key, v in vals.items():
            name, labels = key[0], key[1:]
            if name == "dwcp_transport_streams":
                p = labels[0] if m.per_peer else "*"
                streams[p] = streams.get(p, 0) + v
                continue
            if name in fams:
                value = v / _US if name == "dwcp_transport_rtt_seconds" else v
                fams[name].add_metric([str(x) for x in labels], value)
                if name == "dwcp_transfer_raw_bytes_total":
                    raw[labels[2]] = raw.get(labels[2], 0) + v
                elif name == "dwcp_transfer_wire_bytes_total":
                    wire[labels[2]] = wire.get(labels[2], 0) + v
        for p, n in sorted(streams.items()):
            fams["dwcp_transport_streams"].add_metric([p], n)
        yield from fams.values()
        ratio = GaugeMetricFamily("dwcp_codec_compression_ratio", "Raw bytes over wire bytes so far, by codec",
                                  labels=["codec"])  # fmt: skip
        for codec, r in sorted(raw.items()):
            if wire.get(codec):
                ratio.add_metric([codec], r / wire[codec])
        yield ratio
        hist = HistogramMetricFamily("dwcp_transfer_duration_seconds", "How long whole transfers took",
                                     labels=["direction"])  # fmt: skip
        for direction in sorted({k[1] for k in vals if k[0] == "_duration_bucket"}):
            cum, buckets = 0, []
            for b in (*m.buckets_s, float("inf")):
                cum += vals.get(("_duration_bucket", direction, b), 0)
                buckets.append(("+Inf" if b == float("inf") else repr(b), cum))
            hist.add_metric([direction], buckets, vals.get(("_duration_sum_us", direction), 0) / _US)
        yield hist
        info = GaugeMetricFamily("dwcp_build_info", "dwcp version and data-plane backend",
                                 labels=["version", "backend", "python"])  # fmt: skip
        info.add_metric([dwcp.__version__, dwcp.backend, platform.python_version()], 1)
        yield info
        for name, kind, help_text, fn in m._sources:
            try:
                samples = fn()
            except Exception:  # a broken source must not break the scrape
                continue
            names = sorted({k for lab, _ in samples for k in lab})
            if kind == "histogram":
                yield _histogram(name, help_text, names, samples)
                continue
            fam = (CounterMetricFamily(name[: -len("_total")], help_text, labels=names) if kind == "counter"
                   else GaugeMetricFamily(name, help_text, labels=names))  # fmt: skip
            for lab, x in samples:
                fam.add_metric([lab.get(k, "") for k in names], x)
            yield fam


def _histogram(name: str, help_text: str, names: list[str], samples: list[Any]) -> HistogramMetricFamily:
    """A histogram source's family: each sample is (labels, (bounds, counts per bucket, sum))."""
    h = HistogramMetricFamily(name, help_text, labels=names)
    for lab, (bounds, counts, total) in samples:
        cum: list[tuple[str, float]] = []
        acc = 0
        for le, n in zip([*(str(float(x)) for x in bounds), "+Inf"], counts, strict=True):
            acc += n
            cum.append((le, acc))
        h.add_metric([lab.get(k, "") for k in names], cum, total)
    return h
