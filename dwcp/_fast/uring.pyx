# cython: language_level=3
"""A minimal io_uring core: raw syscalls, no liburing (pure-Python twin: dwcp/_ref/uring.py).

Theory of operation
-------------------
``Ring(entries, flags)`` calls io_uring_setup(2) and maps the SQ ring, the
CQ ring (one mapping with IORING_FEAT_SINGLE_MMAP) and the SQE array
(dwcp/_fast/uring.h does the C side).  Each ``prep_*`` call fills one SQE
and queues it; nothing reaches the kernel until ``submit_and_wait`` (or
``submit``) publishes the SQ tail and calls io_uring_enter(2) with the GIL
released.  ``reap`` copies the ready CQEs out as ``(user_data, res, flags)``
tuples and hands their slots back to the kernel.

The kernel reads and writes a buffer from submission until the operation's
last CQE.  So every ``prep_*`` that takes a buffer pins it (a Py_buffer
export held in ``_inflight[user_data]``: a bytearray cannot be resized, the
memory cannot be freed) and ``reap`` drops the pin at the CQE without
IORING_CQE_F_MORE (for send_zc: the notification, not the result).

Rules
-----
1. One thread uses a Ring at a time; a call from a second thread while
   ``submit_and_wait`` waits (GIL released) raises RuntimeError.
2. ``user_data`` is an unsigned 64-bit value (OverflowError outside);
   2**64-1 (``URING_RESERVED_USER_DATA``) is the Ring's own (timeouts,
   cancels) and a ValueError, and so is a user_data already in flight
   (queued, submitted, or awaiting a send_zc notification): completions
   are told apart only by it.
3. A full submission queue raises SubmissionQueueFullError: the SQE is not
   queued; submit first.
4. The kernel's answer is data, not an exception: a CQE's ``res`` is the
   byte count or ``-errno`` as the kernel gives it (a closed fd is
   -EBADF).  OSError is raised only when a syscall itself fails
   (io_uring_setup, io_uring_register, io_uring_enter).
5. ``submit_and_wait(n, timeout_s)`` returns the number of SQEs submitted,
   once at least ``n`` CQEs are ready or ``timeout_s`` has passed (no
   exception on timeout); ``n`` may not exceed ``cq_entries``.
6. Buffers are any C-contiguous buffer (bytes and read-only views for
   sends and writes; writable ones for recv and registered buffers), at
   most URING_MAX_IO bytes per operation (ValueError beyond).
7. ``close()`` discards queued-but-unsubmitted SQEs, cancels what is in
   flight and waits up to a second for its CQEs; a buffer still in flight
   then stays pinned for the life of the process (a leak, never a
   use-after-free).  After close every method raises ClosedResourceError.
8. Setup flags this core does not handle (IOPOLL, SQPOLL, SQ_AFF, SQE128,
   CQE32) are a ValueError; other flags go to the kernel as given.
"""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset, strerror

from dwcp.errors import ClosedResourceError, SubmissionQueueFullError

