"""Peer-choice benchmark: pick latency per policy, and load imbalance in simulation.

    python perf/bench_lb.py [--peers 16] [--picks 200000] [--out FILE]

* Latency: ``Balancer.pick()`` per policy over --peers peers, median of 5
  runs of --picks picks, in microseconds per pick (target: P2C <= 5 us).
  The peer is a full scan for the least-connections choice (min over all
  peers) in the same run.
* Imbalance: a simulated fleet where each pick starts a transfer that lasts
  an exponential time (peers differ in speed by up to 4x); the max/mean
  in-flight count over time, for P2C, round robin, random and the full scan
  (least connections): P2C should be close to the full scan at a fraction
  of its cost.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine, write_json  # noqa: E402

from dwcp.cluster.balancer import Balancer, Peer  # noqa: E402
from dwcp.cluster.geo import Location  # noqa: E402


def fleet(n: int, rng: random.Random) -> list[Peer]:
    regions = ["eu", "us", "ap"]
    return [Peer(f"n{i}", f"10.{i // 250}.{i % 250}.1:7700", regions[i % 3],
                 Location(rng.uniform(-60, 60), rng.uniform(-180, 180))) for i in range(n)]  # fmt: skip


def pick_latency(policy: str, n: int, picks: int) -> float:
    rng = random.Random(1)
    lb = Balancer(fleet(n, rng), policy=policy, here=Location(50, 8), region_priority=["us", "eu"], rng=rng)
    for p in lb.peers.values():
        p.active = rng.randrange(10)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(picks):
            lb.pick()
        runs.append((time.perf_counter() - t0) / picks * 1e6)
    return statistics.median(runs)


def imbalance(policy: str, n: int, events: int, seed: int = 3) -> dict:
    rng = random.Random(seed)
    ps = fleet(n, rng)
    speed = {p.id: rng.uniform(1, 4) for p in ps}
    lb = Balancer(ps, policy=policy if policy != "random" else "round_robin", rng=random.Random(seed))
    ends: list[tuple[float, str]] = []
    t, ratios = 0.0, []
    load_target = 0.8 * n * 4  # arrivals keep ~0.8 transfers per unit of speed busy
    for _ in range(events):
        t += rng.expovariate(load_target)
        while ends and ends[0][0] <= t:
            _, pid = heapq.heappop(ends)
            lb.peers[pid].active -= 1
        p = lb.peers[rng.choice(list(lb.peers))] if policy == "random" else lb.pick()
        p.active += 1
        heapq.heappush(ends, (t + rng.expovariate(speed[p.id]), p.id))
        act = [q.active for q in lb.peers.values()]
        mean = sum(act) / n
        if mean:
            ratios.append(max(act) / mean)
    return {
        "max_over_mean_p50": statistics.median(ratios),
        "max_over_mean_p99": sorted(ratios)[int(0.99 * len(ratios))],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--picks", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    res: dict = {"machine": machine(), "peers": args.peers, "pick_us": {}, "imbalance": {}}
    for policy in ("p2c", "round_robin", "least_connections", "geo", "region"):
        res["pick_us"][policy] = pick_latency(policy, args.peers, args.picks)
    for policy in ("p2c", "round_robin", "least_connections", "random"):
        res["imbalance"][policy] = imbalance(policy, args.peers, args.events)
    full = res["pick_us"]["least_connections"]
    res["ratios"] = {
        "p2c_pick_vs_full_scan": res["pick_us"]["p2c"] / full,
        "p2c_imbalance_vs_full_scan": res["imbalance"]["p2c"]["max_over_mean_p50"]
        / res["imbalance"]["least_connections"]["max_over_mean_p50"],
        "p2c_imbalance_vs_random": res["imbalance"]["p2c"]["max_over_mean_p50"]
        / res["imbalance"]["random"]["max_over_mean_p50"],
    }
    res["targets"] = {"p2c_pick_us_le_5": res["pick_us"]["p2c"] <= 5.0}
    write_json(res, args.out, "bench_lb.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
