"""Ring buffers vs queue.Queue, collections.deque and SimpleQueue (same run).

What is measured (fast backend; medians of several runs):

* batched, one thread: 64-byte slots moved per second through
  RingBuffer.push_batch + pop_batch (256 per call, GIL released), and
  uint64 items through MPMCQueue.put_batch + get_batch.  Each slot/item is
  counted once (pushed and popped = 1 slot).
* batched, two threads: a producer thread and a consumer thread running at
  once (how the data plane uses them), with 256 and 1024 slots per call
  (ring of 4x that); same counting.  Every call takes the GIL to start and
  to return, so GIL handoffs, not copying, bound this rate for small batches.
* single calls: one Python call per operation; a put+get pair counts as 2
  operations, for dwcp and every peer alike (RingBuffer push/pop and
  push/pop_into with 32-byte items, MPMCQueue try_put/try_get, queue.Queue
  put/get, SimpleQueue put/get, deque append/popleft).

``vs_queue_Queue`` divides each rate by queue.Queue's single-call rate.
Targets (DESIGN.md): >= 20 M slots/s batched, >= 2 M ops/s single calls.

Usage: python perf/bench_ring.py [--quick] [--out FILE]; JSON goes to stdout
and to FILE (default perf/results/bench_ring.json).  perf/bench_codec.py
imports ``run(quick)`` and embeds the result.
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a source checkout (build_ext --inplace)

import numpy as np  # noqa: E402
from _common import machine, median_time, write_json  # noqa: E402

from dwcp._backend import load  # noqa: E402

SLOT = 64
BATCH = 256
ITEM = b"x" * 32


def _two_threads(produce, consume, n: int) -> float:
    """Seconds for a producer thread and a consumer thread to move n items."""
    start = threading.Barrier(3)
    t = [threading.Thread(target=lambda f=f: (start.wait(), f(n)), daemon=True) for f in (produce, consume)]
    for th in t:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in t:
        th.join()
    return time.perf_counter() - t0


def _drive(step, count: int) -> None:
    """Call ``step(items_left)`` until it has moved ``count`` items."""
    done = 0
    while done < count:
        k = step(count - done)
        done += k
        if not k:
            time.sleep(0)  # full/empty: hand the GIL to the other side


def _ring_2threads(fast, batch: int, n: int, runs: int) -> float:
    r = fast.RingBuffer(SLOT, 4 * batch)
    src = np.zeros(SLOT * batch, np.uint8)
    dst = np.empty_like(src)

    def produce(count):
        _drive(lambda m: r.push_batch(src[: SLOT * min(batch, m)], SLOT), count)

    def consume(count):
        _drive(lambda m: r.pop_batch(dst[: SLOT * min(batch, m)], SLOT), count)

    ts = sorted(_two_threads(produce, consume, n) for _ in range(runs))
    r.close()
    return n / ts[len(ts) // 2]


def _mpmc_2threads(fast, batch: int, n: int, runs: int) -> float:
    q = fast.MPMCQueue(4 * batch)
    u = np.arange(batch, dtype=np.uint64)
    w = np.empty_like(u)

    def produce(count):
        _drive(lambda m: q.put_batch(u[: min(batch, m)]), count)

    def consume(count):
        _drive(lambda m: q.get_batch(w[: min(batch, m)]), count)

    ts = sorted(_two_threads(produce, consume, n) for _ in range(runs))
    return n / ts[len(ts) // 2]


def run(quick: bool = False) -> dict:
    """All measurements as a dict (see the module docstring)."""
    fast = load("fast")
    runs = 7 if quick else 11
    n = 300_000 if quick else 1_000_000  # slots/items per measured run
    rounds = n // BATCH
    res: dict = {
        "runs": runs,
        "items_per_run": n,
        "slot_bytes": SLOT,
        "batch": BATCH,
        "single_item_bytes": len(ITEM),
        "counting": "batched: slots (items) moved per second, each counted once; "
        "single calls: Python calls per second, a put+get pair = 2 ops",
    }

    # -- batched, one thread -------------------------------------------------
    r = fast.RingBuffer(SLOT, 1024)
    src = np.zeros(SLOT * BATCH, np.uint8)
    dst = np.empty_like(src)

    def ring_batched():
        for _ in range(rounds):
            r.push_batch(src, SLOT)
            r.pop_batch(dst, SLOT)

    q = fast.MPMCQueue(1024)
    u = np.arange(BATCH, dtype=np.uint64)
    w = np.empty_like(u)

    def mpmc_batched():
        for _ in range(rounds):
            q.put_batch(u)
            q.get_batch(w)

    res["ring_batched_slots_per_s"] = rounds * BATCH / median_time(ring_batched, runs)[0]
    res["mpmc_batched_items_per_s"] = rounds * BATCH / median_time(mpmc_batched, runs)[0]

    # -- batched, producer thread + consumer thread ----------------------------
    # Each batch call takes the GIL to start and to return, so with two threads
    # the GIL handoffs per call bound the rate: it grows with the batch size.
    for batch in (BATCH, 4 * BATCH):
        for name, rate in (
            ("ring", _ring_2threads(fast, batch, n, runs)),
            ("mpmc", _mpmc_2threads(fast, batch, n, runs)),
        ):
            res.setdefault(f"{name}_batched_2threads_per_s", {})[f"batch_{batch}"] = rate

    # -- single calls ------------------------------------------------------------
    pairs = n // 2
    push, pop, pop_into = r.push, r.pop, r.pop_into
    out = bytearray(SLOT)

    def ring_push_pop():
        for _ in range(pairs):
            push(ITEM)
            pop()

    def ring_push_pop_into():
        for _ in range(pairs):
            push(ITEM)
            pop_into(out)

    tq_put, tq_get = q.try_put, q.try_get

    def mpmc_try():
        for i in range(pairs):
            tq_put(i)
            tq_get()

    qq: queue.Queue = queue.Queue()

    def queue_queue():
        put, get = qq.put, qq.get
        for _ in range(pairs):
            put(ITEM)
            get()

    sq: queue.SimpleQueue = queue.SimpleQueue()

    def simple_queue():
        put, get = sq.put, sq.get
        for _ in range(pairs):
            put(ITEM)
            get()

    dq: collections.deque = collections.deque()

    def deque_():
        append, popleft = dq.append, dq.popleft
        for _ in range(pairs):
            append(ITEM)
            popleft()

    singles = {}
    for name, fn in (
        ("ring push/pop", ring_push_pop),
        ("ring push/pop_into", ring_push_pop_into),
        ("mpmc try_put/try_get", mpmc_try),
        ("queue.Queue put/get", queue_queue),
        ("SimpleQueue put/get", simple_queue),
        ("deque append/popleft", deque_),
    ):
        singles[name] = 2 * pairs / median_time(fn, runs)[0]
    res["single_call_ops_per_s"] = singles

    base = singles["queue.Queue put/get"]
    res["vs_queue_Queue"] = {
        "ring_batched": res["ring_batched_slots_per_s"] / base,
        **{f"ring_batched_2threads_{k}": v / base for k, v in res["ring_batched_2threads_per_s"].items()},
        "mpmc_batched": res["mpmc_batched_items_per_s"] / base,
        **{f"mpmc_batched_2threads_{k}": v / base for k, v in res["mpmc_batched_2threads_per_s"].items()},
        **{name: v / base for name, v in singles.items()},
    }
    r.close()
    res["targets"] = {
        "batched_ge_20M_slots_per_s": res["ring_batched_slots_per_s"] >= 20e6,
        "single_ge_2M_ops_per_s": singles["ring push/pop"] >= 2e6,
    }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 20 s)")
    ap.add_argument("--out", help="JSON file (default perf/results/bench_ring.json)")
    args = ap.parse_args()
    write_json({"machine": machine(), **run(args.quick)}, args.out, "bench_ring.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
