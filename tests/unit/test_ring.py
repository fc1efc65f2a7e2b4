"""Ring buffers: the conformance suites and the details, on both backends."""

from __future__ import annotations

import array
import gc
import os
import threading
import time

import numpy as np
import pytest

from dwcp._testbase.conformance import check_mpmc_queue, check_ring_buffer
from dwcp.errors import ClosedResourceError, LocalProtocolError

only_ref = os.environ.get("DWCP_IMPL", "auto") == "ref"


def test_ring_conformance(impl):
    check_ring_buffer(impl.RingBuffer)


def test_mpmc_conformance(impl):
    check_mpmc_queue(impl.MPMCQueue)


# -- RingBuffer -----------------------------------------------------------------


def test_zero_copy_views(impl):
    r = impl.RingBuffer(4096, 4)
    v = r.acquire()
    arr = np.frombuffer(v, dtype=np.uint8)  # numpy writes straight into the slot
    arr[:] = 7
    r.commit(100)
    del arr, v
    p = r.peek()
    assert len(p) == 100 and p.format == "B" and bytes(p[:3]) == b"\x07\x07\x07"
    with pytest.raises(TypeError):
        p[0] = 1  # read-only
    r.release()
    del p
    gc.collect()
    r.close()


def test_numpy_array_of_a_view_pins_the_slot(impl):
    r = impl.RingBuffer(8, 2)
    r.push(b"pinned!!")
    p = r.peek()
    arr = np.frombuffer(p, dtype=np.uint8)  # holds an export of the view
    r.release()
    del p
    gc.collect()
    assert r.view_count == 1 and r.free == 1
    assert r.push(b"a") and r.pop() == b"a"
    assert r.push(b"b") is False  # the next slot is the pinned one
    assert arr.tobytes() == b"pinned!!"
    with pytest.raises(BufferError):
        r.close()
    del arr
    gc.collect()
    assert r.push(b"b") and r.pop() == b"b"
    r.close()


def test_acquired_view_kept_after_commit_pins_the_slot(impl):
    r = impl.RingBuffer(4, 2)
    v = r.acquire()
    v[:4] = b"abcd"
    r.commit(4)
    assert r.pop() == b"abcd"
    assert r.push(b"x") and r.pop() == b"x"
    assert r.free == 1 and r.push(b"y") is False and r.acquire() is None
    v[:4] = b"ABCD"  # still our slot: nobody else can have it
    del v
    gc.collect()
    assert r.free == 2 and r.push(b"y") and r.pop() == b"y"


def test_close_with_an_uncommitted_view(impl):
    r = impl.RingBuffer(4, 2)
    v = r.acquire()
    with pytest.raises(BufferError):
        r.close()
    r.commit(0)
    with pytest.raises(BufferError):
        r.close()
    del v
    gc.collect()
    r.close()


def test_view_outlives_its_ring_object(impl):
    v = impl.RingBuffer(8, 2).acquire()  # the view keeps the ring alive
    gc.collect()
    v[:] = b"12345678"
    assert bytes(v) == b"12345678"


@pytest.mark.skipif(only_ref, reason="the fast backend is not loaded under DWCP_IMPL=ref")
def test_fast_slot_view_is_single_use(fast):
    # Only the fast twin: the reference's exporter is a ctypes array, alive
    # (and pinning its slot) as long as anything holds it.
    r = fast.RingBuffer(8, 2)
    r.push(b"x")
    p = r.peek()
    exporter = p.obj
    again = memoryview(exporter)  # while a view lives, more are fine
    assert r.view_count == 2
    r.release()
    del p, again
    gc.collect()
    assert r.view_count == 0
    with pytest.raises(BufferError):
        memoryview(exporter)
    r.close()
    with pytest.raises(ClosedResourceError):
        memoryview(exporter)


