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

The same kernels carry a data stream's sealed records (dwcp.security.aead):
``Aead`` is one direction of one connection, AES-256-GCM through the
process's own libcrypto (dwcp/_fast/aead.h: dlopen, no OpenSSL headers at
build time); ``recv_blocks`` with an ``opener`` decrypts each block in place
before it is hashed and written, and checks the record's tag at the end;
``send_sealed`` encrypts a payload a block at a time into a slot and sends
it from there.

Pure-Python twin: dwcp/_ref/engine.py (the oracle and the fallback; its Aead
calls the same libcrypto through ctypes).

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
5. With ``opener``, the wire carries ``n`` bytes of ciphertext then the
   16-byte tag (one record); a tag that does not verify raises
   ForgedRecordError after the bytes were written (rule 4 holds: the chunk
   is not marked, and the stream must be dropped).  A peer that closes
   after the ciphertext, before the whole tag, raises BrokenResourceError
   (every payload byte came, the record did not).
6. ``Aead(key, seal)``: ``seal(data)`` returns ciphertext + tag of the next
   record; ``open_into(buf, tag)`` decrypts ``buf`` in place and raises
   ForgedRecordError unless ``tag`` verifies.  Records are numbered per
   object (the nonce); one thread uses an Aead at a time.
7. ``send_sealed(sock_fd, sealer, payload, slot, timeout_ms)`` sends
   ``payload`` as one sealed record; TimeoutError when the socket takes no
   byte for ``timeout_ms``, OSError on a socket error.
8. ``write_pages(file_fd, file_off, data, flags, page_size)`` writes the
   pages of ``data`` whose byte in ``flags`` is non-zero, one pwrite per run
   of them, at ``file_off`` + their offset; returns the bytes written.  The
   other pages of the file are left as they are (a sparse .part's holes, a
   seeded .part's baseline).  StorageError on a failed write.
9. ``Pump(kind, slots=16, block=1 MiB, register=True)`` is one loop thread (dwcp/_fast/pump.h)
   that moves the RAW payloads of every stream that calls its
   ``recv_blocks(sock_fd, n, file_fd, file_off, timeout_ms=-1, opener=None)``:
   ``kind`` "uring" (io_uring: RECV into a slot, WRITE_FIXED from it) or
   "epoll" (epoll + recv + pwrite).  A call returns and raises exactly as
   the module's ``recv_blocks`` with ``block`` = the pump's (rules 1-5);
   it takes one of the pump's ``slots`` for its duration and waits for one
   when all are taken.  A socket carries one job (receive or send) at a
   time.  The calling thread sleeps without the GIL; the
   bytes never leave the loop thread.  ``Pump("uring")`` raises OSError
   where the kernel refuses io_uring or lacks an opcode the loop uses;
   ``register=False`` leaves the io_uring slots unregistered (plain WRITE).
10. ``Pump.close()`` stops the loop; a call still running, or made after,
    raises ClosedResourceError.  ``native_id`` is the loop thread's kernel
    id (for its CPU affinity).  ``info()`` is a dict: kind, slots, block,
    registered (io_uring slots are registered buffers), register_errno,
    jobs, bytes, ops (recv completions), wakeups.
11. ``Pump.send(sock_fd, header, payload, timeout_ms=-1, sealer=None)``
    sends ``header`` as it is, then ``payload``: from the caller's buffer
    (plain), or with a ``sealer`` as one sealed record, a block at a time
    sealed into the job's slot and sent from it (a slot is sealed over only
    once the kernel has taken its previous block).  It returns when the
    socket has taken every byte; TimeoutError when it takes none for
    ``timeout_ms``, OSError on a socket error (both: "done of n sent").
