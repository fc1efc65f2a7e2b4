"""A node's view of its cluster, and sending with failover.

``ClusterView`` ties the sans-IO pieces together for one node: the peers
from ``[cluster]``, the hash ring over them, a circuit breaker per peer, the
balancer, session affinity and the region graph.  ``send`` resolves a
target -- ``region:NAME``, ``cluster`` (every peer), a peer id, or
``HOST:PORT`` -- to an ordered list of candidates (the key's ring replicas
first, so a key keeps landing where its baseline is; the affinity peer
first of all), and sends to the first that takes it; when a peer fails,
even mid-transfer, its breaker learns of it and the transfer moves to the
next candidate, which resumes whatever part of the object it already holds.
Only ``probe`` does I/O (a TCP connect with a timeout).

Replication (``replicas`` > 1, a ``cluster`` or ``region:`` target): the
client sends once, to the first healthy home of the key; that receiver
stores each chunk and forwards it, verified, to the next home, which does
the same (HELLO's ``forward`` chain, ``dwcp.transport.session.Forward``);
a home that fails is skipped by the hop before it.  ``ack`` decides when
the send returns: after ``acks_needed`` verified copies (one, a majority,
all).  Short of that it raises ``ReplicationError`` naming each home's
outcome; the copies made stay (each home lists itself in the catalog after
its verified commit), and anti-entropy repairs the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dwcp.config import ClusterConfig, NodeConfig, acks_needed
from dwcp.errors import ConfigError, DWCPError, ReplicationError
from dwcp.transport.dialer import Dialer
from dwcp.transport.session import PROTOCOL_VERSION, Forward, TransferReport
from dwcp.transport.source import SourceError, as_source

from .balancer import Balancer, NoHealthyPeerError, Peer, SessionAffinity
from .breaker import STATE_VALUES, BreakerConfig, CircuitBreaker
from .geo import Location, PrefixTable
from .ring import HashRing
from .routing import RegionGraph

__all__ = ["ClusterView", "ClusterSendReport", "parse_target", "probe_handler"]

log = logging.getLogger("dwcp.cluster")


@dataclass(frozen=True, slots=True)
class ClusterSendReport:
    """What ``ClusterView.send`` reports: the sender's report, and who took the object after what failed."""

    transfer: TransferReport  # the send to the peer that took it (through the relay, if via)
    peer: str  # the peer id that stored the object
    region: str  # that peer's region
    failover: tuple[dict[str, str], ...]  # what failed before, in order: {"peer": id, "error": why}
    via: str | None = None  # the relay's peer id, when the object went through one
    # a replicated send: each home's outcome, {"peer", "state": stored | failed | pending, "error"}
    replicas: tuple[dict[str, str], ...] = ()
    ack: dict[str, Any] | None = None  # a replicated send: {"policy", "needed", "verified"}

    def to_json(self) -> dict[str, Any]:
        """The transfer's JSON plus ``peer``, ``region``, ``via`` (through a relay only), ``failover``,
        and for a replicated send ``replicas`` and ``ack``."""
        doc = self.transfer.to_json() | {"peer": self.peer, "region": self.region}
        if self.via is not None:
            doc["via"] = self.via
        doc["failover"] = [dict(f) for f in self.failover]
        if self.ack is not None:
            doc["replicas"] = [dict(r) for r in self.replicas]
            doc["ack"] = dict(self.ack)
        return doc


def _is_conflict(exc: BaseException) -> bool:
    """A send the catalog refused as a concurrent write (ERR_CONFLICT): not the peer's failure."""
    from dwcp.wire import consts as C

    return getattr(exc, "code", None) == C.ERR_CONFLICT


def parse_target(text: str) -> tuple[str, str]:
    """("addr", "host:port") | ("region", name) | ("cluster", "") | ("node", id)."""
    if text.startswith("region:"):
        name = text[len("region:") :]
        if not name:
            raise ConfigError("--to region: needs a region name")
        return "region", name
    if text == "cluster":
        return "cluster", ""
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit():
        return "addr", text
    return "node", text


def probe_handler(node: NodeConfig, links: Callable[[], list[list]]):
    """The data port's answer to a peer's probe (its op handler): this node's id and region, and the
    region links it measured, ``links()`` -- [[from, to, latency_s, bytes_per_s], ...] -- for routing."""
    from dwcp.wire import consts as C
    from dwcp.wire.messages import encode_control

    def answer(fs, transfer_id: int, hello: dict, identity: str | None, peer: str) -> None:
        fs.send(encode_control(C.FRAME_WELCOME, transfer_id, {"mode": "probe", "node": node.id, "region": node.region,
                                                                "links": links()}))  # fmt: skip

    return answer


