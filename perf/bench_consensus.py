"""Raft on loopback: commit latency at a fixed rate, sustained throughput, failover time.

    python perf/bench_consensus.py [--nodes 3] [--rate 1000] [--seconds 5] [--data-root DIR] [--out FILE]

Three (--nodes) data servers with their Raft drivers in one process, talking
over real sockets on 127.0.0.1 (plaintext), storage fsynced under
--data-root (default: the disk under /tmp; pass /dev/shm to take fsync out).

* latency: proposals of a catalog "version" command at --rate per second
  from 8 client threads; each is timed from propose() to applied on the
  proposing node (committed by a quorum); p50/p99/max (targets: p99 <= 10 ms
  at 1000 ops/s);
* throughput: 32 threads proposing as fast as they can for --seconds
  (target >= 5000 ops/s);
* failover: the leader's driver is stopped; the time until another node is
  leader and a proposal commits.

The peer is the same proposal path with 1 node (no replication), same run.

BFT (--bft-nodes 4,7): the same measures with the daemon's EpochDriver
running PBFT (Ed25519-signed messages, fresh keys), at --bft-rate ops/s
(every node verifies O(n) signatures per command, all nodes share this one
process and its GIL: 1000 ops/s is out of reach, so the fixed rate is
lower); failover stops the primary and times a proposal on another node
(a view change).  The peer is the same run's Raft cluster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import fixed_rate, machine, max_rate, pct, write_json  # noqa: E402

from dwcp._testbase.transfer import server_config  # noqa: E402
from dwcp.config import TransportConfig  # noqa: E402
from dwcp.consensus.driver import RaftDriver  # noqa: E402
from dwcp.consensus.epoch_driver import EpochDriver  # noqa: E402
from dwcp.consensus.raft import Role  # noqa: E402
from dwcp.transport.server import DataServer  # noqa: E402


class Cluster:
    def __init__(self, n: int, root: str, algorithm: str = "raft") -> None:
        self.ids = [f"r{i}" for i in range(n)]
        self.algorithm = algorithm
        self.servers = {i: DataServer(server_config(os.path.join(root, i), node=i)) for i in self.ids}
        addr = {i: "{}:{}".format(*s.start()) for i, s in self.servers.items()}
        self.drivers: dict = {}
        if algorithm == "bft":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            keys = {i: Ed25519PrivateKey.generate() for i in self.ids}
            pubs = {i: k.public_key() for i, k in keys.items()}
            self.drivers = {i: EpochDriver(i, {p: addr[p] for p in self.ids if p != i}, os.path.join(root, i),
                                           transport=TransportConfig(), algorithm="bft", signer=keys[i],
                                           verify_keys=pubs, tick_s=0.05) for i in self.ids}  # fmt: skip
        else:
            self.drivers = {i: RaftDriver(i, {p: addr[p] for p in self.ids if p != i}, os.path.join(root, i),
                                          transport=TransportConfig(), tick_s=0.05) for i in self.ids}  # fmt: skip
        for i in self.ids:
            self.servers[i].raft_deliver = self.drivers[i].deliver
            self.drivers[i].start()

    def leader(self) -> str | None:
        if self.algorithm == "bft":  # the primary of the current view, as the live nodes see it
            live = [d for d in self.drivers.values() if not d.stopped.is_set()]
            views = [d.node.engine.node for d in live]
            v = max(e.view for e in views)
            return views[0].primary(v) if all(e.view == v for e in views) else None
        for i, d in self.drivers.items():
            if not d.stopped.is_set() and d.node.role is Role.LEADER:
                return i
        return None

    def wait_leader(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.leader()
            if lead is not None:
                return lead
            time.sleep(0.005)
        raise RuntimeError("no leader")

    def close(self) -> None:
        for d in self.drivers.values():
            d.close()
        for s in self.servers.values():
            s.close()


def cmd(k: int) -> dict:
    return {"op": "version", "key": f"bench/{k % 1000}", "digest": f"{k:032x}", "size": k, "holder": "bench"}


def run(n: int, root: str, rate: float, seconds: float, failover: bool, algorithm: str = "raft") -> dict:
    c = Cluster(n, root, algorithm)
    try:
        lead = c.wait_leader()
        d = c.drivers[lead]
        lat = fixed_rate(lambda k: d.propose(cmd(k), timeout_s=10), rate, seconds, 0)
        out = {"nodes": n, "rate_ops_s": rate, "latency_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                                                              "max": max(lat) * 1000, "n": len(lat)}}  # fmt: skip
        out["max_ops_s"] = max_rate(lambda k: d.propose(cmd(k), timeout_s=10), seconds, 10**7)
        if failover and n > 1:
            t0 = time.perf_counter()
            c.drivers[lead].close()
            c.servers[lead].close()
            if algorithm == "bft":  # any live node proposes; the backups' timers change the view
                new = next(i for i in c.ids if i != lead)
                c.drivers[new].propose(cmd(10**9), timeout_s=30)
            else:
                new = None
                while new is None or new == lead:
                    new = c.leader()
                    time.sleep(0.001)
                c.drivers[new].propose(cmd(10**9), timeout_s=10)
            out["failover_s"] = time.perf_counter() - t0
        return out
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-root")
    ap.add_argument("--bft-nodes", default="4,7", help="PBFT cluster sizes to measure as well (\"\" = none)")
    ap.add_argument("--bft-rate", type=float, default=50.0, help="the fixed rate for the BFT latency, ops/s")
    ap.add_argument("--out")
    args = ap.parse_args()
    res: dict = {"machine": machine(), "data_root": args.data_root or tempfile.gettempdir(), "runs": {}}
    for n in (1, args.nodes):
        rs = []
        for _ in range(args.runs):
            root = tempfile.mkdtemp(prefix="dwcp-raft-", dir=args.data_root)
            rs.append(run(n, root, args.rate, args.seconds, failover=True))
        res["runs"][str(n)] = rs
        res[f"nodes_{n}"] = {
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rs),
            "max_ops_s": statistics.median(r["max_ops_s"] for r in rs),
            "failover_s": statistics.median(r["failover_s"] for r in rs) if n > 1 else None,
        }
    k = res[f"nodes_{args.nodes}"]
    res["ratios"] = {"p99_vs_single_node": k["p99_ms"] / res["nodes_1"]["p99_ms"],
                     "max_ops_vs_single_node": k["max_ops_s"] / res["nodes_1"]["max_ops_s"]}  # fmt: skip
    res["targets"] = {"p99_le_10ms_at_rate": k["p99_ms"] <= 10, "ge_5000_ops_s": k["max_ops_s"] >= 5000,
                      "failover_le_2s": (k["failover_s"] or 0) <= 2}  # fmt: skip
    for n in (int(x) for x in args.bft_nodes.split(",") if x):
        rs = []
        for _ in range(args.runs):
            root = tempfile.mkdtemp(prefix="dwcp-bft-", dir=args.data_root)
            rs.append(run(n, root, args.bft_rate, args.seconds, failover=True, algorithm="bft"))
        res["runs"][f"bft_{n}"] = rs
        b = res[f"bft_{n}"] = {
            "rate_ops_s": args.bft_rate,
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rs),
            "max_ops_s": statistics.median(r["max_ops_s"] for r in rs),
            "failover_s": statistics.median(r["failover_s"] for r in rs),
        }
        b["max_ops_vs_raft"] = b["max_ops_s"] / k["max_ops_s"]
        print(f"bft n={n}: {b}", file=sys.stderr)
    write_json(res, args.out, "bench_consensus.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
