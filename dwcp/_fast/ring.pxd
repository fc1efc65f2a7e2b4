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
    cdef int32_t active

    cdef void _free(self) noexcept
    cdef int _check(self) except -1
    cdef bint _can_write(self, uint64_t head) noexcept nogil


cdef class MPMCQueue:
    cdef dwcp_mpmc_cell *cells
    cdef dwcp_mpmc_idx *idx
    cdef readonly Py_ssize_t capacity
    cdef uint64_t mask
    cdef int32_t closed
    cdef int32_t active
