"""Replication on loopback: one send down a chain of the key's homes against sending to each home.

    python perf/bench_replication.py [--size-mib 256] [--runs 3] [--data-root /dev/shm] [--out FILE]

Three `dwcp daemon` processes (the Raft catalog on, plaintext, data dirs under --data-root), and this
process as the client with `[cluster] replicas = 3`:

* chain: ``ClusterView.send`` -- one send to the first home, which stores and forwards each chunk
  as it verifies to the second, which does the same to the third (``ack = "all"``: timed until the
  third holds it verified);
* fan-out (the peer): what a client without replication does for 3 copies -- the same object sent
  to each home in turn, one full send each;
* single: one send to one home (one copy): the floor of the chain's time.

Each run sends a fresh key (full sends, no deltas).  Reported: median seconds, the client's wire bytes,
and the ratios chain / fan-out (time and client bytes) and chain / single.  Writes
perf/results/bench_replication.json.
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

from _common import exit_cleanly_on_sigterm, machine, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--out")
    args = ap.parse_args()
    exit_cleanly_on_sigterm()

    import numpy as np

    from dwcp._testbase.daemons import Cluster
    from dwcp.cluster.node import ClusterView
    from dwcp.config import from_dict
    from dwcp.transport.sender import Sender

    class Homes(Cluster):
        def cluster_extra(self) -> str:
            return "replicas = 3\nrepair_interval_s = 0\n"

        def storage_extra(self) -> str:
            return "scrub_rate_bytes_per_s = 0\nkeep_versions = 2\n"

    data = np.random.default_rng(1).integers(0, 256, args.size_mib << 20, dtype=np.uint8)
    with tempfile.TemporaryDirectory(dir=args.data_root, prefix="dwcp-bench-repl-") as root:
        c = Homes(root, 3)
        try:
            c.wait(c.leader, what="a first leader")
            peers = [{"id": i, "address": f"127.0.0.1:{c.ports[i]}"} for i in c.ids]
            cfg = from_dict({"node": {"id": "client"}, "security": {"plaintext": True},
                             "cluster": {"peers": peers, "replicas": 3, "ack": "all", "policy": "round_robin"}})  # fmt: skip
            snd = Sender(cfg.transport, cfg.security, node_id="client")
            times: dict[str, list[float]] = {"chain": [], "fanout": [], "single": []}
            wire: dict[str, list[int]] = {"chain": [], "fanout": [], "single": []}
            for run in range(args.runs):
                view = ClusterView(cfg.cluster, cfg.node)  # a fresh view: the same chain order each run
                t0 = time.perf_counter()
                r = view.send(snd, data, f"chain/{run}", "cluster")
                times["chain"].append(time.perf_counter() - t0)
                wire["chain"].append(r.transfer.wire_bytes)
                assert r.ack["verified"] == 3, r.replicas
                t0 = time.perf_counter()
                w = sum(snd.send(data, "127.0.0.1", c.ports[i], f"fanout/{run}").wire_bytes for i in c.ids)
                times["fanout"].append(time.perf_counter() - t0)
                wire["fanout"].append(w)
                t0 = time.perf_counter()
                w = snd.send(data, "127.0.0.1", c.ports[c.ids[0]], f"single/{run}").wire_bytes
                times["single"].append(time.perf_counter() - t0)
                wire["single"].append(w)
        finally:
            c.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    mw = {k: statistics.median(v) for k, v in wire.items()}
    result = {
        "machine": machine(), "object_bytes": data.nbytes, "runs": args.runs, "data_root": args.data_root,
        "seconds": med, "seconds_all": times, "client_wire_bytes": mw,
        "rate_bytes_per_s": {k: data.nbytes / v for k, v in med.items()},
        "ratios": {"chain_vs_fanout_time": med["chain"] / med["fanout"],
                   "chain_vs_single_time": med["chain"] / med["single"],
                   "chain_vs_fanout_client_bytes": mw["chain"] / mw["fanout"]},
    }  # fmt: skip
    write_json(result, args.out, "bench_replication.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
