"""Raft on loopback: commit latency at a fixed rate, sustained throughput, failover time.

    python perf/bench_consensus.py [--nodes 3] [--rate 1000] [--seconds 5] [--data-root DIR] [--out FILE]
                                   [--mode processes|in-process|both] [--in-process]

Three (--nodes) nodes, each a data server with its Raft driver, talking over
real sockets on 127.0.0.1 (plaintext), storage fsynced under --data-root
(default: the disk under /tmp; pass /dev/shm to take fsync out).  By default
each node runs in its own process, as daemons do (--mode processes); with
--in-process (--mode in-process) all of them share this one process and its
GIL; --mode both measures both (the JSON's "mode" says which mode its top
level measured; the other's measures are under "in_process").  The load runs
in the leader's process, as a daemon's own transfers propose.

* latency: proposals of a catalog "version" command at --rate per second
  from 8 client threads; each is timed from propose() to applied on the
  proposing node (committed by a quorum); p50/p99/max (targets: p99 <= 10 ms
  at 1000 ops/s);
* throughput: 32 threads proposing as fast as they can for --seconds, a
  proposal counted once applied on the proposing node (target >= 5000 ops/s);
* failover: the leader crashes (its process is killed with SIGKILL; in-process:
  its driver and server are closed); the time until another node is leader
  and a proposal commits.

The peer is the same proposal path with 1 node (no replication), same run
and mode.

BFT (--bft-nodes 4,7): the same measures with the daemon's EpochDriver
running PBFT (Ed25519-signed messages, fresh keys), at --bft-rate ops/s,
always in this one process (every node verifies O(n) signatures per command,
all nodes share this one process and its GIL: 1000 ops/s is out of reach, so
the fixed rate is lower); failover stops the primary and times a proposal on
another node (a view change).  The peer is the same run's Raft cluster (the
top level's mode).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import fixed_rate, machine, max_rate, pct, write_json  # noqa: E402

from dwcp._testbase.transfer import server_config  # noqa: E402
from dwcp.consensus.driver import RaftDriver  # noqa: E402
from dwcp.consensus.epoch_driver import EpochDriver  # noqa: E402
from dwcp.consensus.raft import Role  # noqa: E402
from dwcp.transport.dialer import Dialer  # noqa: E402
from dwcp.transport.server import DataServer, message_stream  # noqa: E402
from dwcp.wire import consts as C  # noqa: E402


class Node:
    """One cluster node as a daemon runs it: a data server and its consensus driver (``join``)."""

    def __init__(self, node_id: str, root: str) -> None:
        self.id = node_id
        self.root = os.path.join(root, node_id)
        self.server = DataServer(server_config(self.root, node=node_id))
        self.address = "{}:{}".format(*self.server.start())
        self.driver: Any = None

    def join(self, addresses: dict[str, str], algorithm: str = "raft", keys: dict | None = None) -> None:
        """Start the driver; ``keys`` (BFT): every node's Ed25519 key as raw private bytes."""
        peers = {p: a for p, a in addresses.items() if p != self.id}
        if algorithm == "bft":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            assert keys is not None
            priv = {i: Ed25519PrivateKey.from_private_bytes(k) for i, k in keys.items()}
            self.driver = EpochDriver(self.id, peers, self.root, dialer=Dialer.plaintext(), algorithm="bft",
                                      signer=priv[self.id], verify_keys={i: k.public_key() for i, k in priv.items()},
                                      tick_s=0.05)  # fmt: skip
        else:
            self.driver = RaftDriver(self.id, peers, self.root, dialer=Dialer.plaintext(), tick_s=0.05)
        self.server.register("raft", message_stream(C.FRAME_RAFT, self.driver.deliver))
        self.driver.start()

    def live(self) -> bool:
        return not self.driver.stopped.is_set()

    def leads(self) -> bool:
        return self.live() and self.driver.node.role is Role.LEADER

    def view(self) -> tuple[int, str]:
        """BFT: the view this node is in and that view's primary."""
        e = self.driver.node.engine.node
        return e.view, e.primary(e.view)

    def propose(self, k: int, timeout_s: float = 10) -> None:
        self.driver.propose(cmd(k), timeout_s=timeout_s)

    def fixed_rate(self, rate: float, seconds: float, base: int) -> list[float]:
        return fixed_rate(self.propose, rate, seconds, base)

    def max_rate(self, seconds: float, base: int) -> float:
        return max_rate(self.propose, seconds, base)

    def stop(self) -> None:
        self.driver.close()
        self.server.close()

    close = stop