__all__ = [
    "Ring",
    "uring_available",
    "IORING_OP_NOP",
    "IORING_OP_READ_FIXED",
    "IORING_OP_TIMEOUT",
    "IORING_OP_ASYNC_CANCEL",
    "IORING_OP_WRITE",
    "IORING_OP_SEND",
    "IORING_OP_RECV",
    "IORING_OP_SPLICE",
    "IORING_OP_SEND_ZC",
    "IORING_CQE_F_MORE",
    "IORING_CQE_F_NOTIF",
    "URING_RESERVED_USER_DATA",
    "URING_MAX_IO",
]


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "uring.h" nogil:
    struct io_uring_sqe:
        pass
    ctypedef struct dwcp_uring:
        int fd
        unsigned features
        unsigned sq_entries
        unsigned cq_entries
        unsigned sqe_tail
        unsigned *sq_ktail
        io_uring_sqe *sqes
        unsigned sq_mask
    ctypedef struct dwcp_getevents_arg:
        uint64_t sigmask
        uint32_t sigmask_sz
        uint32_t pad
        uint64_t ts
    ctypedef struct dwcp_kernel_timespec:
        int64_t tv_sec
        long long tv_nsec
    ctypedef struct dwcp_probe_op:
        uint8_t op
        uint16_t flags
    ctypedef struct dwcp_probe:
        uint8_t last_op
        uint8_t ops_len
        dwcp_probe_op ops[256]

    unsigned DWCP_OP_NOP, DWCP_OP_READ_FIXED, DWCP_OP_TIMEOUT, DWCP_OP_ASYNC_CANCEL
    unsigned DWCP_OP_WRITE, DWCP_OP_SEND, DWCP_OP_RECV, DWCP_OP_SPLICE, DWCP_OP_SEND_ZC
    unsigned IORING_FEAT_EXT_ARG, IORING_ENTER_GETEVENTS, IORING_ENTER_EXT_ARG
    unsigned IORING_CQE_F_MORE_C "IORING_CQE_F_MORE"
    unsigned IORING_CQE_F_NOTIF_C "IORING_CQE_F_NOTIF"
    unsigned IORING_REGISTER_PROBE, IO_URING_OP_SUPPORTED
    unsigned DWCP_REGISTER_BUFFERS, DWCP_UNREGISTER_BUFFERS
    int EINTR, ETIME, EINVAL

    int dwcp_uring_init(dwcp_uring *r, unsigned entries, unsigned flags)
    void dwcp_uring_unmap(dwcp_uring *r)
    io_uring_sqe *dwcp_uring_get_sqe(dwcp_uring *r)
    unsigned dwcp_uring_flush(dwcp_uring *r)
    unsigned dwcp_uring_cq_ready(const dwcp_uring *r)
    int dwcp_uring_cq_overflow(const dwcp_uring *r)
    void dwcp_prep_rw(io_uring_sqe *sqe, uint8_t op, int fd, const void *addr, uint32_t len,
                      uint64_t off, uint64_t user_data)
    void dwcp_prep_splice(io_uring_sqe *sqe, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
                          uint32_t nbytes, uint32_t flags, uint64_t user_data)
    void dwcp_set_msg_flags(io_uring_sqe *sqe, uint32_t flags)
    void dwcp_set_buf_index(io_uring_sqe *sqe, uint16_t i)
    void dwcp_set_timeout_flags(io_uring_sqe *sqe, uint32_t f)
    unsigned dwcp_uring_reap(dwcp_uring *r, uint64_t *ud, int32_t *res, uint32_t *flags, unsigned max)
    int dwcp_uring_enter(dwcp_uring *r, unsigned to_submit, unsigned min_complete, unsigned flags,
                         const void *arg, size_t argsz)
    int dwcp_sys_register(int fd, unsigned opcode, const void *arg, unsigned nr_args)
    int dwcp_monotonic_ns(int64_t *out)
    void dwcp_sqe_set_addr(io_uring_sqe *sqe, uint64_t a)
    uint64_t dwcp_sqe_ud(const dwcp_uring *r, unsigned pos)


IORING_OP_NOP = 0
IORING_OP_READ_FIXED = 4
IORING_OP_TIMEOUT = 11
IORING_OP_ASYNC_CANCEL = 14
IORING_OP_WRITE = 23
IORING_OP_SEND = 26
IORING_OP_RECV = 27
IORING_OP_SPLICE = 30
IORING_OP_SEND_ZC = 47
IORING_CQE_F_MORE = 1 << 1
IORING_CQE_F_NOTIF = 1 << 3
URING_RESERVED_USER_DATA = 0xFFFF_FFFF_FFFF_FFFF
# The kernel moves at most MAX_RW_COUNT (INT_MAX rounded down to a page) per read/write/send.
URING_MAX_IO = 0x7FFF_F000

