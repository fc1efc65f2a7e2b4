"""Conformance suites: one behaviour check for every implementation.

``check_ring_buffer(factory)`` and ``check_mpmc_queue(factory)`` raise
AssertionError on the first deviation from the Rules in
dwcp/_fast/ring.pyx; tests call them for both backends (and a future
implementation only has to pass them).
"""

from __future__ import annotations

import array
import gc

from dwcp.errors import ClosedResourceError, LocalProtocolError

__all__ = ["check_ring_buffer", "check_mpmc_queue"]


def _raises(exc, fn, *a) -> None:
    try:
        fn(*a)
    except exc:
        return
    except BaseException as e:
        raise AssertionError(
            f"{getattr(fn, '__name__', fn)}{a!r} raised {type(e).__name__}, not {exc}"
        ) from e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{a!r} did not raise {exc}")


def check_ring_buffer(factory) -> None:
    """RingBuffer(slot_size, nslots): FIFO through every API, views, misuse, close."""
    for bad in ((0, 4), (16, 3), (16, 1), (16, 0), (-1, 4), (1 << 31, 4), (16, 1 << 31)):
        _raises(ValueError, factory, *bad)
    _raises(TypeError, factory, 16.0, 4)

    r = factory(16, 4)
    assert (r.slot_size, r.capacity, len(r), r.free, r.view_count) == (16, 4, 0, 4, 0)
    # FIFO through every API, across several wrap-arounds
    for rnd in range(3):
        assert r.push(b"a%d" % rnd) is True
        v = r.acquire()
        assert v is not None and len(v) == 16 and not v.readonly and r.view_count == 1
        v[:3] = b"xyz"
        r.commit(3)
        del v
        assert r.view_count == 0
        assert r.push_batch(b"12345678", 4) == 2
        assert len(r) == 4 and r.free == 0
        assert r.push(b"full") is False and r.acquire() is None and r.push_batch(b"zzzz", 4) == 0
        assert r.pop() == b"a%d" % rnd
        p = r.peek()
        assert p is not None and bytes(p) == b"xyz" and p.readonly and len(p) == 3
        r.release()
        del p
        out = bytearray(8)
        assert r.pop_batch(out, 4) == 2 and out == b"12345678"
        assert r.pop() is None and r.peek() is None and r.pop_into(bytearray(16)) == -1
        assert r.pop_batch(bytearray(16), 4) == 0
        assert len(r) == 0 and r.free == 4

    # a viewed slot is never handed out again, so never overwritten
    r.push(b"keep")
    held = r.peek()
    r.release()
    gc.collect()
    assert r.view_count == 1 and len(r) == 0 and r.free == 3
    for i in range(3):
        assert r.push(b"%d" % i)
    assert r.push(b"x") is False, "the producer reached a slot a view still holds"
    assert r.acquire() is None and r.push_batch(b"xxxx", 4) == 0
    assert bytes(held) == b"keep"
    _raises(BufferError, r.close)
    sub = held[1:3]  # a derived view keeps the slot pinned
    del held
    gc.collect()
    assert r.view_count == 1 and bytes(sub) == b"ee"
    _raises(BufferError, r.close)
    del sub
    gc.collect()
    assert r.view_count == 0 and r.free == 1
    assert [r.pop() for _ in range(3)] == [b"0", b"1", b"2"]

    # views are counted per view: an acquired view kept past commit() and a
    # peek() of the same slot are two
    v = r.acquire()
    v[:2] = b"hi"
    r.commit(2)
    p = r.peek()
    assert r.view_count == 2 and bytes(p) == b"hi"
    r.release()
    del v, p
    gc.collect()
    assert r.view_count == 0

    # lengths: zero-length commits and pushes, exact fits, too long
    v = r.acquire()
    r.commit(0)
    del v
    assert r.push(b"") and r.push(b"s" * 16)
    p = r.peek()
    assert p is not None and len(p) == 0 and bytes(p) == b""
    r.release()
    del p
    assert r.pop() == b""
    _raises(ValueError, r.pop_into, bytearray(15))
    assert len(r) == 1, "a too-small buffer pops nothing"
    buf = bytearray(20)
    assert r.pop_into(buf) == 16 and buf[:16] == b"s" * 16
    _raises(ValueError, r.push, b"x" * 17)
    assert len(r) == 0

    # batch rules: item_size in [1, slot_size], len(src) a multiple of it;
    # pop_batch stops before an item of another length
    _raises(ValueError, r.push_batch, b"abc", 2)
    _raises(ValueError, r.push_batch, b"x" * 17, 17)
    _raises(ValueError, r.push_batch, b"", 0)
    _raises(ValueError, r.pop_batch, bytearray(4), 0)
    _raises(ValueError, r.pop_batch, bytearray(34), 17)
    assert r.push_batch(b"", 4) == 0
    assert r.push_batch(b"ab" * 3, 2) == 3 and r.push(b"abc")
    out = bytearray(7)  # room for 3 items of 2, not 4
    assert r.pop_batch(out, 2) == 3 and out[:6] == b"ababab"
    assert r.pop_batch(bytearray(8), 4) == 0, "an item of another length stops the batch"
    assert r.pop() == b"abc"

    # protocol misuse
    _raises(LocalProtocolError, r.commit, 1)
    _raises(LocalProtocolError, r.release)
    v = r.acquire()
    _raises(LocalProtocolError, r.acquire)
    _raises(LocalProtocolError, r.push, b"x")
    _raises(LocalProtocolError, r.push_batch, b"xx", 1)
    _raises(ValueError, r.commit, 17)
    _raises(ValueError, r.commit, -1)
    r.commit(1)
    del v
    p = r.peek()
    _raises(LocalProtocolError, r.peek)
    _raises(LocalProtocolError, r.pop)
    _raises(LocalProtocolError, r.pop_into, bytearray(16))
    _raises(LocalProtocolError, r.pop_batch, bytearray(16), 1)
    r.release()
    del p

    # buffer arguments: 1-D C-contiguous uint8; outputs writable; never None
    _raises(TypeError, r.push, None)
    _raises(TypeError, r.push, "text")
    _raises(TypeError, r.pop_into, None)
    _raises(ValueError, r.push, array.array("I", [1]))
    _raises(BufferError, r.pop_into, b"read-only bytes")
    _raises(BufferError, r.pop_batch, memoryview(bytearray(4)).toreadonly(), 4)
    assert r.push(array.array("B", [1, 2])) and r.push(memoryview(b"mv"))
    assert r.pop() == b"\x01\x02" and r.pop() == b"mv"

    # close: idempotent; afterwards every method raises ClosedResourceError
    with factory(8, 2) as r2:
        r2.push(b"x")
    _raises(ClosedResourceError, r2.pop)
    r.push(b"left behind")
    r.close()
    r.close()
    assert r.view_count == 0 and repr(r) == "<RingBuffer closed>"
    for call in (
        lambda: len(r),
        lambda: r.free,
        r.acquire,
        lambda: r.commit(0),
        lambda: r.push(b"x"),
        lambda: r.push_batch(b"xx", 1),
        r.peek,
        r.release,
        r.pop,
        lambda: r.pop_into(bytearray(16)),
        lambda: r.pop_batch(bytearray(16), 1),
    ):
        _raises(ClosedResourceError, call)


