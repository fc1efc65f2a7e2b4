"""The PBFT core alone: throughput and commit latency at n = 4 and n = 7, signing and verification included.

    python perf/bench_bft_core.py [--ops 400] [--window 32] [--out FILE]

All n ``PbftNode``s run in this one process (one core) over the simulator's
one-tick network, no drops (``dwcp._testbase.bftsim.bench``): ``ops`` catalog
proposals at the primary with at most ``window`` in flight.  Reported:

* ``cluster_ops_per_s``: committed proposals per wall second with every node's
  work on one core (the whole cluster's CPU cost per operation);
* ``per_node_ops_per_s``: the same times n, the rate one node could sustain on
  one core of its own (its share of the work is 1/n: each node signs and
  verifies its own messages);
* commit latency p50/p99 in wall milliseconds, loaded (queueing in the window
  included) and unloaded (one proposal at a time: the CPU time of one commit
  across the cluster);
* the Ed25519 sign/verify cost on this machine, which bounds all of the above;
* the peer: the Raft core (``dwcp._testbase.raftsim``) with the same n, batch
  and network, same process, so the lead can quote the ratio.

JSON goes to perf/results/bench_bft_core.json (not committed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import machine, write_json  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from dwcp._testbase import bftsim, raftsim  # noqa: E402


def crypto_us() -> dict[str, float]:
    k = Ed25519PrivateKey.generate()
    pub, msg = k.public_key(), b"x" * 96
    sig = k.sign(msg)
    n = 2000
    return {"sign_us": timeit.timeit(lambda: k.sign(msg), number=n) / n * 1e6,
            "verify_us": timeit.timeit(lambda: pub.verify(sig, msg), number=n) / n * 1e6}  # fmt: skip


def raft_peer(n: int, ops: int, window: int) -> dict[str, float]:
    s = raftsim.Sim(n, seed=0, min_delay=1, max_delay=1)
    lead = s.wait_leader()
    base = len(s.history)
    t0 = time.perf_counter()
    k = 0
    while len(s.history) - base < ops:
        while k < ops and k - (len(s.history) - base) < window:
            s.nodes[lead].propose(b"%d" % k)
            k += 1
        s.step()
    wall = time.perf_counter() - t0
    return {"n": n, "ops": ops, "seconds": wall, "cluster_ops_per_s": ops / wall}


def run(ops: int, window: int) -> dict:
    out: dict = {"crypto": crypto_us(), "pbft": [], "raft_peer": []}
    for n in (4, 7):
        r = bftsim.bench(n, ops, window=window)
        r["cluster_ops_per_s"] = r.pop("ops_per_s")
        r["per_node_ops_per_s"] = r["cluster_ops_per_s"] * n
        r["messages_per_op"] = r["delivered"] / ops
        one = bftsim.bench(n, max(ops // 8, 20), window=1)  # one at a time: the commit latency itself
        r["unloaded_latency_p50_ms"], r["unloaded_latency_p99_ms"] = (
            one["latency_p50_ms"],
            one["latency_p99_ms"],
        )
        out["pbft"].append(r)
        peer = raft_peer(n, ops, window)
        out["raft_peer"].append(peer)
        r["ratio_to_raft_core"] = r["cluster_ops_per_s"] / peer["cluster_ops_per_s"]
        print(f"n={n}: pbft {r['cluster_ops_per_s']:.0f} ops/s (one core for the cluster; "
              f"{r['per_node_ops_per_s']:.0f} per node-core), p50 {r['latency_p50_ms']:.1f} ms, "
              f"p99 {r['latency_p99_ms']:.1f} ms (unloaded p50 {r['unloaded_latency_p50_ms']:.1f} ms), "
              f"{r['messages_per_op']:.1f} msgs/op; "
              f"raft core {peer['cluster_ops_per_s']:.0f} ops/s", file=sys.stderr)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--out", help="JSON file (default perf/results/bench_bft_core.json)")
    args = ap.parse_args()
    path = write_json({"machine": machine(), **run(args.ops, args.window)}, args.out, "bench_bft_core.json")
    print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