cdef enum:
    REAP_BATCH = 256  # CQEs copied out per pass of reap()
cdef int64_t DRAIN_TIMEOUT_NS = 1_000_000_000  # how long close() waits for cancelled operations
cdef uint64_t RESERVED = 0xFFFFFFFFFFFFFFFFULL
# IORING_SETUP_IOPOLL | SQPOLL | SQ_AFF | SQE128 | CQE32
cdef unsigned UNSUPPORTED_SETUP_FLAGS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 10) | (1 << 11)

# Buffers still pinned by a Ring closed (or collected) while the kernel held them (rule 7).
_leaked = []


cdef class _Pin:
    """One Py_buffer export, released when the pin dies."""
    cdef Py_buffer view
    cdef bint held

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False


cdef _Pin _pin(object obj, bint writable):
    cdef _Pin p = _Pin.__new__(_Pin)
    PyObject_GetBuffer(obj, &p.view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (PyBUF_WRITABLE if writable else 0))
    p.held = True
    if p.view.len > URING_MAX_IO:
        raise ValueError(f"a buffer of {p.view.len} bytes; io_uring moves at most {URING_MAX_IO} per operation")
    return p


cdef _raise_errno(int neg_errno, what):
    cdef int e = -neg_errno
    raise OSError(e, f"{what}: {strerror(e).decode()}")


def uring_available():
    """True when this kernel lets us set up an io_uring (not ENOSYS, not io_uring_disabled)."""
    cdef dwcp_uring r
    if dwcp_uring_init(&r, 4, 0) != 0:
        return False
    dwcp_uring_unmap(&r)
    return True


