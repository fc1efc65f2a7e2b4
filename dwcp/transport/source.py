"""What a send reads its object from: a buffer in memory, or a file read chunk by chunk.

Theory of operation
-------------------
A send reads its object twice at least: once up front for the whole-object
digest (dwcp.digest) that the receiver verifies, then chunk by chunk as the stream
threads take work (again for a chunk the receiver NACKed, and once more to
keep the sent version as the next baseline, unless the kernel copies the
file: ``fileno``, ``dwcp.storage.copy_in_kernel``).  ``BufferSource`` serves views
of a contiguous buffer (bytes, a numpy array, a relay's partial mapping).
``FileSource`` *reads* a file: a mapped file that someone truncates under
the sender faults with SIGBUS and kills the process without a word, while a
read that comes back short is an error we can name.

Rules
-----
1. ``FileSource.open`` looks before it opens (``os.stat``): opening a FIFO
   with no writer blocks for ever, and a FIFO, a socket, a directory or a
   character device (``/dev/zero``) has no size to send.  It accepts
   regular files and block devices (a VM disk on LVM).  The open is
   ``O_NONBLOCK`` and ``fstat`` checks the type again, so a path swapped
   for a FIFO between the two looks does not hang the sender either.
2. A block device's size is ``lseek(fd, 0, SEEK_END)`` (its ``st_size`` is 0).
3. ``read(offset, n)`` fills a reusable buffer of the calling thread
   (``threading.local``) with ``os.preadv`` and returns a view of it: the
   view is valid until the same thread reads again.  A stream thread sends
   a chunk's frame (``FrameSocket.send`` returns once the kernel holds the
   bytes) before it reads its next chunk, so no chunk is ever copied twice.
   A stream whose payloads go MSG_ZEROCOPY cannot reuse one buffer so: the
   kernel still reads it after ``send`` returns.  It reads into buffers of
   its own instead (``read(offset, n, out)``), each reused only once the
   kernel released it (dwcp.transport.zerocopy.PayloadBuffers).
4. A read that comes back short, or a size at ``check()`` that is not the
   size the send started with, raises ``SourceChangedError`` naming the
   file; a read error raises ``SourceError``.  Both mean the local source is
   at fault, not the peer or the network: the sender fails the whole
   transfer at once (no stream retries, no failover to another replica).
5. ``DigestCache`` remembers the digest of a caller's previous version
   (``dwcp send NEW --base OLD``) by the file's identity: path, device,
   inode, size, mtime and ctime (``fstat`` of the open file; ctime cannot be
   set back from user space).  A file modified (mtime) less than ``RACY_S``
   before it was hashed is not cached (a write within the same timestamp
   tick would not move it again), nor is a block device (a write through another node of it moves
   nothing).  A stale digest cannot corrupt an object, only slow a send: the
   receiver checks every chunk against the new version's hashes, and a
   delta chunk NACKed twice goes in full.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time

from dwcp._backend import impl as _k
from dwcp.digest import LEAF_BYTES, TreeHasher
from dwcp.durable import write_atomic
from dwcp.errors import SourceChangedError, SourceError

__all__ = ["BufferSource", "DigestCache", "FileSource", "SourceChangedError", "SourceError", "as_source"]

log = logging.getLogger("dwcp.source")

# whole-object hashing reads this much at a time: large enough that the syscalls do not show,
# small enough to stay in L2/L3 between the read and the hash
_HASH_BLOCK = 4 * LEAF_BYTES


class BufferSource:
    """A contiguous buffer, read in place (never copied)."""

    def __init__(self, data) -> None:
        mv = memoryview(data)
        if not mv.c_contiguous:
            raise ValueError("data must be a contiguous buffer")
        self._mv = mv.cast("B")
        self.size = self._mv.nbytes  # invariant: never changes
        self.name = "the buffer"
        self.tree: TreeHasher | None = (
            None  # the leaves ``digest`` hashed: the chunks' hashes (digest rule 4)
        )

    def read(self, offset: int, n: int, out=None) -> memoryview:
        """A view of the buffer itself (``out`` is not needed: nothing is read)."""
        return self._mv[offset : offset + n]

    def digest(self) -> bytes:
        """The object digest; its leaves are kept in ``tree``."""
        t = TreeHasher(self.size)
        t.add_blocks(0, self.size, _k.block_hashes(self._mv, LEAF_BYTES))
        self.tree = t
        return t.root()

    def check(self) -> None:
        """A buffer cannot change size."""


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
)


def _refuse_special(path: str, mode: int) -> None:
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    raise SourceError(f"{path} is {kind}, not a regular file: dwcp sends regular files and block devices")


class FileSource:
    """A regular file or a block device, read with pread into per-thread buffers (never mapped)."""

    def __init__(self, path: str, fd: int, size: int, is_block: bool) -> None:
        self.name = path
        self.size = size  # the size when the send started; invariant: never changes
        self._fd = fd  # -1 once closed
        self._is_block = is_block
        self._local = threading.local()  # .buf: this thread's reusable bytearray, .mv: a view of all of it
        self.tree: TreeHasher | None = (
            None  # the leaves ``digest`` hashed: the chunks' hashes (digest rule 4)
        )

    @classmethod
    def open(cls, path: str) -> FileSource:
        path = os.fspath(path)
        try:
            _refuse_special(path, os.stat(path).st_mode)  # before open(): a FIFO without a writer blocks it
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"cannot open {path}: {(exc.strerror or str(exc)).lower()}") from exc
        return cls.from_fd(fd, path)

    @classmethod
    def from_fd(cls, fd: int, path: str) -> FileSource:
        """A source over ``fd`` (an open, readable descriptor it takes over: closed on failure and by
        ``close``), named ``path`` in messages: a file another process opened and handed over (the
        control API's ``send``, dwcp.daemon.control)."""
        try:
            mode = os.fstat(fd).st_mode
            _refuse_special(path, mode)  # the path may name something else by now
            os.set_blocking(fd, True)
            is_block = stat.S_ISBLK(mode)
            size = os.lseek(fd, 0, os.SEEK_END) if is_block else os.fstat(fd).st_size
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead window
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, is_block)

    def _current_size(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_END) if self._is_block else os.fstat(self._fd).st_size

    def _changed(self, at: int) -> SourceChangedError:
        try:
            now = self._current_size()
        except OSError:
            now = at
        if now < self.size:
            return SourceChangedError(f"{self.name} shrank from {self.size} to {now} bytes during the send")
        return SourceChangedError(
            f"{self.name} changed during the send: it ended at byte {at} of {self.size}"
        )

    def _read_exact(self, mv: memoryview, offset: int) -> None:
        got, n = 0, mv.nbytes
        while got < n:
            try:
                k = os.preadv(self._fd, [mv[got:]], offset + got)
            except OSError as exc:
                raise SourceError(
                    f"cannot read {self.name} at byte {offset + got}: {exc.strerror or exc}"
                ) from exc
            if k == 0:
                raise self._changed(offset + got)
            got += k

    def _buffer(self, n: int) -> memoryview:
        loc = self._local
        mv = getattr(loc, "mv", None)
        if mv is None or mv.nbytes < n:
            # a frame still holding a view of the old buffer keeps it alive; nothing writes into it again
            loc.mv = mv = memoryview(bytearray(n))
        return mv[:n]

    def read(self, offset: int, n: int, out=None) -> memoryview:
        """The ``n`` bytes at ``offset``, in this thread's buffer (valid until this thread reads again), or
        in ``out`` (a writable buffer of ``n`` bytes or more: a stream's zero-copy pool, rule 3)."""
        if offset < 0 or n < 0 or offset + n > self.size:
            raise ValueError(f"read of {n} bytes at {offset} is outside the {self.size}-byte source")
        if out is not None:
            mv = memoryview(out).cast("B")[:n]
            if mv.nbytes < n or mv.readonly:
                raise ValueError(f"out must be a writable buffer of at least {n} bytes")
        else:
            mv = self._buffer(n)
        self._read_exact(mv, offset)
        return mv

    def digest(self) -> bytes:
        """The object digest (dwcp.digest) of the whole source, read a block at a time; its leaves are
        kept in ``tree`` (the chunks' hashes, digest rule 4: the send does not hash them again)."""
        t = TreeHasher(self.size)
        for off in range(0, self.size, _HASH_BLOCK):  # a whole number of leaves per block
            t.add(off, self.read(off, min(_HASH_BLOCK, self.size - off)))
        self.tree = t
        return t.root()

    def check(self) -> None:
        """Raise SourceChangedError unless the source still has the size the send started with."""
        try:
            now = self._current_size()
        except OSError as exc:
            raise SourceError(f"cannot stat {self.name}: {exc.strerror or exc}") from exc
        if now != self.size:
            how = "shrank" if now < self.size else "grew"
            raise SourceChangedError(f"{self.name} {how} from {self.size} to {now} bytes during the send")

    def identity(self) -> dict | None:
        """What says the file is still the one hashed (rule 5); None for a block device."""
        if self._is_block:
            return None
        try:
            st = os.fstat(self._fd)
        except OSError:
            return None
        return {"path": os.path.abspath(self.name), "dev": st.st_dev, "ino": st.st_ino, "size": self.size,
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}  # fmt: skip

    def fileno(self) -> int:
        """The open file, for copies in the kernel (``dwcp.storage.copy_in_kernel``)."""
        if self._fd < 0:
            raise ValueError(f"{self.name} is closed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_source(data) -> BufferSource | FileSource:
    """``data`` itself if it is a FileSource, else a BufferSource over it."""
    return data if isinstance(data, (FileSource, BufferSource)) else BufferSource(data)


class DigestCache:
    """``<dir>/base-digests.json``: the object digest of the last ``MAX_ENTRIES`` files hashed as a caller's
    previous version, by identity (rule 5).

    Reading never raises (a missing or damaged file is an empty cache: the file is hashed again);
    writing is atomic (dwcp.durable) and a failure to write is a warning.
    """

    FILE = "base-digests.json"
    VERSION = 2  # the digests of dwcp.digest (protocol 2)
    MAX_ENTRIES = 64  # snapshot workflows name one previous version per key
    RACY_S = 2.0  # a file changed this recently may change again within one timestamp tick

    def __init__(self, directory: str, clock=time.time) -> None:
        self.path = os.path.join(directory, self.FILE)
        self.clock = clock

    def _load(self) -> list[dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return []
        if not isinstance(raw, dict) or raw.get("version") != self.VERSION:
            return []  # written by a version with other digests (1: whole-object xxh3-128)
        entries = raw.get("files")
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def digest(self, src: FileSource) -> tuple[bytes, bool]:
        """``src``'s digest and whether it came from the cache (else the whole file was read)."""
        ident = src.identity()
        if ident is not None:
            for e in self._load():
                if {k: e.get(k) for k in ident} == ident:
                    try:
                        d = bytes.fromhex(e["digest"])
                    except (KeyError, TypeError, ValueError):
                        break
                    if len(d) == 16:
                        return d, True
                    break
        now = self.clock()
        d = src.digest()
        after = src.identity()
        if ident is None or after != ident or now - ident["mtime_ns"] / 1e9 < self.RACY_S:
            return d, False  # a block device, a file that changed while it was hashed, or a racy one
        keep = [e for e in self._load() if e.get("path") != ident["path"]][: self.MAX_ENTRIES - 1]
        doc = {"version": self.VERSION, "files": [{**ident, "digest": d.hex()}, *keep]}
        try:
            write_atomic(self.path, json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc.strerror or exc)
        return d, False
