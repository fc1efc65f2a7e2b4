# cython: language_level=3
"""Ring buffers for the data plane (pure-Python twin: dwcp/_ref/ring.py).

Theory of operation
-------------------
``RingBuffer(slot_size, nslots)`` is a single-producer/single-consumer ring
of ``nslots`` fixed-size slots over one contiguous buffer.  ``head`` (next
slot to fill, written only by the producer) and ``tail`` (next slot to
drain, written only by the consumer) are free-running 64-bit counters on
separate cache lines; slot ``i`` lives at ``(i & mask) * slot_size``.  Each
side publishes its counter with a release store after touching the slot and
reads the other's with an acquire load before touching it (atomics.h), so a
producer thread and a consumer thread may run the GIL-free batch calls at
the same time.

``MPMCQueue(capacity)`` is Dmitry Vyukov's bounded multi-producer /
multi-consumer queue of unsigned 64-bit integers (chunk indices handed to
stream workers): one sequence number per cell, CAS on the shared positions.

Rules
-----
1. One producer thread and one consumer thread per RingBuffer.  Producer
   calls: acquire/commit, push, push_batch.  Consumer calls: peek/release,
   pop, pop_into, pop_batch.  Any number of threads per MPMCQueue.
2. acquire() and peek() return zero-copy memoryviews (length slot_size,
   writable; length = committed bytes, read-only).  Every such view is
   counted on its slot until the memoryview and everything derived from it
   is released.  A slot with a live view counts as occupied: acquire()
   returns None, push() False, push_batch() stops before it, so a viewed
   slot is never overwritten; ``free`` does not count it.
3. commit() without acquire(), release() without peek(), a second
   acquire()/peek() before commit()/release(), and the producer's (or
   consumer's) copy calls while a slot is acquired (peeked) raise
   LocalProtocolError.
4. pop_batch() pops only items whose committed length is exactly
   ``item_size`` and stops before the first that is not (pop() it).
5. close() with live views raises BufferError; a close() racing a batch
   call in flight raises RuntimeError.  After close() every method raises
   ClosedResourceError (``view_count`` reads 0, ``repr`` works).
6. MPMCQueue.close(): put calls raise ClosedResourceError; get calls drain
   what is left and then raise ClosedResourceError.  Values outside
   [0, 2**64) raise OverflowError; items are ints or have __index__ (numpy
   integers), anything else (bool included) raises TypeError.
7. Buffer arguments are 1-D C-contiguous ``uint8`` (RingBuffer) or
   ``uint64`` (MPMCQueue) buffers; outputs must be writable.  What a wrong
   buffer raises is what acquiring it as a typed memoryview raises
   (TypeError for non-buffers and None, ValueError for a wrong dtype or
   ndim, the exporter's own error for read-only or non-contiguous ones).
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBUF_FORMAT
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.number cimport PyNumber_Index
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, int64_t

from .debug cimport DWCP_DEBUG

import time

from dwcp.errors import ClosedResourceError, InternalError, LocalProtocolError

__all__ = ["RingBuffer", "MPMCQueue"]

cdef extern from "atomics.h" nogil:
    uint64_t dwcp_load_acq(const uint64_t *p)
    uint64_t dwcp_load_rlx(const uint64_t *p)
    void dwcp_store_rel(uint64_t *p, uint64_t v)
    int32_t dwcp_load_i32(const int32_t *p)
    void dwcp_store_i32(int32_t *p, int32_t v)
    void dwcp_add_i32(int32_t *p, int32_t v)
    void dwcp_cpu_relax()
    void dwcp_sleep_us(long us)
    int dwcp_mpmc_put(dwcp_mpmc_idx *ix, dwcp_mpmc_cell *cells, uint64_t mask, uint64_t v)
    int dwcp_mpmc_get(dwcp_mpmc_idx *ix, dwcp_mpmc_cell *cells, uint64_t mask, uint64_t *v)
    void *aligned_alloc(size_t alignment, size_t size)


cdef int _pow2_check(Py_ssize_t n, str what) except -1:
    if n < 2 or n & (n - 1) or n > (1 << 30):
        raise ValueError(f"{what} must be a power of two in [2, 2**30], got {n}")
    return 0


cdef class _SlotView:
    """Buffer exporter for one slot; counts live views on that slot.

    acquire()/peek() wrap one in a memoryview and hand that out; slices and
    numpy arrays made from it keep the export (and the count) alive.  Once
    every export is released the object is spent: exporting it again
    (``memoryview(view.obj)``) raises BufferError, since the slot may have
    been reused.
    """

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self.ring.closed:
            raise ClosedResourceError("ring buffer is closed")
        if self.spent:
            raise BufferError("this slot view was released; acquire() or peek() again")
        if self.readonly and flags & PyBUF_WRITABLE:
            raise BufferError("this slot view is read-only")
        self.shape[0] = self.length
        self.strides[0] = 1
        buffer.buf = self.ring.buf + self.slot * self.ring.slot_size
        buffer.obj = self
        buffer.len = self.length
        buffer.readonly = self.readonly
        buffer.itemsize = 1
        if flags & PyBUF_FORMAT:
            buffer.format = "B"
        else:
            buffer.format = NULL
        buffer.ndim = 1
        buffer.shape = self.shape
        buffer.strides = self.strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self.live += 1
        dwcp_add_i32(&self.ring.views[self.slot], 1)

    def __releasebuffer__(self, Py_buffer *buffer):
        self.live -= 1
        if self.live == 0:
            self.spent = True
        dwcp_add_i32(&self.ring.views[self.slot], -1)


cdef class RingBuffer:
    """SPSC ring of ``nslots`` slots of ``slot_size`` bytes (see the module Rules)."""

    def __cinit__(self, Py_ssize_t slot_size, Py_ssize_t nslots):
        self.buf = NULL
        if slot_size < 1 or slot_size > (1 << 30):
            raise ValueError(f"slot_size must be in [1, 2**30], got {slot_size}")
        _pow2_check(nslots, "nslots")
        if slot_size * nslots > (1 << 40):
            raise ValueError("ring buffer larger than 1 TiB")
        self.slot_size = slot_size
        self.capacity = nslots
        self.mask = nslots - 1
        self.buf = <uint8_t*>calloc(nslots, slot_size)
        self.lens = <uint32_t*>calloc(nslots, sizeof(uint32_t))
        self.views = <int32_t*>calloc(nslots, sizeof(int32_t))
        # 128 bytes: head and tail on their own cache lines
        self.idx = <dwcp_spsc_idx*>aligned_alloc(64, sizeof(dwcp_spsc_idx))
        if self.buf == NULL or self.lens == NULL or self.views == NULL or self.idx == NULL:
            self._free()
            raise MemoryError()
        self.idx.head = 0
        self.idx.tail = 0

    cdef void _free(self) noexcept:
        free(self.buf)
        free(self.lens)
        free(self.views)
        free(self.idx)
        self.buf = NULL
        self.lens = NULL
        self.views = NULL
        self.idx = NULL

    def __dealloc__(self):
        # live _SlotViews hold a reference to the ring, so none is left here
        self._free()

    cdef int _check(self) except -1:
        if self.closed:
            raise ClosedResourceError("ring buffer is closed")
        return 0

    cdef int _debug_check(self) except -1:
        # DWCP_DEBUG builds only (the C compiler drops the call otherwise)
        cdef uint64_t used = dwcp_load_acq(&self.idx.head) - dwcp_load_acq(&self.idx.tail)
        if used > <uint64_t>self.capacity:
            raise InternalError(f"ring buffer holds {used} slots, capacity {self.capacity}")
        cdef Py_ssize_t i
        for i in range(self.capacity):
            if dwcp_load_i32(&self.views[i]) < 0:
                raise InternalError(f"slot {i} has a negative view count")
        return 0

    # -- state -------------------------------------------------------------
    def __len__(self):
        """Committed slots not yet released."""
        self._check()
        return <Py_ssize_t>(dwcp_load_acq(&self.idx.head) - dwcp_load_acq(&self.idx.tail))

    @property
    def free(self):
        """Slots the producer can fill now (viewed slots count as occupied)."""
        self._check()
        cdef uint64_t head = dwcp_load_acq(&self.idx.head)
        cdef uint64_t tail = dwcp_load_acq(&self.idx.tail)
        cdef Py_ssize_t n = self.capacity - <Py_ssize_t>(head - tail)
        cdef uint64_t i
        for i in range(head, tail + self.capacity):
            if dwcp_load_i32(&self.views[i & self.mask]) > 0:
                n -= 1
        return n

    @property
    def view_count(self):
        """Live views from acquire()/peek(), over all slots (0 once closed)."""
        if self.closed:
            return 0
        cdef Py_ssize_t i, n = 0
        for i in range(self.capacity):
            n += dwcp_load_i32(&self.views[i])
        return n

    cdef bint _can_write(self, uint64_t head) noexcept nogil:
        return (head - dwcp_load_acq(&self.idx.tail) < <uint64_t>self.capacity
                and dwcp_load_i32(&self.views[head & self.mask]) == 0)

    cdef Py_ssize_t _push_n(self, const uint8_t *p, Py_ssize_t items, Py_ssize_t item_size) noexcept nogil:
        # One acquire load of tail and one release store of head per batch:
        # per-slot index traffic would bounce the two cache lines between
        # the producer's and the consumer's cores for every slot.
        cdef uint64_t head = dwcp_load_rlx(&self.idx.head)
        cdef uint64_t room = <uint64_t>self.capacity - (head - dwcp_load_acq(&self.idx.tail))
        cdef Py_ssize_t count = 0
        if <uint64_t>items > room:
            items = <Py_ssize_t>room
        while count < items and dwcp_load_i32(&self.views[head & self.mask]) == 0:
            memcpy(self.buf + (head & self.mask) * self.slot_size, p + count * item_size, item_size)
            self.lens[head & self.mask] = <uint32_t>item_size
            head += 1
            count += 1
        if count:
            dwcp_store_rel(&self.idx.head, head)
        return count

    cdef Py_ssize_t _pop_n(self, uint8_t *p, Py_ssize_t items, Py_ssize_t item_size) noexcept nogil:
        # one acquire load of head and one release store of tail per batch
        cdef uint64_t tail = dwcp_load_rlx(&self.idx.tail)
        cdef uint64_t ready = dwcp_load_acq(&self.idx.head) - tail
        cdef Py_ssize_t count = 0
        if <uint64_t>items > ready:
            items = <Py_ssize_t>ready
        while count < items and self.lens[tail & self.mask] == <uint32_t>item_size:
            memcpy(p + count * item_size, self.buf + (tail & self.mask) * self.slot_size, item_size)
            tail += 1
            count += 1
        if count:
            dwcp_store_rel(&self.idx.tail, tail)
        return count

    # -- producer ----------------------------------------------------------
    def acquire(self):
        """A writable view of the next free slot (length slot_size), or None when full."""
        self._check()
        if self.acquired:
            raise LocalProtocolError("acquire() twice without commit()")
        cdef uint64_t head = dwcp_load_rlx(&self.idx.head)
        if not self._can_write(head):
            return None
        cdef _SlotView v = _SlotView.__new__(_SlotView)
        v.ring = self
        v.slot = head & self.mask
        v.length = self.slot_size
        v.readonly = False
        view = memoryview(v)
        self.acquired = True
        return view

    def commit(self, Py_ssize_t nbytes):
        """Publish the acquired slot with its first ``nbytes`` bytes."""
        self._check()
        if not self.acquired:
            raise LocalProtocolError("commit() without acquire()")
        if nbytes < 0 or nbytes > self.slot_size:
            raise ValueError(f"nbytes must be in [0, {self.slot_size}], got {nbytes}")
        cdef uint64_t head = dwcp_load_rlx(&self.idx.head)
        self.lens[head & self.mask] = <uint32_t>nbytes
        dwcp_store_rel(&self.idx.head, head + 1)
        self.acquired = False
        if DWCP_DEBUG:
            self._debug_check()

    def push(self, const uint8_t[::1] data not None):
        """Copy ``data`` (at most slot_size bytes) into the next slot; False when full."""
        self._check()
        cdef Py_ssize_t n = data.shape[0]
        if n > self.slot_size:
            raise ValueError(f"{n} bytes do not fit a {self.slot_size}-byte slot")
        if self.acquired:
            raise LocalProtocolError("push() while a slot is acquired")
        cdef uint64_t head = dwcp_load_rlx(&self.idx.head)
        if not self._can_write(head):
            return False
        if n:
            memcpy(self.buf + (head & self.mask) * self.slot_size, &data[0], n)
        self.lens[head & self.mask] = <uint32_t>n
        dwcp_store_rel(&self.idx.head, head + 1)
        return True

    def push_batch(self, const uint8_t[::1] src not None, Py_ssize_t item_size):
        """Push consecutive ``item_size``-byte items of ``src`` while they fit (GIL released).

        len(src) must be a multiple of item_size, and 1 <= item_size <= slot_size.
        Returns how many items were pushed (0 when full).
        """
        self._check()
        if item_size < 1 or item_size > self.slot_size:
            raise ValueError(f"item_size must be in [1, {self.slot_size}], got {item_size}")
        if src.shape[0] % item_size:
            raise ValueError(f"len(src)={src.shape[0]} is not a multiple of item_size={item_size}")
        if self.acquired:
            raise LocalProtocolError("push_batch() while a slot is acquired")
        cdef Py_ssize_t items = src.shape[0] // item_size, count
        if items == 0:
            return 0
        cdef const uint8_t *p = &src[0]
        dwcp_add_i32(&self.active, 1)
        with nogil:
            count = self._push_n(p, items, item_size)
        dwcp_add_i32(&self.active, -1)
        if DWCP_DEBUG:
            self._debug_check()
        return count

    # -- consumer ----------------------------------------------------------
    def peek(self):
        """A read-only view of the oldest committed slot (its committed length), or None when empty."""
        self._check()
        if self.peeked:
            raise LocalProtocolError("peek() twice without release()")
        cdef uint64_t tail = dwcp_load_rlx(&self.idx.tail)
        if tail == dwcp_load_acq(&self.idx.head):
            return None
        cdef _SlotView v = _SlotView.__new__(_SlotView)
        v.ring = self
        v.slot = tail & self.mask
        v.length = self.lens[tail & self.mask]
        v.readonly = True
        view = memoryview(v)
        self.peeked = True
        return view

    def release(self):
        """Free the peeked slot (its views stay valid; the slot is not reused while they live)."""
        self._check()
        if not self.peeked:
            raise LocalProtocolError("release() without peek()")
        dwcp_store_rel(&self.idx.tail, dwcp_load_rlx(&self.idx.tail) + 1)
        self.peeked = False
        if DWCP_DEBUG:
            self._debug_check()

    def pop(self):
        """The oldest slot's bytes (a copy), or None when empty."""
        self._check()
        if self.peeked:
            raise LocalProtocolError("pop() while a slot is peeked")
        cdef uint64_t tail = dwcp_load_rlx(&self.idx.tail)
        if tail == dwcp_load_acq(&self.idx.head):
            return None
        out = PyBytes_FromStringAndSize(<char*>(self.buf + (tail & self.mask) * self.slot_size),
                                        self.lens[tail & self.mask])
        dwcp_store_rel(&self.idx.tail, tail + 1)
        return out

    def pop_into(self, uint8_t[::1] buf not None):
        """Copy the oldest slot into ``buf``; its length, or -1 when empty.

        A ``buf`` shorter than the slot's length raises ValueError and pops nothing.
        """
        self._check()
        if self.peeked:
            raise LocalProtocolError("pop_into() while a slot is peeked")
        cdef uint64_t tail = dwcp_load_rlx(&self.idx.tail)
        if tail == dwcp_load_acq(&self.idx.head):
            return -1
        cdef Py_ssize_t n = self.lens[tail & self.mask]
        if n > buf.shape[0]:
            raise ValueError(f"buffer of {buf.shape[0]} bytes is too small for a {n}-byte slot")
        if n:
            memcpy(&buf[0], self.buf + (tail & self.mask) * self.slot_size, n)
        dwcp_store_rel(&self.idx.tail, tail + 1)
        return n

    def pop_batch(self, uint8_t[::1] dst not None, Py_ssize_t item_size):
        """Pop up to len(dst)//item_size items into ``dst``, back to back (GIL released).

        Only items of exactly ``item_size`` bytes are popped: the batch stops
        before the first item of another length (pop() it instead).  Returns
        the count (0 when empty).
        """
        self._check()
        if item_size < 1 or item_size > self.slot_size:
            raise ValueError(f"item_size must be in [1, {self.slot_size}], got {item_size}")
        if self.peeked:
            raise LocalProtocolError("pop_batch() while a slot is peeked")
        cdef Py_ssize_t items = dst.shape[0] // item_size, count
        if items == 0:
            return 0
        cdef uint8_t *p = &dst[0]
        dwcp_add_i32(&self.active, 1)
        with nogil:
            count = self._pop_n(p, items, item_size)
        dwcp_add_i32(&self.active, -1)
        if DWCP_DEBUG:
            self._debug_check()
        return count

    def close(self):
        """Free the buffer.  BufferError while views are alive; idempotent."""
        if self.closed:
            return
        cdef Py_ssize_t live = self.view_count
        if live:
            raise BufferError(f"cannot close a ring buffer with {live} live views")
        if dwcp_load_i32(&self.active):
            raise RuntimeError("cannot close a ring buffer while a batch call is running")
        self.closed = True
        self._free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self.closed:
            return "<RingBuffer closed>"
        return f"<RingBuffer {len(self)}/{self.capacity} slots of {self.slot_size} bytes>"