def test_numpy_and_memoryview_inputs(impl):
    r = impl.RingBuffer(8, 4)
    assert r.push(np.arange(8, dtype=np.uint8))
    assert r.push(memoryview(b"abc"))
    ro = np.arange(4, dtype=np.uint8)
    ro.flags.writeable = False  # const uint8_t[::1]: read-only inputs work
    assert r.push(ro)
    out = np.zeros(8, np.uint8)
    assert r.pop_into(out) == 8 and list(out) == list(range(8))
    assert r.pop() == b"abc"
    assert r.pop() == bytes(range(4))
    with pytest.raises(ValueError):
        r.push(np.zeros(4, np.uint8)[::2])  # not contiguous
    with pytest.raises(ValueError):
        r.push(np.zeros((2, 2), np.uint8))  # not 1-D
    with pytest.raises(ValueError):
        r.push(np.zeros(2, np.uint16))  # not uint8
    with pytest.raises(ValueError):
        r.pop_into(ro)  # numpy's own error for a read-only output


def test_batches_with_numpy(impl):
    r = impl.RingBuffer(64, 16)
    src = np.arange(64 * 20, dtype=np.uint32).view(np.uint8)[: 64 * 20]
    assert r.push_batch(src, 64) == 16
    dst = np.zeros(64 * 20, np.uint8)
    assert r.pop_batch(dst, 64) == 16
    assert (dst[: 64 * 16] == src[: 64 * 16]).all()


def test_batches_smaller_than_slots_and_wraparound(impl):
    r = impl.RingBuffer(16, 8)
    seq = bytes(range(256))
    pushed = popped = b""
    for rnd in range(20):  # many laps of the 8-slot ring
        k = r.push_batch(seq[: 5 * (rnd % 4 + 1)], 5)
        pushed += seq[: 5 * k]
        out = bytearray(5 * (rnd % 3 + 1))
        m = r.pop_batch(out, 5)
        popped += out[: 5 * m]
    while (b := r.pop()) is not None:
        popped += b
    assert popped == pushed


def test_pop_batch_stops_before_a_short_item(impl):
    r = impl.RingBuffer(8, 8)
    assert r.push_batch(b"aaaabbbb", 4) == 2
    assert r.push(b"cc") and r.push_batch(b"dddd", 4) == 1
    out = bytearray(16)
    assert r.pop_batch(out, 4) == 2 and out[:8] == b"aaaabbbb"
    assert r.pop_batch(out, 4) == 0 and len(r) == 2
    assert r.pop() == b"cc"
    assert r.pop_batch(out, 4) == 1 and out[:4] == b"dddd"


def test_int_arguments_convert_like_ssize_t(impl):
    with pytest.raises(OverflowError):
        impl.RingBuffer(2**70, 4)
    with pytest.raises(TypeError):
        impl.RingBuffer("8", 4)
    r = impl.RingBuffer(np.int64(8), np.uint8(4))  # __index__ integers are fine
    assert (r.slot_size, r.capacity) == (8, 4)
    with pytest.raises(OverflowError):
        r.push_batch(b"", 2**64)
    r.acquire()
    with pytest.raises(TypeError):
        r.commit(1.0)


def test_read_only_attributes(impl):
    r = impl.RingBuffer(8, 2)
    with pytest.raises(AttributeError):
        r.slot_size = 4
    with pytest.raises(AttributeError):
        r.capacity = 4
    assert repr(r) == "<RingBuffer 0/2 slots of 8 bytes>"


def test_closed_ring_views_refuse(impl):
    r = impl.RingBuffer(8, 2)
    r.close()
    with pytest.raises(ClosedResourceError):
        r.acquire()
    assert r.view_count == 0


def test_protocol_errors_are_local_protocol_errors(impl):
    r = impl.RingBuffer(8, 2)
    with pytest.raises(LocalProtocolError, match="without acquire"):
        r.commit(0)
    with pytest.raises(LocalProtocolError, match="without peek"):
        r.release()


# -- MPMCQueue ------------------------------------------------------------------


