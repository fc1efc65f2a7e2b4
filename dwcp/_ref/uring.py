"""Reference twin of dwcp/_fast/uring.pyx: the same Ring, with the syscalls done by Python.

Theory of operation
-------------------
No kernel ring: ``prep_*`` appends an operation to a bounded list (the SQ,
``sq_entries`` long); ``submit_and_wait`` moves the list to the in-flight
set and runs a small poll loop, as the kernel does for a socket: each
operation is tried without blocking (``MSG_DONTWAIT`` for send/recv; a
splice once ``select`` says both ends are ready; file reads and writes at
once), an operation that would block stays in flight, and the loop waits in
``select`` on the descriptors of the waiting operations until at least
``min_complete`` CQEs are queued or the timeout passes.  A result is queued
as a ``(user_data, res, flags)`` CQE with ``res = -errno`` on failure,
exactly as the kernel reports it.  Operations on one socket run in
submission order.

The Rules of dwcp/_fast/uring.pyx hold here too (same exceptions, same
CQEs); where this twin differs:

* ``flags`` of ``Ring()`` must be 0 (OSError EINVAL otherwise);
* ``probe()`` is the set of opcodes this twin implements;
* nothing runs in the background: an operation makes progress only inside
  ``submit_and_wait`` (the kernel's run on their own), and ``close()``
  drops what is in flight without waiting;
* send_zc is a plain send followed at once by its notification CQE.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from dwcp.errors import ClosedResourceError, SubmissionQueueFullError

from ._cyargs import request_buffer, ssize

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
URING_MAX_IO = 0x7FFF_F000

_U64 = 1 << 64
_U32 = 1 << 32
_MAX_ENTRIES = 32768  # the kernel's IORING_MAX_ENTRIES
_IMPLEMENTED = frozenset(
    {
        IORING_OP_NOP,
        IORING_OP_READ_FIXED,
        IORING_OP_WRITE,
        IORING_OP_SEND,
        IORING_OP_RECV,
        IORING_OP_SPLICE,
        IORING_OP_SEND_ZC,
        IORING_OP_ASYNC_CANCEL,
    }
)
_WOULD_BLOCK = None  # what an attempt returns when the operation would block
# Operations that wait for readiness; file reads and writes complete (or fail) at once.
_MAY_BLOCK = frozenset({IORING_OP_SEND, IORING_OP_SEND_ZC, IORING_OP_RECV, IORING_OP_SPLICE})


def uring_available() -> bool:
    """False: this twin never drives a kernel io_uring (it emulates one with plain syscalls)."""
    return False


def _unsigned(v, bits: int, what: str = "unsigned int") -> int:
    """An unsigned C argument as Cython converts it (OverflowError outside the range)."""
    import operator

    v = operator.index(v)
    if v < 0:
        raise OverflowError(f"can't convert negative value to {what}")
    if v >= 1 << bits:
        raise OverflowError(f"value too large to convert to {what}")
    return v


def _signed(v, bits: int) -> int:
    import operator

    v = operator.index(v)
    if not -(1 << (bits - 1)) <= v < 1 << (bits - 1):
        raise OverflowError(f"value too large to convert to int{bits}_t")
    return v


def _pin(obj, writable: bool) -> memoryview:
    """The buffer as bytes, held (a bytearray cannot resize while the view lives)."""
    request_buffer(obj, writable)  # the exporter's own error for a wrong buffer, as Cython gets it
    mv = memoryview(obj)
    mv = mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv
    if len(mv) > URING_MAX_IO:
        raise ValueError(f"a buffer of {len(mv)} bytes; io_uring moves at most {URING_MAX_IO} per operation")
    return mv


def _sock(fd: int) -> socket.socket:
    """A socket object over ``fd`` that we must ``detach()``, never close; OSError EBADF for a negative
    number, as the kernel completes the operation (socket() itself says ValueError)."""
    if fd < 0:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return socket.socket(fileno=fd)


class _Op:
    __slots__ = ("opcode", "user_data", "fd", "buf", "flags", "off", "fd_in", "off_in", "nbytes", "done")

    def __init__(self, opcode: int, user_data: int, fd: int = -1, buf: memoryview | None = None) -> None:
        self.opcode = opcode
        self.user_data = user_data
        self.fd = fd
        self.buf = buf
        self.flags = 0
        self.off = 0
        self.fd_in = -1
        self.off_in = -1
        self.nbytes = 0
        self.done = 0  # bytes moved so far (MSG_WAITALL)

    def waits_on(self) -> tuple[list[int], list[int]]:
        """The descriptors to select on while this operation would block: (readable, writable)."""
        if self.opcode == IORING_OP_RECV:
            return [self.fd], []
        if self.opcode == IORING_OP_SPLICE:
            return [self.fd_in], [self.fd]
        return [], [self.fd]

    def streams(self) -> set[tuple[int, int]]:
        """The (descriptor, direction) queues this operation is ordered in (0 read, 1 write)."""
        r, w = self.waits_on()
        return {(fd, 0) for fd in r} | {(fd, 1) for fd in w}

    def attempt(self) -> int | None:
        """The CQE ``res`` (bytes or -errno), or _WOULD_BLOCK (None)."""
        try:
            return self._attempt()
        except BlockingIOError:
            return _WOULD_BLOCK
        except OSError as e:
            if self.done:
                return self.done  # the kernel reports the partial count of a MSG_WAITALL op
            return -(e.errno or errno.EIO)

    def _attempt(self) -> int | None:
        op = self.opcode
        if op == IORING_OP_NOP:
            return 0
        assert self.buf is not None or op == IORING_OP_SPLICE
        if op in (IORING_OP_SEND, IORING_OP_SEND_ZC, IORING_OP_RECV):
            assert self.buf is not None
            s = _sock(self.fd)
            try:
                waitall = self.flags & socket.MSG_WAITALL
                flags = (self.flags & ~socket.MSG_WAITALL) | socket.MSG_DONTWAIT
                while True:
                    rest = self.buf[self.done :]
                    if op == IORING_OP_RECV:
                        n = s.recv_into(rest, len(rest), flags)
                    else:
                        n = s.send(rest, flags)
                    self.done += n
                    if not waitall or n == 0 or self.done == len(self.buf):
                        return self.done
            finally:
                s.detach()
        if op == IORING_OP_WRITE:
            assert self.buf is not None
            if self.off == -1:
                return os.write(self.fd, self.buf)
            return os.pwrite(self.fd, self.buf, self.off)
        if op == IORING_OP_READ_FIXED:
            assert self.buf is not None
            if self.off == -1:
                return os.readv(self.fd, [self.buf])
            return os.preadv(self.fd, [self.buf], self.off)
        if op == IORING_OP_SPLICE:
            # The kernel runs a splice in a worker thread, blocking; here it runs once both ends are
            # ready, so that a splice from an idle socket waits in the loop, not in the call.
            try:
                r, w, _ = select.select([self.fd_in], [self.fd], [], 0)
            except (OSError, ValueError):
                r = w = [0]  # let the splice itself report the bad descriptor
            if not r or not w:
                return _WOULD_BLOCK
            return os.splice(
                self.fd_in,
                self.fd,
                self.nbytes,
                offset_src=None if self.off_in == -1 else self.off_in,
                offset_dst=None if self.off == -1 else self.off,
                flags=self.flags,
            )
        raise AssertionError(f"opcode {op}")


class Ring:
    def __init__(self, entries=256, flags=0) -> None:
        entries = _unsigned(entries, 32)
        flags = _unsigned(flags, 32)
        if flags != 0:
            raise OSError(errno.EINVAL, "io_uring_setup: the reference Ring supports flags=0 only")
        if entries == 0 or entries > _MAX_ENTRIES:
            raise OSError(errno.EINVAL, f"io_uring_setup: {os.strerror(errno.EINVAL)}")
        self._sq_entries = 1 << (entries - 1).bit_length()
        self._open = True
        self._busy = False
        self._sq: list[_Op] = []  # queued, not submitted; at most sq_entries
        self._running: list[_Op] = []  # submitted, not complete, in submission order
        self._cq: list[tuple[int, int, int]] = []
        self._inflight: dict[int, memoryview | None] = {}
        self._registered: list[memoryview] | None = None

    @property
    def sq_entries(self) -> int:
        return self._sq_entries

    @property
    def cq_entries(self) -> int:
        return 2 * self._sq_entries

    @property
    def features(self) -> int:
        return 0

    @property
    def fd(self) -> int:
        return -1

    @property
    def closed(self) -> bool:
        return not self._open

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _set_ext_arg(self, on) -> None:
        pass

    def _check(self) -> None:
        if not self._open:
            raise ClosedResourceError("the io_uring Ring is closed")
        if self._busy:
            raise RuntimeError("the io_uring Ring is in use by another thread (submit_and_wait)")

    # -- registration ------------------------------------------------------------------------------

    def probe(self) -> set[int]:
        self._check()
        return set(_IMPLEMENTED)

    def register_buffers(self, buffers) -> None:
        self._check()
        pins = [_pin(b, True) for b in buffers]
        if self._registered is not None:
            raise OSError(errno.EBUSY, f"io_uring_register(BUFFERS): {os.strerror(errno.EBUSY)}")
        if not pins or len(pins) > 16384:
            raise OSError(errno.EINVAL, f"io_uring_register(BUFFERS): {os.strerror(errno.EINVAL)}")
        self._registered = pins

    def unregister_buffers(self) -> None:
        self._check()
        if self._registered is None:
            raise OSError(errno.ENXIO, f"io_uring_register(UNREGISTER_BUFFERS): {os.strerror(errno.ENXIO)}")
        self._registered = None

    # -- preparation -------------------------------------------------------------------------------

    def _queue(self, op: _Op) -> None:
        self._check()
        if op.user_data == URING_RESERVED_USER_DATA:
            raise ValueError("user_data 2**64-1 is reserved for the Ring's own operations")
        if op.user_data in self._inflight:
            raise ValueError(f"user_data {op.user_data} is already in flight")
        if len(self._sq) >= self._sq_entries:
            raise SubmissionQueueFullError(
                f"the io_uring submission queue is full ({self._sq_entries} entries): "
                "submit_and_wait() before queueing more"
            )
        self._sq.append(op)
        self._inflight[op.user_data] = op.buf

    def prep_nop(self, user_data) -> None:
        self._queue(_Op(IORING_OP_NOP, _unsigned(user_data, 64, "uint64_t")))

    def _prep_sock(self, opcode, fd, buf, flags, user_data, writable) -> None:
        fd = _signed(fd, 32)
        flags = _unsigned(flags, 32)
        user_data = _unsigned(user_data, 64, "uint64_t")
        op = _Op(opcode, user_data, fd, _pin(buf, writable))
        op.flags = flags
        self._queue(op)

    def prep_send(self, fd, buf, flags, user_data) -> None:
        self._prep_sock(IORING_OP_SEND, fd, buf, flags, user_data, False)

    def prep_send_zc(self, fd, buf, flags, user_data) -> None:
        self._prep_sock(IORING_OP_SEND_ZC, fd, buf, flags, user_data, False)

    def prep_recv(self, fd, buf, flags, user_data) -> None:
        self._prep_sock(IORING_OP_RECV, fd, buf, flags, user_data, True)

    def prep_write(self, fd, buf, file_offset, user_data) -> None:
        fd = _signed(fd, 32)
        file_offset = _signed(file_offset, 64)
        user_data = _unsigned(user_data, 64, "uint64_t")
        op = _Op(IORING_OP_WRITE, user_data, fd, _pin(buf, False))
        op.off = file_offset
        self._queue(op)

    def prep_read_fixed(self, fd, buf_index, offset, length, file_offset, user_data) -> None:
        fd = _signed(fd, 32)
        buf_index, offset, length = ssize(buf_index), ssize(offset), ssize(length)
        file_offset = _signed(file_offset, 64)
        user_data = _unsigned(user_data, 64, "uint64_t")
        self._check()
        regs = self._registered or []
        if not 0 <= buf_index < len(regs):
            raise IndexError(f"registered buffer {buf_index} outside [0, {len(regs)})")
        mv = regs[buf_index]
        if offset < 0 or length < 0 or offset + length > len(mv):
            raise ValueError(
                f"[{offset}, {offset}+{length}) is not inside registered buffer {buf_index} of {len(mv)} bytes"
            )
        op = _Op(IORING_OP_READ_FIXED, user_data, fd, mv[offset : offset + length])
        op.off = file_offset
        self._queue(op)

    def prep_cancel(self, target_user_data, user_data) -> None:
        op = _Op(IORING_OP_ASYNC_CANCEL, _unsigned(user_data, 64, "uint64_t"))
        op.off = _unsigned(target_user_data, 64, "uint64_t")
        self._queue(op)

    def prep_splice(self, fd_in, off_in, fd_out, off_out, nbytes, flags, user_data) -> None:
        fd_in, off_in = _signed(fd_in, 32), _signed(off_in, 64)
        fd_out, off_out = _signed(fd_out, 32), _signed(off_out, 64)
        nbytes = _unsigned(nbytes, 32, "uint32_t")
        flags = _unsigned(flags, 32)
        user_data = _unsigned(user_data, 64, "uint64_t")
        op = _Op(IORING_OP_SPLICE, user_data, fd_out)
        op.fd_in, op.off_in, op.off, op.nbytes, op.flags = fd_in, off_in, off_out, nbytes, flags
        self._queue(op)

    # -- submission and completion -----------------------------------------------------------------

    def submit(self) -> int:
        return self.submit_and_wait(0)

    def _run(self) -> None:
        """Try every running operation once, in submission order; a later operation on a descriptor
        waits behind an earlier one that would block (the kernel keeps a socket's order)."""
        blocked: set[tuple[int, int]] = set()
        still: list[_Op] = []
        for op in self._running:
            if op.opcode == IORING_OP_ASYNC_CANCEL:
                # in submission order, as the kernel issues them: the target, if it was submitted
                # before and still waits, ends -ECANCELED and the cancel 0; else the cancel is -ENOENT
                target = next((o for o in still if o.user_data == op.off), None)
                if target is None:
                    self._cq.append((op.user_data, -errno.ENOENT, 0))
                else:
                    still.remove(target)
                    self._cq.append((target.user_data, -errno.ECANCELED, 0))
                    self._cq.append((op.user_data, 0, 0))
                continue
            streams = op.streams() if op.opcode in _MAY_BLOCK else set()
            res = _WOULD_BLOCK if streams & blocked else op.attempt()
            if res is None:
                blocked |= streams
                still.append(op)
                continue
            if op.opcode == IORING_OP_SEND_ZC:
                self._cq.append((op.user_data, res, IORING_CQE_F_MORE))
                self._cq.append((op.user_data, 0, IORING_CQE_F_NOTIF))
            else:
                self._cq.append((op.user_data, res, 0))
        self._running = still

    def submit_and_wait(self, min_complete, timeout_s=None) -> int:
        self._check()
        min_complete = _unsigned(min_complete, 32)
        if min_complete > self.cq_entries:
            raise ValueError(f"min_complete {min_complete} exceeds the CQ ring ({self.cq_entries})")
        deadline = None
        if timeout_s is not None:
            t = float(timeout_s)
            if not t >= 0.0:
                raise ValueError(f"timeout_s must be >= 0, got {timeout_s!r}")
            deadline = time.monotonic() + min(t, 1e9)
        submitted = len(self._sq)
        self._running.extend(self._sq)
        self._sq = []
        self._busy = True
        try:
            while True:
                self._run()
                if len(self._cq) >= min_complete:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                rd: set[int] = set()
                wr: set[int] = set()
                for op in self._running:
                    if op.opcode not in _MAY_BLOCK:
                        continue
                    r, w = op.waits_on()
                    rd.update(r)
                    wr.update(w)
                if not rd and not wr:
                    # nothing can complete: the kernel would sleep until the timeout (or forever)
                    time.sleep(remaining if remaining is not None else 3600.0)
                    continue
                try:
                    select.select(rd, wr, [], remaining)
                except (OSError, ValueError):
                    pass  # a descriptor closed under us: the next attempt reports it
        finally:
            self._busy = False
        return submitted

    def reap(self) -> list[tuple[int, int, int]]:
        self._check()
        out, self._cq = self._cq, []
        for ud, _res, flags in out:
            if not flags & IORING_CQE_F_MORE:
                self._inflight.pop(ud, None)
        return out

    def close(self) -> None:
        if not self._open:
            return
        self._check()
        self._open = False
        self._sq = []
        self._running = []
        self._cq = []
        self._inflight.clear()
        self._registered = None

    def __enter__(self) -> Ring:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if not self._open:
            return "<Ring closed>"
        return f"<Ring (reference) sq_entries={self._sq_entries} inflight={len(self._inflight)}>"
