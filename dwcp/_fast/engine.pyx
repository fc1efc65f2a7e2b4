# cython: language_level=3
"""The receive kernel of the data plane: socket -> slot -> file, hashed in cache, GIL released.

Theory of operation
-------------------
A plaintext RAW chunk's payload is received ``block`` bytes at a time into
one reusable slot (1 MiB: it stays in the CPU cache), each block is hashed
(xxh3-128) right after it lands and written to the file right after that, so
every payload byte is touched once by the kernel's copy out of the socket,
once by the hash and once by the kernel's copy into the file -- and never by
Python.  The block hashes are the chunk's hash (the xxh3-64 of their
concatenation, dwcp/wire/consts.py) and, for a leaf-aligned chunk, the
object's tree leaves (dwcp/digest.py): nothing reads the chunk again.

Pure-Python twin: dwcp/_ref/engine.py (the oracle and the fallback).

Rules
-----
1. ``recv_blocks(sock_fd, slot, n, file_fd, file_off, timeout_ms, block)``
   returns ``(received, block_hashes, chunk_hash)``.  ``received < n`` means
   the peer closed the connection after ``received`` bytes; then
   ``block_hashes`` covers the whole blocks received and ``chunk_hash`` is 0.
2. The socket may be blocking or not: every read is MSG_DONTWAIT and waits
   in poll(2).  ``timeout_ms`` bounds each wait for the *next* byte (as a
   socket timeout does); -1 waits forever.  A wait that runs out raises
   TimeoutError; a socket error raises OSError with its errno.
3. A failed write of the file raises StorageError (the file's side, not the
   peer's: a full disk ends the transfer, a broken stream only the stream).
4. Bytes are written before the chunk is verified -- the caller marks the
   chunk done only when ``chunk_hash`` matches, and a chunk not marked is
   received again in full (RAW chunks are written whole).
"""

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

from dwcp.errors import StorageError

__all__ = ["recv_blocks"]

cdef extern from "<sys/types.h>":
    ctypedef long off_t
    ctypedef long ssize_t

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int MSG_DONTWAIT

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset)

from .xxh cimport XXH3_64bits, XXH3_128bits, XXH128_canonical_t, XXH128_canonicalFromHash

cdef enum:
    ST_OK = 0
    ST_EOF = 1
    ST_TIMEOUT = 2
    ST_SOCK = 3
    ST_FILE = 4


def recv_blocks(int sock_fd, uint8_t[::1] slot, Py_ssize_t n, int file_fd, int64_t file_off,
                int timeout_ms=-1, Py_ssize_t block=1048576):
    if n < 0 or file_off < 0:
        raise ValueError(f"n and file_off must be >= 0, got {n} and {file_off}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    if n and slot.shape[0] < (block if block < n else n):
        raise ValueError(f"the slot holds {slot.shape[0]} bytes; a block needs {min(block, n)}")
    cdef Py_ssize_t nblocks = (n + block - 1) // block
    hashes = bytearray(nblocks * 16)
    cdef uint8_t[::1] hv = hashes
    cdef uint8_t *hp = &hv[0] if nblocks else NULL
    cdef uint8_t *sp = &slot[0] if n else NULL
    cdef Py_ssize_t done = 0, want, got, k = 0, w
    cdef ssize_t r
    cdef int status = ST_OK, err = 0, pr
    cdef pollfd pfd
    cdef XXH128_canonical_t c
    cdef uint64_t chash = 0
    pfd.fd = sock_fd
    pfd.events = POLLIN
    with nogil:
        while done < n and status == ST_OK:
            want = block if n - done > block else n - done
            got = 0
            while got < want:
                r = recv(sock_fd, sp + got, want - got, MSG_DONTWAIT)
                if r > 0:
                    got += r
                    continue
                if r == 0:
                    status = ST_EOF
                    break
                if errno == EINTR:
                    continue
                if errno != EAGAIN:  # == EWOULDBLOCK on Linux
                    status, err = ST_SOCK, errno
                    break
                pfd.revents = 0
                pr = poll(&pfd, 1, timeout_ms)
                if pr == 0:
                    status = ST_TIMEOUT
                    break
                if pr < 0 and errno != EINTR:
                    status, err = ST_SOCK, errno
                    break
            if status != ST_OK:
                done += got
                break
            XXH128_canonicalFromHash(&c, XXH3_128bits(sp, want))
            memcpy(hp + k * 16, c.digest, 16)
            k += 1
            w = 0
            while w < want:
                r = pwrite(file_fd, sp + w, want - w, file_off + done + w)
                if r < 0:
                    if errno == EINTR:
                        continue
                    status, err = ST_FILE, errno
                    break
                if r == 0:
                    status, err = ST_FILE, 28  # ENOSPC: a write that makes no progress
                    break
                w += r
            if status != ST_OK:
                break
            done += want
        if status == ST_OK:
            chash = XXH3_64bits(hp, k * 16)
    if status == ST_TIMEOUT:
        raise TimeoutError(f"no payload bytes for {timeout_ms / 1000} s ({done} of {n} received)")
    if status == ST_SOCK:
        raise OSError(err, f"{__import__('os').strerror(err)} ({done} of {n} payload bytes received)")
    if status == ST_FILE:
        raise StorageError(f"{__import__('os').strerror(err)} (writing at offset {file_off + done})")
    return done, bytes(hashes[: k * 16]), chash
