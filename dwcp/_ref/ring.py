"""Pure-Python RingBuffer and MPMCQueue: the oracles for dwcp/_fast/ring.pyx.

Same API, results and exceptions.  Each slot is its own bytearray, so the
"a viewed slot is never overwritten" rule is checked exactly: a bytearray
with live memoryview exports cannot be resized, which is how ``_viewed``
asks CPython whether any view of the slot is still alive.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from dwcp.errors import ClosedResourceError, LocalProtocolError

__all__ = ["RingBuffer", "MPMCQueue"]


def _pow2_check(n: int, what: str) -> None:
    if n < 2 or n & (n - 1) or n > (1 << 30):
        raise ValueError(f"{what} must be a power of two in [2, 2**30], got {n}")


def _u8(b, writable: bool = False) -> memoryview:
    mv = memoryview(b)
    if writable and mv.readonly:
        raise TypeError("buffer is read-only")
    if not mv.c_contiguous:
        raise ValueError("ndarray is not C-contiguous")
    return mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv


class RingBuffer:
    def __init__(self, slot_size: int, nslots: int) -> None:
        if not 1 <= slot_size <= (1 << 30):
            raise ValueError(f"slot_size must be in [1, 2**30], got {slot_size}")
        _pow2_check(nslots, "nslots")
        if slot_size * nslots > (1 << 40):
            raise ValueError("ring buffer larger than 1 TiB")
        self.slot_size = slot_size
        self.capacity = nslots
        self._slots = [bytearray(slot_size) for _ in range(nslots)]
        self._lens = [0] * nslots
        self._head = 0
        self._tail = 0
        self._acquired = False
        self._peeked = False
        self._closed = False
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("ring buffer is closed")

    def _viewed(self, i: int) -> bool:
        s = self._slots[i]
        try:
            s.append(0)
        except BufferError:
            return True
        del s[-1]
        return False

    def _can_write(self) -> bool:
        return self._head - self._tail < self.capacity and not self._viewed(self._head % self.capacity)

    def __len__(self) -> int:
        self._check()
        return self._head - self._tail

    @property
    def free(self) -> int:
        self._check()
        with self._lock:
            n = self.capacity - (self._head - self._tail)
            for i in range(self._head, self._tail + self.capacity):
                if self._viewed(i % self.capacity):
                    n -= 1
            return n

    @property
    def view_count(self) -> int:
        """Slots with live views (the reference cannot count several views of one slot)."""
        if self._closed:
            return 0
        return sum(self._viewed(i) for i in range(self.capacity))

    # -- producer ----------------------------------------------------------
    def acquire(self):
        self._check()
        if self._acquired:
            raise LocalProtocolError("acquire() twice without commit()")
        with self._lock:
            if not self._can_write():
                return None
            self._acquired = True
            return memoryview(self._slots[self._head % self.capacity])

    def commit(self, nbytes: int) -> None:
        self._check()
        if not self._acquired:
            raise LocalProtocolError("commit() without acquire()")
        if not 0 <= nbytes <= self.slot_size:
            raise ValueError(f"nbytes must be in [0, {self.slot_size}], got {nbytes}")
        with self._lock:
            self._lens[self._head % self.capacity] = nbytes
            self._head += 1
            self._acquired = False

    def push(self, data) -> bool:
        self._check()
        mv = _u8(data)
        if len(mv) > self.slot_size:
            raise ValueError(f"{len(mv)} bytes do not fit a {self.slot_size}-byte slot")
        if self._acquired:
            raise LocalProtocolError("push() while a slot is acquired")
        with self._lock:
            if not self._can_write():
                return False
            i = self._head % self.capacity
            self._slots[i][: len(mv)] = mv
            self._lens[i] = len(mv)
            self._head += 1
            return True

    def push_batch(self, src, item_size: int) -> int:
        self._check()
        if not 1 <= item_size <= self.slot_size:
            raise ValueError(f"item_size must be in [1, {self.slot_size}], got {item_size}")
        mv = _u8(src)
        if len(mv) % item_size:
            raise ValueError(f"len(src)={len(mv)} is not a multiple of item_size={item_size}")
        if self._acquired:
            raise LocalProtocolError("push_batch() while a slot is acquired")
        count = 0
        for off in range(0, len(mv), item_size):
            with self._lock:
                if not self._can_write():
                    break
                i = self._head % self.capacity
                self._slots[i][:item_size] = mv[off : off + item_size]
                self._lens[i] = item_size
                self._head += 1
            count += 1
        return count

    # -- consumer ----------------------------------------------------------
    def peek(self):
        self._check()
        if self._peeked:
            raise LocalProtocolError("peek() twice without release()")
        with self._lock:
            if self._tail == self._head:
                return None
            i = self._tail % self.capacity
            self._peeked = True
            return memoryview(self._slots[i])[: self._lens[i]].toreadonly()

    def release(self) -> None:
        self._check()
        if not self._peeked:
            raise LocalProtocolError("release() without peek()")
        with self._lock:
            self._tail += 1
            self._peeked = False

    def pop(self):
        self._check()
        if self._peeked:
            raise LocalProtocolError("pop() while a slot is peeked")
        with self._lock:
            if self._tail == self._head:
                return None
            i = self._tail % self.capacity
            out = bytes(self._slots[i][: self._lens[i]])
            self._tail += 1
            return out

    def pop_into(self, buf) -> int:
        self._check()
        mv = _u8(buf, writable=True)
        if self._peeked:
            raise LocalProtocolError("pop_into() while a slot is peeked")
        with self._lock:
            if self._tail == self._head:
                return -1
            i = self._tail % self.capacity
            n = self._lens[i]
            if n > len(mv):
                raise ValueError(f"buffer of {len(mv)} bytes is too small for a {n}-byte slot")
            mv[:n] = self._slots[i][:n]
            self._tail += 1
            return n

    def pop_batch(self, dst, item_size: int) -> int:
        self._check()
        if not 1 <= item_size <= self.slot_size:
            raise ValueError(f"item_size must be in [1, {self.slot_size}], got {item_size}")
        mv = _u8(dst, writable=True)
        if self._peeked:
            raise LocalProtocolError("pop_batch() while a slot is peeked")
        count = 0
        for off in range(0, len(mv) - item_size + 1, item_size):
            with self._lock:
                if self._tail == self._head:
                    break
                i = self._tail % self.capacity
                if self._lens[i] != item_size:
                    break
                mv[off : off + item_size] = self._slots[i][:item_size]
                self._tail += 1
            count += 1
        return count

    def close(self) -> None:
        if self._closed:
            return
        n = self.view_count
        if n:
            raise BufferError(f"cannot close a ring buffer with {n} live views")
        self._closed = True
        self._slots = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return "<RingBuffer closed>"
        return f"<RingBuffer {len(self)}/{self.capacity} slots of {self.slot_size} bytes>"


def _u64(x) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"MPMCQueue items are integers, got {type(x).__name__}")
    if not 0 <= x < 2**64:
        raise OverflowError(f"{x} does not fit in an unsigned 64-bit integer")
    return x


class MPMCQueue:
    def __init__(self, capacity: int) -> None:
        _pow2_check(capacity, "capacity")
        self.capacity = capacity
        self._q: deque[int] = deque()
        self._cv = threading.Condition()
        self._closed = False

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
            if len(self._q) >= self.capacity:
                return False
            self._q.append(v)
            self._cv.notify()
            return True

    def try_get(self):
        with self._cv:
            if self._q:
                v = self._q.popleft()
                self._cv.notify()
                return v
            if self._closed:
                raise ClosedResourceError("queue is closed and drained")
            return None

    def put(self, x, timeout=None) -> None:
        v = _u64(x)
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                if self._closed:
                    raise ClosedResourceError("queue is closed")
                if len(self._q) < self.capacity:
                    self._q.append(v)
                    self._cv.notify()
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"queue full for {timeout} s")
                self._cv.wait(left)

    def get(self, timeout=None) -> int:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                if self._q:
                    v = self._q.popleft()
                    self._cv.notify()
                    return v
                if self._closed:
                    raise ClosedResourceError("queue is closed and drained")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"queue empty for {timeout} s")
                self._cv.wait(left)

    def put_batch(self, src) -> int:
        mv = memoryview(src).cast("B").cast("Q")
        with self._cv:
            if self._closed:
                raise ClosedResourceError("queue is closed")
            n = 0
            for v in mv:
                if len(self._q) >= self.capacity:
                    break
                self._q.append(v)
                n += 1
            self._cv.notify_all()
            return n

    def get_batch(self, dst) -> int:
        mv = memoryview(dst).cast("B").cast("Q")
        if mv.readonly:
            raise TypeError("buffer is read-only")
        with self._cv:
            n = 0
            while n < len(mv) and self._q:
                mv[n] = self._q.popleft()
                n += 1
            if n == 0 and self._closed:
                raise ClosedResourceError("queue is closed and drained")
            self._cv.notify_all()
            return n

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __repr__(self) -> str:
        return f"<MPMCQueue {len(self)}/{self.capacity}{' closed' if self._closed else ''}>"