class ClusterView:
    def __init__(
        self, cluster: ClusterConfig, node: NodeConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = cluster
        self.node = node
        self.clock = clock
        self.peers: dict[str, Peer] = {}
        for p in cluster.peers:
            loc = Location(p.latitude_deg, p.longitude_deg, p.region) if p.latitude_deg is not None else None
            self.peers[p.id] = Peer(p.id, p.address, p.region, loc)
        bc = BreakerConfig(cluster.breaker_consecutive_failures, cluster.breaker_failure_rate,
                           cluster.breaker_min_calls, cluster.breaker_window_s, cluster.breaker_open_s,
                           cluster.breaker_max_open_s, cluster.breaker_half_open_calls)  # fmt: skip
        self.breakers = {pid: CircuitBreaker(bc) for pid in self.peers}
        self.ring = HashRing(self.peers, vnodes=cluster.vnodes)
        prefixes = PrefixTable((e["cidr"], Location(e["latitude_deg"], e["longitude_deg"], e.get("region", "")))
                               for e in cluster.prefixes)  # fmt: skip
        here = Location(node.latitude_deg, node.longitude_deg, node.region)
        self.balancer = Balancer(list(self.peers.values()), policy=cluster.policy, here=here,
                                 region_priority=cluster.region_priority, prefixes=prefixes,
                                 allow=lambda pid: self.breakers[pid].current(self.clock()) != "open")  # fmt: skip
        self.affinity = SessionAffinity(cluster.affinity_ttl_s)
        self.graph = RegionGraph()
        self.failovers = 0

    # -- choosing --------------------------------------------------------------
    def candidates(self, key: str, target: str) -> list[Peer]:
        """Peers to try for ``key`` at ``target``, best first (only healthy, breaker not open)."""
        kind, what = parse_target(target)
        now = self.clock()
        if kind == "addr":
            raise ValueError("a HOST:PORT target needs no cluster")
        if kind == "node":
            if what not in self.peers:
                raise ConfigError(
                    f"--to {what}: no such peer in [cluster] (known: {', '.join(sorted(self.peers)) or 'none'})"
                )
            pool = [what]
        else:
            pool = [pid for pid, p in self.peers.items() if kind == "cluster" or p.region == what]
            if not pool:
                regions = sorted({p.region for p in self.peers.values()})
                raise ConfigError(
                    f"--to {target}: no peer in that region (regions: {', '.join(regions) or 'none'})"
                )
            ring = self.ring if kind == "cluster" else self.ring.with_peers(pool)
            homes = ring.replicas(key, self.config.replicas)
            rest = ring.replicas(key, len(pool))[len(homes) :]
            # the key's homes first (its baseline lives there), spread by the balancer's policy;
            # then the rest of the ring order for failover
            pool = self._spread(homes) + rest
            sticky = self.affinity.get(key, now)
            if sticky in pool:
                pool.remove(sticky)
                pool.insert(0, sticky)
        closed = [pid for pid in pool if self.breakers[pid].current(now) != "open"]
        # the probes' view is advisory: with none of the pool healthy by it (a cluster that has just
        # started probes before its peers are up), the peers behind closed breakers are tried anyway
        # ("panic mode"), and their breakers learn what the probes missed
        ok = [pid for pid in closed if self.peers[pid].healthy] or closed
        if not ok:
            states = ", ".join(f"{pid} ({'unhealthy' if not self.peers[pid].healthy else self.breakers[pid].current(now)})"
                               for pid in pool)  # fmt: skip
            raise NoHealthyPeerError(f"no healthy peer for {key!r} at {target}: {states}")
        return [self.peers[pid] for pid in ok]

    def homes(self, key: str, target: str) -> list[str]:
        """The key's ring homes at ``target`` (``cluster`` or ``region:R``): up to ``replicas`` peer ids,
        the one affinity (else the balancer) prefers first, then the rest in ring order; healthy or not."""
        kind, what = parse_target(target)
        pool = [pid for pid, p in self.peers.items() if kind == "cluster" or p.region == what]
        if not pool:
            raise ConfigError(f"--to {target}: no peer there (regions: "
                              f"{', '.join(sorted({p.region for p in self.peers.values()})) or 'none'})")  # fmt: skip
        ring = self.ring if kind == "cluster" else self.ring.with_peers(pool)
        homes = ring.replicas(key, self.config.replicas)
        if not homes:
            return homes
        sticky = self.affinity.get(key, self.clock())
        first = sticky if sticky in homes else self._spread(homes)[0]
        return [first] + [h for h in homes if h != first]

    def _spread(self, homes: list[str]) -> list[str]:
        if len(homes) < 2:
            return homes
        try:
            first = self.balancer.pick(homes).id
        except NoHealthyPeerError:
            return homes
        return [first] + [h for h in homes if h != first]

    # -- learning ----------------------------------------------------------------
    def record(self, peer_id: str, ok: bool, *, seconds: float | None = None, size: int = 0,
               rtt_s: float | None = None) -> None:  # fmt: skip
        now = self.clock()
        p = self.peers.get(peer_id)
        if p is None:
            return
        b = self.breakers[peer_id]
        before = b.current(now)
        b.record(ok, now)
        if b.current(now) != before:
            log.warning("peer %s: circuit %s -> %s", peer_id, before, b.current(now))
        if ok and seconds and size:
            bw = size / seconds
            p.latency_ewma_s = 0.7 * p.latency_ewma_s + 0.3 * seconds if p.latency_ewma_s else seconds
            if p.region != self.node.region:
                self.graph.observe(self.node.region, p.region, rtt_s=rtt_s, bandwidth_bytes_per_s=bw)

    def probe(self, peer_id: str, dialer: Dialer, timeout_s: float = 2.0) -> bool:
        """Probe the peer's data port through ``dialer`` (the node's TLS identity): liveness, the RTT to its
        region, and the region links it measured (so relays can be planned over links this node never used)."""
        from dwcp.wire import consts as C
        from dwcp.wire.messages import encode_control

        p = self.peers[peer_id]
        host, _, port = p.address.rpartition(":")
        try:
            fs, _ = dialer.dial(host.strip("[]"), int(port), timeout_s=timeout_s)
            try:
                connected = time.perf_counter()
                fs.send(encode_control(C.FRAME_HELLO, 1, {"v": PROTOCOL_VERSION, "role": "control", "op": "probe",
                                                          "node": self.node.id}))  # fmt: skip
                got = fs.recv_control(C.FRAME_WELCOME)
            finally:
                fs.close()
        except (OSError, DWCPError):
            p.healthy = False
            return False
        if got is None or got[0].frame_type != C.FRAME_WELCOME or got[1].get("mode") != "probe":
            p.healthy = False
            return False
        msg = got[1]
        p.healthy = True
        rtt = time.perf_counter() - connected  # HELLO -> WELCOME: one round trip
        if p.region != self.node.region:
            self.graph.observe(self.node.region, p.region, rtt_s=rtt)
        if msg.get("region") == p.region:
            self.graph.merge(msg.get("links", []), origin=p.region)
        return True

    # -- sending ------------------------------------------------------------------
    def relay_for(self, key: str, target: str, size: int, via: str | None = None) -> Peer | None:
        """The peer to relay through: ``via`` (region:R or a peer id) if given, else the first relay of the
        route the region graph's measurements say moves ``size`` bytes soonest; None for a direct send."""
        kind, what = parse_target(target)
        if via is None:
            if kind != "region" or not size:
                return None
            route = self.graph.plan(self.node.region, what, size)
            if route is None or not route.relays:
                return None
            via = f"region:{route.relays[0]}"
            log.info("route to %s for %d bytes: via %s (%.1f s estimated)", target, size, " -> ".join(route.regions),
                     route.estimated_s or 0)  # fmt: skip
        vkind, vwhat = parse_target(via)
        if vkind == "node":
            pool = [vwhat] if vwhat in self.peers else []
        elif vkind == "region":
            pool = [pid for pid, p in self.peers.items() if p.region == vwhat]
        else:
            raise ConfigError(f"--via {via}: a peer id or region:NAME")
        now = self.clock()
        ok = [pid for pid in pool if self.peers[pid].healthy and self.breakers[pid].current(now) != "open"]
        if not ok:
            return None
        return self.balancer.pick(ok)

    def send(
        self, sender, data, key: str, target: str, *, via: str | None = None, **kw: Any
    ) -> ClusterSendReport:
        """Send ``data`` (a buffer or a FileSource) as ``key`` to ``target`` with failover; returns the
        sender's report with ``peer`` (who took it) and ``failover`` (what failed before, in order).
        A SourceError (the local file cannot be sent) is not the peer's fault: it is raised at once.

        Through a relay (``via``, or when the measured region graph says it is faster) the first
        candidate gets the object from the relay, pipelined; if the relay fails, the send goes direct.
        """
        tried: list[dict[str, str]] = []
        size = as_source(data).size
        relay = self.relay_for(key, target, size, via)
        if relay is None and self.config.replicas > 1 and parse_target(target)[0] in ("cluster", "region"):
            return self.replicate(sender, data, key, target, **kw)
        if relay is not None:
            final = self.candidates(key, target)[0]
            if relay.id != final.id:
                host, _, port = relay.address.rpartition(":")
                relay.active += 1
                try:
                    r = sender.send(data, host.strip("[]"), int(port), key, forward_to=final.address, **kw)
                except SourceError:
                    raise
                except (DWCPError, OSError) as exc:
                    self.record(relay.id, False)
                    tried.append({"peer": relay.id, "error": f"relay: {type(exc).__name__}: {exc}"[:300]})
                    log.warning("relaying %s via %s failed (%s); sending direct", key, relay.id, exc)
                else:
                    self.record(relay.id, True)
                    self.record(final.id, True)
                    self.affinity.set(key, final.id, self.clock())
                    return ClusterSendReport(r, final.id, final.region, tuple(tried), via=relay.id)
                finally:
                    relay.active -= 1
        for p in self.candidates(key, target):
            now = self.clock()
            if not self.breakers[p.id].allow(now):
                continue
            host, _, port = p.address.rpartition(":")
            p.active += 1
            try:
                r = sender.send(data, host.strip("[]"), int(port), key, **kw)
            except SourceError:
                raise
            except (DWCPError, OSError) as exc:
                if _is_conflict(exc):
                    raise
                self.record(p.id, False)
                tried.append({"peer": p.id, "error": f"{type(exc).__name__}: {exc}"[:300]})
                self.failovers += 1
                log.warning("send of %s to %s failed (%s); trying the next replica", key, p.id, exc)
                continue
            finally:
                p.active -= 1
            self.record(p.id, True, seconds=r.seconds, size=r.size, rtt_s=r.rtt_ms / 1000 or None)
            self.affinity.set(key, p.id, self.clock())
            return ClusterSendReport(r, p.id, p.region, tuple(tried))
        raise NoHealthyPeerError(f"every candidate for {key!r} at {target} failed: "
                                 + "; ".join(f"{t['peer']}: {t['error']}" for t in tried) if tried else
                                 f"no candidate for {key!r} at {target} would take a call (breakers open)")  # fmt: skip

    def replicate(self, sender, data, key: str, target: str, **kw: Any) -> ClusterSendReport:
        """Store ``data`` as ``key`` on its homes at ``target`` through one send down a chain (module
        docstring); returns once ``ack``'s copies are verified, else raises ReplicationError."""
        homes = self.homes(key, target)
        need = acks_needed(self.config.ack, len(homes))
        now = self.clock()
        outcome: dict[str, dict[str, str]] = {}  # peer id -> its outcome
        up, doubtful = [], []
        for pid in homes:
            p, state = self.peers[pid], self.breakers[pid].current(now)
            if state == "open":
                outcome[pid] = {"peer": pid, "state": "failed", "error": "its circuit breaker is open"}
            elif not p.healthy:
                doubtful.append(pid)
            else:
                up.append(pid)
        if len(up) < need:  # the probes' view is advisory (as in candidates): try the doubtful homes too
            up += doubtful
        else:
            outcome.update({pid: {"peer": pid, "state": "failed", "error": "unhealthy"} for pid in doubtful})
        by_addr = {self.peers[pid].address: pid for pid in homes}
        tried: list[dict[str, str]] = []
        for i, first in enumerate(up):
            chain = up[i + 1 :]  # short of `need` the copies are still made: the send fails, they stay
            addrs = [self.peers[c].address for c in chain]
            fwd = Forward(addrs[0], tuple(addrs[1:]), min(need - 1, len(chain))) if chain else None
            p = self.peers[first]
            host, _, port = p.address.rpartition(":")
            p.active += 1
            try:
                r = sender.send(data, host.strip("[]"), int(port), key, forward_to=fwd, **kw)
            except SourceError:
                raise
            except (DWCPError, OSError) as exc:
                if _is_conflict(exc):  # the catalog refused the write: no home would take it
                    raise
                why = f"{type(exc).__name__}: {exc}"[:300]
                self.record(first, False)
                tried.append({"peer": first, "error": why})
                outcome[first] = {"peer": first, "state": "failed", "error": why}
                self.failovers += 1
                log.warning("replicating %s: the first home %s failed (%s); starting the chain at the next", key,
                            first, exc)  # fmt: skip
                continue
            finally:
                p.active -= 1
            self.record(first, True, seconds=r.seconds, size=r.size, rtt_s=r.rtt_ms / 1000 or None)
            self.affinity.set(key, first, self.clock())
            outcome[first] = {"peer": first, "state": "stored"}
            for hop in (r.relayed or {}).get("hops", []):
                pid = by_addr.get(hop["to"], hop["to"])
                outcome[pid] = {"peer": pid, **{k: v for k, v in hop.items() if k != "to"}}
                if hop["state"] != "pending" and pid in self.peers:
                    self.record(pid, hop["state"] == "stored")
            replicas = tuple(
                outcome.get(h, {"peer": h, "state": "failed", "error": "not reached"}) for h in homes
            )
            verified = sum(o["state"] == "stored" for o in replicas)
            if verified < need:
                raise ReplicationError(self._short(key, replicas, verified, need), replicas)
            return ClusterSendReport(r, first, p.region, tuple(tried), replicas=replicas,
                                     ack={"policy": self.config.ack, "needed": need, "verified": verified})  # fmt: skip
        replicas = tuple(
            outcome.get(h, {"peer": h, "state": "failed", "error": "not reached"}) for h in homes
        )
        raise ReplicationError(self._short(key, replicas, 0, need), replicas)

    def _short(self, key: str, replicas, verified: int, need: int) -> str:
        failed = "; ".join(
            f"{o['peer']}: {o.get('error', o['state'])}" for o in replicas if o["state"] != "stored"
        )
        return (f"{key}: {verified} of {len(replicas)} replicas verified, cluster.ack = {self.config.ack!r} needs "
                f"{need} ({failed}); the copies made stay, anti-entropy repairs the rest")  # fmt: skip

    # -- fetching ---------------------------------------------------------------------
    def fetch_order(self, holders: list[str], addresses: dict[str, str]) -> list[tuple[str, str]]:
        """(peer id, address) of ``holders`` to fetch from, best first: this node itself (no network),
        then the balancer's pick among the healthy peers behind closed breakers (``policy``: p2c, geo,
        region...), then the rest of those; holders with no known address or an open breaker last."""
        now = self.clock()
        mine = [h for h in holders if h == self.node.id and h in addresses]
        usable = [h for h in holders if h in self.peers and h != self.node.id and self.peers[h].healthy
                  and self.breakers[h].current(now) != "open"]  # fmt: skip
        order = list(mine)
        if usable:
            first = self.balancer.pick(usable).id
            order += [first] + [h for h in usable if h != first]
        order += [h for h in holders if h not in order and h in addresses]
        return [(h, addresses[h]) for h in order]

    def fetch(self, fetcher: Callable[[str, int], dict], key: str, holders: list[str],
              addresses: dict[str, str]) -> dict:  # fmt: skip
        """Fetch ``key`` from one of ``holders`` (``fetch_order``), failing over to the next;
        ``fetcher(host, port)`` fetches and verifies (dwcp.transport.fetch).  The report gets
        ``peer`` (who served it) and ``failover`` (who failed before, and why)."""
        tried: list[dict[str, str]] = []
        order = self.fetch_order(holders, addresses)
        if not order:
            raise NoHealthyPeerError(f"{key}: no holder has a known address (holders: {', '.join(holders) or 'none'}; "
                                     "add them to [cluster] peers)")  # fmt: skip
        for pid, addr in order:
            host, _, port = addr.rpartition(":")
            try:
                r = fetcher(host.strip("[]"), int(port))
            except (DWCPError, OSError) as exc:
                why = f"{type(exc).__name__}: {exc}"[:300]
                tried.append({"peer": pid, "error": why})
                self.record(pid, False)
                log.warning("fetching %s from %s failed (%s); trying the next holder", key, pid, exc)
                continue
            self.record(pid, True)
            return {**r, "peer": pid, "failover": tried}
        raise NoHealthyPeerError(f"{key}: every holder failed: " + "; ".join(f"{t['peer']}: {t['error']}"
                                                                           for t in tried))  # fmt: skip

    # -- reporting -------------------------------------------------------------------
    def status(self) -> dict:
        now = self.clock()
        return {
            "peers": {pid: {"address": p.address, "region": p.region, "healthy": p.healthy, "active": p.active,
                            "breaker": self.breakers[pid].snapshot(now)} for pid, p in self.peers.items()},
            "balancer": self.balancer.stats(), "failovers": self.failovers,
            "affinity_entries": len(self.affinity),
        }  # fmt: skip

    def breaker_states(self) -> dict[str, int]:
        """Per-peer breaker state as a metric value (0 closed, 1 half-open, 2 open)."""
        now = self.clock()
        return {pid: STATE_VALUES[b.current(now)] for pid, b in self.breakers.items()}
