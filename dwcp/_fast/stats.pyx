# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hot-path counters: a block of uint64 slots updated with atomic adds.

The data plane counts per chunk (bytes per peer and codec, retransmits...)
from many stream threads.  A ``CounterBlock`` keeps those counts in C
memory: ``add`` is one relaxed atomic add (no lock, no Python object per
count), safe from any thread; a Prometheus collector reads ``snapshot`` at
scrape time.  Counters wrap modulo 2**64 (as Prometheus expects of a u64).
Gauges (``set``/``get`` of a signed 64-bit value) live in the same block.

Rules: an index outside [0, size) is an IndexError; values are ints in
[0, 2**64) for ``add`` and [-2**63, 2**63) for ``set_gauge`` (OverflowError
otherwise), as Cython converts them; the twin in dwcp/_ref/stats.py does
exactly the same with a lock.
"""

from cpython.number cimport PyNumber_Index
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free

__all__ = ["CounterBlock"]


cdef extern from *:
    """
    static inline void dwcp_ctr_add(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline uint64_t dwcp_ctr_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void dwcp_ctr_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    """
    void dwcp_ctr_add(uint64_t *p, uint64_t v) nogil
    uint64_t dwcp_ctr_load(const uint64_t *p) nogil
    void dwcp_ctr_store(uint64_t *p, uint64_t v) nogil


cdef class CounterBlock:
    cdef uint64_t *_slots
    cdef readonly Py_ssize_t size

    def __cinit__(self, Py_ssize_t size):
        if size < 1 or size > (1 << 24):
            raise ValueError(f"size must be in [1, 2**24], got {size}")
        self._slots = <uint64_t *>calloc(size, sizeof(uint64_t))
        if self._slots == NULL:
            raise MemoryError()
        self.size = size

    def __dealloc__(self):
        free(self._slots)

    cdef inline Py_ssize_t _index(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.size:
            raise IndexError(f"counter index {i} outside [0, {self.size})")
        return i

    def add(self, Py_ssize_t i, v=1):
        """Add ``v`` to counter ``i`` (atomic; wraps modulo 2**64)."""
        cdef uint64_t x = PyNumber_Index(v)  # an integer, never a truncated float
        dwcp_ctr_add(&self._slots[self._index(i)], x)

    def get(self, Py_ssize_t i):
        """Counter ``i`` as an unsigned value."""
        return dwcp_ctr_load(&self._slots[self._index(i)])

    def set_gauge(self, Py_ssize_t i, v):
        """Store a signed value in slot ``i`` (a gauge)."""
        cdef int64_t x = PyNumber_Index(v)
        dwcp_ctr_store(&self._slots[self._index(i)], <uint64_t>x)

    def get_gauge(self, Py_ssize_t i):
        """Slot ``i`` as a signed value."""
        return <int64_t>dwcp_ctr_load(&self._slots[self._index(i)])

    def snapshot(self):
        """Every slot, unsigned, read one by one (each read is atomic)."""
        cdef Py_ssize_t i
        return [dwcp_ctr_load(&self._slots[i]) for i in range(self.size)]
