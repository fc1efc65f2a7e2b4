"""Threaded stress: no item lost, duplicated or reordered (bounded in time)."""

from __future__ import annotations

import threading

import numpy as np

from dwcp.errors import ClosedResourceError

ITEMS = 200_000


def _join(threads, timeout=20.0):
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker hung"


def test_spsc_ring_batches_and_singles(impl):
    n_items = ITEMS if impl.name == "fast" else 5_000
    r = impl.RingBuffer(8, 256)
    got = np.zeros(n_items, np.uint64)
    errors: list[BaseException] = []

    def producer():
        try:
            seq = np.arange(n_items, dtype=np.uint64)
            raw = seq.view(np.uint8)
            i = 0
            while i < n_items:
                if i % 3 == 0:  # single calls mixed in
                    if r.push(raw[i * 8 : i * 8 + 8]):
                        i += 1
                else:
                    i += r.push_batch(raw[i * 8 : min(n_items, i + 64) * 8], 8)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    def consumer():
        try:
            out = np.zeros(64, np.uint64)
            i = 0
            while i < n_items:
                k = r.pop_batch(out.view(np.uint8), 8)
                got[i : i + k] = out[:k]
                i += k
                if k == 0:
                    b = r.pop()
                    if b is not None:
                        got[i] = int.from_bytes(b, "little")
                        i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in ts:
        t.start()
    _join(ts)
    assert not errors
    assert (got == np.arange(n_items, dtype=np.uint64)).all(), "lost, duplicated or reordered"


def test_mpmc_four_by_four(impl):
    per = 50_000 if impl.name == "fast" else 2_000
    q = impl.MPMCQueue(1024)
    results: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def producer(pid):
        try:
            items = [(pid << 40) | s for s in range(per)]
            i = 0
            while i < per:
                if i % 2:
                    q.put(items[i], timeout=10)
                    i += 1
                else:
                    batch = np.array(items[i : i + 32], dtype=np.uint64)
                    i += q.put_batch(batch)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def consumer(cid):
        try:
            buf = np.zeros(32, np.uint64)
            while True:
                try:
                    if cid % 2:
                        results[cid].append(q.get(timeout=10))
                    else:
                        k = q.get_batch(buf)
                        results[cid].extend(int(x) for x in buf[:k])
                        if k == 0:
                            threading.Event().wait(0.0005)
                except ClosedResourceError:
                    return
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ps = [threading.Thread(target=producer, args=(i,)) for i in range(4)]
    cs = [threading.Thread(target=consumer, args=(i,)) for i in range(4)]
    for t in ps + cs:
        t.start()
    _join(ps)
    q.close()
    _join(cs)
    assert not errors
    allitems = [x for r in results for x in r]
    assert len(allitems) == 4 * per, "items lost or duplicated"
    assert sorted(allitems) == sorted((p << 40) | s for p in range(4) for s in range(per))
    # per consumer, each producer's items arrive in the order they were put
    for r in results:
        for p in range(4):
            seq = [x & ((1 << 40) - 1) for x in r if x >> 40 == p]
            assert seq == sorted(seq)
