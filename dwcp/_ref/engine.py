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

import xxhash

from dwcp.errors import BrokenResourceError, ForgedRecordError, StorageError
from dwcp.wire.consts import ERR_FORGED

__all__ = [
    "recv_blocks",
    "send_sealed",
    "write_pages",
    "Aead",
    "aead_load",
    "AEAD_TAG_BYTES",
    "AEAD_KEY_BYTES",
]

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


def _pwrite_all(fd: int, mv: memoryview, off: int) -> tuple[int, str | None]:
    """(bytes written, None), or (bytes written before it failed, the reason); a write that makes no
    progress is ENOSPC (the kernel's _pwrite_all)."""
    w = 0
    while w < mv.nbytes:
        try:
            r = os.pwrite(fd, mv[w:], off + w)
        except InterruptedError:
            continue
        except OSError as exc:
            return w, exc.strerror or str(exc)
        if r == 0:
            return w, os.strerror(errno.ENOSPC)
        w += r
    return w, None


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
        _, why = _pwrite_all(file_fd, sp[:want], file_off + done)
        if why:
            raise StorageError(f"{why} (writing at offset {file_off + done})")
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
        w, why = _pwrite_all(file_fd, mv[a:b], file_off + a)
        if why:
            raise StorageError(f"{why} (writing at offset {file_off + a + w})")
        total += w
        i = j
    return total
