"""MSG_ZEROCOPY sends on one plaintext TCP socket, and the kernel's word on when a buffer is free again.

Theory of operation
-------------------
``sendmsg(..., MSG_ZEROCOPY)`` on a socket with ``SO_ZEROCOPY`` set returns
once the kernel has *pinned* the payload's pages, instead of copying them
into the socket buffer; the device reads them where they are, and the
kernel says when it let go of them with a notification on the socket's
error queue.  Each MSG_ZEROCOPY ``sendmsg`` call that sends anything takes
the next number of a per-socket 32-bit counter, from 0 (a call that fails
takes none); a notification (``struct sock_extended_err``, ``ee_origin ==
SO_EE_ORIGIN_ZEROCOPY``) names an inclusive range ``[ee_info, ee_data]`` of
calls released, and ``ee_code & SO_EE_CODE_ZEROCOPY_COPIED`` says the kernel
copied them after all: always on loopback (the receiving socket must own its
bytes), and on a device that cannot gather from user pages.

``ZeroCopySender.send(header, payload)`` returns a *token*; the payload's
buffer may be written again once ``buffer_free(token)`` (or after
``wait_completions(token)``).  ``PayloadBuffers`` is a stream's pool of chunk
buffers built on that: a buffer is handed out again only once it is free.

Rules
-----
1. Until its token is free, nobody writes a payload's buffer: the kernel may
   still read it.  The sender keeps a reference to everything it pinned (the
   header too: it travels in the same call) until then, so a payload the
   caller drops is not freed and reused by the allocator under the kernel.
2. Payloads under ``min_bytes`` go the normal way (token 0, free at once):
   pinning pages and a notification cost more than copying a few KiB.  A
   frame's header travels with its payload, in one call either way.
3. ENOBUFS (the notifications are charged to ``net.core.optmem_max``) while
   calls are outstanding: wait for one more completion and retry.  With none
   outstanding it is not ours to wait for: the rest of that payload goes the
   normal way (``fallbacks``).
4. A socket that refuses SO_ZEROCOPY, or a ``sendmsg`` that refuses the flag
   (EINVAL, EOPNOTSUPP), makes the sender a plain one for good
   (``enabled`` False, ``why_not`` says why); its sends copy and are counted
   as ``fallbacks`` when they would have gone zero-copy.  (Without
   SO_ZEROCOPY the kernel would ignore the flag silently and never notify:
   the sender sends with it only while the option is known to be on.)
5. Completions are read without blocking (``recvmsg(MSG_ERRQUEUE)`` with the
   socket's timeout set aside for the call: in timeout mode Python polls for
   POLLIN first, and the error queue raises POLLERR, not POLLIN).  Waiting is
   ``poll(2)`` for POLLERR, and no longer than the socket's timeout without a
   completion (``TimeoutError``, as a stalled read: framesock rule 3).
6. One thread owns a ZeroCopySender: the thread that owns its socket.
7. Every wait on the socket goes through ``wait_io`` once SO_ZEROCOPY is on:
   poll(2) reports a queued completion as POLLERR whatever was asked, so
   Python's own wait before a recv or a send returns at once, the call
   fails with EAGAIN, and the thread spins until the bytes come (measured:
   half a core, and a stream that took a queued completion for a readable
   ACK stopped sending until the ACK came).  ``wait_io`` reads the
   completions and waits again; ``sendmsg_all`` sends with its own waits.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any

from dwcp.errors import BrokenResourceError

from .sockopts import SO_ZEROCOPY

__all__ = ["MSG_ZEROCOPY", "ZEROCOPY_MIN_BYTES", "PayloadBuffers", "ZeroCopySender", "sendmsg_all"]

# Linux values (include/uapi/linux/socket.h, errqueue.h, in.h, in6.h); Python 3.11 lacks some
MSG_ZEROCOPY = getattr(socket, "MSG_ZEROCOPY", 0x4000000)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SO_EE_ORIGIN_ZEROCOPY = 5
SO_EE_CODE_ZEROCOPY_COPIED = 1
_RECVERR = frozenset({(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)})  # IP_RECVERR, IPV6_RECVERR
_EE = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
_ANCBUF = socket.CMSG_SPACE(_EE.size + 28)  # the error and its offender, at most a sockaddr_in6
_U32 = 1 << 32

# The kernel's MSG_ZEROCOPY notes measure it paying from about 10 KB a call; dwcp's payloads that go
# this way are raw chunks of 64 KiB and up, so a frame header or a control message never does.
ZEROCOPY_MIN_BYTES = 64 * 1024

# errnos with which sendmsg refuses MSG_ZEROCOPY itself (rule 4)
_REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT})


class ZeroCopySender:
    """MSG_ZEROCOPY sends on one connected TCP socket (or anything with its methods), and their completions."""

    def __init__(self, sock: Any, *, min_bytes: int = ZEROCOPY_MIN_BYTES) -> None:
        if min_bytes < 1:
            raise ValueError("min_bytes must be >= 1")
        self.sock = sock
        self.min_bytes = min_bytes
        self.why_not: str | None = None  # why sends copy (rule 4); None while enabled
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            self.enabled = bool(sock.getsockopt(socket.SOL_SOCKET, SO_ZEROCOPY))
            if not self.enabled:
                self.why_not = "SO_ZEROCOPY does not stick on this socket"
        except OSError as exc:
            self.enabled = False
            self.why_not = f"setsockopt(SO_ZEROCOPY) failed: {exc.strerror or exc}"
        # Invariant: calls [0, _next) are the MSG_ZEROCOPY sendmsg calls that sent something.
        self._next = 0
        # Invariant: every call < _done_below completed; _done_below <= _next.
        self._done_below = 0
        # Invariant: calls that completed out of order, each in [_done_below + 1, _next).
        self._done_ahead: set[int] = set()
        # (token, objects pinned by the calls before it), tokens ascending; kept alive until free (rule 1)
        self._held: deque[tuple[int, tuple]] = deque()
        self.sends = 0  # payloads that went (at least partly) MSG_ZEROCOPY
        self.bytes = 0  # bytes those calls sent, headers included
        self.completed = 0  # calls the kernel reported released
        self.copied = 0  # of those, calls it reported it had copied after all
        self.fallbacks = 0  # payloads (or their rest) sent the normal way for ENOBUFS or a refusal
        self.enobufs = 0  # ENOBUFS answers (rule 3)

    # -- sending ---------------------------------------------------------
    @property
    def calls(self) -> int:
        """MSG_ZEROCOPY sendmsg calls so far: the socket's counter, unwrapped."""
        return self._next

    @property
    def outstanding(self) -> int:
        """Calls not known to be released yet."""
        return self._next - self._done_below - len(self._done_ahead)

    def send(self, header: bytes | memoryview, payload: Any = b"") -> int:
        """Send one frame, header and payload in one call per write; returns the payload's token.

        Token 0 means the bytes were copied (free at once); otherwise the payload's buffer may be
        written again once ``buffer_free(token)``.  Raises what ``sendmsg`` raises, but for rules 3-4.
        """
        pmv = memoryview(payload).cast("B")
        bufs = [memoryview(header).cast("B"), pmv] if pmv.nbytes else [memoryview(header).cast("B")]
        if pmv.nbytes < self.min_bytes:
            self.sendmsg_all(bufs)
            return 0
        if not self.enabled:
            self.fallbacks += 1
            self.sendmsg_all(bufs)
            return 0
        first = self._next
        while bufs:
            try:
                n = self._sendmsg_now(bufs, MSG_ZEROCOPY)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    if self._done_below < self._next:  # rule 3: a completion gives its optmem back
                        self.wait_completions(self._done_below + 1)
                        continue
                elif exc.errno in _REFUSED:
                    self.enabled = False
                    self.why_not = f"sendmsg refused MSG_ZEROCOPY: {exc.strerror or exc}"
                else:
                    raise
                self.fallbacks += 1
                self.sendmsg_all(bufs)
                break
            if n is None:
                self._wait_writable()
                continue
            self._next += 1
            self.bytes += n
            _consume(bufs, n)
        if self._next == first:
            return 0
        self.sends += 1
        self._held.append((self._next, (header, payload)))
        return self._next

    def sendmsg_all(self, bufs: list[memoryview]) -> None:
        """Send all of ``bufs`` the normal way (copied), waiting in ``wait_io`` (rule 7)."""
        while bufs:
            n = self._sendmsg_now(bufs, 0)
            if n is None:
                self._wait_writable()
            else:
                _consume(bufs, n)

    def _sendmsg_now(self, bufs: list[memoryview], flags: int) -> int | None:
        """One ``sendmsg`` that does not block (rule 7: the waits are ours, not Python's): the bytes it
        sent, or None when the socket buffer is full."""
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            return self.sock.sendmsg(bufs, (), flags)
        except (BlockingIOError, InterruptedError):
            return None
        finally:
            self.sock.settimeout(timeout)

    def _wait_writable(self) -> None:
        timeout = self.sock.gettimeout()
        if not self.wait_io(select.POLLOUT, timeout):
            raise TimeoutError(f"the socket took no byte for {timeout} s")

    def wait_io(self, events: int, timeout: float | None) -> bool:
        """Wait until the socket is ready for ``events`` (POLLIN, POLLOUT), reading the completions that
        raise POLLERR meanwhile (rule 7).  False when ``timeout`` (seconds; None: none) passed first;
        True also on a socket error or hang-up (the I/O call that follows reports it)."""
        p = select.poll()
        p.register(self.sock.fileno(), events)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            ready = p.poll(left)
            if not ready:
                return False
            rev = ready[0][1]
            if rev & (events | select.POLLHUP | select.POLLNVAL):
                return True
            if not self.poll():  # POLLERR that is not a completion: a socket error, for the caller's call
                return True

    # -- completions -----------------------------------------------------
    def buffer_free(self, token: int) -> bool:
        """Whether the payload ``send`` returned ``token`` for may be written again (reads what is queued)."""
        if token <= self._done_below:
            return True
        self.poll()
        return token <= self._done_below

    def poll(self) -> int:
        """Read every completion queued now, without blocking (rule 5); returns how many calls it released."""
        if self._done_below == self._next:
            return 0
        before = self.completed
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            while True:
                try:
                    _, anc, _, _ = self.sock.recvmsg(0, _ANCBUF, MSG_ERRQUEUE)
                except (BlockingIOError, InterruptedError):
                    break
                for level, kind, data in anc:
                    self._on_cmsg(level, kind, data)
        finally:
            self.sock.settimeout(timeout)
        return self.completed - before

    def wait_completions(self, upto: int | None = None) -> None:
        """Block until every call before ``upto`` (a token; default: all so far) is released.

        Waits no longer than the socket's timeout for each completion (``TimeoutError``); a socket
        error is raised as its OSError, a connection gone with calls outstanding as BrokenResourceError.
        """
        upto = self._next if upto is None else upto
        if upto > self._next:
            raise ValueError(f"token {upto} is past the last call ({self._next})")
        if upto <= self._done_below or (self.poll() and upto <= self._done_below):
            return
        timeout = self.sock.gettimeout()
        p = select.poll()
        p.register(self.sock.fileno(), 0)  # POLLERR and POLLHUP are always reported
        while upto > self._done_below:
            ready = p.poll(-1 if timeout is None else max(0, int(timeout * 1000 + 0.999)))
            if not ready:
                raise TimeoutError(
                    f"no MSG_ZEROCOPY completion for {timeout} s ({self.outstanding} calls outstanding)"
                )
            if self.poll():
                continue
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if ready[0][1] & (select.POLLHUP | select.POLLNVAL):
                raise BrokenResourceError(
                    f"connection closed with {self.outstanding} MSG_ZEROCOPY calls outstanding"
                )
            time.sleep(0.001)  # POLLERR gone by the time we looked: look again, without spinning

    def _on_cmsg(self, level: int, kind: int, data: bytes) -> None:
        if (level, kind) not in _RECVERR or len(data) < _EE.size:
            return
        err, origin, _, code, _, lo, hi = _EE.unpack_from(data)
        if origin != SO_EE_ORIGIN_ZEROCOPY or err:
            return  # not ours: TCP queues no other errors unless IP_RECVERR is set, which dwcp never sets
        n = ((hi - lo) & (_U32 - 1)) + 1
        first = self._next - 1 - ((self._next - 1 - lo) & (_U32 - 1))  # the call numbered lo (mod 2**32)
        if first < self._done_below or first + n > self._next:
            return  # a range we never sent or already saw: never counted twice
        self.completed += n
        if code & SO_EE_CODE_ZEROCOPY_COPIED:
            self.copied += n
        if first == self._done_below:
            self._done_below += n
        else:
            self._done_ahead.update(range(first, first + n))
        while self._done_below in self._done_ahead:
            self._done_ahead.remove(self._done_below)
            self._done_below += 1
        while self._held and self._held[0][0] <= self._done_below:
            self._held.popleft()

    def stats(self) -> dict[str, int]:
        return {"sends": self.sends, "bytes": self.bytes, "calls": self._next, "completed": self.completed,
                "copied": self.copied, "fallbacks": self.fallbacks, "enobufs": self.enobufs}  # fmt: skip


