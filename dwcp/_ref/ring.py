"""Pure-Python RingBuffer and MPMCQueue: the oracles for dwcp/_fast/ring.pyx.

Same API, results and exceptions; the Rules are in the module docstring of
dwcp/_fast/ring.pyx.  Written to be obviously correct, not fast:

* RingBuffer is one bytearray, free-running head/tail counters and a
  threading.RLock around every state change (SPSC needs no lock, but the
  oracle should not depend on the GIL's scheduling to be right).
* Views of a slot are ctypes arrays laid over the bytearray
  (``from_buffer``), wrapped in a memoryview.  Every memoryview derived from
  it keeps the array alive; a weakref callback on the array is the "release
  hook" that decrements the slot's view count when the last one is gone.
  (Python 3.12's ``__buffer__``/``__release_buffer__`` would do the same
  without ctypes; the project supports 3.11.)
* MPMCQueue is a deque under a threading.Condition.
* Buffer arguments are acquired the way Cython acquires a typed memoryview
  argument (``_typed``, through ``_cyargs.request_buffer``), so a wrong
  buffer raises the same exception type in both twins.
"""

from __future__ import annotations

import ctypes
import operator
import struct
import sys
import threading
import time
import weakref
from collections import deque

from dwcp.errors import ClosedResourceError, LocalProtocolError

from ._cyargs import request_buffer, ssize

__all__ = ["RingBuffer", "MPMCQueue"]


# -- arguments, as Cython converts them ---------------------------------------


def _not_none(mv, name: str) -> memoryview:
    if mv is None:
        raise TypeError(f"Argument '{name}' must not be None")
    return mv


_CTYPE = {"B": ("uint8_t", 1), "Q": ("uint64_t", 8)}


def _typed(obj, name: str, code: str, writable: bool, *, none_ok: bool = False) -> memoryview:
    """A 1-D C-contiguous ``uint8`` (code "B") or ``uint64`` ("Q") argument,
    checked in Cython's order; returns it as a flat memoryview of ``code``.

    Cython converts every argument before it checks ``not None``: a caller
    with later arguments passes ``none_ok=True``, converts those, then calls
    ``_not_none``."""
    if obj is None:
        if none_ok:
            return None  # type: ignore[return-value]
        raise TypeError(f"Argument '{name}' must not be None")
    request_buffer(obj, writable)
    mv = memoryview(obj)
    if mv.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {mv.ndim})")
    fmt = mv.format
    order, char = (fmt[0], fmt[1:]) if fmt[:1] in "@=<>!" else ("@", fmt)
    if order in ">!" and sys.byteorder == "little":
        raise ValueError("Big-endian buffer not supported on little-endian compiler")
    ctype, size = _CTYPE[code]
    try:
        ok = char in ("B", "H", "I", "L", "Q", "N") and struct.calcsize(order + char) == size
    except struct.error:
        ok = False
    if not ok or mv.itemsize != size:
        raise ValueError(f"Buffer dtype mismatch, expected '{ctype}' but got {fmt!r}")
    flat = mv.cast("B")
    return flat if code == "B" else flat.cast(code)  # type: ignore[call-overload]


def _pow2_check(n: int, what: str) -> None:
    if n < 2 or n & (n - 1) or n > (1 << 30):
        raise ValueError(f"{what} must be a power of two in [2, 2**30], got {n}")


# -- RingBuffer ----------------------------------------------------------------


