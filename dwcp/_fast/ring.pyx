# cython: language_level=3
"""Ring buffers for the data plane.

``RingBuffer`` -- a single-producer/single-consumer ring of fixed-size slots
over one contiguous buffer.  The producer fills slots (``acquire`` +
``commit``, ``push``, ``push_batch``), the consumer drains them (``peek`` +
``release``, ``pop``, ``pop_into``, ``pop_batch``).  Head and tail are
published with release stores and read with acquire loads (atomics.h), so a
producer thread and a consumer thread may run batch calls (GIL released)
at the same time.  Views returned by ``acquire``/``peek`` are zero copy and
counted per slot: a slot with a live view is never handed out again (it
counts as occupied), so it is never overwritten, and ``close`` refuses to
free memory a view still points at.

``MPMCQueue`` -- Dmitry Vyukov's bounded multi-producer/multi-consumer queue
of unsigned 64-bit integers (chunk indices handed to stream workers).

Rules: one producer thread and one consumer thread per RingBuffer; any
number of threads per MPMCQueue.  ``close`` must not race with calls in
flight (it raises RuntimeError if it detects one).
"""

cimport cython
from cpython.buffer cimport PyBUF_WRITABLE, PyBUF_FORMAT
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, int64_t

import time

from dwcp.errors import ClosedResourceError, LocalProtocolError

__all__ = ["RingBuffer", "MPMCQueue"]

cdef extern from "atomics.h" nogil:
    uint64_t dwcp_load_acq(const uint64_t *p)
    uint64_t dwcp_load_rlx(const uint64_t *p)
    void dwcp_store_rel(uint64_t *p, uint64_t v)
    int32_t dwcp_load_i32(const int32_t *p)
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


@cython.final
cdef class _SlotView:
    """Buffer exporter for one slot; counts live views on that slot."""

    cdef RingBuffer ring
    cdef Py_ssize_t slot
    cdef Py_ssize_t length
    cdef bint readonly
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self.ring.closed:
            raise ClosedResourceError("ring buffer is closed")
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
        dwcp_add_i32(&self.ring.views[self.slot], 1)

    def __releasebuffer__(self, Py_buffer *buffer):
        dwcp_add_i32(&self.ring.views[self.slot], -1)