cdef class MPMCQueue:
    """Bounded MPMC queue of unsigned 64-bit integers (see the module Rules)."""

    def __cinit__(self, Py_ssize_t capacity):
        self.cells = NULL
        self.idx = NULL
        _pow2_check(capacity, "capacity")
        self.capacity = capacity
        self.mask = capacity - 1
        self.cells = <dwcp_mpmc_cell*>aligned_alloc(64, ((capacity * sizeof(dwcp_mpmc_cell) + 63) // 64) * 64)
        self.idx = <dwcp_mpmc_idx*>aligned_alloc(64, sizeof(dwcp_mpmc_idx))
        if self.cells == NULL or self.idx == NULL:
            free(self.cells)
            free(self.idx)
            self.cells = NULL
            self.idx = NULL
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(capacity):
            self.cells[i].seq = i
            self.cells[i].value = 0
        self.idx.enq = 0
        self.idx.deq = 0

    def __dealloc__(self):
        free(self.cells)
        free(self.idx)

    def __len__(self):
        """Items in the queue (a snapshot: approximate while other threads run)."""
        cdef int64_t n = <int64_t>(dwcp_load_acq(&self.idx.enq) - dwcp_load_acq(&self.idx.deq))
        return max(0, min(n, self.capacity))

    @property
    def closed(self):
        return bool(dwcp_load_i32(&self.closed))

    def try_put(self, x):
        """Put ``x`` if there is room; False when full."""
        cdef uint64_t v = _u64(x)
        if dwcp_load_i32(&self.closed):
            raise ClosedResourceError("queue is closed")
        return bool(dwcp_mpmc_put(self.idx, self.cells, self.mask, v))

    def try_get(self):
        """The oldest item, or None when empty."""
        cdef uint64_t v
        if dwcp_mpmc_get(self.idx, self.cells, self.mask, &v):
            return v
        if dwcp_load_i32(&self.closed):
            raise ClosedResourceError("queue is closed and drained")
        return None

    def put(self, x, timeout=None):
        """Put ``x``, waiting for room (spin, then sleep without the GIL); TimeoutError after ``timeout`` s."""
        cdef uint64_t v = _u64(x)
        cdef double deadline = _deadline(timeout)
        cdef int spins = 0, ok
        while True:
            if dwcp_load_i32(&self.closed):
                raise ClosedResourceError("queue is closed")
            with nogil:
                ok = _spin_put(self.idx, self.cells, self.mask, v, &spins)
            if ok:
                return
            if deadline >= 0 and time.monotonic() >= deadline:
                raise TimeoutError(f"queue full for {timeout} s")

    def get(self, timeout=None):
        """The oldest item, waiting for one (spin, then sleep without the GIL); TimeoutError after ``timeout`` s."""
        cdef uint64_t v
        cdef double deadline = _deadline(timeout)
        cdef int spins = 0, ok
        while True:
            with nogil:
                ok = _spin_get(self.idx, self.cells, self.mask, &v, &spins)
            if ok:
                return v
            if dwcp_load_i32(&self.closed):
                # drained: one last look for items put before close()
                if dwcp_mpmc_get(self.idx, self.cells, self.mask, &v):
                    return v
                raise ClosedResourceError("queue is closed and drained")
            if deadline >= 0 and time.monotonic() >= deadline:
                raise TimeoutError(f"queue empty for {timeout} s")

    def put_batch(self, const uint64_t[::1] src not None):
        """Put as many leading items of ``src`` as fit (GIL released); returns the count."""
        if dwcp_load_i32(&self.closed):
            raise ClosedResourceError("queue is closed")
        cdef Py_ssize_t n = src.shape[0], i = 0
        if n == 0:
            return 0
        cdef const uint64_t *p = &src[0]
        with nogil:
            while i < n and dwcp_mpmc_put(self.idx, self.cells, self.mask, p[i]):
                i += 1
        return i

    def get_batch(self, uint64_t[::1] dst not None):
        """Get up to len(dst) items into ``dst`` (GIL released); returns the count.

        On a closed queue: the items left, then ClosedResourceError once it is
        drained (also for an empty ``dst``).
        """
        cdef Py_ssize_t n = dst.shape[0], i = 0
        cdef uint64_t *p
        if n:
            p = &dst[0]
            with nogil:
                while i < n and dwcp_mpmc_get(self.idx, self.cells, self.mask, &p[i]):
                    i += 1
        if i == 0 and dwcp_load_i32(&self.closed) and len(self) == 0:
            raise ClosedResourceError("queue is closed and drained")
        return i

    def close(self):
        """Refuse new items; getters drain what is left.  Idempotent."""
        dwcp_store_i32(&self.closed, 1)

    def __repr__(self):
        return f"<MPMCQueue {len(self)}/{self.capacity}{' closed' if self.closed else ''}>"


cdef uint64_t _u64(object x) except? 0:
    # ints and integer-likes (__index__, e.g. numpy.uint64); bool is refused
    if type(x) is not int:
        if isinstance(x, bool) or not hasattr(type(x), "__index__"):
            raise TypeError(f"MPMCQueue items are integers, got {type(x).__name__}")
        x = PyNumber_Index(x)
    if x < 0 or x >= 2**64:
        raise OverflowError(f"{x} does not fit in an unsigned 64-bit integer")
    return <uint64_t>x


cdef double _deadline(object timeout) except? -2:
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError("timeout must be >= 0")
    return time.monotonic() + timeout


cdef inline void _backoff(int *spins) noexcept nogil:
    # ~64 pause instructions, then short sleeps (~50 us each with the
    # default timer slack) for about 50 ms, then 200 us, then 1 ms: a
    # waiter reacts fast to a busy queue and costs little CPU on an idle one.
    if spins[0] < 100000:
        spins[0] += 1
    if spins[0] < 64:
        dwcp_cpu_relax()
    elif spins[0] < 1000:
        dwcp_sleep_us(1)
    elif spins[0] < 6000:
        dwcp_sleep_us(200)
    else:
        dwcp_sleep_us(1000)


cdef inline int _spin_put(dwcp_mpmc_idx *ix, dwcp_mpmc_cell *cells, uint64_t mask, uint64_t v,
                          int *spins) noexcept nogil:
    cdef int k
    for k in range(8):
        if dwcp_mpmc_put(ix, cells, mask, v):
            return 1
        _backoff(spins)
    return 0


cdef inline int _spin_get(dwcp_mpmc_idx *ix, dwcp_mpmc_cell *cells, uint64_t mask, uint64_t *v,
                          int *spins) noexcept nogil:
    cdef int k
    for k in range(8):
        if dwcp_mpmc_get(ix, cells, mask, v):
            return 1
        _backoff(spins)
    return 0