class RingBuffer:
    """SPSC ring of ``nslots`` slots of ``slot_size`` bytes (Rules: dwcp/_fast/ring.pyx)."""

    def __init__(self, slot_size: int, nslots: int) -> None:
        slot_size, nslots = ssize(slot_size), ssize(nslots)
        if not 1 <= slot_size <= (1 << 30):
            raise ValueError(f"slot_size must be in [1, 2**30], got {slot_size}")
        _pow2_check(nslots, "nslots")
        if slot_size * nslots > (1 << 40):
            raise ValueError("ring buffer larger than 1 TiB")
        self._slot_size = slot_size
        self._capacity = nslots
        self._buf: bytearray | None = bytearray(slot_size * nslots)
        self._lens = [0] * nslots
        self._views = [0] * nslots  # live views per slot
        self._hooks: dict[int, weakref.ref] = {}  # keeps the release hooks alive
        self._head = 0  # slots committed so far (producer)
        self._tail = 0  # slots released so far (consumer)
        self._acquired = False
        self._peeked = False
        self._closed = False
        self._lock = threading.RLock()  # RLock: a release hook may run inside a locked section

    @property
    def slot_size(self) -> int:
        return self._slot_size

    @property
    def capacity(self) -> int:
        return self._capacity

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("ring buffer is closed")

    def _view(self, slot: int, length: int, readonly: bool) -> memoryview:
        assert self._buf is not None  # callers check the ring is open first
        arr = (ctypes.c_ubyte * length).from_buffer(self._buf, slot * self._slot_size)

        def released(ref: weakref.ref) -> None:
            with self._lock:
                self._views[slot] -= 1
                self._hooks.pop(id(ref), None)

        with self._lock:
            self._views[slot] += 1
            hook = weakref.ref(arr, released)
            self._hooks[id(hook)] = hook
        mv = memoryview(arr).cast("B")
        return mv.toreadonly() if readonly else mv

    def _can_write(self) -> bool:
        return self._head - self._tail < self._capacity and self._views[self._head % self._capacity] == 0

    def __len__(self) -> int:
        self._check()
        return self._head - self._tail

    @property
    def free(self) -> int:
        self._check()
        with self._lock:
            return sum(
                1
                for i in range(self._head, self._tail + self._capacity)
                if not self._views[i % self._capacity]
            )

    @property
    def view_count(self) -> int:
        if self._closed:
            return 0
        with self._lock:
            return sum(self._views)

    # -- producer ----------------------------------------------------------
    def acquire(self) -> memoryview | None:
        self._check()
        if self._acquired:
            raise LocalProtocolError("acquire() twice without commit()")
        with self._lock:
            if not self._can_write():
                return None
            view = self._view(self._head % self._capacity, self._slot_size, readonly=False)
            self._acquired = True
            return view

    def commit(self, nbytes: int) -> None:
        nbytes = ssize(nbytes)
        self._check()
        if not self._acquired:
            raise LocalProtocolError("commit() without acquire()")
        if not 0 <= nbytes <= self._slot_size:
            raise ValueError(f"nbytes must be in [0, {self._slot_size}], got {nbytes}")
        with self._lock:
            self._lens[self._head % self._capacity] = nbytes
            self._head += 1
            self._acquired = False

    def _put_one(self, item: memoryview) -> None:
        i = self._head % self._capacity
        off = i * self._slot_size
        assert self._buf is not None
        self._buf[off : off + len(item)] = item
        self._lens[i] = len(item)
        self._head += 1

    def push(self, data) -> bool:
        mv = _typed(data, "data", "B", writable=False)
        self._check()
        if len(mv) > self._slot_size:
            raise ValueError(f"{len(mv)} bytes do not fit a {self._slot_size}-byte slot")
        if self._acquired:
            raise LocalProtocolError("push() while a slot is acquired")
        with self._lock:
            if not self._can_write():
                return False
            self._put_one(mv)
            return True

    def push_batch(self, src, item_size: int) -> int:
        mv = _typed(src, "src", "B", writable=False, none_ok=True)
        item_size = ssize(item_size)
        mv = _not_none(mv, "src")
        self._check()
        if not 1 <= item_size <= self._slot_size:
            raise ValueError(f"item_size must be in [1, {self._slot_size}], got {item_size}")
        if len(mv) % item_size:
            raise ValueError(f"len(src)={len(mv)} is not a multiple of item_size={item_size}")
        if self._acquired:
            raise LocalProtocolError("push_batch() while a slot is acquired")
        count = 0
        for off in range(0, len(mv), item_size):
            with self._lock:
                if not self._can_write():
                    break
                self._put_one(mv[off : off + item_size])
            count += 1
        return count

    # -- consumer ----------------------------------------------------------
    def _slot_bytes(self, i: int) -> bytes:
        assert self._buf is not None
        off = i * self._slot_size
        return bytes(self._buf[off : off + self._lens[i]])

    def peek(self) -> memoryview | None:
        self._check()
        if self._peeked:
            raise LocalProtocolError("peek() twice without release()")
        with self._lock:
            if self._tail == self._head:
                return None
            i = self._tail % self._capacity
            view = self._view(i, self._lens[i], readonly=True)
            self._peeked = True
            return view

    def release(self) -> None:
        self._check()
        if not self._peeked:
            raise LocalProtocolError("release() without peek()")
        with self._lock:
            self._tail += 1
            self._peeked = False

    def pop(self) -> bytes | None:
        self._check()
        if self._peeked:
            raise LocalProtocolError("pop() while a slot is peeked")
        with self._lock:
            if self._tail == self._head:
                return None
            out = self._slot_bytes(self._tail % self._capacity)
            self._tail += 1
            return out

    def pop_into(self, buf) -> int:
        mv = _typed(buf, "buf", "B", writable=True)
        self._check()
        if self._peeked:
            raise LocalProtocolError("pop_into() while a slot is peeked")
        with self._lock:
            if self._tail == self._head:
                return -1
            item = self._slot_bytes(self._tail % self._capacity)
            if len(item) > len(mv):
                raise ValueError(f"buffer of {len(mv)} bytes is too small for a {len(item)}-byte slot")
            mv[: len(item)] = item
            self._tail += 1
            return len(item)

    def pop_batch(self, dst, item_size: int) -> int:
        mv = _typed(dst, "dst", "B", writable=True, none_ok=True)
        item_size = ssize(item_size)
        mv = _not_none(mv, "dst")
        self._check()
        if not 1 <= item_size <= self._slot_size:
            raise ValueError(f"item_size must be in [1, {self._slot_size}], got {item_size}")
        if self._peeked:
            raise LocalProtocolError("pop_batch() while a slot is peeked")
        count = 0
        for _ in range(len(mv) // item_size):
            with self._lock:
                if self._tail == self._head:
                    break
                item = self._slot_bytes(self._tail % self._capacity)
                if len(item) != item_size:
                    break
                mv[count * item_size : (count + 1) * item_size] = item
                self._tail += 1
            count += 1
        return count

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            live = sum(self._views)
            if live:
                raise BufferError(f"cannot close a ring buffer with {live} live views")
            self._closed = True
            self._buf = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return "<RingBuffer closed>"
        return f"<RingBuffer {len(self)}/{self._capacity} slots of {self._slot_size} bytes>"


# -- MPMCQueue -------------------------------------------------------------------


def _u64(x) -> int:
    # ints and integer-likes (__index__, e.g. numpy.uint64); bool is refused
    if type(x) is not int:
        if isinstance(x, bool) or not hasattr(type(x), "__index__"):
            raise TypeError(f"MPMCQueue items are integers, got {type(x).__name__}")
        x = operator.index(x)
    if not 0 <= x < 2**64:
        raise OverflowError(f"{x} does not fit in an unsigned 64-bit integer")
    return int(x)


def _deadline(timeout) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("timeout must be >= 0")
    return time.monotonic() + timeout


class MPMCQueue:
    """Bounded MPMC queue of unsigned 64-bit integers (Rules: dwcp/_fast/ring.pyx)."""

    def __init__(self, capacity: int) -> None:
        capacity = ssize(capacity)
        _pow2_check(capacity, "capacity")
        self._capacity = capacity
        self._q: deque[int] = deque()
        self._cv = threading.Condition()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._q)

    @property
    def closed(self) -> bool:
        return self._closed

    def try_put(self, x) -> bool:
        v = _u64(x)
        with self._cv:
            if self._closed:
                raise ClosedResourceError("queue is closed")
            if len(self._q) >= self._capacity:
                return False
            self._q.append(v)
            self._cv.notify_all()
            return True

    def try_get(self) -> int | None:
        with self._cv:
            if self._q:
                v = self._q.popleft()
                self._cv.notify_all()
                return v
            if self._closed:
                raise ClosedResourceError("queue is closed and drained")
            return None

    def put(self, x, timeout=None) -> None:
        v = _u64(x)
        deadline = _deadline(timeout)
        with self._cv:
            while True:
                if self._closed:
                    raise ClosedResourceError("queue is closed")
                if len(self._q) < self._capacity:
                    self._q.append(v)
                    self._cv.notify_all()
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"queue full for {timeout} s")
                self._cv.wait(left)

    def get(self, timeout=None) -> int:
        deadline = _deadline(timeout)
        with self._cv:
            while True:
                if self._q:
                    v = self._q.popleft()
                    self._cv.notify_all()
                    return v
                if self._closed:
                    raise ClosedResourceError("queue is closed and drained")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"queue empty for {timeout} s")
                self._cv.wait(left)

    def put_batch(self, src) -> int:
        mv = _typed(src, "src", "Q", writable=False)
        with self._cv:
            if self._closed:
                raise ClosedResourceError("queue is closed")
            n = min(len(mv), self._capacity - len(self._q))
            self._q.extend(mv[:n].tolist())
            if n:
                self._cv.notify_all()
            return n

    def get_batch(self, dst) -> int:
        mv = _typed(dst, "dst", "Q", writable=True)
        with self._cv:
            n = min(len(mv), len(self._q))
            for i in range(n):
                mv[i] = self._q.popleft()
            if n == 0 and self._closed and not self._q:
                raise ClosedResourceError("queue is closed and drained")
            if n:
                self._cv.notify_all()
            return n

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __repr__(self) -> str:
        return f"<MPMCQueue {len(self)}/{self._capacity}{' closed' if self._closed else ''}>"