cdef class RingBuffer:
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
        self._free()

    cdef int _check(self) except -1:
        if self.closed:
            raise ClosedResourceError("ring buffer is closed")
        return 0

    # -- state -------------------------------------------------------------
    def __len__(self):
        self._check()
        return <Py_ssize_t>(dwcp_load_acq(&self.idx.head) - dwcp_load_acq(&self.idx.tail))

    @property
    def free(self):
        self._check()
        cdef uint64_t head = dwcp_load_acq(&self.idx.head)
        cdef uint64_t tail = dwcp_load_acq(&self.idx.tail)
        cdef Py_ssize_t n = self.capacity - <Py_ssize_t>(head - tail)
        # slots still viewed after release count as occupied
        cdef uint64_t i
        for i in range(head, tail + self.capacity):
            if dwcp_load_i32(&self.views[i & self.mask]) > 0:
                n -= 1
        return n

    @property
    def view_count(self):
        """Live views over all slots."""
        if self.closed:
            return 0
        cdef Py_ssize_t i, n = 0
        for i in range(self.capacity):
            n += dwcp_load_i32(&self.views[i])
        return n

    cdef bint _can_write(self, uint64_t head) noexcept nogil:
        return (head - dwcp_load_acq(&self.idx.tail) < <uint64_t>self.capacity
                and dwcp_load_i32(&self.views[head & self.mask]) == 0)

    # -- producer ----------------------------------------------------------
    def acquire(self):
        """A writable view of the next free slot, or None when full."""
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
        self.acquired = True
        return memoryview(v)

    def commit(self, Py_ssize_t nbytes):
        self._check()
        if not self.acquired:
            raise LocalProtocolError("commit() without acquire()")
        if nbytes < 0 or nbytes > self.slot_size:
            raise ValueError(f"nbytes must be in [0, {self.slot_size}], got {nbytes}")
        cdef uint64_t head = dwcp_load_rlx(&self.idx.head)
        self.lens[head & self.mask] = <uint32_t>nbytes
        dwcp_store_rel(&self.idx.head, head + 1)
        self.acquired = False

    def push(self, const uint8_t[::1] data):
        """Copy ``data`` into the next slot; False when full."""
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

    def push_batch(self, const uint8_t[::1] src, Py_ssize_t item_size):
        """Push consecutive ``item_size``-byte items of ``src`` while they fit; returns the count."""
        self._check()
        if item_size < 1 or item_size > self.slot_size:
            raise ValueError(f"item_size must be in [1, {self.slot_size}], got {item_size}")
        if src.shape[0] % item_size:
            raise ValueError(f"len(src)={src.shape[0]} is not a multiple of item_size={item_size}")
        if self.acquired:
            raise LocalProtocolError("push_batch() while a slot is acquired")
        cdef Py_ssize_t items = src.shape[0] // item_size, count = 0
        if items == 0:
            return 0
        cdef const uint8_t *p = &src[0]
        cdef uint64_t head = dwcp_load_rlx(&self.idx.head)
        dwcp_add_i32(&self.active, 1)
        with nogil:
            while count < items and self._can_write(head):
                memcpy(self.buf + (head & self.mask) * self.slot_size, p + count * item_size, item_size)
                self.lens[head & self.mask] = <uint32_t>item_size
                head += 1
                dwcp_store_rel(&self.idx.head, head)
                count += 1
        dwcp_add_i32(&self.active, -1)
        return count

    # -- consumer ----------------------------------------------------------
    def peek(self):
        """A read-only view of the oldest committed slot, or None when empty."""
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
        self.peeked = True
        return memoryview(v)

    def release(self):
        self._check()
        if not self.peeked:
            raise LocalProtocolError("release() without peek()")
        dwcp_store_rel(&self.idx.tail, dwcp_load_rlx(&self.idx.tail) + 1)
        self.peeked = False

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

    def pop_into(self, uint8_t[::1] buf):
        """Copy the oldest slot into ``buf``; its length, or -1 when empty."""
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

    def pop_batch(self, uint8_t[::1] dst, Py_ssize_t item_size):
        """Pop up to len(dst)//item_size items of exactly item_size bytes; stops before any other length."""
        self._check()
        if item_size < 1 or item_size > self.slot_size:
            raise ValueError(f"item_size must be in [1, {self.slot_size}], got {item_size}")
        if self.peeked:
            raise LocalProtocolError("pop_batch() while a slot is peeked")
        cdef Py_ssize_t items = dst.shape[0] // item_size, count = 0
        if items == 0:
            return 0
        cdef uint8_t *p = &dst[0]
        cdef uint64_t tail = dwcp_load_rlx(&self.idx.tail)
        dwcp_add_i32(&self.active, 1)
        with nogil:
            while count < items and tail != dwcp_load_acq(&self.idx.head):
                if self.lens[tail & self.mask] != <uint32_t>item_size:
                    break
                memcpy(p + count * item_size, self.buf + (tail & self.mask) * self.slot_size, item_size)
                tail += 1
                dwcp_store_rel(&self.idx.tail, tail)
                count += 1
        dwcp_add_i32(&self.active, -1)
        return count

    def close(self):
        if self.closed:
            return
        if self.view_count:
            raise BufferError(f"cannot close a ring buffer with {self.view_count} live views")
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
        cdef int64_t n = <int64_t>(dwcp_load_acq(&self.idx.enq) - dwcp_load_acq(&self.idx.deq))
        return max(0, min(n, self.capacity))

    @property
    def closed(self):
        return bool(dwcp_load_i32(&self.closed))

    def try_put(self, x):
        cdef uint64_t v = _u64(x)
        if dwcp_load_i32(&self.closed):
            raise ClosedResourceError("queue is closed")
        return bool(dwcp_mpmc_put(self.idx, self.cells, self.mask, v))

    def try_get(self):
        cdef uint64_t v
        if dwcp_mpmc_get(self.idx, self.cells, self.mask, &v):
            return v
        if dwcp_load_i32(&self.closed):
            raise ClosedResourceError("queue is closed and drained")
        return None

    def put(self, x, timeout=None):
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

    def put_batch(self, const uint64_t[::1] src):
        """Put as many of ``src`` as fit (GIL released); returns the count."""
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

    def get_batch(self, uint64_t[::1] dst):
        """Get up to len(dst) items (GIL released); returns the count."""
        cdef Py_ssize_t n = dst.shape[0], i = 0
        if n == 0:
            return 0
        cdef uint64_t *p = &dst[0]
        with nogil:
            while i < n and dwcp_mpmc_get(self.idx, self.cells, self.mask, &p[i]):
                i += 1
        if i == 0 and dwcp_load_i32(&self.closed):
            raise ClosedResourceError("queue is closed and drained")
        return i

    def close(self):
        dwcp_add_i32(&self.closed, 1 - dwcp_load_i32(&self.closed))

    def __repr__(self):
        return f"<MPMCQueue {len(self)}/{self.capacity}{' closed' if self.closed else ''}>"


cdef uint64_t _u64(object x) except? 0:
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"MPMCQueue items are integers, got {type(x).__name__}")
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
    spins[0] += 1
    if spins[0] < 64:
        dwcp_cpu_relax()
    elif spins[0] < 1000:
        dwcp_sleep_us(1)
    else:
        dwcp_sleep_us(200)


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
