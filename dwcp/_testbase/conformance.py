"""Conformance suites: one behaviour check for every implementation.

``check_ring_buffer(factory)`` and ``check_mpmc_queue(factory)`` raise
AssertionError on the first deviation; tests call them for both backends.
"""

from __future__ import annotations

import gc

from dwcp.errors import ClosedResourceError, LocalProtocolError

__all__ = ["check_ring_buffer", "check_mpmc_queue"]


def _raises(exc, fn, *a) -> None:
    try:
        fn(*a)
    except exc:
        return
    raise AssertionError(f"{fn.__name__}{a!r} did not raise {exc.__name__}")


def check_ring_buffer(factory) -> None:
    r = factory(16, 4)
    assert (r.slot_size, r.capacity, len(r), r.free) == (16, 4, 0, 4)
    # FIFO through every API, across wrap-around
    for rnd in range(3):
        assert r.push(b"a%d" % rnd)
        v = r.acquire()
        assert v is not None and len(v) == 16 and not v.readonly
        v[:3] = b"xyz"
        r.commit(3)
        del v
        assert r.push_batch(b"12345678", 4) == 2
        assert len(r) == 4 and r.free == 0
        assert r.push(b"full") is False and r.acquire() is None and r.push_batch(b"zzzz", 4) == 0
        assert r.pop() == b"a%d" % rnd
        p = r.peek()
        assert bytes(p) == b"xyz" and p.readonly
        r.release()
        del p
        out = bytearray(8)
        assert r.pop_batch(out, 4) == 2 and out == b"12345678"
        assert r.pop() is None and r.peek() is None and r.pop_into(bytearray(16)) == -1
    # a viewed slot is never overwritten
    r.push(b"keep")
    held = r.peek()
    r.release()
    gc.collect()
    assert r.view_count == 1
    for i in range(3):
        assert r.push(b"%d" % i)
    assert r.push(b"x") is False, "the producer reached a slot a view still holds"
    assert bytes(held) == b"keep"
    _raises(BufferError, r.close)
    del held
    gc.collect()
    assert r.view_count == 0
    # length rules and misuse
    _raises(ValueError, r.push, b"x" * 17)
    _raises(ValueError, r.pop_into, bytearray(0))
    assert [r.pop() for _ in range(3)] == [b"0", b"1", b"2"]
    _raises(LocalProtocolError, r.commit, 1)
    _raises(LocalProtocolError, r.release)
    v = r.acquire()
    _raises(LocalProtocolError, r.acquire)
    _raises(ValueError, r.commit, 17)
    r.commit(0)
    del v
    assert r.pop() == b""
    _raises(ValueError, r.push_batch, b"abc", 2)
    _raises(ValueError, r.pop_batch, bytearray(4), 0)
    r.push(b"abc")
    assert r.pop_batch(bytearray(8), 4) == 0, "an item of another length stops the batch"
    assert r.pop() == b"abc"
    r.close()
    r.close()  # idempotent
    _raises(ClosedResourceError, r.push, b"x")
    _raises(ClosedResourceError, r.pop)
    _raises(ClosedResourceError, len, r)
    for bad in ((0, 4), (16, 3), (16, 1), (16, 0)):
        _raises(ValueError, factory, *bad)


def check_mpmc_queue(factory) -> None:
    import array

    q = factory(4)
    assert q.capacity == 4 and len(q) == 0 and not q.closed
    assert q.try_get() is None
    assert all(q.try_put(i) for i in (1, 2, 3, 2**64 - 1))
    assert q.try_put(5) is False and len(q) == 4
    assert [q.try_get() for _ in range(4)] == [1, 2, 3, 2**64 - 1]
    _raises(OverflowError, q.try_put, -1)
    _raises(OverflowError, q.try_put, 2**64)
    _raises(TypeError, q.try_put, "1")
    _raises(TypeError, q.try_put, True)
    src = array.array("Q", [10, 11, 12, 13, 14, 15])
    assert q.put_batch(src) == 4
    dst = array.array("Q", [0] * 8)
    assert q.get_batch(dst) == 4 and list(dst[:4]) == [10, 11, 12, 13]
    _raises(TimeoutError, q.get, 0.01)
    q.put(7, timeout=0.1)
    for i in range(3):
        q.put(i)
    _raises(TimeoutError, q.put, 9, 0.01)
    assert q.get(timeout=1) == 7
    q.close()
    assert q.closed
    _raises(ClosedResourceError, q.try_put, 1)
    _raises(ClosedResourceError, q.put, 1)
    assert [q.get() for _ in range(3)] == [0, 1, 2], "close() drains what is left"
    _raises(ClosedResourceError, q.get)
    _raises(ClosedResourceError, q.try_get)
    _raises(ClosedResourceError, q.get_batch, dst)
    for bad in (0, 1, 3, 6):
        _raises(ValueError, factory, bad)