def test_mpmc_batches_with_numpy(impl):
    q = impl.MPMCQueue(1024)
    src = np.arange(1000, dtype=np.uint64)
    assert q.put_batch(src) == 1000
    dst = np.zeros(600, np.uint64)
    assert q.get_batch(dst) == 600 and (dst == src[:600]).all()
    assert q.get_batch(dst) == 400 and (dst[:400] == src[600:]).all()
    with pytest.raises(ValueError):
        q.put_batch(np.zeros(2, np.int64))  # signed: not uint64
    with pytest.raises(ValueError):
        q.put_batch(np.zeros(4, np.uint64)[::2])


def test_mpmc_numpy_scalars(impl):
    q = impl.MPMCQueue(4)
    assert q.try_put(np.uint64(2**64 - 1)) and q.try_put(np.int32(5))
    assert q.try_get() == 2**64 - 1 and q.get() == 5
    with pytest.raises(OverflowError):
        q.try_put(np.int64(-1))


def test_mpmc_wraps_many_times(impl):
    q = impl.MPMCQueue(4)
    for i in range(1000):
        assert q.try_put(i) and q.try_put(i + 1)
        assert q.try_get() == i and q.try_get() == i + 1
    assert len(q) == 0


def _in_thread(fn, delay: float) -> threading.Thread:
    def run():
        time.sleep(delay)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_mpmc_blocking_get_wakes_on_put(impl):
    q = impl.MPMCQueue(2)
    t = _in_thread(lambda: q.put(99), 0.05)
    assert q.get(timeout=5) == 99
    t.join(5)


def test_mpmc_blocking_put_wakes_on_get(impl):
    q = impl.MPMCQueue(2)
    q.put(1)
    q.put(2)
    t = _in_thread(q.get, 0.05)
    q.put(3, timeout=5)
    t.join(5)
    assert [q.get(), q.get()] == [2, 3]


def test_mpmc_close_wakes_blocked_calls(impl):
    q = impl.MPMCQueue(2)
    t = _in_thread(q.close, 0.05)
    t0 = time.monotonic()
    with pytest.raises(ClosedResourceError):
        q.get(timeout=5)
    assert time.monotonic() - t0 < 2
    t.join(5)
    q2 = impl.MPMCQueue(2)
    q2.put(1)
    q2.put(2)
    t = _in_thread(q2.close, 0.05)
    with pytest.raises(ClosedResourceError):
        q2.put(3, timeout=5)
    t.join(5)
    assert [q2.get(), q2.get()] == [1, 2]


def test_mpmc_repr_and_readonly_capacity(impl):
    q = impl.MPMCQueue(4)
    q.try_put(1)
    assert repr(q) == "<MPMCQueue 1/4>"
    with pytest.raises(AttributeError):
        q.capacity = 8
    q.close()
    assert repr(q) == "<MPMCQueue 1/4 closed>"


# -- parity: the same outcome, exceptions included, for odd arguments -------------

# (label, factory): each backend gets its own fresh object
ODD_BUFFERS = [
    ("None", lambda: None),
    ("str", lambda: "text"),
    ("int", lambda: 5),
    ("empty bytes", lambda: b""),
    ("bytes", lambda: b"12345678"),
    ("bytearray 8", lambda: bytearray(8)),
    ("bytearray 16", lambda: bytearray(16)),
    ("read-only memoryview", lambda: memoryview(bytearray(8)).toreadonly()),
    ("strided memoryview", lambda: memoryview(bytearray(16))[::2]),
    ("array b", lambda: array.array("b", [1, 2])),
    ("array B", lambda: array.array("B", [1, 2])),
    ("array Q", lambda: array.array("Q", [1, 2])),
    ("array L", lambda: array.array("L", [3])),
    ("array d", lambda: array.array("d", [1.0])),
    ("np uint8", lambda: np.zeros(8, np.uint8)),
    ("np int8", lambda: np.zeros(8, np.int8)),
    ("np uint8 2-D", lambda: np.zeros((2, 4), np.uint8)),
    ("np uint8 strided", lambda: np.zeros(8, np.uint8)[::2]),
    ("np uint8 read-only", lambda: np.frombuffer(b"12345678", np.uint8)),
    ("np uint64", lambda: np.arange(2, dtype=np.uint64)),
    ("np >u8", lambda: np.zeros(2, ">u8")),
    ("np int64", lambda: np.zeros(2, np.int64)),
    ("np uint64 2-D", lambda: np.zeros((2, 2), np.uint64)),
    ("np uint64 read-only", lambda: np.frombuffer(bytes(16), np.uint64)),
]

