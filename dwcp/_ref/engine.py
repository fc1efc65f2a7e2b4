"""Pure-Python twin of dwcp/_fast/engine.pyx (the rules are in its docstring).

``Aead`` calls the same EVP functions of the same libcrypto through ctypes (the
standard library): the twin needs no compiler, and agrees with the kernel
record for record.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import selectors
import socket
import threading
import time

import xxhash

from dwcp.errors import BrokenResourceError, ClosedResourceError, ForgedRecordError, StorageError
from dwcp.wire.consts import ERR_FORGED

__all__ = [
    "recv_blocks",
    "send_sealed",
    "write_pages",
    "Aead",
    "aead_load",
    "AEAD_TAG_BYTES",
    "AEAD_KEY_BYTES",
    "Pump",
    "PUMP_KINDS",
]

PUMP_KINDS = ("uring", "epoll")

AEAD_TAG_BYTES = 16
AEAD_KEY_BYTES = 32
_SET_IVLEN, _GET_TAG, _SET_TAG = 0x9, 0x10, 0x11
_lib: ctypes.CDLL | None = None


def aead_load(path: str) -> bool:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(path)
            for name, res, args in (
                ("EVP_CIPHER_CTX_new", ctypes.c_void_p, []),
                ("EVP_CIPHER_CTX_free", None, [ctypes.c_void_p]),
                ("EVP_aes_256_gcm", ctypes.c_void_p, []),
                ("EVP_CipherInit_ex", ctypes.c_int, [ctypes.c_void_p] * 5 + [ctypes.c_int]),
                ("EVP_CipherUpdate", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                                    ctypes.c_void_p, ctypes.c_int]),
                ("EVP_CipherFinal_ex", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]),
                ("EVP_CIPHER_CTX_ctrl", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]),
            ):  # fmt: skip
                f = getattr(lib, name)
                f.restype, f.argtypes = res, args
        except (OSError, AttributeError):
            return False
        _lib = lib
    return True


def _ptr(buf, off: int = 0) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf)) + off


class Aead:
    """One direction of one connection: a key and its record counter (rule 6)."""

    def __init__(self, key, seal: bool) -> None:
        if _lib is None:
            raise RuntimeError("AES-GCM is not loaded: call aead_load first")
        key = bytes(key)
        if len(key) != AEAD_KEY_BYTES:
            raise ValueError(f"an AES-256-GCM key has {AEAD_KEY_BYTES} bytes, got {len(key)}")
        self.sealing = bool(seal)
        self._key = key
        self._counter = 0
        self._ctx = _lib.EVP_CIPHER_CTX_new()
        if not self._ctx or _lib.EVP_CipherInit_ex(self._ctx, _lib.EVP_aes_256_gcm(), None, None, None,
                                                   1 if seal else 0) != 1 or \
                _lib.EVP_CIPHER_CTX_ctrl(self._ctx, _SET_IVLEN, 12, None) != 1:  # fmt: skip
            raise RuntimeError("EVP could not set up AES-256-GCM")

    def __del__(self) -> None:
        if _lib is not None and getattr(self, "_ctx", None):
            _lib.EVP_CIPHER_CTX_free(self._ctx)
            self._ctx = None

    @property
    def counter(self) -> int:
        return self._counter

    def _begin(self) -> None:
        assert _lib is not None
        if self._counter == 2**64 - 1:
            raise RuntimeError("EVP failed: record counter exhausted")
        iv = bytes(4) + self._counter.to_bytes(8, "big")
        if _lib.EVP_CipherInit_ex(self._ctx, None, None, self._key, iv, -1) != 1:
            raise RuntimeError("EVP failed to start a record")
        self._counter += 1

    def _update(self, buf: bytearray, off: int, n: int) -> None:
        assert _lib is not None
        if not n:
            return
        outl = ctypes.c_int()
        p = _ptr(buf, off)
        if _lib.EVP_CipherUpdate(self._ctx, p, ctypes.byref(outl), p, n) != 1 or outl.value != n:
            raise RuntimeError("EVP failed to process a record")

    def _finish(self, tag: bytearray) -> bool:
        assert _lib is not None
        dummy, outl = ctypes.create_string_buffer(16), ctypes.c_int()
        if self.sealing:
            if _lib.EVP_CipherFinal_ex(self._ctx, dummy, ctypes.byref(outl)) != 1:
                raise RuntimeError("EVP failed to seal a record")
            return _lib.EVP_CIPHER_CTX_ctrl(self._ctx, _GET_TAG, 16, _ptr(tag)) == 1
        if _lib.EVP_CIPHER_CTX_ctrl(self._ctx, _SET_TAG, 16, _ptr(tag)) != 1:
            raise RuntimeError("EVP failed to open a record")
        return _lib.EVP_CipherFinal_ex(self._ctx, dummy, ctypes.byref(outl)) == 1

    def seal(self, data) -> bytes:
        if not self.sealing:
            raise ValueError("this Aead opens records; it cannot seal")
        mv = memoryview(data).cast("B")
        out = bytearray(mv.nbytes + AEAD_TAG_BYTES)
        out[: mv.nbytes] = mv
        self._begin()
        self._update(out, 0, mv.nbytes)
        tag = bytearray(16)
        if not self._finish(tag):
            raise RuntimeError("EVP failed to seal a record")
        out[mv.nbytes :] = tag
        return bytes(out)

    def open_into(self, buf, tag) -> None:
        if self.sealing:
            raise ValueError("this Aead seals records; it cannot open")
        if len(tag) != AEAD_TAG_BYTES:
            raise ValueError(f"a tag has {AEAD_TAG_BYTES} bytes, got {len(tag)}")
        rec = self._counter
        mv = memoryview(buf).cast("B")
        work = bytearray(mv)
        self._begin()
        self._update(work, 0, len(work))
        ok = self._finish(bytearray(tag))
        mv[:] = work
        if not ok:
            raise ForgedRecordError(f"sealed record {rec} ({len(work)} bytes) failed authentication: forged, "
                                    f"altered or out of order", ERR_FORGED)  # fmt: skip


def _pwrite_all(fd: int, mv: memoryview, off: int) -> tuple[int, int]:
    """(bytes written, 0), or (bytes written before it failed, its errno); a write that makes no progress
    is ENOSPC (the kernel's _pwrite_all)."""
    w = 0
    while w < mv.nbytes:
        try:
            r = os.pwrite(fd, mv[w:], off + w)
        except InterruptedError:
            continue
        except OSError as exc:
            return w, exc.errno or errno.EIO
        if r == 0:
            return w, errno.ENOSPC
        w += r
    return w, 0


def _wait(poller, timeout_ms: int) -> bool:
    return bool(poller.poll(timeout_ms))


def _recv_exact(fd: int, poller, mv: memoryview, timeout_ms: int, done: int, n: int) -> int:
    """Fill ``mv``; returns how many arrived (fewer: the peer closed)."""
    got = 0
    while got < mv.nbytes:
        # wait first: on a blocking socket a read with nothing to read would never time out
        if not _wait(poller, timeout_ms):
            raise TimeoutError(f"no payload bytes for {timeout_ms / 1000} s ({done + got} of {n} received)")
        try:
            r = os.readv(fd, [mv[got:]])
        except (BlockingIOError, InterruptedError):
            continue
        if r == 0:
            return got
        got += r
    return got


def recv_blocks(sock_fd: int, slot, n: int, file_fd: int, file_off: int, timeout_ms: int = -1,
                block: int = 1 << 20, opener: Aead | None = None) -> tuple[int, bytes, int]:  # fmt: skip
    if n < 0 or file_off < 0:
        raise ValueError(f"n and file_off must be >= 0, got {n} and {file_off}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    sp = memoryview(slot).cast("B")
    if n and sp.nbytes < min(block, n):
        raise ValueError(f"the slot holds {sp.nbytes} bytes; a block needs {min(block, n)}")
    if opener is not None and opener.sealing:
        raise ValueError("recv_blocks needs an opening Aead")
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    hashes = bytearray()
    done = 0
    rec = 0
    if opener is not None:
        rec = opener.counter
        opener._begin()
    work = bytearray(min(block, n)) if opener is not None else None
    while done < n:
        want = min(block, n - done)
        got = _recv_exact(sock_fd, poller, sp[:want], timeout_ms, done, n)
        if got < want:
            return done + got, bytes(hashes), 0
        if opener is not None:
            assert work is not None
            work[:want] = sp[:want]
            opener._update(work, 0, want)
            sp[:want] = work[:want]
        hashes += xxhash.xxh3_128_digest(sp[:want])
        _, err = _pwrite_all(file_fd, sp[:want], file_off + done)
        if err:
            raise StorageError(f"{os.strerror(err)} (writing at offset {file_off + done})")
        done += want
    if opener is not None:
        tag = bytearray(16)
        got = _recv_exact(sock_fd, poller, memoryview(tag), timeout_ms, done, n)
        if got < 16:
            raise BrokenResourceError(f"peer closed the connection inside sealed record {rec}'s tag ({n} bytes "
                                      f"of payload received)")  # fmt: skip
        if not opener._finish(tag):
            raise ForgedRecordError(f"sealed record {rec} ({n} bytes) failed authentication: forged, altered "
                                    f"or out of order", ERR_FORGED)  # fmt: skip
    return done, bytes(hashes), xxhash.xxh3_64_intdigest(bytes(hashes))


def _send_all(fd: int, data, timeout_ms: int, done: int, n: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    mv = memoryview(data).cast("B")
    while mv.nbytes:
        try:
            r = os.writev(fd, [mv])
        except (BlockingIOError, InterruptedError):
            if not _wait(poller, timeout_ms):
                raise TimeoutError(
                    f"the socket took no byte for {timeout_ms / 1000} s ({done} of {n} sent)"
                ) from None
            continue
        mv = mv[r:]


def send_sealed(sock_fd: int, sealer: Aead, payload, slot, timeout_ms: int = -1) -> None:
    if not sealer.sealing:
        raise ValueError("send_sealed needs a sealing Aead")
    pv = memoryview(payload).cast("B")
    sp = memoryview(slot).cast("B")
    n, block = pv.nbytes, sp.nbytes
    if n and block < 1:
        raise ValueError("the slot is empty")
    sealer._begin()
    work = bytearray(min(block, n))
    done = 0
    while done < n:
        k = min(block, n - done)
        work[:k] = pv[done : done + k]
        sealer._update(work, 0, k)
        sp[:k] = work[:k]
        _send_all(sock_fd, sp[:k], timeout_ms, done, n)
        done += k
    tag = bytearray(16)
    if not sealer._finish(tag):
        raise RuntimeError("EVP failed to seal a record")
    _send_all(sock_fd, tag, timeout_ms, done, n)


def write_pages(file_fd: int, file_off: int, data, flags, page_size: int = 4096) -> int:
    if page_size <= 0 or file_off < 0:
        raise ValueError(f"page_size must be positive and file_off >= 0, got {page_size} and {file_off}")
    mv = memoryview(data).cast("B")
    n = mv.nbytes
    npages = -(-n // page_size)
    fl = bytes(flags)
    if len(fl) != npages:
        raise ValueError(f"{len(fl)} page flags for {npages} pages")
    total, i = 0, 0
    while i < npages:
        if not fl[i]:
            i += 1
            continue
        j = i
        while j < npages and fl[j]:
            j += 1
        a, b = i * page_size, min(j * page_size, n)
        w, err = _pwrite_all(file_fd, mv[a:b], file_off + a)
        if err:
            raise StorageError(f"{os.strerror(err)} (writing at offset {file_off + a + w})")
        total += w
        i = j
    return total


# -- the pump (rules 9 and 10) ----------------------------------------------------------------------
_OK, _EOF, _TIMEOUT, _SOCK, _FILE, _FORGED, _TAG_CUT, _CLOSED = range(8)
_UOP_RECV, _UOP_WRITE, _UOP_CANCEL = 1, 2, 3
_RECV, _SEND = 0, 1
_SP_HDR, _SP_PLAIN, _SP_SEALED, _SP_TAG = 10, 11, 12, 13
_UD_WAKE = 2**64 - 2  # (2**64-1 is the Ring's own)


class _Job:
    __slots__ = ("sock", "file", "n", "off", "timeout_ms", "opener", "hashes", "slot", "phase", "done",
                 "got", "want", "k", "deadline", "ud", "status", "err", "finished", "tag", "cancelling",
                 "dir", "hdr", "src", "cur", "sock_obj")  # fmt: skip

    def __init__(self, sock: int, file: int, n: int, off: int, timeout_ms: int, opener: Aead | None) -> None:
        self.sock, self.file, self.n, self.off, self.timeout_ms, self.opener = (
            sock,
            file,
            n,
            off,
            timeout_ms,
            opener,
        )
        self.hashes = bytearray()
        self.slot = self.phase = self.done = self.got = self.want = self.k = self.ud = self.err = 0
        self.deadline = 0.0
        self.cancelling = False
        self.dir = _RECV
        self.hdr = self.src = self.cur = memoryview(b"")
        self.sock_obj: socket.socket | None = None
        self.status = _OK
        self.finished = threading.Event()
        self.tag = bytearray(16)


class Pump:
    """The pump of rules 9-11; its loop thread runs a _PumpCore, which holds no reference to this
    object, so a pump dropped without close() is closed when it is collected (as the native one)."""

    def __init__(self, kind: str, slots: int = 16, block: int = 1 << 20, register: bool = True) -> None:
        self._core = _PumpCore(kind, slots, block, register)
        self.kind = kind

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def native_id(self) -> int:
        return self._core._thread.native_id or 0

    def info(self) -> dict:
        return self._core.info()

    def close(self) -> None:
        self._core.close()

    def recv_blocks(self, sock_fd: int, n: int, file_fd: int, file_off: int, timeout_ms: int = -1,
                    opener: Aead | None = None) -> tuple[int, bytes, int]:  # fmt: skip
        return self._core.recv_blocks(sock_fd, n, file_fd, file_off, timeout_ms, opener)

    def send(self, sock_fd: int, header, payload, timeout_ms: int = -1, sealer: Aead | None = None) -> None:
        self._core.send(sock_fd, header, payload, timeout_ms, sealer)

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None:
            core.close()


class _PumpCore:
    """One Python thread that moves the RAW payloads of every calling stream (rule 9): its "epoll"
    kind waits in a selector, its "uring" kind drives this backend's Ring (dwcp/_ref/uring.py) the way
    pump.h drives the kernel's: one operation in flight per job, a cancel for a wait that times out."""

    def __init__(self, kind: str, slots: int = 16, block: int = 1 << 20, register: bool = True) -> None:
        if kind not in PUMP_KINDS:
            raise ValueError(f"pump kind must be one of {PUMP_KINDS}, got {kind!r}")
        if not 1 <= slots <= 64:
            raise ValueError(f"slots must be in 1..64, got {slots}")
        if not 16 <= block <= 1 << 30:
            raise ValueError(f"block must be in 16..2**30 bytes, got {block}")
        self.kind = kind
        self._nslots, self._block = slots, block
        self._slot_bufs = [bytearray(block) for _ in range(slots)]
        self._slots = [memoryview(b) for b in self._slot_bufs]
        self._free = list(range(slots))
        self._gen = [0] * slots
        self._active: dict[int, _Job] = {}
        self._incoming: list[_Job] = []
        self._cv = threading.Condition()
        self._stop = False
        self._closed = False
        self._jobs = self._bytes = self._ops = self._wakeups = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_buf = bytearray(64)
        self._ring = None
        self._sel: selectors.BaseSelector | None = None
        if kind == "uring":
            from dwcp._ref.uring import Ring

            self._ring = Ring(2 * slots + 8)
        else:
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._main, name=f"dwcp-pump-{kind}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def info(self) -> dict:
        if self._closed:
            return {"kind": self.kind, "closed": True}
        with self._cv:
            return {"kind": self.kind, "slots": self._nslots, "block": self._block, "registered": False,
                    "register_errno": 0, "jobs": self._jobs, "bytes": self._bytes, "ops": self._ops,
                    "wakeups": self._wakeups}  # fmt: skip

    def close(self) -> None:
        if self._closed:
            return
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._wake()
        self._thread.join()
        self._closed = True
        if self._ring is not None:
            self._ring.close()
        if self._sel is not None:
            self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"w", socket.MSG_DONTWAIT)
        except OSError:
            pass  # the pipe is full: a wake-up is already pending

    # -- callers -----------------------------------------------------------------------------------
    def recv_blocks(self, sock_fd: int, n: int, file_fd: int, file_off: int, timeout_ms: int = -1,
                    opener: Aead | None = None) -> tuple[int, bytes, int]:  # fmt: skip
        if n < 0 or file_off < 0:
            raise ValueError(f"n and file_off must be >= 0, got {n} and {file_off}")
        if opener is not None and opener.sealing:
            raise ValueError("recv_blocks needs an opening Aead")
        rec = opener.counter if opener is not None else 0
        j = _Job(sock_fd, file_fd, n, file_off, timeout_ms, opener)
        self._submit(j)
        st, done, hashes = j.status, j.done, bytes(j.hashes)
        if st == _FORGED:
            raise ForgedRecordError(f"sealed record {rec} ({n} bytes) failed authentication: forged, altered "
                                    f"or out of order", ERR_FORGED)  # fmt: skip
        if st == _TAG_CUT:
            raise BrokenResourceError(f"peer closed the connection inside sealed record {rec}'s tag ({n} bytes "
                                      f"of payload received)")  # fmt: skip
        if st == _CLOSED:
            raise ClosedResourceError(f"the {self.kind} pump closed ({done} of {n} payload bytes received)")
        if st == _EOF:
            return done, hashes, 0
        if st == _TIMEOUT:
            raise TimeoutError(f"no payload bytes for {timeout_ms / 1000} s ({done} of {n} received)")
        if st == _SOCK:
            raise OSError(j.err, f"{os.strerror(j.err)} ({done} of {n} payload bytes received)")
        if st == _FILE:
            raise StorageError(f"{os.strerror(j.err)} (writing at offset {file_off + done})")
        return done, hashes, xxhash.xxh3_64_intdigest(hashes)

    def send(self, sock_fd: int, header, payload, timeout_ms: int = -1, sealer: Aead | None = None) -> None:
        if sealer is not None and not sealer.sealing:
            raise ValueError("send needs a sealing Aead")
        hdr, src = memoryview(header).cast("B"), memoryview(payload).cast("B")
        n = src.nbytes
        j = _Job(sock_fd, -1, n, 0, timeout_ms, sealer)
        j.dir, j.hdr, j.src = _SEND, hdr, src
        self._submit(j)
        st, done = j.status, j.done
        if st == _CLOSED:
            raise ClosedResourceError(f"the {self.kind} pump closed ({done} of {n} payload bytes sent)")
        if st == _TIMEOUT:
            raise TimeoutError(f"the socket took no byte for {timeout_ms / 1000} s ({done} of {n} sent)")
        if st == _SOCK:
            raise OSError(j.err, f"{os.strerror(j.err)} ({done} of {n} payload bytes sent)")

    def _submit(self, j: _Job) -> None:
        with self._cv:
            while not self._stop and not self._free:
                self._cv.wait()
            if self._stop:
                raise ClosedResourceError(f"the {self.kind} pump is closed")
            j.slot = self._free.pop(0)
            self._incoming.append(j)
        self._wake()
        j.finished.wait()

    # -- the loop thread: a send's steps --------------------------------------------------------------
    def _begin_send(self, j: _Job) -> bool:
        """Set a send up; True when it is already finished."""
        self._active[j.slot] = j
        self._gen[j.slot] = (self._gen[j.slot] + 1) & 0xFFFF
        self._touch(j)
        j.sock_obj = _sock_of(j.sock)  # detached at the end: the caller's descriptor
        if j.opener is not None:
            j.opener._begin()
        j.phase, j.cur, j.got, j.want = _SP_HDR, j.hdr, 0, j.hdr.nbytes
        while j.got == j.want:
            if self._send_next(j):
                return True
        return False

    def _seal_block(self, j: _Job) -> None:
        assert j.opener is not None
        j.want = min(self._block, j.n - j.done)
        buf = self._slot_bufs[j.slot]
        buf[: j.want] = j.src[j.done : j.done + j.want]
        j.opener._update(buf, 0, j.want)
        j.cur, j.got = self._slots[j.slot], 0

    def _seal_tag(self, j: _Job) -> None:
        assert j.opener is not None
        if not j.opener._finish(j.tag):
            raise RuntimeError("EVP failed to seal a record")
        j.phase, j.cur, j.got, j.want = _SP_TAG, memoryview(j.tag), 0, 16

    def _send_next(self, j: _Job) -> bool:
        """The current piece is sent: the next; True when the job finished."""
        if j.phase == _SP_HDR:
            if j.opener is None:
                if j.n:
                    j.phase, j.cur, j.got, j.want = _SP_PLAIN, j.src, 0, j.n
                    return False
            elif j.n:
                j.phase = _SP_SEALED
                self._seal_block(j)
                return False
            else:
                self._seal_tag(j)
                return False
        elif j.phase == _SP_PLAIN:
            j.done = j.n
        elif j.phase == _SP_SEALED:
            j.done += j.want  # the kernel has the block: the slot may be sealed over
            if j.done < j.n:
                self._seal_block(j)
            else:
                self._seal_tag(j)
            return False
        self._finish(j, _OK)
        return True

    def _sent(self, j: _Job, r: int) -> bool:
        """``r`` more bytes went: True when the job finished."""
        self._moved(j, r)
        while j.got == j.want:
            if self._send_next(j):
                return True
        return False

    def _send_failed(self, j: _Job, status: int, err: int = 0) -> None:
        if j.phase == _SP_PLAIN:
            j.done = j.got
        self._finish(j, status, err)

    # -- the loop thread: one job's steps ------------------------------------------------------------
    def _finish(self, j: _Job, status: int, err: int = 0) -> None:
        if self._sel is not None:
            try:
                self._sel.unregister(j.sock)
            except (KeyError, ValueError, OSError):
                pass
        self._active.pop(j.slot, None)
        if j.sock_obj is not None:
            j.sock_obj.detach()
            j.sock_obj = None
        with self._cv:
            j.status, j.err = status, err
            self._free.append(j.slot)
            self._jobs += 1
            self._cv.notify_all()
        j.finished.set()

    def _moved(self, j: _Job, r: int) -> None:
        """``r`` more bytes of the current piece moved: progress (the deadline starts again)."""
        j.got += r
        j.cancelling = False
        with self._cv:
            self._bytes += r
            self._ops += 1
        self._touch(j)

    def _touch(self, j: _Job) -> None:
        j.deadline = 0.0 if j.timeout_ms < 0 else time.monotonic() + j.timeout_ms / 1000

    def _begin(self, j: _Job) -> bool:
        """Set the job up; True when it is already finished (an empty payload)."""
        j.want = min(j.n, self._block)
        self._active[j.slot] = j
        self._gen[j.slot] = (self._gen[j.slot] + 1) & 0xFFFF
        self._touch(j)
        if j.opener is not None:
            j.opener._begin()
        if j.n == 0:
            if j.opener is None:
                self._finish(j, _OK)
                return True
            j.phase, j.want = 2, 16
        return False

    def _buf(self, j: _Job) -> memoryview:
        return memoryview(j.tag) if j.phase == 2 else self._slots[j.slot]

    def _received(self, j: _Job, r: int) -> bool:
        """``r`` more bytes of the current block or tag arrived: True when the block is ready to write
        (phase 0), or the job finished (the tag)."""
        self._moved(j, r)
        if j.got < j.want:
            return False
        if j.phase == 2:
            assert j.opener is not None
            self._finish(j, _OK if j.opener._finish(j.tag) else _FORGED)
            return True
        sp = self._slots[j.slot][: j.want]
        if j.opener is not None:
            work = bytearray(sp)
            j.opener._update(work, 0, j.want)
            sp[:] = work
        j.hashes += xxhash.xxh3_128_digest(sp)
        j.k += 1
        return True

    def _next(self, j: _Job) -> bool:
        """The block is written: the next block or the tag; True when the job finished."""
        j.done += j.want
        j.got = 0
        if j.done < j.n:
            j.want = min(self._block, j.n - j.done)
            return False
        if j.opener is not None and j.phase == 0:
            j.phase, j.want = 2, 16
            return False
        self._finish(j, _OK)
        return True

    def _closed_by_peer(self, j: _Job) -> None:
        if j.phase == 2:
            self._finish(j, _TAG_CUT)
        else:
            j.done += j.got
            self._finish(j, _EOF)

    def _take_incoming(self) -> list[_Job]:
        with self._cv:
            out, self._incoming = self._incoming, []
            self._wakeups += 1
        return out

    def _timeout_s(self) -> float | None:
        ds = [j.deadline for j in self._active.values() if j.deadline]
        return None if not ds else max(0.0, min(ds) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for j in list(self._active.values()):
            if not j.deadline or now < j.deadline:
                continue
            if self._ring is None:
                if j.dir == _SEND:
                    self._send_failed(j, _TIMEOUT)
                    continue
                if j.phase == 0:
                    j.done += j.got
                self._finish(j, _TIMEOUT)
            elif j.ud & 3 == _UOP_RECV:  # a write is never cancelled: it ends by itself
                self._ring.prep_cancel(j.ud, (j.ud & ~3) | _UOP_CANCEL)
                j.deadline = 0.0  # its -ECANCELED result is the timeout
                j.cancelling = True

    def _main(self) -> None:
        try:
            if self._ring is not None:
                self._uring_loop()
            else:
                self._epoll_loop()
        finally:
            for j in list(self._active.values()):
                if j.dir == _SEND:
                    self._send_failed(j, _CLOSED)
                else:
                    self._finish(j, _CLOSED)
            with self._cv:
                self._stop = True
                left, self._incoming = self._incoming, []
                self._cv.notify_all()
            for j in left:
                j.status = _CLOSED
                j.finished.set()

    # -- epoll -------------------------------------------------------------------------------------
    def _epoll_progress(self, j: _Job) -> None:
        """Read what the socket has (MSG_DONTWAIT: never blocks), as pump.h does."""
        while True:
            try:
                if j.sock_obj is None:
                    j.sock_obj = _sock_of(j.sock)
                buf = self._buf(j)[j.got : j.want]
                r = j.sock_obj.recv_into(buf, len(buf), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if j.phase == 0:
                    j.done += j.got
                self._finish(j, _SOCK, exc.errno or errno.EIO)
                return
            if r == 0:
                self._closed_by_peer(j)
                return
            if not self._received(j, r):
                continue
            if j.phase == 2 or self._active.get(j.slot) is not j:
                return  # the tag finished the job
            _, err = _pwrite_all(j.file, self._slots[j.slot][: j.want], j.off + j.done)
            if err:
                self._finish(j, _FILE, err)
                return
            if self._next(j):
                return

    def _epoll_send(self, j: _Job) -> None:
        sock = j.sock_obj
        assert sock is not None
        while True:
            try:
                r = sock.send(j.cur[j.got : j.want], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._send_failed(j, _SOCK, exc.errno or errno.EPIPE)
                return
            if self._sent(j, r):
                return

    def _epoll_loop(self) -> None:
        sel = self._sel
        assert sel is not None
        while not self._stop:
            for key, _ in sel.select(self._timeout_s()):
                if key.data is None:
                    try:
                        self._wake_r.recv_into(self._wake_buf)
                    except OSError:
                        pass
                    for j in self._take_incoming():
                        try:
                            if self._begin_send(j) if j.dir == _SEND else self._begin(j):
                                continue
                            ev = selectors.EVENT_WRITE if j.dir == _SEND else selectors.EVENT_READ
                            sel.register(j.sock, ev, j)
                        except (KeyError, ValueError, OSError) as exc:
                            self._finish(j, _SOCK, getattr(exc, "errno", None) or errno.EBADF)
                            continue
                        # what is there already is taken now, as pump.h does (a timeout of 0 included)
                        if j.dir == _SEND:
                            self._epoll_send(j)
                        else:
                            self._epoll_progress(j)
                elif key.data.slot in self._active and self._active[key.data.slot] is key.data:
                    if key.data.dir == _SEND:
                        self._epoll_send(key.data)
                    else:
                        self._epoll_progress(key.data)
            self._expire()

    # -- the Ring ------------------------------------------------------------------------------------
    def _ud(self, j: _Job, op: int) -> int:
        return (self._gen[j.slot] << 16) | (j.slot << 2) | op

    def _queue(self, j: _Job, op: int) -> None:
        ring = self._ring
        assert ring is not None
        j.ud = self._ud(j, op)
        if j.dir == _SEND:  # one SEND moves at most MAX_RW_COUNT; the rest goes next
            ring.prep_send(j.sock, j.cur[j.got : min(j.want, j.got + 0x7FFFF000)], socket.MSG_NOSIGNAL, j.ud)
        elif op == _UOP_RECV:
            ring.prep_recv(j.sock, self._buf(j)[j.got : j.want], 0, j.ud)
        else:
            ring.prep_write(j.file, self._slots[j.slot][: j.want], j.off + j.done, j.ud)

    def _uring_loop(self) -> None:
        ring = self._ring
        assert ring is not None
        ring.prep_recv(self._wake_r.fileno(), self._wake_buf, 0, _UD_WAKE)
        while not self._stop:
            t = self._timeout_s()
            ring.submit_and_wait(1, t)
            for ud, res, _flags in ring.reap():
                if ud == _UD_WAKE:
                    for new in self._take_incoming():
                        try:
                            started = not (self._begin_send(new) if new.dir == _SEND else self._begin(new))
                        except OSError as exc:
                            self._finish(new, _SOCK, exc.errno or errno.EBADF)
                            continue
                        if started:
                            self._queue(new, _UOP_RECV)
                    ring.prep_recv(self._wake_r.fileno(), self._wake_buf, 0, _UD_WAKE)
                    continue
                j = self._active.get((ud >> 2) & 0x3FFF)
                if ud & 3 == _UOP_CANCEL or j is None or j.ud != ud:
                    continue  # a cancel's own result, or a stale one
                if j.dir == _SEND:
                    if res == -errno.ECANCELED and j.cancelling:
                        self._send_failed(j, _TIMEOUT)
                    elif res <= 0:
                        self._send_failed(j, _SOCK, -res if res < 0 else errno.EPIPE)
                    elif not self._sent(j, res):
                        self._queue(j, _UOP_RECV)
                    continue
                if ud & 3 == _UOP_RECV:
                    if res == -errno.ECANCELED and j.cancelling:
                        if j.phase == 0:
                            j.done += j.got
                        self._finish(j, _TIMEOUT)
                    elif res < 0:
                        if j.phase == 0:
                            j.done += j.got
                        self._finish(j, _SOCK, -res)
                    elif res == 0:
                        self._closed_by_peer(j)
                    elif self._received(j, res) and j.phase == 0 and self._active.get(j.slot) is j:
                        self._queue(j, _UOP_WRITE)
                    elif self._active.get(j.slot) is j:
                        self._queue(j, _UOP_RECV)
                elif res <= 0:
                    self._finish(j, _FILE, -res if res < 0 else errno.ENOSPC)
                elif res < j.want:
                    # a short write: the rest, from where it stopped
                    mv = self._slots[j.slot][res : j.want]
                    _, err = _pwrite_all(j.file, mv, j.off + j.done + res)
                    if err:
                        self._finish(j, _FILE, err)
                    elif not self._next(j):
                        self._queue(j, _UOP_RECV)
                elif not self._next(j):
                    self._queue(j, _UOP_RECV)
            self._expire()


def _sock_of(fd: int) -> socket.socket:
    """A socket object over the caller's ``fd`` (detached, never closed, when the job ends)."""
    if fd < 0:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return socket.socket(fileno=fd)