def _serve(conn: Any, node_id: str, root: str) -> None:
    """A node's process (--processes): a Node whose methods the parent calls over ``conn``."""
    node = Node(node_id, root)
    conn.send(node.address)
    while True:
        name, args = conn.recv()
        try:
            conn.send((True, getattr(node, name)(*args)))
        except Exception as exc:  # the parent re-raises it
            conn.send((False, f"{type(exc).__name__}: {exc}"))
        if name == "stop":
            return


class RemoteNode:
    """A Node in its own process: the same methods, called over a pipe (one call at a time)."""

    def __init__(self, ctx: Any, node_id: str, root: str) -> None:
        self.id = node_id
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve, args=(child, node_id, root), name=f"bench-{node_id}", daemon=True
        )
        self.proc.start()
        child.close()
        self.address = self._conn.recv()
        self.killed = False

    def _call(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"node {self.id}: {name}: {value}")
        return value

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self._call(name, *args)

    def live(self) -> bool:
        return not self.killed and self._call("live")

    def leads(self) -> bool:
        return not self.killed and self._call("leads")

    def kill(self) -> None:
        """The daemon crashes: SIGKILL (the kernel closes its sockets; nothing is flushed)."""
        self.killed = True
        self.proc.kill()
        self.proc.join()

    def close(self) -> None:
        if not self.killed:
            self._call("stop")
        self.proc.join(10)
        self._conn.close()