def sendmsg_all(sock: Any, bufs: list[memoryview]) -> None:
    """Send all of ``bufs`` with scatter/gather ``sendmsg`` (no join copy); it may send less per call."""
    while bufs:
        _consume(bufs, sock.sendmsg(bufs))


def _consume(bufs: list[memoryview], sent: int) -> None:
    """Drop the first ``sent`` bytes from the front of ``bufs``."""
    while bufs and sent >= bufs[0].nbytes:
        sent -= bufs[0].nbytes
        bufs.pop(0)
    if bufs and sent:
        bufs[0] = bufs[0][sent:]


class PayloadBuffers:
    """One stream's chunk buffers when its payloads may go MSG_ZEROCOPY: a buffer is handed out again
    only once the kernel let go of its last send (rule 1).

    ``take(n, limit)`` gives the oldest free buffer, else a new one while fewer than ``limit`` exist,
    else waits for the oldest; ``give_back(view, token)`` returns it with its send's token (0: free).
    Completions come about when TCP acknowledges the bytes, before the receiver's ACK of the chunk, so
    with ``limit`` at the stream's window plus one a stream rarely waits.
    """

    def __init__(self, zc: ZeroCopySender) -> None:
        self.zc = zc
        self._q: deque[tuple[bytearray, int]] = deque()  # (buffer, token of its last send), oldest first
        self._out = 0  # invariant: buffers taken and not given back; 0 <= _out
        self.allocated = 0  # buffers made so far
        self.waits = 0  # takes that had to wait for a completion

    def take(self, n: int, limit: int) -> memoryview:
        """A writable buffer of ``n`` bytes no send still holds."""
        q = self._q
        buf: bytearray | None = None
        for k, (b, token) in enumerate(q):  # oldest first: the first the kernel let go of
            if self.zc.buffer_free(token):
                buf = b
                del q[k]
                break
        if buf is None and len(q) + self._out >= max(1, limit) and q:
            self.waits += 1  # at the limit: wait for the oldest (it stays in line if the wait fails)
            self.zc.wait_completions(q[0][1])
            buf = q.popleft()[0]
        if buf is None or len(buf) < n:
            buf = bytearray(n)
            self.allocated += 1
        self._out += 1
        return memoryview(buf)[:n]

    def give_back(self, view: memoryview, token: int) -> None:
        self._out -= 1
        self._q.append((view.obj, token))  # type: ignore[arg-type]  # the bytearray ``take`` made