"""

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

from .xxh cimport XXH3_64bits, XXH3_128bits, XXH128_canonical_t, XXH128_canonicalFromHash

from os import strerror

from dwcp.errors import BrokenResourceError, ClosedResourceError, ForgedRecordError, StorageError
from dwcp.wire.consts import ERR_FORGED

__all__ = ["recv_blocks", "send_sealed", "write_pages", "Aead", "aead_load", "AEAD_TAG_BYTES", "AEAD_KEY_BYTES",
           "Pump", "PUMP_KINDS"]

PUMP_KINDS = ("uring", "epoll")

AEAD_TAG_BYTES = 16
AEAD_KEY_BYTES = 32

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

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL

cdef extern from "<poll.h>" nogil:
    short POLLOUT

cdef extern from "aead.h" nogil:
    ctypedef struct dwcp_aead:
        uint64_t counter
    int dwcp_aead_load(const char *path)
    int dwcp_aead_init(dwcp_aead *a, const unsigned char *key, int enc)
    void dwcp_aead_clear(dwcp_aead *a)
    int dwcp_aead_begin(dwcp_aead *a, const unsigned char *aad, size_t aadlen)
    int dwcp_aead_update(dwcp_aead *a, unsigned char *out, const unsigned char *inp, size_t n)
    int dwcp_aead_finish(dwcp_aead *a, unsigned char *tag)

cdef enum:
    ST_OK = 0
    ST_EOF = 1
    ST_TIMEOUT = 2
    ST_SOCK = 3
    ST_FILE = 4
    ST_FORGED = 5
    ST_TAG_CUT = 6
    ST_CLOSED = 7
    ST_EVP = 8


cdef bint _loaded = False


def aead_load(str path):
    """Resolve AES-256-GCM in the libcrypto at ``path`` (the one Python's ssl module uses).  True once
    loaded; False if the library or one of its EVP functions is missing (then Aead cannot be made)."""
    global _loaded
    if not _loaded:
        _loaded = dwcp_aead_load(path.encode()) == 0
    return bool(_loaded)


cdef class Aead:
    """One direction of one connection: a key and its record counter (rule 6)."""

    cdef dwcp_aead a
    cdef readonly bint sealing

    def __cinit__(self, const uint8_t[::1] key, bint seal):
        if not _loaded:
            raise RuntimeError("AES-GCM is not loaded: call aead_load first")
        if key.shape[0] != AEAD_KEY_BYTES:
            raise ValueError(f"an AES-256-GCM key has {AEAD_KEY_BYTES} bytes, got {key.shape[0]}")
        self.sealing = seal
        if dwcp_aead_init(&self.a, &key[0], 1 if seal else 0) != 0:
            dwcp_aead_clear(&self.a)
            raise RuntimeError("EVP could not set up AES-256-GCM")

    def __dealloc__(self):
        dwcp_aead_clear(&self.a)

    @property
    def counter(self):
        """The next record's number."""
        return self.a.counter

    def seal(self, const uint8_t[::1] data):
        """Ciphertext and tag of the next record."""
        if not self.sealing:
            raise ValueError("this Aead opens records; it cannot seal")
        cdef Py_ssize_t n = data.shape[0]
        out = bytearray(n + AEAD_TAG_BYTES)
        cdef uint8_t[::1] o = out
        cdef int rc
        with nogil:
            rc = dwcp_aead_begin(&self.a, NULL, 0)
            if rc == 0 and n:
                rc = dwcp_aead_update(&self.a, &o[0], &data[0], n)
            if rc == 0:
                rc = dwcp_aead_finish(&self.a, &o[n])
        if rc != 0:
            raise RuntimeError("EVP failed to seal a record")
        return bytes(out)

    def open_into(self, uint8_t[::1] buf, const uint8_t[::1] tag):
        """Decrypt ``buf`` (the next record's ciphertext) in place; ForgedRecordError unless ``tag``
        verifies (``buf`` then holds garbage)."""
        if self.sealing:
            raise ValueError("this Aead seals records; it cannot open")
        if tag.shape[0] != AEAD_TAG_BYTES:
            raise ValueError(f"a tag has {AEAD_TAG_BYTES} bytes, got {tag.shape[0]}")
        cdef Py_ssize_t n = buf.shape[0]
        cdef uint64_t rec = self.a.counter
        cdef int rc
        cdef uint8_t t[16]
        memcpy(t, &tag[0], 16)
        with nogil:
            rc = dwcp_aead_begin(&self.a, NULL, 0)
            if rc == 0 and n:
                rc = dwcp_aead_update(&self.a, &buf[0], &buf[0], n)
            if rc == 0:
                rc = dwcp_aead_finish(&self.a, t)
        if rc != 0:
            raise ForgedRecordError(f"sealed record {rec} ({n} bytes) failed authentication: forged, altered "
                                    f"or out of order", ERR_FORGED)


cdef int _wait(int fd, short events, int timeout_ms, int *err) noexcept nogil:
    """ST_OK when ready, ST_TIMEOUT, or ST_SOCK (``err`` set)."""
    cdef pollfd pfd
    cdef int pr
    pfd.fd = fd
    pfd.events = events
    while True:
        pfd.revents = 0
        pr = poll(&pfd, 1, timeout_ms)
        if pr > 0:
            return ST_OK
        if pr == 0:
            return ST_TIMEOUT
        if errno != EINTR:
            err[0] = errno
            return ST_SOCK


cdef Py_ssize_t _pwrite_all(int fd, const uint8_t *p, Py_ssize_t n, int64_t off, int *err) noexcept nogil:
    """Write ``n`` bytes at ``off``; returns how many were written (fewer: ``err`` says why; a write that
    makes no progress is ENOSPC)."""
    cdef Py_ssize_t w = 0
    cdef ssize_t r
    while w < n:
        r = pwrite(fd, p + w, n - w, off + w)
        if r < 0:
            if errno == EINTR:
                continue
            err[0] = errno
            break
        if r == 0:
            err[0] = 28  # ENOSPC
            break
        w += r
    return w


cdef int _send_all(int fd, const uint8_t *p, Py_ssize_t n, int timeout_ms, int *err) noexcept nogil:
    """ST_OK, ST_TIMEOUT or ST_SOCK (``err`` set)."""
    cdef ssize_t r
    cdef int w
    while n > 0:
        r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
        if r > 0:
            p += r
            n -= r
            continue
        if r < 0 and errno == EINTR:
            continue
        if r < 0 and errno != EAGAIN:
            err[0] = errno
            return ST_SOCK
        w = _wait(fd, POLLOUT, timeout_ms, err)
        if w != ST_OK:
            return w
    return ST_OK


def send_sealed(int sock_fd, Aead sealer, const uint8_t[::1] payload, uint8_t[::1] slot, int timeout_ms=-1):
    if not sealer.sealing:
        raise ValueError("send_sealed needs a sealing Aead")
    cdef Py_ssize_t n = payload.shape[0], block = slot.shape[0], done = 0, k
    if n and block < 1:
        raise ValueError("the slot is empty")
    cdef const uint8_t *pp = &payload[0] if n else NULL
    cdef uint8_t *sp = &slot[0] if block else NULL
    cdef uint8_t tag[16]
    cdef int status = ST_OK, err = 0, rc
    with nogil:
        rc = dwcp_aead_begin(&sealer.a, NULL, 0)
        while rc == 0 and done < n:
            k = block if n - done > block else n - done
            rc = dwcp_aead_update(&sealer.a, sp, pp + done, k)
            if rc != 0:
                break
            status = _send_all(sock_fd, sp, k, timeout_ms, &err)
            if status != ST_OK:
                break
            done += k
        if rc == 0 and status == ST_OK:
            rc = dwcp_aead_finish(&sealer.a, tag)
            if rc == 0:
                status = _send_all(sock_fd, tag, 16, timeout_ms, &err)
    if rc != 0:
        raise RuntimeError("EVP failed to seal a record")
    if status == ST_TIMEOUT:
        raise TimeoutError(f"the socket took no byte for {timeout_ms / 1000} s ({done} of {n} sent)")
    if status == ST_SOCK:
        raise OSError(err, f"{strerror(err)} ({done} of {n} payload bytes sent)")

cdef int _recv_all(int fd, uint8_t *p, Py_ssize_t want, int timeout_ms, Py_ssize_t *got, int *err) noexcept nogil:
    """ST_OK, ST_EOF, ST_TIMEOUT or ST_SOCK (``err`` set); ``got`` counts what arrived."""
    cdef ssize_t r
    cdef int w
    while got[0] < want:
        r = recv(fd, p + got[0], want - got[0], MSG_DONTWAIT)
        if r > 0:
            got[0] += r
            continue
        if r == 0:
            return ST_EOF
        if errno == EINTR:
            continue
        if errno != EAGAIN:  # == EWOULDBLOCK on Linux
            err[0] = errno
            return ST_SOCK
        w = _wait(fd, POLLIN, timeout_ms, err)
        if w != ST_OK:
            return w
    return ST_OK


def recv_blocks(int sock_fd, uint8_t[::1] slot, Py_ssize_t n, int file_fd, int64_t file_off,
                int timeout_ms=-1, Py_ssize_t block=1048576, Aead opener=None):
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
    if opener is not None and opener.sealing:
        raise ValueError("recv_blocks needs an opening Aead")
    cdef Py_ssize_t done = 0, want, got, k = 0
    cdef int status = ST_OK, err = 0, rc = 0
    cdef XXH128_canonical_t c
    cdef uint64_t chash = 0
    cdef uint64_t rec = 0
    cdef dwcp_aead *a = NULL
    cdef uint8_t tag[16]
    if opener is not None:
        a = &opener.a
        rec = a.counter
    with nogil:
        if a != NULL:
            rc = dwcp_aead_begin(a, NULL, 0)
        while rc == 0 and done < n and status == ST_OK:
            want = block if n - done > block else n - done
            got = 0
            status = _recv_all(sock_fd, sp, want, timeout_ms, &got, &err)
            if status != ST_OK:
                done += got
                break
            if a != NULL:
                rc = dwcp_aead_update(a, sp, sp, want)
                if rc != 0:
                    break
            XXH128_canonicalFromHash(&c, XXH3_128bits(sp, want))
            memcpy(hp + k * 16, c.digest, 16)
            k += 1
            if _pwrite_all(file_fd, sp, want, file_off + done, &err) < want:
                status = ST_FILE
                break
            done += want
        if rc == 0 and status == ST_OK and a != NULL:
            got = 0
            status = _recv_all(sock_fd, tag, 16, timeout_ms, &got, &err)
            if status == ST_EOF:
                status = ST_TAG_CUT
            elif status == ST_OK:
                rc = dwcp_aead_finish(a, tag)
                if rc != 0:
                    status = ST_FORGED
        if status == ST_OK and rc == 0:
            chash = XXH3_64bits(hp, k * 16)
    if rc != 0 and status != ST_FORGED:
        status = ST_EVP
    return _received(status, err, done, n, hashes[: k * 16], chash, file_off, timeout_ms, rec, None)


def _received(int status, int err, Py_ssize_t done, Py_ssize_t n, hashes, uint64_t chash, int64_t file_off,
              int timeout_ms, uint64_t rec, str pump):
    """What a receive (rules 1-5, 9) returns or raises for its ``status``."""
    if status == ST_EVP:
        raise RuntimeError("EVP failed to open a record")
    if status == ST_FORGED:
        raise ForgedRecordError(f"sealed record {rec} ({n} bytes) failed authentication: forged, altered "
                                f"or out of order", ERR_FORGED)
    if status == ST_TAG_CUT:
        raise BrokenResourceError(f"peer closed the connection inside sealed record {rec}'s tag ({n} bytes "
                                  f"of payload received)")
    if status == ST_CLOSED:
        raise ClosedResourceError(f"the {pump} pump closed ({done} of {n} payload bytes received)")
    if status == ST_EOF:
        return done, bytes(hashes), 0
    if status == ST_TIMEOUT:
        raise TimeoutError(f"no payload bytes for {timeout_ms / 1000} s ({done} of {n} received)")
    if status == ST_SOCK:
        raise OSError(err, f"{strerror(err)} ({done} of {n} payload bytes received)")
    if status == ST_FILE:
        raise StorageError(f"{strerror(err)} (writing at offset {file_off + done})")
    return done, bytes(hashes), chash


def write_pages(int file_fd, int64_t file_off, const uint8_t[::1] data, const uint8_t[::1] flags,
                Py_ssize_t page_size=4096):
    if page_size <= 0 or file_off < 0:
        raise ValueError(f"page_size must be positive and file_off >= 0, got {page_size} and {file_off}")
    cdef Py_ssize_t n = data.shape[0], npages = (n + page_size - 1) // page_size
    if flags.shape[0] != npages:
        raise ValueError(f"{flags.shape[0]} page flags for {npages} pages")
    cdef const uint8_t *dp = &data[0] if n else NULL
    cdef const uint8_t *fp = &flags[0] if npages else NULL
    cdef Py_ssize_t i = 0, j, a = 0, b, w = 0, total = 0
    cdef int err = 0
    with nogil:
        while i < npages and err == 0:
            if not fp[i]:
                i += 1
                continue
            j = i
            while j < npages and fp[j]:
                j += 1
            a = i * page_size
            b = j * page_size if j * page_size < n else n
            w = _pwrite_all(file_fd, dp + a, b - a, file_off + a, &err)
            total += w
            i = j
    if err:
        raise StorageError(f"{strerror(err)} (writing at offset {file_off + a + w})")
    return total


cdef extern from "pump.h" nogil:
    ctypedef struct dwcp_pjob:
        int sock, file, timeout_ms, dir
        const uint8_t *hdr
        const uint8_t *src
        int64_t hlen
        int64_t n, off
        dwcp_aead *a
        uint8_t *hashes
        int64_t done, k
        int status, err
    ctypedef struct dwcp_pump:
        int kind, nslots, registered, register_err
        long tid
        size_t block
        uint64_t jobs, bytes, wakeups, ops
    int DWCP_PK_EPOLL, DWCP_PK_URING, DWCP_PUMP_MAX, DWCP_DIR_SEND
    int dwcp_pump_start(dwcp_pump *p, int kind, int nslots, size_t block, int do_register)
    void dwcp_pump_run(dwcp_pump *p, dwcp_pjob *j)
    void dwcp_pump_stop(dwcp_pump *p)
    void dwcp_pump_free(dwcp_pump *p)


cdef class Pump:
    cdef dwcp_pump p
    cdef bint started
    cdef readonly str kind
    cdef object _lock
    cdef int _running

    def __cinit__(self, str kind, int slots=16, Py_ssize_t block=1048576, bint register=True):
        if kind not in PUMP_KINDS:
            raise ValueError(f"pump kind must be one of {PUMP_KINDS}, got {kind!r}")
        if not 1 <= slots <= DWCP_PUMP_MAX:
            raise ValueError(f"slots must be in 1..{DWCP_PUMP_MAX}, got {slots}")
        if not 16 <= block <= (1 << 30):
            raise ValueError(f"block must be in 16..2**30 bytes, got {block}")
        cdef int k = DWCP_PK_URING if kind == "uring" else DWCP_PK_EPOLL
        cdef int rc
        with nogil:
            rc = dwcp_pump_start(&self.p, k, slots, <size_t>block, register)
        if rc < 0:
            raise OSError(-rc, f"cannot start the {kind} pump: {strerror(-rc)}")
        self.started = True
        self.kind = kind
        import threading
        self._lock = threading.Lock()
        self._running = 0

    def __dealloc__(self):
        # a running call holds a reference: none is left here
        if self.started:
            with nogil:
                dwcp_pump_free(&self.p)
            self.started = False

    def close(self):
        if not self.started:
            return
        with nogil:
            dwcp_pump_stop(&self.p)
        # the loop has ended every job; its callers still wake and leave the pump's lock: wait for them
        import time
        while True:
            with self._lock:
                if self._running == 0:
                    self.started = False
                    break
            time.sleep(0.001)
        with nogil:
            dwcp_pump_free(&self.p)

    @property
    def closed(self):
        return not self.started

    @property
    def native_id(self):
        """The loop thread's kernel thread id (os.sched_setaffinity takes it)."""
        return self.p.tid

    def info(self):
        if not self.started:
            return {"kind": self.kind, "closed": True}
        return {"kind": self.kind, "slots": self.p.nslots, "block": self.p.block,
                "registered": bool(self.p.registered), "register_errno": self.p.register_err,
                "jobs": self.p.jobs, "bytes": self.p.bytes, "ops": self.p.ops, "wakeups": self.p.wakeups}

    cdef int _run(self, dwcp_pjob *j) except -1:
        """Run ``j`` to its end without the GIL.  close() waits for every call in here to leave (it
        joins the loop, which ends every job first: a job never outlives its pump)."""
        with self._lock:
            if not self.started:
                raise ClosedResourceError(f"the {self.kind} pump is closed")
            self._running += 1
        try:
            with nogil:
                dwcp_pump_run(&self.p, j)
        finally:
            with self._lock:
                self._running -= 1
        return 0

    def recv_blocks(self, int sock_fd, Py_ssize_t n, int file_fd, int64_t file_off, int timeout_ms=-1,
                    Aead opener=None):
        if n < 0 or file_off < 0:
            raise ValueError(f"n and file_off must be >= 0, got {n} and {file_off}")
        if opener is not None and opener.sealing:
            raise ValueError("recv_blocks needs an opening Aead")
        cdef Py_ssize_t block = self.p.block
        cdef Py_ssize_t nblocks = (n + block - 1) // block
        hashes = bytearray(nblocks * 16 if nblocks else 1)
        cdef uint8_t[::1] hv = hashes
        cdef dwcp_pjob j
        memset(&j, 0, sizeof(j))
        j.sock = sock_fd
        j.file = file_fd
        j.timeout_ms = timeout_ms
        j.n = n
        j.off = file_off
        j.a = &opener.a if opener is not None else NULL
        j.hashes = &hv[0]
        cdef uint64_t rec = opener.a.counter if opener is not None else 0
        cdef uint64_t chash = 0
        self._run(&j)
        if j.status == ST_OK:
            chash = XXH3_64bits(&hv[0], <size_t>(j.k * 16))
        return _received(j.status, j.err, j.done, n, hashes[: j.k * 16], chash, file_off, timeout_ms, rec,
                         self.kind)

    def send(self, int sock_fd, const uint8_t[::1] header, const uint8_t[::1] payload, int timeout_ms=-1,
             Aead sealer=None):
        if sealer is not None and not sealer.sealing:
            raise ValueError("send needs a sealing Aead")
        cdef Py_ssize_t n = payload.shape[0]
        cdef dwcp_pjob j
        memset(&j, 0, sizeof(j))
        j.dir = DWCP_DIR_SEND
        j.sock = sock_fd
        j.file = -1
        j.timeout_ms = timeout_ms
        j.n = n
        j.hdr = &header[0] if header.shape[0] else NULL
        j.hlen = header.shape[0]
        j.src = &payload[0] if n else NULL
        j.a = &sealer.a if sealer is not None else NULL
        self._run(&j)
        status, err, done = j.status, j.err, j.done
        if status == ST_EVP:
            raise RuntimeError("EVP failed to seal a record")
        if status == ST_CLOSED:
            raise ClosedResourceError(f"the {self.kind} pump closed ({done} of {n} payload bytes sent)")
        if status == ST_TIMEOUT:
            raise TimeoutError(f"the socket took no byte for {timeout_ms / 1000} s ({done} of {n} sent)")
        if status == ST_SOCK:
            raise OSError(err, f"{strerror(err)} ({done} of {n} payload bytes sent)")
