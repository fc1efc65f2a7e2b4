# Declarations for dwcp/_fast/ring.pyx (theory of operation and Rules there).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t

cdef extern from "atomics.h" nogil:
    ctypedef struct dwcp_spsc_idx:
        uint64_t head
        uint64_t tail
    ctypedef struct dwcp_mpmc_cell:
        uint64_t seq
        uint64_t value
    ctypedef struct dwcp_mpmc_idx:
        uint64_t enq
        uint64_t deq


cdef class RingBuffer:
    # buf: nslots * slot_size bytes; lens: committed length per slot;
    # views: live views per slot (atomic); idx: head/tail on own cache lines
    cdef uint8_t *buf
    cdef uint32_t *lens
    cdef int32_t *views
    cdef dwcp_spsc_idx *idx
    cdef readonly Py_ssize_t slot_size
    cdef readonly Py_ssize_t capacity
    cdef uint64_t mask
    cdef bint acquired
    cdef bint peeked
    cdef bint closed
    cdef int32_t active  # batch calls in flight (close() refuses to free under them)

    cdef void _free(self) noexcept
    cdef int _check(self) except -1
    cdef int _debug_check(self) except -1
    cdef bint _can_write(self, uint64_t head) noexcept nogil
    cdef Py_ssize_t _push_n(self, const uint8_t *p, Py_ssize_t items, Py_ssize_t item_size) noexcept nogil
    cdef Py_ssize_t _pop_n(self, uint8_t *p, Py_ssize_t items, Py_ssize_t item_size) noexcept nogil


cdef class _SlotView:
    # Buffer exporter for one slot of a RingBuffer: counts live views in
    # ring.views[slot]; single use (no new export once all are released).
    cdef RingBuffer ring
    cdef Py_ssize_t slot
    cdef Py_ssize_t length
    cdef bint readonly
    cdef int32_t live
    cdef bint spent
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]


cdef class MPMCQueue:
    cdef dwcp_mpmc_cell *cells
    cdef dwcp_mpmc_idx *idx
    cdef readonly Py_ssize_t capacity
    cdef uint64_t mask
    cdef int32_t closed
