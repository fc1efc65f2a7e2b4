"""`dwcp daemon --config FILE`: what systemd runs (Type=notify).

The Daemon owns every component and starts them in order (store, data
port, control socket), stops them in reverse, and runs the main loop:

* SIGHUP (``systemctl reload``) or the control API's ``reload`` re-reads the
  config file.  A file with any problem is rejected whole and the running
  config stays; otherwise the live settings (``dwcp.config.LIVE``) change at
  once and the rest is reported as needing a restart.
* SIGTERM/SIGINT drain: new transfers are refused (ERR_UNAVAILABLE), running
  ones get ``transport.drain_timeout_s`` to finish, and whatever is still
  running then stays checkpointed in its partial for a resume.
* systemd: READY=1 once the data port and control socket serve, WATCHDOG=1
  from this loop at half of WatchdogSec, STATUS= a one-line summary,
  RELOADING=1/READY=1 around a reload, STOPPING=1 on shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import dwcp
from dwcp.cluster.balancer import PICK_BUCKETS_S
from dwcp.cluster.hlc import HLC
from dwcp.cluster.node import ClusterView, parse_target, probe_handler
from dwcp.cluster.repair import (
    Repairer,
    leaves_handler,
    push_handler,
    push_timeout_s,
    request_leaves,
    request_push,
    seed_partial,
)
from dwcp.config import Config, PeerConfig, load_toml, merge_live, reload_plan
from dwcp.consensus.adaptive import AdaptiveSettings
from dwcp.consensus.driver import RaftDriver
from dwcp.consensus.epoch_driver import EpochDriver
from dwcp.consensus.etcd import EtcdCatalog
from dwcp.errors import ConfigError, DWCPError
from dwcp.ops.health import (
    AmstCheck,
    BaselineSyncCheck,
    ErrorRateCheck,
    HdeCheck,
    HealthRegistry,
    HealthThresholds,
    PathAnomalyCheck,
    ReplicaVersion,
)
from dwcp.ops.logfmt import configure as configure_logging
from dwcp.storage import ObjectStore
from dwcp.transport.admission import REASONS as ADMISSION_REASONS
from dwcp.transport.sender import Sender
from dwcp.transport.server import DataServer, message_stream
from dwcp.transport.source import FileSource
from dwcp.transport.trace import PathTraces
from dwcp.wire import consts as C

from . import storeops
from .control import ControlServer
from .http import OpsHTTPServer
from .metrics import Metrics
from .scrub import Scrubber
from .sdnotify import Notifier

__all__ = ["Daemon", "run", "parse_hostport"]

log = logging.getLogger("dwcp.daemon")


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class _Events(Metrics):
    """The daemon's data-plane events: metrics, and transfer outcomes for the error-rate check."""

    def __init__(self, errors: ErrorRateCheck) -> None:
        super().__init__()
        self.errors = errors

    def transfer_finished(self, direction: str, peer: str, outcome: str, seconds: float, raw_bytes: int,
                          wire_bytes: int) -> None:  # fmt: skip
        super().transfer_finished(direction, peer, outcome, seconds, raw_bytes, wire_bytes)
        if outcome != "refused":  # a refusal (draining, key busy) is not this node failing
            self.errors.record(outcome == "ok", time.monotonic())


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        os.makedirs(config.storage.data_dir, mode=0o700, exist_ok=True)
        self.store = ObjectStore(config.storage.data_dir, keep_versions=config.storage.keep_versions)
        self.sent = ObjectStore(os.path.join(config.storage.data_dir, "sent"), keep_versions=2)
        # the paths' traces every send from this data directory keeps (the daemon's and `dwcp send`'s)
        self.path_traces = PathTraces(self.sent.data_dir)
        self._path_traces_lock = threading.Lock()
        self.errors = ErrorRateCheck(HealthThresholds.from_config(config))
        self.metrics = _Events(self.errors)
        self.server = DataServer(config, store=self.store, events=self.metrics)
        self.control = ControlServer(config.control_socket, self.handle)
        self.sender = Sender(config.transport, config.security, node_id=config.node.id, baselines=self.sent,
                             events=self.metrics, tune_dir=config.storage.data_dir, codec=config.codec,
                             dictionaries=self.server.dictionaries)  # fmt: skip
        self.cluster = ClusterView(config.cluster, config.node) if config.cluster.peers else None
        # the config with [cluster] peers as the catalog's membership has them (dwcp cluster add|remove):
        # what the cluster view, the relay check and anti-entropy use (_sync_members)
        self.effective = config
        self._members_key: tuple | None = None  # (catalog members_rev, own data address) last followed
        self.server.register(
            "probe",
            probe_handler(
                config.node,
                lambda: self.cluster.graph.links(origin=self.config.node.region) if self.cluster else [],
            ),
        )
        self.catalog_backend: RaftDriver | EpochDriver | EtcdCatalog | None = None
        cc = config.consensus
        if cc.enabled and cc.backend == "etcd":  # an external etcd keeps the log: no [cluster] peers needed
            self.catalog_backend = EtcdCatalog(cc.etcd_endpoints, cc.etcd_prefix, ca_file=cc.etcd_ca,
                                               cert_file=cc.etcd_cert, key_file=cc.etcd_key)  # fmt: skip
            self.server.on_commit = self._record_version
        elif cc.enabled:
            if not config.cluster.peers:
                raise ConfigError("consensus.enabled needs [cluster] peers to replicate the catalog with")
            peers = {p.id: p.address for p in config.cluster.peers}
            if cc.algorithm == "bft" or cc.adaptive:
                self.catalog_backend = self._epoch_driver(config, peers)
            else:
                self.catalog_backend = RaftDriver(config.node.id, peers, config.storage.data_dir,
                                                  dialer=self.sender.dialer, tick_s=cc.tick_ms / 1000, election_ticks=cc.election_ticks)  # fmt: skip
            self.server.register("raft", message_stream(C.FRAME_RAFT, self.catalog_backend.deliver))
            self.server.on_commit = self._record_version
        # anti-entropy (dwcp.cluster.repair): a member serves pushes of what it holds; with a catalog it
        # also pulls what it should hold and lacks
        self.hlc = HLC()  # the origin of sends made here (dwcp.consensus.catalog: conflicts)
        self.repairer: Repairer | None = None
        if config.cluster.peers:
            self.server.register("push", push_handler(config=lambda: self.effective, store=self.store,
                                                      sender=self._push_sender))  # fmt: skip
            self.server.register("leaves", leaves_handler(config=lambda: self.effective, store=self.store))
            if self.catalog_backend is not None:
                self.repairer = self._repairer()
        # rate and interval read at each pass: a reload changes them
        self.scrubber = Scrubber(self.store, rate=lambda: self.config.storage.scrub_rate_bytes_per_s,
                                 interval=lambda: self.config.storage.scrub_interval_s, on_corrupt=self._rotten)  # fmt: skip
        self.health = HealthRegistry()
        self.notifier = Notifier()
        self._register_checks(config)
        self._register_sources()
        self.http: OpsHTTPServer | None = None
        self.started = time.time()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._reload_lock = threading.Lock()
        self._started: list[tuple[str, object]] = []
        self.sends_ok = 0
        self.sends_failed = 0
        self.reloads_ok = 0
        self.reloads_rejected = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Start the components in order; on a failure stop those already started."""
        steps: list[tuple[str, Callable[[], object], Callable[[], None]]] = [
            ("data port", self.server.start, self.server.close)
        ]
        if self.config.listen.metrics_port >= 0:
            steps.append(("metrics endpoint", self._start_http, self._close_http))
        if self.cluster is not None:
            steps.append(("peer prober", self._start_prober, lambda: None))
        if self.catalog_backend is not None:
            steps.append(("consensus", self.catalog_backend.start, self.catalog_backend.close))
        steps.append(("scrub", self.scrubber.start, self.scrubber.close))
        if self.repairer is not None:
            rp = self.repairer
            steps.append(("anti-entropy", lambda: rp.start(lambda: self.config.cluster.repair_interval_s or 3600.0),
                          rp.close))  # fmt: skip
        # the control socket last: a status answer means every other component is up
        steps.append(("control socket", self.control.start, self.control.close))
        try:
            for name, start, stop in steps:
                start()
                self._started.append((name, stop))
        except BaseException:
            self.close()
            raise
        self._sync_members()  # the data port is bound: this node joins its own cluster view
        host, port = self.server.address
        log.info("dwcp %s daemon %s up: data port %s:%d, control %s, backend %s",
                 dwcp.__version__, self.config.node.id, host, port, self.config.control_socket,
                 dwcp.backend)  # fmt: skip

    def _start_http(self) -> None:
        lc = self.config.listen
        self.http = OpsHTTPServer(
            lc.metrics_host, lc.metrics_port, self.metrics.registry, self._healthz, self._readyz
        )
        self.http.start()

    def _close_http(self) -> None:
        if self.http is not None:
            self.http.close()

    # -- health and metrics ----------------------------------------------------
    def _register_checks(self, cfg: Config) -> None:
        th = HealthThresholds.from_config(cfg)

        def stream_counts() -> list[int]:
            # a transfer gets its data streams within a moment of its HELLO: judge those older than 5 s
            return [t["streams"] for t in self.server.transfers() if t["age_s"] > 5.0]

        self.health.register(AmstCheck(stream_counts, th), name="amst")
        self.health.register(HdeCheck(self.metrics.compression_ratio, self._baselines, th,
                                      delta_enabled=cfg.codec.delta), name="hde")  # fmt: skip
        self.health.register(self.errors, name="error_rate")

        def anomalies() -> list:
            now = time.time()
            return [
                (now - float(a.get("at", 0)), t.peer, t.nic, a)
                for t, _ in self._paths(now)
                for a in t.anomalies
            ]

        self.health.register(
            PathAnomalyCheck(anomalies, th), name="paths", interval_s=cfg.health.check_interval_s
        )
        if self.catalog_backend is not None:  # replicas' versions come from the replicated catalog
            backend = self.catalog_backend

            def replicas() -> dict:
                with backend.lock:
                    rv = backend.catalog.replica_versions()
                return {k: [ReplicaVersion(h, v, at) for h, v, at in vs] for k, vs in rv.items()}

            self.health.register(
                BaselineSyncCheck(replicas, th), name="baseline_sync", interval_s=cfg.health.check_interval_s
            )
        self.health.reconfigure(th)

    def _epoch_driver(self, config: Config, peers: dict[str, str]) -> EpochDriver:
        """Adaptive consensus (algorithm "bft", or adaptive = true): BFT keys from the config and the key file."""
        from dwcp.security.certs import bft_signing_key, bft_verify_key

        cc = config.consensus
        keyed = {p.id: p.bft_key for p in config.cluster.peers if p.bft_key}
        signer, verify = None, {}
        if cc.adaptive and cc.auto_switch and not keyed:
            raise ConfigError("consensus: auto_switch (adaptive = true) switches to bft on evidence of Byzantine "
                              "behaviour and signs every envelope: give every [[cluster.peers]] its bft_key, or set "
                              "auto_switch = false (detect and report only)")  # fmt: skip
        if cc.algorithm == "bft" or keyed:
            missing = sorted(set(peers) - set(keyed))
            if missing:
                raise ConfigError(
                    f"consensus: BFT needs every [[cluster.peers]] bft_key; missing for {', '.join(missing)}"
                )
            if len(peers) + 1 < 4:
                raise ConfigError(
                    f"consensus: BFT needs n >= 4 nodes (f >= 1), this cluster has {len(peers) + 1}"
                )
            key_file = cc.bft_key_file or os.path.join(config.storage.data_dir, "consensus", "bft.key")
            signer, own = bft_signing_key(key_file)
            verify = {i: bft_verify_key(k) for i, k in keyed.items()} | {config.node.id: bft_verify_key(own)}
        return EpochDriver(config.node.id, peers, config.storage.data_dir, dialer=self.sender.dialer,
                           algorithm=cc.algorithm, signer=signer, verify_keys=verify,
                           tick_s=cc.tick_ms / 1000, election_ticks=cc.election_ticks,
                           adaptive=AdaptiveSettings.from_config(cc) if cc.adaptive else None)  # fmt: skip

    def _paths(self, now: float) -> list:
        """Every path's trace and forecast (dwcp.transport.trace), for the paths check and the metrics."""
        with self._path_traces_lock:
            return self.path_traces.all(now=now)

    def _path_samples(self) -> dict[str, list]:
        """The path metrics' series (labels, value) by metric name."""
        out: dict[str, list] = {k: [] for k in ("last", "forecast", "mae", "model", "anomaly")}
        for t, fc in self._paths(time.time()):
            lab = {"peer": t.peer, "nic": t.nic}
            last = t.last()
            if last is not None:
                for series in ("goodput", "rtt_s", "retrans_fraction", "streams", "chunk_size"):
                    out["last"].append(({**lab, "series": series}, float(getattr(last, series))))
            if fc is not None:
                for series, f in fc.by.items():
                    sl = {**lab, "series": series}
                    out["forecast"].append((sl, f.value))
                    out["model"].append(({**sl, "model": f.model}, 1))
                    if math.isfinite(f.mae):
                        out["mae"].append(({**sl, "which": "chosen"}, f.mae))
                    if math.isfinite(f.naive_mae):
                        out["mae"].append(({**sl, "which": "last_value"}, f.naive_mae))
            newest: dict[str, float] = {}
            for a in t.anomalies:
                sig = str(a.get("signal", "?"))
                newest[sig] = max(newest.get(sig, 0.0), float(a.get("at", 0)))
            out["anomaly"] += [({**lab, "signal": sig}, at) for sig, at in sorted(newest.items())]
        return out

    def _baselines(self) -> int:
        return len(self.sent.keys()) + len(self.store.keys())

    def _register_sources(self) -> None:
        m = self.metrics

        def health() -> list:
            rep = self.health.last or self.health.evaluate(time.monotonic())
            return [({"check": c.name}, int(c.status)) for c in rep.checks]

        m.add_source(
            "dwcp_health_status", "gauge", "Health per check: 0 healthy, 1 degraded, 2 unhealthy", health
        )
        m.add_source("dwcp_sla_throughput_bytes_per_second", "gauge",
                     "The throughput this node should see ([health] sla_throughput_bytes_per_s)",
                     lambda: [({}, sla)] if (sla := self.config.health.sla_throughput_bytes_per_s) else [])  # fmt: skip
        ps: dict[str, Any] = {}  # one read of the traces per scrape: the first path source takes it

        def path(kind: str) -> list:
            if kind == "last" or not ps:
                ps.clear()
                ps.update(self._path_samples())
            return ps.get(kind, [])

        m.add_source("dwcp_path_last", "gauge",
                     "The last send's measurement of a path (peer, egress NIC), by series: goodput (B/s), "
                     "rtt_s, retrans_fraction, streams (at the end), chunk_size (bytes)",
                     lambda: path("last"))  # fmt: skip
        m.add_source("dwcp_path_forecast", "gauge", "The forecast of a path's next send, by series",
                     lambda: path("forecast"))  # fmt: skip
        m.add_source("dwcp_path_forecast_mae", "gauge",
                     "Rolling one-step backtest mean absolute error of a path's forecast, of the chosen model and "
                     "of the last-value model, by series",
                     lambda: path("mae"))  # fmt: skip
        m.add_source("dwcp_path_forecast_model", "gauge", "The model chosen per path and series (value 1)",
                     lambda: path("model"))  # fmt: skip
        m.add_source("dwcp_path_anomaly_last_timestamp_seconds", "gauge",
                     "Unix time of the newest anomaly a send raised on a path, by signal (evidence: /healthz)",
                     lambda: path("anomaly"))  # fmt: skip
        m.add_source("dwcp_codec_baselines", "gauge", "Versions held that can serve as delta baselines",
                     lambda: [({}, self._baselines())])  # fmt: skip
        m.add_source("dwcp_transfer_in_progress", "gauge", "Transfers being received now",
                     lambda: [({}, len(self.server.transfers()))])  # fmt: skip
        m.add_source("dwcp_daemon_reloads_total", "counter", "Config reloads, by result",
                     lambda: [({"result": "ok"}, self.reloads_ok), ({"result": "rejected"}, self.reloads_rejected)])  # fmt: skip

        def lb(field: str, label: str) -> list:
            st = self.cluster.balancer.stats() if self.cluster else {}
            return [({label: k}, v) for k, v in st.get(field, {}).items()]

        def lb_pick() -> list:
            b = self.cluster.balancer if self.cluster else None
            return [({}, (PICK_BUCKETS_S, list(b.pick_buckets), b.pick_sum_s))] if b is not None else []

        m.add_source(
            "dwcp_cluster_lb_decisions_total",
            "counter",
            "Peer picks by policy",
            lambda: lb("decisions", "policy"),
        )
        m.add_source("dwcp_cluster_lb_region_picks_total", "counter", "Peer picks by the picked peer's region",
                     lambda: lb("by_region", "region"))  # fmt: skip
        m.add_source("dwcp_cluster_lb_no_healthy_peer_total", "counter", "Picks that found no healthy peer",
                     lambda: lb("no_healthy_peer", "policy"))  # fmt: skip
        m.add_source("dwcp_cluster_lb_pick_seconds", "histogram", "How long a peer pick took", lb_pick)
        m.add_source("dwcp_cluster_failovers_total", "counter", "Sends moved to the next replica after a peer failed",
                     lambda: [({}, self.cluster.failovers)] if self.cluster else [])  # fmt: skip
        m.add_source("dwcp_cluster_breaker_state", "gauge", "Circuit breaker per peer: 0 closed, 1 half-open, 2 open",
                     lambda: [({"peer": p}, v) for p, v in self.cluster.breaker_states().items()] if self.cluster else [])  # fmt: skip

        def server_counts(prefix: str, values: tuple[str, ...], label: str) -> list:
            st = self.server.stats_snapshot()
            return [({label: v}, st[f"{prefix}_{v}_total"]) for v in values]

        m.add_source("dwcp_transport_connections_refused_total", "counter",
                     "Data-port connections refused at accept, by the admission limit that was full",
                     lambda: server_counts("refused", ADMISSION_REASONS, "reason"))  # fmt: skip
        m.add_source("dwcp_transport_connections_evicted_total", "counter",
                     "Silent unauthenticated connections evicted for a newcomer, by the limit that was full",
                     lambda: server_counts("evicted", ADMISSION_REASONS, "reason"))  # fmt: skip
        m.add_source("dwcp_transport_handshake_timeouts_total", "counter",
                     "Connections closed without a TLS handshake or HELLO by listen.handshake_timeout_s, by stage",
                     lambda: server_counts("handshake_timeouts", ("tls", "hello"), "stage"))  # fmt: skip
        m.add_source("dwcp_transport_header_timeouts_total", "counter",
                     "Connections closed over a frame header not whole listen.header_timeout_s after its first byte",
                     lambda: [({}, self.server.stats_snapshot()["header_timeouts_total"])])  # fmt: skip
        m.add_source("dwcp_transport_connections_unauthenticated", "gauge",
                     "Data-port connections admitted and not authenticated yet",
                     lambda: [({}, self.server.unauthenticated)])  # fmt: skip

        def consensus_faults() -> list:
            cb = self.catalog_backend
            if not isinstance(cb, EpochDriver):
                return []
            with cb.lock:
                f = cb.faults()
            return [({"kind": k, "node": n}, v) for k, by in sorted(f.items()) for n, v in sorted(by.items())]

        def consensus_epoch() -> list:
            cb = self.catalog_backend
            return [({"algorithm": cb.node.algorithm}, cb.node.epoch)] if isinstance(cb, EpochDriver) else []

        def consensus_adaptive(what: str) -> list:
            cb = self.catalog_backend
            if not isinstance(cb, EpochDriver) or cb.adaptive is None:
                return []
            a = cb.adaptive
            with cb.lock:
                if what == "switches":
                    return [({"reason": c, "to": to}, n) for (c, to), n in sorted(a.policy.counts.items())]
                return [({"peer": p, "kind": k}, n) for p, by in sorted(a.detector.counts.items())
                        for k, n in sorted(by.items())]  # fmt: skip

        m.add_source("dwcp_consensus_faults_total", "counter",
                     "Byzantine faults detected by the BFT engine, by kind and offending node ('*': more than f)",
                     consensus_faults)  # fmt: skip
        sb = self.scrubber
        m.add_source("dwcp_scrub_read_bytes_total", "counter", "Bytes the scrub re-read and re-hashed",
                     lambda: [({}, sb.bytes_read)])  # fmt: skip
        m.add_source("dwcp_scrub_versions_total", "counter", "Stored versions the scrub checked, by result",
                     lambda: [({"result": "ok"}, sb.ok), ({"result": "corrupt"}, sb.corrupt)])  # fmt: skip
        m.add_source("dwcp_scrub_passes_total", "counter", "Scrub passes over the whole store",
                     lambda: [({}, sb.passes)])  # fmt: skip
        m.add_source("dwcp_scrub_last_pass_end_timestamp_seconds", "gauge", "When the last scrub pass ended",
                     lambda: [({}, sb.last_pass_end)] if sb.last_pass_end is not None else [])  # fmt: skip
        rp = self.repairer
        m.add_source("dwcp_repair_versions_total", "counter", "Anti-entropy repairs of a missing version, by result",
                     lambda: [({"result": "repaired"}, rp.repaired), ({"result": "failed"}, rp.failed)] if rp else [])  # fmt: skip
        m.add_source("dwcp_repair_wire_bytes_total", "counter", "Bytes the holders sent for anti-entropy repairs",
                     lambda: [({}, rp.wire_bytes)] if rp else [])  # fmt: skip
        m.add_source("dwcp_repair_behind_seconds", "gauge",
                     "Age of the oldest version this node should hold and lacks (0: caught up), as of the last pass",
                     lambda: [({}, rp.behind_s)] if rp else [])  # fmt: skip
        m.add_source("dwcp_consensus_epoch", "gauge", "The adaptive consensus epoch, labelled by its algorithm",
                     consensus_epoch)  # fmt: skip
        m.add_source("dwcp_consensus_switches_total", "counter",
                     "Consensus switches applied here (adaptive mode), by reason (byzantine_evidence, quiet_period, "
                     "operator) and the algorithm switched to", lambda: consensus_adaptive("switches"))  # fmt: skip
        m.add_source("dwcp_consensus_byzantine_evidence_total", "counter",
                     "Evidence of Byzantine behaviour this node holds (adaptive mode), by peer and kind",
                     lambda: consensus_adaptive("evidence"))  # fmt: skip

    def _healthz(self) -> tuple[int, dict]:
        return self.health.healthz(time.monotonic())

    def _readyz(self) -> tuple[int, dict]:
        return self.health.readyz()

    def _rotten(self, info) -> None:
        """The scrub quarantined ``info``: the catalog stops listing this node for it, and anti-entropy
        pulls it back from a replica now (in the background: the scrub goes on)."""
        cb, key, me = self.catalog_backend, info.key, self.config.node.id

        def fix() -> None:
            if cb is not None:
                try:
                    cb.propose(
                        {"op": "drop", "key": key, "digest": info.digest.hex(), "holder": me}, timeout_s=30
                    )
                except DWCPError as exc:
                    log.warning("could not drop %s's rotten copy from the catalog: %s", key, exc)
            if self.repairer is not None:
                self.repairer.run_once(key)

        threading.Thread(target=fix, name="dwcp-scrub-repair", daemon=True).start()

    def _store_op(self, req: dict) -> dict:
        """`dwcp ls | rm | gc | du` (dwcp.daemon.storeops), with the catalog's holders and drops."""
        cb = self.catalog_backend
        holders = None
        if cb is not None:
            with cb.lock:
                holders = {k: v["holders"] for k, v in cb.catalog.where().items()}

        def drop(key: str, digest: str) -> None:
            if cb is not None:
                try:
                    cb.propose({"op": "drop", "key": key, "digest": digest, "holder": self.config.node.id},
                               timeout_s=10)  # fmt: skip
                except DWCPError as exc:
                    log.warning("removed %s version %s, but the catalog was not told: %s", key, digest, exc)

        return storeops.handle(req, store=self.store, sent=self.sent, max_age_s=self.config.storage.partial_max_age_s,
                               holders=holders, drop=drop)  # fmt: skip

    def _push_sender(self) -> Sender:
        """A sender for anti-entropy pushes: it keeps no baselines of its own (a push offers the version
        the puller holds, from this node's store, as its delta baseline), so no delta chain of its
        own decides for a full send (dwcp.transport.sender.full_refresh_reason)."""
        c = self.config
        return Sender(c.transport, c.security, node_id=c.node.id, events=self.metrics, tune_dir=c.storage.data_dir,
                      path_dir=self.sent.data_dir, codec=c.codec, dictionaries=self.server.dictionaries)  # fmt: skip

    def _repairer(self) -> Repairer:
        """The anti-entropy loop over this node's catalog, store and [cluster] (read at each pass: live)."""
        cb = self.catalog_backend
        assert cb is not None

        def keys() -> dict:
            with cb.lock:
                return {k: cb.catalog.versions(k) for k in list(cb.catalog.keys)}

        def members() -> dict[str, str]:
            self._sync_members()
            return {p.id: p.region for p in self.effective.cluster.peers} | {
                self.config.node.id: self.config.node.region
            }

        def held(key: str, digest: str) -> bool:
            try:
                return self.store.get(key, bytes.fromhex(digest)) is not None
            except (ValueError, DWCPError):
                return False

        def order(holders: list[str]) -> list[tuple[str, str]]:
            view = self.cluster
            addresses = {p.id: p.address for p in self.effective.cluster.peers}
            return view.fetch_order(holders, addresses) if view is not None else []

        def pull(host: str, port: int, rep) -> dict:
            cc, tc = self.config.cluster, self.config.transport
            leaves = None
            base = self.store.get(rep.key, bytes.fromhex(rep.base)) if rep.base is not None else None
            if base is not None and base.size == rep.size:  # compare the trees: only differing leaves travel
                theirs = request_leaves(self.sender.dialer, host, port, rep, node=self.config.node.id,
                                        timeout_s=push_timeout_s(rep.size // 4096, 0, tc.stall_timeout_s))  # fmt: skip
                held, total = seed_partial(self.store, rep, base, theirs)
                leaves = {"held": held, "total": total}
            ans = request_push(self.sender.dialer, host, port, rep, node=self.config.node.id,
                               rate_bytes_per_s=cc.repair_rate_bytes_per_s,
                               timeout_s=push_timeout_s(rep.size, cc.repair_rate_bytes_per_s, tc.stall_timeout_s))  # fmt: skip
            return {**ans, "leaves": leaves}

        def origin_of(key: str, digest: str) -> dict | None:
            origin = ((self.store.read_meta(key) or {}).get("origins") or {}).get(digest)
            return (
                origin if isinstance(origin, dict) and {"writer", "hlc", "parent"} <= origin.keys() else None
            )

        def local() -> dict[str, tuple[str, int, str | None]]:
            out = {}
            for k in self.store.keys():
                info = self.store.latest(k)
                if info is not None:
                    origin = origin_of(k, info.digest.hex())
                    out[k] = (info.digest.hex(), info.size, None if origin is None else str(origin["parent"]))
            return out

        def announce(key: str, digest: str, size: int) -> None:
            cmd = {"op": "version", "key": key, "digest": digest, "size": size, "holder": self.config.node.id,
                   "at": time.time()}  # fmt: skip
            origin = origin_of(key, digest)
            if origin is not None:
                cmd.update(writer=origin["writer"], hlc=origin["hlc"], parent=origin["parent"],
                           policy=self.config.cluster.conflicts)  # fmt: skip
            res = cb.propose(cmd, timeout_s=10)
            if isinstance(res, dict) and res.get("conflict") and not res.get("ok"):  # judged now: refused
                log.warning("%s version %s, stored while the catalog had no quorum, is refused: %s", key, digest,
                            res.get("error"))  # fmt: skip
                self._set_aside(key, bytes.fromhex(digest))

        return Repairer(me=self.config.node.id, keys=keys, members=members,
                        replicas=lambda: self.config.cluster.replicas, vnodes=lambda: self.config.cluster.vnodes,
                        held=held, order=order, pull=pull, local=local, announce=announce)  # fmt: skip

    def _record_version(self, key: str, digest: bytes, size: int, origin: dict | None = None) -> str | None:
        """A verified, stored version: record it in the catalog, with its origin (writer, HLC, parent)
        when the send carried one.  In the background (the sender has its answer), except for a write
        that can be refused (``cluster.conflicts = "reject"`` and a known parent): that one is recorded
        first, and a refusal sets the copy aside (``<data_dir>/conflicts/``) and is the answer; without a
        quorum the copy stays, unacknowledged, until anti-entropy has it judged (``_repairer``)."""
        backend = self.catalog_backend
        if backend is None:
            return None
        cmd: dict[str, Any] = {"op": "version", "key": key, "digest": digest.hex(), "size": size,
                               "holder": self.config.node.id, "at": time.time()}  # fmt: skip
        if origin is not None:
            self.hlc.observe(int(origin["hlc"]))
            cmd.update(writer=origin["writer"], hlc=origin["hlc"], parent=origin["parent"],
                       policy=self.config.cluster.conflicts)  # fmt: skip
            self._keep_origin(key, digest.hex(), origin)
        if origin is None or self.config.cluster.conflicts != "reject":

            def record() -> None:
                try:
                    backend.propose(cmd, timeout_s=30)
                except DWCPError as exc:
                    log.warning("could not record %s in the catalog: %s", key, exc)

            threading.Thread(target=record, name="dwcp-catalog", daemon=True).start()
            return None
        try:
            res = backend.propose(cmd, timeout_s=10)
        except DWCPError as exc:  # no quorum here (a partition): a refusable write cannot be judged now
            # kept, with its origin: anti-entropy lists it once the catalog is reachable, and it is judged
            # then (set aside if refused).  Not acknowledged: the sender is told
            return (f"{key}: stored here but not committed: the catalog could not judge it for conflicts "
                    f"({exc}); it is judged once the catalog has a quorum again (`dwcp status {key}`)")  # fmt: skip
        if isinstance(res, dict) and res.get("conflict") and not res.get("ok"):
            self._set_aside(key, digest)
            return str(res.get("error"))
        return None

    def _keep_origin(self, key: str, digest: str, origin: dict) -> None:
        """Keep a version's origin in the key's META, so that a record lost now (no quorum on this side
        of a partition) is announced later with it, and judged for conflicts then (Repairer)."""
        try:
            meta = self.store.read_meta(key) or {}
            origins = {k: v for k, v in (meta.get("origins") or {}).items() if isinstance(v, dict)}
            origins[digest] = origin
            meta["origins"] = dict(list(origins.items())[-8:])
            self.store.write_meta(key, meta)
        except (DWCPError, OSError) as exc:
            log.warning("could not keep the origin of %s version %s: %s", key, digest, exc)

    def _origin(self, key: str) -> dict | None:
        """What a send made here records with its version: this node as the writer, an HLC reading
        after every one it has seen of the key, and the key's latest version as its catalog has it
        (the parent the catalog checks for a concurrent write); None without a catalog."""
        cb = self.catalog_backend
        if cb is None:
            return None
        with cb.lock:
            latest = cb.catalog.latest(key)
        if latest is not None and latest.get("hlc"):
            self.hlc.observe(int(latest["hlc"]))
        return {
            "writer": self.config.node.id,
            "hlc": self.hlc.now(),
            "parent": latest["digest"] if latest else "",
        }

    def _set_aside(self, key: str, digest: bytes) -> None:
        info = self.store.get(key, digest)
        if info is not None:
            try:
                self.store.remove_version(info, keep_in="conflicts")
            except DWCPError as exc:
                log.warning("could not set %s version %s aside: %s", key, digest.hex(), exc)

    def _start_prober(self) -> None:
        threading.Thread(target=self._probe_loop, name="dwcp-prober", daemon=True).start()

    def _probe_loop(self) -> None:
        """Probe every peer's data port each probe_interval_s (liveness, RTT between regions)."""
        while not self._stop.is_set():
            view = self.cluster
            if view is None:
                return
            for pid in list(view.peers):
                was = view.peers[pid].healthy
                ok = view.probe(pid, self.sender.dialer)
                if ok != was:
                    log.warning("peer %s is %s", pid, "reachable again" if ok else "unreachable")
            self._stop.wait(self.config.cluster.probe_interval_s)

    def close(self) -> None:
        """Stop the components in reverse order (each at most once)."""
        while self._started:
            name, stop = self._started.pop()
            try:
                stop()  # type: ignore[operator]
            except Exception:
                log.exception("stopping the %s failed", name)

    def drain(self) -> int:
        """Refuse new transfers and give running ones drain_timeout_s; returns how many were left."""
        self.health.readiness.mark_draining()
        timeout = self.config.transport.drain_timeout_s
        left = self.server.drain(timeout)
        if left:
            log.warning(
                "%d transfers still running after %.0f s of draining: checkpointed for resume", left, timeout
            )
        return left

    # -- reload --------------------------------------------------------------
    def reload(self, path: str | None = None) -> dict:
        """Re-read the config file; apply what can change live; report the rest."""
        path = path or self.config_path
        if not path:
            return {"ok": False, "error": "this daemon was not started from a config file"}
        with self._reload_lock:
            self.notifier.reloading()
            try:
                try:
                    new = load_toml(path)
                except ConfigError as exc:
                    self.reloads_rejected += 1
                    log.error("reload of %s rejected; the running config stays:\n  %s", path,
                              "\n  ".join(exc.problems))  # fmt: skip
                    return {
                        "ok": False,
                        "error": "config rejected; the running config stays",
                        "problems": exc.problems,
                    }
                live, restart = reload_plan(self.config, new)
                running = merge_live(self.config, new)
                self._apply(running)
                self.config = running
                self.reloads_ok += 1
                for line in live:
                    log.info("reload: %s", line)
                for line in restart:
                    log.warning("reload: %s needs a restart; still running the old value", line)
                return {"ok": True, "applied": live, "needs_restart": restart}
            finally:
                self.notifier.ready(self.summary())

    def _apply(self, cfg: Config) -> None:
        if cfg.logging.format != self.config.logging.format:
            configure_logging(cfg.logging.level_number, cfg.logging.format)
        logging.getLogger().setLevel(cfg.logging.level_number)
        logging.getLogger("dwcp").setLevel(cfg.logging.level_number)
        self.store.keep_versions = cfg.storage.keep_versions
        self.server.reconfigure(cfg)
        self.sender.reconfigure(cfg.transport, cfg.codec)
        self._register_checks(cfg)
        if (
            cfg.cluster != self.config.cluster
        ):  # membership/policy/breakers: a fresh view (breakers restart closed)
            self.cluster = ClusterView(cfg.cluster, cfg.node) if cfg.cluster.peers else None
        self.effective, self._members_key = cfg, None  # the membership applies again (_sync_members)

    # -- membership ------------------------------------------------------------
    def _sync_members(self) -> None:
        """Follow the catalog's membership (``dwcp cluster add|remove``): the configured peers with its
        member records applied become ``effective``'s [cluster] peers -- the data port's relay check,
        anti-entropy's members and homes -- and, with this node itself once its data port is bound,
        the cluster view's (a fresh one: its breakers restart closed): a cluster send from here may
        keep a copy here, on the same ring anti-entropy uses."""
        cb, cfg, me = self.catalog_backend, self.config, self.config.node
        boot = {p.id: {"address": p.address, "region": p.region} for p in cfg.cluster.peers}
        rev = 0
        if isinstance(cb, RaftDriver):
            with cb.lock:
                rev = cb.catalog.members_rev
                table = cb.catalog.membership(boot | {me.id: {"address": "", "region": me.region}})
        else:
            table = boot
        try:
            host, port = self.server.address
            here = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except AssertionError:  # not bound yet
            here = None
        if (rev, here) == self._members_key:
            return
        known = {p.id: p for p in cfg.cluster.peers}
        peers = tuple(dataclasses.replace(known[i], address=m["address"], region=m["region"] or known[i].region)
                      if i in known else PeerConfig(i, m["address"], m["region"] or "default")
                      for i, m in sorted(table.items()) if i != me.id)  # fmt: skip
        self.effective = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, peers=peers))
        members = peers
        if peers and here is not None:
            members = (*peers, PeerConfig(me.id, here, me.region, me.latitude_deg, me.longitude_deg))
        seen = {pid: p.address for pid, p in self.cluster.peers.items()} if self.cluster is not None else {}
        if {p.id: p.address for p in members} != seen:
            self.cluster = (ClusterView(dataclasses.replace(cfg.cluster, peers=members), me) if peers
                            else None)  # fmt: skip
            log.info("cluster members: %s", ", ".join(sorted(p.id for p in members)))
        self.server.reconfigure(self.effective)
        self._members_key = (rev, here)

    def _member(self, req: dict) -> dict:
        """``dwcp cluster add|remove``: a member record through consensus (any node: it is forwarded to the
        leader); the leader then changes the Raft voters to match, one node at a time."""
        cb = self.catalog_backend
        if not isinstance(cb, RaftDriver):
            raise ConfigError(f"{self.config.node.id} runs no Raft catalog: membership changes need "
                              "[consensus] enabled (algorithm raft)")  # fmt: skip
        action, node = str(req.get("action")), str(req.get("id", ""))
        with cb.lock:
            now = cb.membership()
        if action == "remove":
            if node not in now:
                raise ConfigError(f"{node} is not a member (members: {', '.join(sorted(now))})")
            if node == cb.status()["leader"]:
                raise ConfigError(f"{node} leads the cluster now: stop it (another leader is elected), then "
                                  "remove it")  # fmt: skip
        elif action == "add" and now.get(node) == str(req.get("address", "")):
            raise ConfigError(f"{node} is a member at {now[node]} already")
        res = cb.propose({"op": "member", "action": action, "node": node, "address": str(req.get("address", "")),
                          "region": str(req.get("region", "")), "at": time.time()}, timeout_s=10)  # fmt: skip
        if not res.get("ok"):
            raise ConfigError(f"{node}: {res.get('error')}")
        self._sync_members()
        return {"ok": True, "members": sorted(cb.membership()), "voters": cb.status()["voters"]}

    # -- control API ---------------------------------------------------------
    def status(self) -> dict:
        host, port = self.server.address
        cb = self.catalog_backend
        return {
            "ok": True, "node": self.config.node.id, "region": self.config.node.region,
            "version": dwcp.__version__, "backend": dwcp.backend,
            "data_port": f"{host}:{port}", "tls": not self.config.security.plaintext,
            "uptime_s": time.time() - self.started, "draining": self.server.draining,
            "transfers": self.server.transfers(),
            "server": self.server.stats_snapshot(), "sends_ok": self.sends_ok, "sends_failed": self.sends_failed,
            "reloads_ok": self.reloads_ok, "reloads_rejected": self.reloads_rejected,
            "keys": len(self.store.keys()),
            "cluster": self.cluster.status() if self.cluster is not None else None,
            "raft": cb.status() if isinstance(cb, RaftDriver) else None,
            "consensus": {"backend": self.config.consensus.backend, **cb.status()} if cb is not None else None,
            "catalog": self._catalog_where(cb),
            "health": self.health.evaluate(time.monotonic()).to_dict(),
            "metrics_endpoint": "http://{}:{}/".format(*self.http.address) if self.http is not None else None,
            "engine": self.server.engine.info() if self.server.engine is not None else None,
            "repair": self.repairer.status() if self.repairer is not None else None,
            "scrub": self.scrubber.status(),
        }  # fmt: skip

    @staticmethod
    def _catalog_where(cb) -> dict | None:
        """Every key's latest version and holders, from this node's applied catalog (under its lock: a Raft
        snapshot install replaces the catalog object)."""
        if cb is None:
            return None
        with cb.lock:
            return cb.catalog.where()

    def locate(self, key: str) -> dict:
        """Where ``key``'s versions live, from this node's applied catalog: each version with its holders,
        and the data-port address of every holder this node knows (its [cluster] peers, itself)."""
        from dwcp.storage import validate_key

        validate_key(key)
        cb = self.catalog_backend
        if cb is None:
            raise ConfigError(f"{self.config.node.id} keeps no catalog ([consensus] is not enabled): "
                              "fetch with --from HOST:PORT")  # fmt: skip
        with cb.lock:
            versions = cb.catalog.versions(key)
        host, port = self.server.address
        addresses = {p.id: p.address for p in self.effective.cluster.peers}
        addresses[self.config.node.id] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"ok": True, "key": key, "versions": versions, "addresses": addresses}

    def summary(self) -> str:
        host, port = self.server.address
        return (f"serving {host}:{port}, {len(self.server.transfers())} transfers in progress, "
                f"{self.server.stats_snapshot()['transfers_ok_total']} received, {self.sends_ok} sent"
                + (", draining" if self.server.draining else ""))  # fmt: skip

    def handle(self, req: dict, fds: list[int] | None = None) -> dict:
        """One control request (dwcp.daemon.control); ``fds``: descriptors that came with it, owned here."""
        fds = list(fds or ())
        try:
            return self._handle(req, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(self, req: dict, fds: list[int]) -> dict:
        op = req.get("op")
        self._sync_members()
        if op == "status":
            return self.status()
        if op == "reload":
            return self.reload()
        if op == "send":
            return self._send(req, fds)
        if op == "scrub":
            rate = req.get("rate")
            return {"ok": True, **self.scrubber.run_once(rate=float(rate) if rate is not None else 0.0)}
        if op == "repair":
            if self.repairer is None:
                raise ConfigError(f"{self.config.node.id} runs no anti-entropy: it needs [cluster] peers and a "
                                  "catalog ([consensus] enabled)")  # fmt: skip
            key = req.get("key")
            return {"ok": True, **self.repairer.run_once(str(key) if key is not None else None)}
        if op in ("ls", "rm", "gc", "du"):
            return self._store_op(req)
        if op == "member":
            return self._member(req)
        if op == "history":
            cb = self.catalog_backend
            if cb is None:
                raise ConfigError(f"{self.config.node.id} keeps no catalog ([consensus] is not enabled)")
            key = str(req.get("key", ""))
            with cb.lock:
                hist = cb.catalog.history(key)
            return {"ok": True, "key": key, **hist}
        if op == "locate":
            return self.locate(str(req.get("key", "")))
        if op == "consensus_switch":
            cb = self.catalog_backend
            if not isinstance(cb, EpochDriver):
                raise ConfigError("this node's consensus is not switchable: set [consensus] adaptive = true "
                                  "(or algorithm = \"bft\") on every node and restart them")  # fmt: skip
            res = cb.switch(str(req.get("algorithm")), timeout_s=float(req.get("timeout_s", 10.0)))
            return {"ok": bool(res.get("ok")), "result": res, "consensus": cb.status()}
        if op == "stop":
            self.stop()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _send(self, req: dict, fds: list[int]) -> dict:
        """The control API's send: the object is the descriptor the CLI opened and passed (it reads
        with the CLI user's permissions; taken over from ``fds``), else ``path``, opened here.  Read,
        not mapped: a file truncated under a mapping would kill the daemon with SIGBUS."""
        to = str(req["to"])
        kind, _ = parse_target(to)
        if kind != "addr" and self.cluster is None:
            raise ConfigError(f"--to {to}: this daemon has no [cluster] peers")
        path = str(req.get("path", ""))
        src = FileSource.from_fd(fds.pop(0), path or "<fd>") if fds else FileSource.open(path)
        streams = req.get("streams")
        kw: dict[str, Any] = {
            "streams": None if streams in (None, "auto") else int(streams),
            "rate_limit_bytes_per_s": req.get("rate"),
            "origin": self._origin(str(req["key"])),
        }
        try:
            if kind == "addr":
                host, port = parse_hostport(to)
                stats = self.sender.send(src, host, port, str(req["key"]), **kw).to_json()
            else:
                assert self.cluster is not None
                stats = self.cluster.send(
                    self.sender, src, str(req["key"]), to, via=req.get("via"), **kw
                ).to_json()
            self.sends_ok += 1
        except Exception:
            self.sends_failed += 1
            raise
        finally:
            src.close()
        return {"ok": True, **stats}

    # -- main loop -------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wait(self) -> None:
        """The main loop: watchdog, status, reloads; returns once asked to stop."""
        wd = self.notifier.watchdog_interval_s  # half of WatchdogSec, None when not ours to feed
        interval = min(wd, 5.0) if wd else 5.0
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if wd:
                self.notifier.watchdog()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self._sync_members()
            self.notifier.status(self.summary())


def run(config: Config, config_path: str | None = None) -> int:
    configure_logging(config.logging.level_number, config.logging.format)
    d = Daemon(config, config_path=config_path)
    d.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: d.stop())
    signal.signal(signal.SIGHUP, lambda *_: d.request_reload())
    d.health.readiness.mark_started()
    d.health.readiness.set_serving(True)
    d.notifier.ready(d.summary())
    try:
        d.wait()
        d.notifier.stopping("draining")
        d.drain()
    finally:
        d.close()
    log.info("daemon %s stopped", config.node.id)
    return 0
