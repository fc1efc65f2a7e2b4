"""Blocking frame I/O on one TCP (or TLS) stream, for the stream threads.

Rules
-----
1. One thread owns a FrameSocket: it both writes frames and reads the
   peer's answers (ACK/NACK) on the same thread, so a TLS connection is
   never read and written concurrently.
2. Every read is bounded: a header is 64 bytes; a payload is at most the
   header's ``enc_len``, which ``parse_header`` bounded already.
3. The socket timeout is the progress timeout: a peer that sends nothing for
   that long is a stalled stream (``TimeoutError``, an OSError).
4. A peer that closes mid-frame raises ``BrokenResourceError``; one that
   closes between frames makes ``recv_header`` return None.
5. Deadlines are absolute, so a peer dripping a byte at a time cannot push
   them back.  With ``header_timeout_s``, a header whose first byte arrived
   must be whole that many seconds later (else ``HeaderTimeoutError``, a
   RemoteProtocolError: the stream is out of step, no read may be retried).
   While ``deadline`` (a ``time.monotonic()`` value) is set, every read must
   be done by then (else ``TimeoutError``): the server's HELLO deadline.
   A read under a deadline restores the socket's timeout afterwards.
6. ``enable_zerocopy`` gives a plaintext stream a ZeroCopySender
   (dwcp.transport.zerocopy); ``send(..., zerocopy=True)`` then sends a large
   payload MSG_ZEROCOPY and returns its token: the caller must not write the
   payload's buffer until ``self.zerocopy.buffer_free(token)``.
7. ``seal(secret, transfer_id, sender=...)`` ends the TLS session of a data
   stream (close_notify both ways) and carries every later frame as sealed
   records (dwcp.security.aead): the header as one record, the payload as
   another.  The methods keep their meaning; ``sealed`` says which it is.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
from typing import Any

from dwcp._backend import impl as _k
from dwcp.errors import BrokenResourceError, HeaderTimeoutError, RemoteProtocolError
from dwcp.security.aead import stream_keys
from dwcp.wire import consts as C
from dwcp.wire.messages import decode_control, verify_payload

from .zerocopy import ZEROCOPY_MIN_BYTES, ZeroCopySender, sendmsg_all

__all__ = ["FrameSocket"]

TAG = 16  # a sealed record's AES-GCM tag (rule 7)
SEAL_INLINE = 256 << 10  # smaller payloads are sealed in Python and sent with their header in one call
SLOT_BYTES = 1 << 20  # larger ones are sealed a slot at a time by the engine (GIL released)
PUMP_MIN_BYTES = 64 << 10  # plain payloads from this size go through a send pump, when the stream has one


def _wait_readable(fd: int, timeout: float | None) -> bool:
    """poll(2), not select(2): select cannot watch a descriptor numbered 1024 or more (a busy daemon's)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))


class FrameSocket:
    def __init__(
        self, sock: socket.socket, *, timeout_s: float | None, header_timeout_s: float | None = None
    ) -> None:
        self.sock = sock
        sock.settimeout(timeout_s)
        self.header_timeout_s = header_timeout_s  # None: only the socket's timeout, per read
        self.deadline: float | None = None  # time.monotonic() by which every read must be done; None: none
        self._hdr = bytearray(C.HEADER_SIZE)
        self._hmv = memoryview(self._hdr)
        self._tls = isinstance(sock, ssl.SSLSocket)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.zerocopy: ZeroCopySender | None = None  # set by enable_zerocopy (rule 6)
        self.pump: Any = None  # a send pump (dwcp.transport.engine): large payloads go on its loop
        self._tx: _k.Aead | None = None  # sealed records (rule 7)
        self._rx: _k.Aead | None = None
        self._slot: bytearray | None = None
        self._hsize = C.HEADER_SIZE  # bytes of a header on the wire (+ TAG when sealed)

    @property
    def sealed(self) -> bool:
        return self._tx is not None

    @property
    def tls(self) -> bool:
        """Frames go in TLS records (until ``seal``)."""
        return self._tls

    def seal(self, secret: bytes, transfer_id: int, *, sender: bool) -> None:
        """Rule 7: close the TLS session and carry on with sealed records keyed from ``secret``.

        The receiver unwraps once it accepted the HELLO; the sender first reads its answer: the
        receiver's close_notify (accepted) or an ERROR frame, raised as RemoteProtocolError with the
        receiver's code and reason (a refused stream is told why, not a TLS shutdown error).
        """
        if not self._tls:
            raise ValueError("only a TLS stream is sealed: its session carried the secret")
        s2r, r2s = stream_keys(secret, transfer_id)  # first: a bad secret leaves the stream as it was
        tx = _k.Aead(s2r if sender else r2s, True)
        rx = _k.Aead(r2s if sender else s2r, False)
        if sender:
            h = self.recv_header()
            if h is not None:  # the receiver refused the HELLO (or broke the protocol)
                msg = decode_control(h, self.recv_payload(h)) if h.frame_type != C.FRAME_DATA else {}
                if h.frame_type == C.FRAME_ERROR:
                    raise RemoteProtocolError(f"receiver refused the stream: {msg['message']}", msg["code"])
                raise RemoteProtocolError(f"frame type {h.frame_type} where the receiver's close_notify was due",
                                          C.ERR_BAD_FRAME_TYPE)  # fmt: skip
        timeout = self.sock.gettimeout()
        self.sock.unwrap()  # type: ignore[attr-defined]  # close_notify sent and received
        # a plain socket of the same descriptor (an SSLSocket refuses sendmsg even unwrapped)
        raw = socket.socket(fileno=self.sock.detach())
        raw.settimeout(timeout)
        self._tx, self._rx = tx, rx
        self.sock, self._tls = raw, False
        self._hsize = C.HEADER_SIZE + TAG
        self._hdr = bytearray(self._hsize)
        self._hmv = memoryview(self._hdr)

    def _timeout_ms(self) -> int:
        timeout = self.sock.gettimeout()
        return -1 if timeout is None else max(1, int(timeout * 1000))

    # -- writing ---------------------------------------------------------
    def enable_zerocopy(self, min_bytes: int = ZEROCOPY_MIN_BYTES) -> ZeroCopySender:
        """Let ``send(..., zerocopy=True)`` send payloads of ``min_bytes`` and up MSG_ZEROCOPY (plaintext only).

        The returned sender says whether the socket took SO_ZEROCOPY (``enabled``, ``why_not``).
        """
        if self._tls or self._tx is not None:
            raise ValueError(
                "MSG_ZEROCOPY needs a plaintext stream: TLS and sealed records encrypt in user space"
            )
        self.zerocopy = ZeroCopySender(self.sock, min_bytes=min_bytes)
        return self.zerocopy

    def send(self, header: bytes, payload=b"", *, zerocopy: bool = False) -> int:
        """Write one frame; returns the payload's zerocopy token (0: it was copied, the buffer is free)."""
        pmv = memoryview(payload).cast("B")
        if self._tx is not None:
            self._send_sealed(memoryview(header).cast("B"), pmv)
            return 0
        if zerocopy and self.zerocopy is not None:
            token = self.zerocopy.send(header, pmv)
            self.bytes_sent += len(header) + pmv.nbytes
            return token
        if self.pump is not None and pmv.nbytes >= PUMP_MIN_BYTES and not self._tls:
            # the send's pump: header and payload from the caller's buffers, on its loop thread
            self.pump.send(self.sock.fileno(), memoryview(header).cast("B"), pmv, self._timeout_ms())
            self.bytes_sent += len(header) + pmv.nbytes
            return 0
        if pmv.nbytes and not self._tls:
            self._sendmsg_all([memoryview(header), pmv])
        else:
            self.sock.sendall(header)
            if pmv.nbytes:
                self.sock.sendall(pmv)
        self.bytes_sent += len(header) + pmv.nbytes
        return 0

    def _send_sealed(self, hmv: memoryview, pmv: memoryview) -> None:
        """Each frame as its header's record and its payload's (rule 7); ``hmv`` may hold whole frames."""
        tx = self._tx
        assert tx is not None
        frames = []
        if pmv.nbytes:
            frames.append((hmv, pmv))
        else:  # encode_control's bytes: whole frames, each header followed by its payload
            while hmv.nbytes:
                end = C.HEADER_SIZE + _k.parse_header(hmv[: C.HEADER_SIZE]).enc_len
                if hmv.nbytes < end:
                    raise ValueError(f"a frame of {end} bytes in {hmv.nbytes}")
                frames.append((hmv[: C.HEADER_SIZE], hmv[C.HEADER_SIZE : end]))
                hmv = hmv[end:]
        for h, p in frames:
            if h.nbytes != C.HEADER_SIZE:
                raise ValueError(f"a header has {C.HEADER_SIZE} bytes, got {h.nbytes}")
            hr = tx.seal(h)
            if not p.nbytes:
                self.sock.sendall(hr)
            elif p.nbytes < SEAL_INLINE:
                self._sendmsg_all([memoryview(hr), memoryview(tx.seal(p))])
            elif (
                self.pump is not None
            ):  # the header's record as it is, the payload sealed in the pump's slots
                self.pump.send(self.sock.fileno(), memoryview(hr), p, self._timeout_ms(), tx)
            else:
                self.sock.sendall(hr)
                if self._slot is None:
                    self._slot = bytearray(SLOT_BYTES)
                _k.send_sealed(self.sock.fileno(), tx, p, self._slot, self._timeout_ms())
            self.bytes_sent += h.nbytes + p.nbytes

    def _sendmsg_all(self, bufs: list[memoryview]) -> None:
        # scatter/gather: header and payload in one syscall, no join copy
        if self.zerocopy is not None:  # its waits read completions (zerocopy rule 7)
            self.zerocopy.sendmsg_all(bufs)
        else:
            sendmsg_all(self.sock, bufs)

    # -- reading ---------------------------------------------------------
    def readable(self, timeout: float = 0.0) -> bool:
        """True when a read would not block (TLS-buffered bytes count)."""
        if self._tls and self.sock.pending():  # type: ignore[attr-defined]
            return True
        if self.zerocopy is not None:  # a queued completion is POLLERR, not a readable byte (zerocopy rule 7)
            return self.zerocopy.wait_io(select.POLLIN, timeout)
        return _wait_readable(self.sock.fileno(), timeout)

    def _await_data(self) -> None:
        """With MSG_ZEROCOPY on, wait for a byte in ``wait_io`` before a read: Python's own wait would spin
        on a queued completion (zerocopy rule 7).  TimeoutError after the socket's timeout, as a read."""
        if self.zerocopy is not None and not self.zerocopy.wait_io(select.POLLIN, self.sock.gettimeout()):
            raise TimeoutError("timed out")

    def _recv_by(self, mv: memoryview, deadline: float) -> int:
        """One ``recv_into(mv)`` that waits no longer than the socket's timeout, nor past ``deadline``.

        Raises TimeoutError once ``deadline`` has passed.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        timeout = self.sock.gettimeout()
        self.sock.settimeout(left if timeout is None else min(timeout, left))
        try:
            return self.sock.recv_into(mv)
        finally:
            self.sock.settimeout(timeout)

    def _recv_exact(self, mv: memoryview, got: int = 0) -> None:
        n = mv.nbytes
        while got < n:
            if self.deadline is None:
                self._await_data()
                k = self.sock.recv_into(mv[got:], n - got)
            else:
                k = self._recv_by(mv[got:], self.deadline)
            if k == 0:
                raise BrokenResourceError(f"peer closed the connection mid-frame ({got} of {n} bytes)")
            got += k
        self.bytes_received += n

    def recv_into_exact(self, mv: memoryview) -> None:
        """A whole payload into ``mv`` (a sealed one is opened there: rule 7)."""
        self._recv_exact(mv)
        if self._rx is not None:
            tag = bytearray(TAG)
            self._recv_exact(memoryview(tag))
            self.bytes_received -= TAG
            self._rx.open_into(mv, tag)

    def recv_header(self):
        """The next frame's parsed header, or None on a clean end of stream.

        The first byte may take the socket's timeout (or until ``deadline``);
        the rest must follow within ``header_timeout_s`` of it (rule 5).
        """
        if self.deadline is None:
            self._await_data()
            k = self.sock.recv_into(self._hmv, self._hsize)
        else:
            k = self._recv_by(self._hmv, self.deadline)
        if k == 0:
            return None
        if k < self._hsize and self.header_timeout_s is not None:
            self._recv_header_rest(k)
        else:
            self._recv_exact(self._hmv, k)
        if self._rx is not None:
            self.bytes_received -= TAG
            self._rx.open_into(self._hmv[: C.HEADER_SIZE], self._hmv[C.HEADER_SIZE :])
            return _k.parse_header(self._hmv[: C.HEADER_SIZE])
        return _k.parse_header(self._hdr)

    def _recv_header_rest(self, got: int) -> None:
        assert self.header_timeout_s is not None
        started = time.monotonic()
        header_deadline = started + self.header_timeout_s
        deadline = header_deadline if self.deadline is None else min(header_deadline, self.deadline)
        while got < self._hsize:
            timeout, left = self.sock.gettimeout(), deadline - time.monotonic()
            try:
                k = self._recv_by(self._hmv[got:], deadline)
            except TimeoutError:
                if deadline == header_deadline and (
                    timeout is None or timeout >= left
                ):  # not a stall, nor `deadline`
                    raise HeaderTimeoutError(
                        f"frame header incomplete {time.monotonic() - started:.1f} s after its first byte "
                        f"({got} of {self._hsize} bytes; header_timeout_s {self.header_timeout_s})",
                        C.ERR_TRUNCATED,
                    ) from None
                raise
            if k == 0:
                raise BrokenResourceError(
                    f"peer closed the connection mid-frame ({got} of {self._hsize} bytes)"
                )
            got += k
        self.bytes_received += self._hsize

    @property
    def can_recv_direct(self) -> bool:
        """Plain TCP or sealed records: a RAW payload can go socket -> slot -> file without a Python object."""
        return not self._tls

    def recv_blocks_into(self, fd: int, offset: int, n: int, slot, pump=None) -> tuple[bytes, int]:
        """Receive the next ``n`` payload bytes into file ``fd`` at ``offset`` through ``slot`` (a
        1 MiB buffer), hashing each block as it lands (dwcp/_fast/engine.pyx, GIL released) -- or, with
        a ``pump`` (dwcp.transport.engine), through one of the pump's slots on its loop thread; returns
        (block hashes, chunk hash).  Plain TCP or sealed records only (``can_recv_direct``).  Honours
        the socket's timeout; a failure to write the file is a StorageError (the socket's stay OSErrors).
        """
        if pump is not None:
            got, blocks, chash = pump.recv_blocks(
                self.sock.fileno(), n, fd, offset, self._timeout_ms(), self._rx
            )
        else:
            got, blocks, chash = _k.recv_blocks(self.sock.fileno(), slot, n, fd, offset, self._timeout_ms(),
                                                opener=self._rx)  # fmt: skip
        self.bytes_received += got
        if got < n:
            raise BrokenResourceError(f"peer closed the connection mid-frame ({got} of {n} bytes)")
        return blocks, chash

    def recv_payload(self, header) -> bytearray:
        buf = bytearray(header.enc_len)
        if header.enc_len:
            self.recv_into_exact(memoryview(buf))
        return buf

    def skip_payload(self, header) -> None:
        if self._rx is not None and header.enc_len:
            # a sealed payload is opened, not skipped (the next record's number follows it, and a forged
            # one must still fail): through a 1 MiB slot into /dev/null, whatever its length
            if self._slot is None:
                self._slot = bytearray(SLOT_BYTES)
            fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                got, _, _ = _k.recv_blocks(self.sock.fileno(), self._slot, header.enc_len, fd, 0,
                                           self._timeout_ms(), SLOT_BYTES, opener=self._rx)  # fmt: skip
            finally:
                os.close(fd)
            self.bytes_received += got
            if got < header.enc_len:
                raise BrokenResourceError(
                    f"peer closed the connection mid-frame ({got} of {header.enc_len} bytes)"
                )
            return
        left = header.enc_len
        scratch = memoryview(bytearray(min(left, 1 << 20) or 1))
        while left:
            step = min(left, scratch.nbytes)
            self._recv_exact(scratch[:step])
            left -= step

    def recv_control(self, *expect: int, max_len: int = C.MAX_CONTROL_LEN):
        """(header, message) of the next control frame; None at end of stream.

        PAGE_HASHES and DICT frames come back with their raw payload as the message.
        An ERROR frame from the peer is returned like any other.  A payload
        over ``max_len`` bytes is refused before anything is allocated for it.
        """
        h = self.recv_header()
        if h is None:
            return None
        if h.frame_type == C.FRAME_DATA:
            raise RemoteProtocolError("data frame where a control frame was expected", C.ERR_BAD_FRAME_TYPE)
        if expect and h.frame_type not in expect and h.frame_type != C.FRAME_ERROR:
            raise RemoteProtocolError(
                f"unexpected frame type {h.frame_type} (expected one of {expect})", C.ERR_BAD_FRAME_TYPE
            )
        if h.enc_len > max_len:
            raise RemoteProtocolError(
                f"a {h.enc_len}-byte control message (at most {max_len} here)", C.ERR_BAD_LENGTH
            )
        payload = self.recv_payload(h)
        if h.frame_type in (C.FRAME_PAGE_HASHES, C.FRAME_DICT):  # binary: checked by the header's hash
            verify_payload(h, payload)
            return h, payload
        return h, decode_control(h, payload)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