CALLS = {
    "push": lambda r, b: r.push(b),
    "push_batch": lambda r, b: r.push_batch(b, 2),
    "pop_into": lambda r, b: r.pop_into(b),
    "pop_batch": lambda r, b: r.pop_batch(b, 2),
    "put_batch": lambda q, b: q.put_batch(b),
    "get_batch": lambda q, b: q.get_batch(b),
}


def _outcome(fn):
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - the type is what we compare
        return type(e)
    return ("view", bytes(out)) if isinstance(out, memoryview) else out


def _contents(b):
    try:
        mv = memoryview(b)
    except TypeError:
        return None
    return mv.tobytes()


@pytest.mark.skipif(only_ref, reason="compares the fast backend with the reference")
@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("call", list(CALLS))
def test_parity_odd_buffers(fast, ref, call, closed):
    """The same result, exception type and output bytes for every odd buffer."""
    for label, make_buf in ODD_BUFFERS:
        outs = []
        for m in (fast, ref):
            if call.startswith(("push", "pop")):
                obj = m.RingBuffer(4, 4)
                obj.push(b"ab")
            else:
                obj = m.MPMCQueue(4)
                obj.try_put(1)
            if closed:
                obj.close()
            b = make_buf()
            outs.append((_outcome(lambda o=obj, b=b: CALLS[call](o, b)), _contents(b)))
        assert outs[0] == outs[1], f"{call}({label}), closed={closed}: fast, ref = {outs}"


@pytest.mark.skipif(only_ref, reason="compares the fast backend with the reference")
@pytest.mark.parametrize(
    "args", [(8, 4), (0, 4), (8, 3), (8.0, 4), ("8", 4), (2**70, 4), (True, 2), (8, 2**31), (2**31, 2)]
)
def test_parity_ring_constructor(fast, ref, args):
    def make(m):
        try:
            r = m.RingBuffer(*args)
        except Exception as e:  # noqa: BLE001
            return type(e)
        return (r.slot_size, r.capacity)

    assert make(fast) == make(ref)


@pytest.mark.skipif(only_ref, reason="compares the fast backend with the reference")
@pytest.mark.parametrize(
    "item", [0, 1, 2**64 - 1, 2**64, -1, True, 1.0, "1", None, np.uint64(7), np.int8(-1), 2**100]
)
def test_parity_queue_items(fast, ref, item):
    outs = []
    for m in (fast, ref):
        q = m.MPMCQueue(2)
        outs.append(
            (_outcome(lambda q=q: q.try_put(item)), _outcome(q.try_get), _outcome(lambda q=q: q.put(item, 0)))
        )
    assert outs[0] == outs[1]


def test_batch_arguments_convert_before_the_none_check(impl):
    # Cython converts every argument, then checks `not None`: an oversized item_size
    # is an OverflowError even with src=None (found by the stateful parity test)
    r = impl.RingBuffer(4, 4)
    with pytest.raises(OverflowError):
        r.push_batch(None, 1 << 64)
    with pytest.raises(OverflowError):
        r.pop_batch(None, 1 << 64)
    with pytest.raises(TypeError):
        r.push_batch(None, 1)
    with pytest.raises(TypeError):
        r.pop_batch(None, 1)