def check_mpmc_queue(factory) -> None:
    """MPMCQueue(capacity): FIFO, bounds, batches, blocking calls, close."""
    for bad in (0, 1, 3, 6, -4, 1 << 31):
        _raises(ValueError, factory, bad)
    _raises(TypeError, factory, 4.0)

    q = factory(4)
    assert q.capacity == 4 and len(q) == 0 and not q.closed
    assert q.try_get() is None
    assert all(q.try_put(i) is True for i in (1, 2, 3, 2**64 - 1))
    assert q.try_put(5) is False and len(q) == 4
    assert [q.try_get() for _ in range(4)] == [1, 2, 3, 2**64 - 1]
    # items: ints and __index__ integers in [0, 2**64); bool is not an item
    _raises(OverflowError, q.try_put, -1)
    _raises(OverflowError, q.try_put, 2**64)
    _raises(OverflowError, q.put, -1)
    for not_an_item in ("1", 1.0, True, None):
        _raises(TypeError, q.try_put, not_an_item)

    class Index:
        def __index__(self) -> int:
            return 42

    assert q.try_put(Index()) and q.try_get() == 42

    # batches: uint64 buffers, as many as fit / as many as there are
    src = array.array("Q", [10, 11, 12, 13, 14, 15])
    assert q.put_batch(src) == 4 and q.put_batch(src) == 0
    dst = array.array("Q", [0] * 8)
    assert q.get_batch(dst) == 4 and list(dst[:4]) == [10, 11, 12, 13]
    assert q.get_batch(dst) == 0 and q.put_batch(array.array("Q")) == 0
    assert q.get_batch(array.array("Q")) == 0
    _raises(ValueError, q.put_batch, b"12345678")
    _raises(ValueError, q.get_batch, bytearray(8))
    _raises(TypeError, q.put_batch, None)
    _raises(BufferError, q.get_batch, memoryview(array.array("Q", [0])).toreadonly())

    # blocking calls
    _raises(TimeoutError, q.get, 0.01)
    _raises(TimeoutError, q.get, 0)
    _raises(ValueError, q.get, -1)
    q.put(7, timeout=0.1)
    for i in range(3):
        q.put(i)
    _raises(TimeoutError, q.put, 9, 0.01)
    _raises(ValueError, q.put, 9, -1)
    assert len(q) == 4
    assert q.get(timeout=1) == 7

    # close: puts refuse, gets drain and then refuse
    q.close()
    q.close()
    assert q.closed and len(q) == 3
    _raises(ClosedResourceError, q.try_put, 1)
    _raises(ClosedResourceError, q.put, 1)
    _raises(ClosedResourceError, q.put_batch, src)
    assert q.get_batch(array.array("Q")) == 0, "not drained yet"
    assert q.get() == 0 and q.try_get() == 1
    assert q.get_batch(dst) == 1 and dst[0] == 2
    _raises(ClosedResourceError, q.get)
    _raises(ClosedResourceError, q.get, 0.01)
    _raises(ClosedResourceError, q.try_get)
    _raises(ClosedResourceError, q.get_batch, dst)
    _raises(ClosedResourceError, q.get_batch, array.array("Q"))
    assert len(q) == 0
