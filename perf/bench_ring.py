"""Ring buffers vs queue.Queue, collections.deque and SimpleQueue (one thread, same run).

* batched: slots moved per second through push_batch/pop_batch (64-byte
  slots, 256 per batch; GIL released) and MPMCQueue put_batch/get_batch;
* single calls: one Python call per operation; a push+pop pair counts as
  two operations, for every peer alike.

Medians of several runs.  Writes perf/results/bench_ring.json (or --out).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from _common import machine, median_time, write_json  # noqa: E402

from dwcp._backend import load  # noqa: E402


def run(quick: bool = False) -> dict:
    fast = load("fast")
    runs = 5 if quick else 9
    n = 200_000 if quick else 1_000_000
    slot, batch = 64, 256
    r = fast.RingBuffer(slot, 1024)
    src = np.zeros(slot * batch, np.uint8)
    dst = np.empty_like(src)
    rounds = n // batch

    def ring_batched():
        for _ in range(rounds):
            r.push_batch(src, slot)
            r.pop_batch(dst, slot)

    t, _ = median_time(ring_batched, runs)
    res: dict = {"items": n, "runs": runs, "slot_bytes": slot, "batch": batch}
    res["ring_batched_slots_per_s"] = rounds * batch / t
    q = fast.MPMCQueue(1024)
    u = np.arange(batch, dtype=np.uint64)
    w = np.empty_like(u)

    def mpmc_batched():
        for _ in range(rounds):
            q.put_batch(u)
            q.get_batch(w)

    t, _ = median_time(mpmc_batched, runs)
    res["mpmc_batched_items_per_s"] = rounds * batch / t
    item = b"x" * 32
    push, pop = r.push, r.pop
    pairs = n // 2

    def ring_single():
        for _ in range(pairs):
            push(item)
            pop()

    tq_put, tq_get = q.try_put, q.try_get

    def mpmc_single():
        for i in range(pairs):
            tq_put(i)
            tq_get()

    qq = queue.Queue()

    def queue_queue():
        for _ in range(pairs):
            qq.put(item)
            qq.get()

    sq = queue.SimpleQueue()

    def simple_queue():
        for _ in range(pairs):
            sq.put(item)
            sq.get()

    dq: collections.deque = collections.deque()

    def deque_():
        for _ in range(pairs):
            dq.append(item)
            dq.popleft()

    singles = {}
    for name, fn in (("ring", ring_single), ("mpmc", mpmc_single), ("queue.Queue", queue_queue),
                     ("SimpleQueue", simple_queue), ("deque", deque_)):  # fmt: skip
        t, _ = median_time(fn, runs)
        singles[name] = 2 * pairs / t
    res["single_call_ops_per_s"] = singles
    base = singles["queue.Queue"]
    res["vs_queue_Queue"] = {
        "ring_batched": res["ring_batched_slots_per_s"] / base,
        "mpmc_batched": res["mpmc_batched_items_per_s"] / base,
        "ring_single": singles["ring"] / base,
        "mpmc_single": singles["mpmc"] / base,
    }
    res["targets"] = {
        "batched_ge_20M_slots_per_s": res["ring_batched_slots_per_s"] >= 20e6,
        "single_ge_2M_ops_per_s": singles["ring"] >= 2e6,
    }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    write_json({"machine": machine(), **run(args.quick)}, args.out, "bench_ring.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