class Cluster:
    """``n`` nodes in this process, or each in its own process (``processes``): the load runs in the
    leader's process either way, as a daemon's own transfers propose."""

    def __init__(self, n: int, root: str, algorithm: str = "raft", processes: bool = False) -> None:
        self.ids = [f"r{i}" for i in range(n)]
        self.algorithm, self.processes = algorithm, processes
        if processes:
            ctx = multiprocessing.get_context("spawn")  # no inherited threads or locks
            self.nodes: dict[str, Any] = {i: RemoteNode(ctx, i, root) for i in self.ids}
        else:
            self.nodes = {i: Node(i, root) for i in self.ids}
        addr = {i: nd.address for i, nd in self.nodes.items()}
        keys = None
        if algorithm == "bft":
            from cryptography.hazmat.primitives import serialization as ser
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            raw = (ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
            keys = {i: Ed25519PrivateKey.generate().private_bytes(*raw) for i in self.ids}
        for nd in self.nodes.values():
            nd.join(addr, algorithm, keys)

    def leader(self) -> str | None:
        if self.algorithm == "bft":  # the primary of the current view, as the live nodes see it
            views = [nd.view() for nd in self.nodes.values() if nd.live()]
            return views[0][1] if all(v == views[0] for v in views) else None
        return next((i for i, nd in self.nodes.items() if nd.leads()), None)

    def wait_leader(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.leader()
            if lead is not None:
                return lead
            time.sleep(0.005)
        raise RuntimeError("no leader")

    def crash(self, i: str) -> None:
        """The node fails: its process is killed (--processes), or its driver and server are closed."""
        nd = self.nodes[i]
        nd.kill() if self.processes else nd.stop()

    def close(self) -> None:
        for nd in self.nodes.values():
            nd.close()


def cmd(k: int) -> dict:
    return {"op": "version", "key": f"bench/{k % 1000}", "digest": f"{k:032x}", "size": k, "holder": "bench"}


def run(n: int, root: str, rate: float, seconds: float, failover: bool, algorithm: str = "raft",
        processes: bool = False) -> dict:  # fmt: skip
    c = Cluster(n, root, algorithm, processes)
    try:
        lead = c.wait_leader()
        d = c.nodes[lead]
        lat = d.fixed_rate(rate, seconds, 0)
        out = {"nodes": n, "rate_ops_s": rate, "latency_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                                                              "max": max(lat) * 1000, "n": len(lat)}}  # fmt: skip
        out["max_ops_s"] = d.max_rate(seconds, 10**7)
        if failover and n > 1:
            t0 = time.perf_counter()
            c.crash(lead)
            if algorithm == "bft":  # any live node proposes; the backups' timers change the view
                new = next(i for i in c.ids if i != lead)
                c.nodes[new].propose(10**9, 30)
            else:
                new = None
                while new is None or new == lead:
                    new = c.leader()
                    time.sleep(0.001)
                c.nodes[new].propose(10**9, 10)
            out["failover_s"] = time.perf_counter() - t0
        return out
    finally:
        c.close()


def raft_section(args: argparse.Namespace, processes: bool) -> dict:
    """The Raft measures with ``args.nodes`` nodes and the 1-node peer, ``args.runs`` runs each (medians)."""
    sec: dict = {"mode": "processes" if processes else "in-process", "runs": {}}
    for n in (1, args.nodes):
        rs = []
        for _ in range(args.runs):
            root = tempfile.mkdtemp(prefix="dwcp-raft-", dir=args.data_root)
            rs.append(run(n, root, args.rate, args.seconds, failover=True, processes=processes))
        sec["runs"][str(n)] = rs
        sec[f"nodes_{n}"] = {
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rs),
            "max_ops_s": statistics.median(r["max_ops_s"] for r in rs),
            "failover_s": statistics.median(r["failover_s"] for r in rs) if n > 1 else None,
        }
    k = sec[f"nodes_{args.nodes}"]
    sec["ratios"] = {"p99_vs_single_node": k["p99_ms"] / sec["nodes_1"]["p99_ms"],
                     "max_ops_vs_single_node": k["max_ops_s"] / sec["nodes_1"]["max_ops_s"]}  # fmt: skip
    sec["targets"] = {"p99_le_10ms_at_rate": k["p99_ms"] <= 10, "ge_5000_ops_s": k["max_ops_s"] >= 5000,
                      "failover_le_2s": (k["failover_s"] or 0) <= 2}  # fmt: skip
    print(f"raft {sec['mode']}: n=1 {sec['nodes_1']}, n={args.nodes} {k}", file=sys.stderr)
    return sec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-root")
    ap.add_argument("--mode", choices=("processes", "in-process", "both"), default="processes",
                    help="Raft nodes each in its own process (as daemons run), all in this one, or both")  # fmt: skip
    ap.add_argument("--in-process", dest="mode", action="store_const", const="in-process",
                    help="the same as --mode in-process")  # fmt: skip
    ap.add_argument("--bft-nodes", default="4,7", help='PBFT cluster sizes to measure as well ("" = none)')
    ap.add_argument("--bft-rate", type=float, default=50.0, help="the fixed rate for the BFT latency, ops/s")
    ap.add_argument("--out")
    args = ap.parse_args()
    res: dict = {"machine": machine(), "data_root": args.data_root or tempfile.gettempdir()}
    modes = ["processes", "in-process"] if args.mode == "both" else [args.mode]
    # the first mode's measures at the top level (mode says which); with --mode both, the other's under its name
    res.update(raft_section(args, modes[0] == "processes"))
    for m in modes[1:]:
        res[m.replace("-", "_")] = raft_section(args, m == "processes")
    k = res[f"nodes_{args.nodes}"]
    for n in (int(x) for x in args.bft_nodes.split(",") if x):  # in this one process (see the module doc)
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
