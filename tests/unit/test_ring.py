"""Ring buffers: the conformance suites and the details, on both backends."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from dwcp._testbase.conformance import check_mpmc_queue, check_ring_buffer
from dwcp.errors import ClosedResourceError


def test_ring_conformance(impl):
    check_ring_buffer(impl.RingBuffer)


def test_mpmc_conformance(impl):
    check_mpmc_queue(impl.MPMCQueue)


def test_zero_copy_views(impl):
    r = impl.RingBuffer(4096, 4)
    v = r.acquire()
    arr = np.frombuffer(v, dtype=np.uint8)  # numpy writes straight into the slot
    arr[:] = 7
    r.commit(100)
    del arr, v
    p = r.peek()
    assert len(p) == 100 and bytes(p[:3]) == b"\x07\x07\x07"
    with pytest.raises(TypeError):
        p[0] = 1  # read-only
    r.release()
    del p
    gc.collect()
    r.close()


def test_numpy_and_memoryview_inputs(impl):
    r = impl.RingBuffer(8, 2)
    assert r.push(np.arange(8, dtype=np.uint8))
    assert r.push(memoryview(b"abc"))
    out = np.zeros(8, np.uint8)
    assert r.pop_into(out) == 8 and list(out) == list(range(8))
    assert r.pop() == b"abc"


def test_batches_with_numpy(impl):
    r = impl.RingBuffer(64, 16)
    src = np.arange(64 * 20, dtype=np.uint32).view(np.uint8)[: 64 * 20]
    assert r.push_batch(src, 64) == 16
    dst = np.zeros(64 * 20, np.uint8)
    assert r.pop_batch(dst, 64) == 16
    assert (dst[: 64 * 16] == src[: 64 * 16]).all()


def test_mpmc_batches_with_numpy(impl):
    q = impl.MPMCQueue(1024)
    src = np.arange(1000, dtype=np.uint64)
    assert q.put_batch(src) == 1000
    dst = np.zeros(600, np.uint64)
    assert q.get_batch(dst) == 600 and (dst == src[:600]).all()
    assert q.get_batch(dst) == 400 and (dst[:400] == src[600:]).all()


def test_closed_ring_views_refuse(impl):
    r = impl.RingBuffer(8, 2)
    r.close()
    with pytest.raises(ClosedResourceError):
        r.acquire()
    assert r.view_count == 0