cdef class Ring:
    # Invariant: _open <=> r.fd >= 0 and the three mappings are live.
    cdef dwcp_uring r
    cdef bint _open
    # Invariant: True only while submit_and_wait runs with the GIL released (rule 1).
    cdef bint _busy
    # Wait with IORING_ENTER_EXT_ARG (kernel >= 5.11); else with an IORING_OP_TIMEOUT SQE.
    cdef bint _ext_arg
    # type of _inflight is dict[int, _Pin | None]: every user_data queued or submitted and not yet
    # at its last CQE, with the buffer the kernel may touch.
    cdef dict _inflight
    # type of _registered is list[_Pin]: the buffers of IORING_REGISTER_BUFFERS, by index.
    cdef list _registered
    cdef iovec *_iov

    def __cinit__(self, unsigned entries=256, unsigned flags=0):
        self._inflight = {}
        self._registered = []
        self.r.fd = -1
        if flags & UNSUPPORTED_SETUP_FLAGS:
            # SQPOLL needs NEED_WAKEUP handling, IOPOLL polled completions, SQE128/CQE32 other
            # layouts: none is implemented, so none may be asked for.
            raise ValueError(f"io_uring setup flags 0x{flags & UNSUPPORTED_SETUP_FLAGS:x} are not supported")
        cdef int ret = dwcp_uring_init(&self.r, entries, flags)
        if ret != 0:
            self.r.fd = -1
            _raise_errno(ret, "io_uring_setup")
        self._open = True
        self._ext_arg = (self.r.features & IORING_FEAT_EXT_ARG) != 0

    def __dealloc__(self):
        if self._open:
            try:
                self._shutdown()
            except BaseException:
                pass
        free(self._iov)
        self._iov = NULL

    # -- properties ------------------------------------------------------------------------------

    @property
    def sq_entries(self):
        return self.r.sq_entries

    @property
    def cq_entries(self):
        return self.r.cq_entries

    @property
    def features(self):
        """io_uring_params.features (IORING_FEAT_* bits) of this kernel."""
        return self.r.features

    @property
    def fd(self):
        return self.r.fd

    @property
    def closed(self):
        return not self._open

    @property
    def inflight(self):
        """How many user_data values are queued or submitted and not yet at their last CQE."""
        return len(self._inflight)

    def _set_ext_arg(self, bint on):
        """Tests: wait with an IORING_OP_TIMEOUT SQE instead of IORING_ENTER_EXT_ARG."""
        self._ext_arg = on and (self.r.features & IORING_FEAT_EXT_ARG) != 0

    cdef inline int _check(self) except -1:
        if not self._open:
            raise ClosedResourceError("the io_uring Ring is closed")
        if self._busy:
            raise RuntimeError("the io_uring Ring is in use by another thread (submit_and_wait)")
        return 0

    # -- registration ----------------------------------------------------------------------------

    def probe(self):
        """The set of opcode numbers this kernel supports (IORING_REGISTER_PROBE)."""
        self._check()
        cdef dwcp_probe *p = <dwcp_probe *>malloc(sizeof(dwcp_probe))
        if p == NULL:
            raise MemoryError()
        cdef int ret, i
        try:
            memset(p, 0, sizeof(dwcp_probe))
            ret = dwcp_sys_register(self.r.fd, IORING_REGISTER_PROBE, p, 256)
            if ret < 0:
                _raise_errno(ret, "io_uring_register(PROBE)")
            return {p.ops[i].op for i in range(p.ops_len) if p.ops[i].flags & IO_URING_OP_SUPPORTED}
        finally:
            free(p)

    def register_buffers(self, buffers):
        """Register writable buffers for the *_fixed operations (IORING_REGISTER_BUFFERS)."""
        self._check()
        pins = [_pin(b, True) for b in buffers]
        cdef Py_ssize_t n = len(pins), i
        cdef iovec *iov = <iovec *>malloc(max(n, 1) * sizeof(iovec))
        if iov == NULL:
            raise MemoryError()
        for i in range(n):
            iov[i].iov_base = (<_Pin>pins[i]).view.buf
            iov[i].iov_len = (<_Pin>pins[i]).view.len
        cdef int ret = dwcp_sys_register(self.r.fd, DWCP_REGISTER_BUFFERS, iov, <unsigned>n)
        if ret < 0:
            free(iov)
            _raise_errno(ret, "io_uring_register(BUFFERS)")
        free(self._iov)
        self._iov = iov
        self._registered = pins

    def unregister_buffers(self):
        """Unregister them; a read_fixed still in flight keeps its buffer pinned until reaped."""
        self._check()
        cdef int ret = dwcp_sys_register(self.r.fd, DWCP_UNREGISTER_BUFFERS, NULL, 0)
        if ret < 0:
            _raise_errno(ret, "io_uring_register(UNREGISTER_BUFFERS)")
        self._registered = []
        free(self._iov)
        self._iov = NULL

    # -- preparation -----------------------------------------------------------------------------

    cdef io_uring_sqe *_sqe(self, uint64_t user_data, object pin) except NULL:
        self._check()
        if user_data == RESERVED:
            raise ValueError("user_data 2**64-1 is reserved for the Ring's own operations")
        if user_data in self._inflight:
            raise ValueError(f"user_data {user_data} is already in flight")
        cdef io_uring_sqe *sqe = dwcp_uring_get_sqe(&self.r)
        if sqe == NULL:
            raise SubmissionQueueFullError(
                f"the io_uring submission queue is full ({self.r.sq_entries} entries): "
                "submit_and_wait() before queueing more"
            )
        self._inflight[user_data] = pin
        return sqe

    def prep_nop(self, uint64_t user_data):
        """Queue a no-op (its CQE has res 0)."""
        dwcp_prep_rw(self._sqe(user_data, None), DWCP_OP_NOP, -1, NULL, 0, 0, user_data)

    def prep_send(self, int fd, buf, unsigned flags, uint64_t user_data):
        """Queue send(fd, buf, flags); res is the bytes sent (possibly short) or -errno."""
        cdef _Pin p = _pin(buf, False)
        cdef io_uring_sqe *sqe = self._sqe(user_data, p)
        dwcp_prep_rw(sqe, DWCP_OP_SEND, fd, p.view.buf, <uint32_t>p.view.len, 0, user_data)
        dwcp_set_msg_flags(sqe, flags)

    def prep_send_zc(self, int fd, buf, unsigned flags, uint64_t user_data):
        """Queue a zero-copy send (IORING_OP_SEND_ZC, if ``probe()`` has it): two CQEs, the result with
        IORING_CQE_F_MORE, then the notification (IORING_CQE_F_NOTIF) once the kernel let go of ``buf``."""
        cdef _Pin p = _pin(buf, False)
        cdef io_uring_sqe *sqe = self._sqe(user_data, p)
        dwcp_prep_rw(sqe, DWCP_OP_SEND_ZC, fd, p.view.buf, <uint32_t>p.view.len, 0, user_data)
        dwcp_set_msg_flags(sqe, flags)

    def prep_recv(self, int fd, buf, unsigned flags, uint64_t user_data):
        """Queue recv(fd, buf, flags) into a writable buffer; res is the bytes received, 0 at EOF."""
        cdef _Pin p = _pin(buf, True)
        cdef io_uring_sqe *sqe = self._sqe(user_data, p)
        dwcp_prep_rw(sqe, DWCP_OP_RECV, fd, p.view.buf, <uint32_t>p.view.len, 0, user_data)
        dwcp_set_msg_flags(sqe, flags)

    def prep_write(self, int fd, buf, int64_t file_offset, uint64_t user_data):
        """Queue pwrite(fd, buf, file_offset); file_offset -1 writes at the file position."""
        cdef _Pin p = _pin(buf, False)
        cdef io_uring_sqe *sqe = self._sqe(user_data, p)
        dwcp_prep_rw(sqe, DWCP_OP_WRITE, fd, p.view.buf, <uint32_t>p.view.len, <uint64_t>file_offset, user_data)

    def prep_read_fixed(self, int fd, Py_ssize_t buf_index, Py_ssize_t offset, Py_ssize_t length,
                        int64_t file_offset, uint64_t user_data):
        """Queue a read of ``length`` bytes at ``file_offset`` into registered buffer ``buf_index`` at
        ``offset`` (IORING_OP_READ_FIXED)."""
        self._check()
        if not 0 <= buf_index < len(self._registered):
            raise IndexError(f"registered buffer {buf_index} outside [0, {len(self._registered)})")
        cdef _Pin p = <_Pin>self._registered[buf_index]
        if offset < 0 or length < 0 or offset + length > p.view.len:
            raise ValueError(
                f"[{offset}, {offset}+{length}) is not inside registered buffer {buf_index} "
                f"of {p.view.len} bytes"
            )
        cdef io_uring_sqe *sqe = self._sqe(user_data, p)
        dwcp_prep_rw(sqe, DWCP_OP_READ_FIXED, fd, <char *>p.view.buf + offset, <uint32_t>length,
                     <uint64_t>file_offset, user_data)
        dwcp_set_buf_index(sqe, <uint16_t>buf_index)

    def prep_cancel(self, uint64_t target_user_data, uint64_t user_data):
        """Queue IORING_OP_ASYNC_CANCEL of the operation ``target_user_data``: it ends with -ECANCELED
        if it had not completed; this one's res is 0, -ENOENT (no such operation running) or -EALREADY."""
        cdef io_uring_sqe *sqe = self._sqe(user_data, None)
        dwcp_prep_rw(sqe, DWCP_OP_ASYNC_CANCEL, -1, NULL, 0, 0, user_data)
        dwcp_sqe_set_addr(sqe, target_user_data)

    def prep_splice(self, int fd_in, int64_t off_in, int fd_out, int64_t off_out, uint32_t nbytes,
                    unsigned flags, uint64_t user_data):
        """Queue splice(fd_in, off_in, fd_out, off_out, nbytes, flags); an offset of -1 means none
        (required for a pipe or socket)."""
        cdef io_uring_sqe *sqe = self._sqe(user_data, None)
        dwcp_prep_splice(sqe, fd_in, off_in, fd_out, off_out, nbytes, flags, user_data)

    # -- submission and completion ---------------------------------------------------------------

    def submit(self):
        """Submit the queued SQEs without waiting; returns how many were submitted."""
        return self.submit_and_wait(0)

    def submit_and_wait(self, unsigned min_complete, timeout_s=None):
        """Submit every queued SQE and wait (GIL released) until at least ``min_complete`` CQEs are
        ready or ``timeout_s`` seconds have passed.  Returns the number of SQEs submitted."""
        self._check()
        if min_complete > self.r.cq_entries:
            raise ValueError(f"min_complete {min_complete} exceeds the CQ ring ({self.r.cq_entries})")
        cdef bint timed = timeout_s is not None
        cdef double t = 0.0
        cdef int64_t now = 0, deadline = 0, remaining
        if timed:
            t = timeout_s
            if not t >= 0.0:  # also NaN
                raise ValueError(f"timeout_s must be >= 0, got {timeout_s!r}")
            if t > 1e9:
                t = 1e9
            dwcp_monotonic_ns(&now)
            deadline = now + <int64_t>(t * 1e9)
        cdef unsigned pending, flags, submitted = 0
        # The caller's SQEs not yet consumed; they come before any timeout SQE of ours in the ring.
        cdef unsigned user_left = dwcp_uring_flush(&self.r)
        cdef int ret
        cdef dwcp_getevents_arg arg
        cdef dwcp_kernel_timespec ts
        cdef const void *argp
        cdef size_t argsz
        cdef io_uring_sqe *tsqe
        cdef unsigned wait_for, mine
        self._busy = True
        try:
            while True:
                pending = dwcp_uring_flush(&self.r)
                wait_for = min_complete if dwcp_uring_cq_ready(&self.r) < min_complete else 0
                if timed and wait_for:
                    dwcp_monotonic_ns(&now)
                    remaining = deadline - now
                    if remaining <= 0:
                        if pending == 0:
                            break  # timed out; whatever is ready is ready
                        wait_for = 0  # still submit
                        remaining = 0
                flags = IORING_ENTER_GETEVENTS if wait_for else 0
                argp = NULL
                argsz = 0
                if timed and wait_for:
                    ts.tv_sec = remaining // 1_000_000_000
                    ts.tv_nsec = remaining % 1_000_000_000
                    if self._ext_arg:
                        memset(&arg, 0, sizeof(arg))
                        arg.ts = <uint64_t>&ts
                        flags |= IORING_ENTER_EXT_ARG
                        argp = &arg
                        argsz = sizeof(arg)
                    else:
                        # Before 5.11: a timeout SQE that completes after ``remaining`` or once
                        # ``wait_for`` CQEs are posted; the kernel copies ``ts`` at submission.
                        tsqe = dwcp_uring_get_sqe(&self.r)
                        if tsqe != NULL:
                            dwcp_prep_rw(tsqe, DWCP_OP_TIMEOUT, -1, &ts, 1, wait_for, RESERVED)
                            pending = dwcp_uring_flush(&self.r)
                        else:
                            wait_for = 0  # no room: submit first, wait on the next turn
                            flags = 0
                with nogil:
                    ret = dwcp_uring_enter(&self.r, pending, wait_for, flags, argp, argsz)
                if ret < 0:
                    if ret == -EINTR:
                        PyErr_CheckSignals()
                        continue
                    if ret == -ETIME:
                        continue  # the deadline check above ends the loop
                    _raise_errno(ret, "io_uring_enter")
                mine = <unsigned>ret if <unsigned>ret < user_left else user_left
                submitted += mine
                user_left -= mine
                PyErr_CheckSignals()
                # The kernel stops at an SQE that failed to prepare (its CQE says why), and returns
                # early when a signal interrupts the wait: go round until all is submitted and
                # enough CQEs are ready.
                if dwcp_uring_flush(&self.r) == 0 and dwcp_uring_cq_ready(&self.r) >= min_complete:
                    break
                if <unsigned>ret == 0 and pending > 0:
                    _raise_errno(-EINVAL, "io_uring_enter accepted no SQE")
        finally:
            self._busy = False
        return submitted

    def reap(self):
        """Every ready CQE as a ``(user_data, res, flags)`` tuple, in completion order; the buffer of an
        operation is released at its last CQE (one without IORING_CQE_F_MORE)."""
        self._check()
        return self._reap()

    cdef list _reap(self):
        cdef uint64_t ud[REAP_BATCH]
        cdef int32_t res[REAP_BATCH]
        cdef uint32_t fl[REAP_BATCH]
        cdef unsigned n, i
        cdef list out = []
        while True:
            n = dwcp_uring_reap(&self.r, ud, res, fl, REAP_BATCH)
            for i in range(n):
                if ud[i] == RESERVED:
                    continue
                if not (fl[i] & IORING_CQE_F_MORE_C):
                    self._inflight.pop(ud[i], None)
                out.append((ud[i], res[i], fl[i]))
            if n == REAP_BATCH:
                continue
            if dwcp_uring_cq_overflow(&self.r):
                # CQEs the kernel kept aside while the CQ ring was full: a GETEVENTS enter flushes them.
                dwcp_uring_enter(&self.r, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0)
                if dwcp_uring_cq_ready(&self.r):
                    continue
            return out

    # -- closing ---------------------------------------------------------------------------------

    cdef _shutdown(self):
        cdef unsigned published = self.r.sq_ktail[0]
        cdef unsigned i
        cdef io_uring_sqe *sqe
        cdef int64_t now = 0, deadline
        cdef dwcp_getevents_arg arg
        cdef dwcp_kernel_timespec ts
        # Queued SQEs the kernel never saw: forget them.
        while self.r.sqe_tail != published:
            self.r.sqe_tail -= 1
            self._inflight.pop(dwcp_sqe_ud(&self.r, self.r.sqe_tail), None)
        if self._inflight:
            todo = list(self._inflight)
            dwcp_monotonic_ns(&now)
            deadline = now + DRAIN_TIMEOUT_NS
            while todo:
                sqe = dwcp_uring_get_sqe(&self.r)
                if sqe == NULL:
                    dwcp_uring_enter(&self.r, dwcp_uring_flush(&self.r), 0, 0, NULL, 0)
                    self._reap()
                    continue
                dwcp_prep_rw(sqe, DWCP_OP_ASYNC_CANCEL, -1, NULL, 0, 0, RESERVED)
                dwcp_sqe_set_addr(sqe, <uint64_t>todo.pop())
            while self._inflight:
                dwcp_monotonic_ns(&now)
                if now >= deadline:
                    break
                ts.tv_sec = 0
                ts.tv_nsec = min(deadline - now, 50_000_000)
                memset(&arg, 0, sizeof(arg))
                arg.ts = <uint64_t>&ts
                if self._ext_arg:
                    dwcp_uring_enter(&self.r, dwcp_uring_flush(&self.r), 1,
                                     IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof(arg))
                else:
                    dwcp_uring_enter(&self.r, dwcp_uring_flush(&self.r), 0, 0, NULL, 0)
                self._reap()
            if self._inflight:
                _leaked.extend(v for v in self._inflight.values() if v is not None)
                self._inflight.clear()
        dwcp_uring_unmap(&self.r)
        self._open = False
        self._registered = []

    def close(self):
        """Cancel what is in flight, wait for it (at most a second), unmap and close the ring."""
        if not self._open:
            return
        self._check()
        self._shutdown()
        free(self._iov)
        self._iov = NULL

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if not self._open:
            return "<Ring closed>"
        return f"<Ring fd={self.r.fd} sq_entries={self.r.sq_entries} inflight={len(self._inflight)}>"
