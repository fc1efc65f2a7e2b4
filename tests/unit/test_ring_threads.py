"""Threaded stress: no item lost, duplicated or reordered; bounded in time.

Every worker stops at a deadline, so a lost item or a deadlock fails the
test instead of hanging the suite; threads are daemons for the same reason.
Items are unique: ``producer_id << 40 | sequence``.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from dwcp.errors import ClosedResourceError

DEADLINE_S = 10.0  # per test; the fast runs take ~1 s on 2 shared cores


def _run(targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - surfaced by the test
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 5)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return errors


def test_spsc_ring_every_api_concurrently(impl):
    """1 producer (push_batch GIL-free, push, acquire/commit) and 1 consumer
    (pop_batch GIL-free, pop, pop_into, peek/release) on 8-byte items."""
    n = 300_000 if impl.name == "fast" else 5_000
    r = impl.RingBuffer(8, 256)
    items = (np.uint64(7) << np.uint64(40)) | np.arange(n, dtype=np.uint64)
    raw = items.view(np.uint8)
    got = np.zeros(n, np.uint64)
    deadline = time.monotonic() + DEADLINE_S

    def producer():
        i = 0
        while i < n and time.monotonic() < deadline:
            before, k = i, i % 7
            if k == 0:
                i += bool(r.push(raw[i * 8 : i * 8 + 8]))
            elif k == 1:
                v = r.acquire()
                if v is not None:
                    v[:8] = raw[i * 8 : i * 8 + 8]
                    r.commit(8)
                    del v
                    i += 1
            else:
                i += r.push_batch(raw[i * 8 : min(n, i + 64) * 8], 8)
            if i == before:
                time.sleep(0)  # full: let the consumer have the GIL

    def consumer():
        out = np.zeros(64, np.uint64)
        one = bytearray(8)
        i = rnd = 0
        while i < n and time.monotonic() < deadline:
            if rnd % 5 == 4 and len(r) == 0:
                time.sleep(0)  # empty: let the producer have the GIL
            rnd += 1
            k = rnd % 5
            if k == 0:
                b = r.pop()
                if b is not None:
                    got[i] = int.from_bytes(b, "little")
                    i += 1
            elif k == 1:
                if r.pop_into(one) == 8:
                    got[i] = int.from_bytes(one, "little")
                    i += 1
            elif k == 2:
                p = r.peek()
                if p is not None:
                    got[i] = int.from_bytes(p, "little")
                    del p
                    r.release()
                    i += 1
            else:
                m = r.pop_batch(out.view(np.uint8), 8)
                got[i : i + m] = out[:m]
                i += m

    assert not _run([producer, consumer])
    assert (got == items).all(), "lost, duplicated or reordered"
    assert len(r) == 0 and r.view_count == 0
    r.close()


def test_spsc_held_views_are_never_overwritten(impl):
    """The consumer keeps some released views alive while the producer
    pushes GIL-free batches; their bytes must not change."""
    n = 50_000 if impl.name == "fast" else 3_000
    r = impl.RingBuffer(16, 8)
    deadline = time.monotonic() + DEADLINE_S
    bad: list[int] = []
    items = np.zeros((n, 2), np.uint64)  # item i: 16 bytes, the first 8 are i
    items[:, 0] = np.arange(n, dtype=np.uint64)
    raw = items.view(np.uint8).reshape(-1)

    def producer():
        i = 0
        while i < n and time.monotonic() < deadline:
            k = r.push_batch(raw[i * 16 : min(n, i + 32) * 16], 16)
            if k == 0:
                time.sleep(0)
            i += k

    def consumer():
        held: list[tuple[int, memoryview]] = []

        def drop_oldest():
            j, old = held.pop(0)
            if int.from_bytes(old[:8], "little") != j:
                bad.append(j)  # a held slot was overwritten

        i = 0
        while i < n and time.monotonic() < deadline:
            p = r.peek()
            if p is None:
                # the producer stops at the first pinned slot: unpin to let it on
                if held:
                    drop_oldest()
                time.sleep(0)  # let the producer have the GIL
                continue
            if int.from_bytes(p[:8], "little") != i:
                bad.append(i)
            r.release()
            if i % 3 == 0:
                held.append((i, p))
            del p
            if len(held) > 4:
                drop_oldest()
            i += 1
        while held:
            drop_oldest()
        assert i == n, "consumer ran out of time"

    assert not _run([producer, consumer])
    assert not bad
    r.close()


def test_mpmc_four_by_four(impl):
    per = 30_000 if impl.name == "fast" else 2_000
    q = impl.MPMCQueue(1024)
    results: list[list[int]] = [[] for _ in range(4)]
    deadline = time.monotonic() + DEADLINE_S

    def producer(pid):
        items = [(pid << 40) | s for s in range(per)]
        arr = np.array(items, dtype=np.uint64)
        i = 0
        while i < per and time.monotonic() < deadline:
            k = i % 3
            if k == 0:
                i += q.put_batch(arr[i : i + 32])
            elif k == 1:
                i += q.try_put(items[i])
            else:
                q.put(items[i], timeout=DEADLINE_S)
                i += 1

    def consumer(cid):
        buf = np.zeros(32, np.uint64)
        out = results[cid]
        while time.monotonic() < deadline:
            try:
                k = cid % 3
                if k == 0:
                    m = q.get_batch(buf)
                    out.extend(buf[:m].tolist())
                    if m == 0:
                        time.sleep(0.0002)
                elif k == 1:
                    x = q.try_get()
                    if x is not None:
                        out.append(x)
                else:
                    out.append(q.get(timeout=DEADLINE_S))
            except ClosedResourceError:
                return

    producers = [lambda p=p: producer(p) for p in range(4)]
    consumers = [lambda c=c: consumer(c) for c in range(4)]
    errors: list[BaseException] = []
    done = threading.Event()

    def close_after_producers():
        errors.extend(_run(producers))
        q.close()
        done.set()

    errors.extend(_run([close_after_producers, *consumers]))
    assert done.is_set() and not errors
    everything = [x for r in results for x in r]
    assert len(everything) == 4 * per, "items lost or duplicated"
    assert sorted(everything) == sorted((p << 40) | s for p in range(4) for s in range(per))
    # per consumer, each producer's items arrive in the order they were put
    for r in results:
        for p in range(4):
            seq = [x & ((1 << 40) - 1) for x in r if x >> 40 == p]
            assert seq == sorted(seq)
