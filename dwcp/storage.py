"""The receiver's object store: verified versions, resumable partials, leases.

Layout under ``data_dir`` (0700)::

    objects/<escaped key>/<digest hex>.obj   verified versions (read-only files)
    objects/<escaped key>/LATEST             digest hex of the newest, replaced atomically
    objects/<escaped key>/META.json          the owner's small record about the key (``read_meta``)
    partial/<escaped key>.<digest hex>.part  an object being received, preallocated
    partial/<escaped key>.<digest hex>.state its resume record (below)

Rules
-----
1. Keys are validated (``validate_key``) and escaped into ONE file name
   (percent-encoding), so no key can name a path outside the data directory.
2. Nothing replaces a verified version but ``Partial.commit``: every chunk
   done, the object's digest (dwcp.digest: the root of its leaf hashes) equal
   to the announced one, the file
   fsynced, renamed into ``objects/``, the directory fsynced, then LATEST
   replaced (``dwcp.durable.write_atomic``: write, fsync, rename, fsync dir).  A crash at any point leaves
   the previous version intact and LATEST pointing at it.
3. The .part is a sparse file of the object's size (holes read as zeros;
   free space is checked at ``begin``), or a copy of another version of the
   key (``seed_from``, for deltas).  ``.state`` = a 64-byte header (magic,
   size, chunk size, digest, and the digest of the version the .part was
   seeded from, if it was) + one 16-byte record per chunk: u64 xxh3-64 of the
   chunk, u8 done, 7 bytes padding.  ``mark_done`` writes the record with
   pwrite after the chunk's bytes are in the .part (no fsync per chunk: a
   kill -9 keeps the page cache; commit fsyncs).  On resume, ``seeded_from``
   says what the chunks not yet received hold (zeros, or that version's
   bytes), and ``verify_resumed`` re-hashes every chunk marked done and
   forgets those that do not match their record.  A partial with no chunk
   done is not worth resuming: it starts afresh.
4. One writer per key at a time (an in-process lease); a second ``begin`` on
   a leased key raises KeyBusyError.  Leases die with their Partial.
5. Any OSError while writing becomes StorageError (raised from it) with a
   one-line message; the previous version is untouched, and a failed commit
   leaves nothing in ``objects/`` that LATEST does not point to.
6. Memory follows what arrived, not what a sender announced: a partial holds
   one bit per chunk (the chunk hashes live in ``.state``) and the hashes of
   the leaves that arrived (``hashed``: 16 bytes per MiB), and ``.state`` is
   created sparse.  ``MAX_CHUNKS`` bounds the bitmap (128 KiB); a receiver
   raises the chunk size of a huge object to stay under it
   (``min_chunk_size``).
8. Commit re-reads only what no verified chunk showed it whole: the receiver
   feeds each chunk to ``hashed`` while the chunk is in cache (and
   ``verify_resumed`` the resumed ones), so the digest needs the leaf hashes
   and at most the leaves a chunk boundary cut.
7. A sender keeps its sent version without copying it through user space
   (``Partial.fill_from``): ``copy_in_kernel`` clones the source's extents
   (FICLONE: no bytes move, the blocks are shared until one side is
   rewritten) or copies them in the kernel (``copy_file_range``), and the
   commit verifies the copy's digest through a mapping of the .part.  A
   filled partial records no chunk in ``.state``: after a crash there is
   nothing worth resuming and it starts afresh.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass

from dwcp._backend import impl as _k
from dwcp.digest import TreeHasher, chunk_hash
from dwcp.durable import fsync_dir, pwrite_all, write_atomic
from dwcp.errors import IntegrityError, InvalidKeyError, KeyBusyError, StorageError
from dwcp.wire.consts import ERR_CHECKSUM, PAGE_SIZE

__all__ = [
    "validate_key",
    "escape_key",
    "unescape_key",
    "copy_in_kernel",
    "ObjectStore",
    "Partial",
    "VersionInfo",
]

log = logging.getLogger("dwcp.storage")

MAX_KEY_BYTES = 255
_KEY_OK = re.compile(r"[A-Za-z0-9._\-/:@+=]+")  # used with fullmatch: `$` would let a final "\n" by
_STATE_MAGIC = b"DWCPSTA1"
# magic, size, chunk_size, digest, seeded (0/1), digest of the version it was seeded from -> 64 bytes
_STATE_HDR = struct.Struct("<8sQQ16sB16s7x")
_REC = struct.Struct("<QB7x")  # xxh3-64, done
assert _STATE_HDR.size == 64 and _REC.size == 16
MAX_CHUNKS = 1 << 20  # per object: a 128 KiB bitmap, a 16 MiB (sparse) .state
_RESUME_BLOCK = 1 << 16  # chunk records read at a time on resume (1 MiB)


FICLONE = 0x40049409  # _IOW(0x94, 9, int) in linux/fs.h: clone all of a file's extents into another
# FICLONE failing says only that this pair of files cannot share extents (another file system, no
# reflink support, a block device): the kernel copy may still work, and meets any real error again
_COPY_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY,
                               errno.EBADF})  # fmt: skip


def _ficlone(src_fd: int, dst_fd: int) -> None:
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def copy_in_kernel(src_fd: int, dst_fd: int, size: int) -> str | None:
    """Make ``dst_fd`` (open for writing, empty) hold the first ``size`` bytes of ``src_fd`` without
    moving them through user space; return how: "reflink" or "copy_file_range".

    None: neither works for this pair of files (another file system on an old kernel, a block
    device, no ``copy_file_range``): the caller copies through user space.  A source that ends
    before ``size`` leaves the rest a hole (zeros): the caller's digest check tells.  ``dst_fd`` ends
    with exactly ``size`` bytes.  Other OSErrors (ENOSPC, EIO) are raised.
    """
    try:
        _ficlone(src_fd, dst_fd)
    except OSError as exc:
        log.debug("FICLONE: %s; copying in the kernel", exc)
    else:
        os.ftruncate(dst_fd, size)  # the clone took the whole source, which may have grown since
        return "reflink"
    done = 0
    try:
        while done < size:
            k = os.copy_file_range(src_fd, dst_fd, size - done, done, done)
            if k == 0:  # the source ended early
                break
            done += k
    except AttributeError:  # no os.copy_file_range (not Linux)
        return None
    except OSError as exc:
        if exc.errno not in _COPY_UNSUPPORTED:
            raise
        log.debug("copy_file_range: %s; copying in user space", exc)
        os.ftruncate(dst_fd, 0)
        return None
    os.ftruncate(dst_fd, size)
    return "copy_file_range"


def min_chunk_size(size: int, page_size: int = 4096) -> int:
    """The smallest page-aligned chunk size that cuts ``size`` bytes into at most MAX_CHUNKS chunks."""
    per = -(-size // MAX_CHUNKS)
    return max(page_size, -(-per // page_size) * page_size)


def close_mapping(m: mmap.mmap) -> None:
    """Close a mapping of a file being sent.

    A send that failed may leave views of it alive in reference cycles (its
    stream threads' frames, an exception's traceback) until the collector
    runs: collect once, and if a view is still alive leave the mapping to go
    with it rather than fail the command over it.
    """
    try:
        m.close()
    except BufferError:
        import gc

        gc.collect()
        try:
            m.close()
        except BufferError:
            pass


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise InvalidKeyError saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key is longer than {MAX_KEY_BYTES} bytes")
    if not _KEY_OK.fullmatch(key):
        bad = sorted({c for c in key if not _KEY_OK.fullmatch(c)})
        raise InvalidKeyError(f"key {key!r} has characters outside [A-Za-z0-9._-/:@+=]: {bad!r}")
    if key.startswith("/"):
        raise InvalidKeyError(f"key {key!r} must not start with '/'")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidKeyError(f"key {key!r} has an empty, '.' or '..' path segment")
    return key


def escape_key(key: str) -> str:
    return urllib.parse.quote(validate_key(key), safe="")


def unescape_key(name: str) -> str:
    return urllib.parse.unquote(name)


@dataclass(frozen=True)
class VersionInfo:
    key: str
    digest: bytes
    size: int
    path: str


class ObjectStore:
    def __init__(self, data_dir, *, keep_versions: int = 2) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be >= 1")
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.keep_versions = keep_versions
        self._objects = os.path.join(self.data_dir, "objects")
        self._partial = os.path.join(self.data_dir, "partial")
        try:
            for d in (self.data_dir, self._objects, self._partial):
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the data directory {self.data_dir}: {exc.strerror}") from exc
        self._leases: dict[str, Partial] = {}
        self._lock = threading.Lock()

    # -- verified versions -------------------------------------------------
    def _key_dir(self, key: str) -> str:
        return os.path.join(self._objects, escape_key(key))

    def latest(self, key: str) -> VersionInfo | None:
        d = self._key_dir(key)
        try:
            with open(os.path.join(d, "LATEST")) as f:
                hexd = f.read().strip()
        except FileNotFoundError:
            return None
        return self.get(key, bytes.fromhex(hexd))

    def get(self, key: str, digest: bytes) -> VersionInfo | None:
        path = os.path.join(self._key_dir(key), bytes(digest).hex() + ".obj")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return VersionInfo(key, bytes(digest), st.st_size, path)

    def versions(self, key: str) -> list[VersionInfo]:
        d = self._key_dir(key)
        try:
            names = [n for n in os.listdir(d) if n.endswith(".obj")]
        except FileNotFoundError:
            return []
        infos = []
        for n in names:
            p = os.path.join(d, n)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            infos.append((st.st_mtime_ns, VersionInfo(key, bytes.fromhex(n[:-4]), st.st_size, p)))
        latest = self.latest(key)
        infos.sort(key=lambda t: (latest is not None and t[1].digest == latest.digest, t[0]), reverse=True)
        return [i for _, i in infos]

    def remove_version(
        self, info: VersionInfo, *, quarantine: bool = False, keep_in: str | None = None
    ) -> bool:
        """Delete one verified version; LATEST then names the newest one left (or goes, with the last).
        Returns False when it was gone already.

        For a copy found damaged (a sender's baseline that fails its digest, a stored version the scrub
        finds rotten): the key keeps its other versions and nothing names a missing file.  With
        ``quarantine`` the file is moved to ``<data dir>/quarantine/<key>/<digest>.obj.<unix time>``
        for a post-mortem instead of deleted; ``keep_in`` names another such directory ("conflicts": a
        write the catalog refused, kept for whoever resolves it).
        """
        if quarantine:
            keep_in = "quarantine"
        d = self._key_dir(info.key)
        with self._lock:
            if info.key in self._leases:
                raise KeyBusyError(f"key {info.key!r} is busy: another transfer is writing it; retry later")
            try:
                latest = self.latest(info.key)
                if keep_in is not None:
                    qdir = os.path.join(self.data_dir, keep_in, escape_key(info.key))
                    os.makedirs(qdir, mode=0o700, exist_ok=True)
                    os.rename(info.path, os.path.join(qdir, f"{info.digest.hex()}.obj.{int(time.time())}"))
                    fsync_dir(qdir)
                else:
                    os.unlink(info.path)
                if latest is not None and latest.digest == info.digest:
                    rest = self.versions(info.key)  # newest first: LATEST's own file is gone
                    if rest:
                        write_atomic(os.path.join(d, "LATEST"), rest[0].digest.hex() + "\n")
                    else:
                        os.unlink(os.path.join(d, "LATEST"))
                fsync_dir(d)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StorageError(
                    f"cannot remove version {info.digest.hex()} of {info.key!r}: {exc.strerror}"
                ) from exc
            return True

    def read_meta(self, key: str) -> dict | None:
        """The JSON object ``write_meta`` last stored for ``key``; None if none (or unreadable: a warning)."""
        path = os.path.join(self._key_dir(key), "META.json")
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None
        return meta if isinstance(meta, dict) else None

    def write_meta(self, key: str, meta: dict) -> None:
        """Replace ``key``'s record with ``meta`` (a JSON object), atomically and durably."""
        d = self._key_dir(key)
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            write_atomic(os.path.join(d, "META.json"), json.dumps(meta, sort_keys=True) + "\n")
        except OSError as exc:
            raise StorageError(f"cannot write the record of {key!r}: {exc.strerror or exc}") from exc

    def keys(self) -> list[str]:
        try:
            return sorted(unescape_key(n) for n in os.listdir(self._objects)
                          if os.path.exists(os.path.join(self._objects, n, "LATEST")))  # fmt: skip
        except FileNotFoundError:
            return []

    def open_version(self, info: VersionInfo):
        """A read-only mapping of a verified version (b"" for an empty one)."""
        if info.size == 0:
            return b""
        with open(info.path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)

    # -- receiving -----------------------------------------------------------
    def partial_chunk_size(self, key: str, digest: bytes, size: int) -> int | None:
        """The chunk size of a resumable partial of this exact object, if one is on disk.

        A sender may propose another chunk size than the interrupted attempt
        used (its choice follows the path); answering with this one keeps the
        chunks already received.  A header that does not match is None: that
        partial is not resumable anyway.
        """
        validate_key(key)
        state = os.path.join(self._partial, f"{escape_key(key)}.{bytes(digest).hex()}.state")
        try:
            with open(state, "rb") as f:
                raw = f.read(_STATE_HDR.size)
        except OSError:
            return None
        if len(raw) != _STATE_HDR.size:
            return None
        magic, psize, chunk_size, pdigest, _, _ = _STATE_HDR.unpack(raw)
        if magic != _STATE_MAGIC or psize != size or pdigest != bytes(digest) or chunk_size <= 0:
            return None
        return int(chunk_size)

    def begin(
        self, key: str, digest: bytes, size: int, chunk_size: int, *, preallocate: bool = True
    ) -> Partial:
        """Take the key's write lease and open (or resume) its partial.

        ``preallocate`` checks the free space up front, so a disk that cannot
        hold the object fails here, before any byte travels.  A caller that
        seeds the partial from another version right away (``seed_from``)
        may skip it: the copy allocates the space and fails just as early.
        """
        validate_key(key)
        if len(digest) != 16:
            raise ValueError("digest must be 16 bytes (dwcp.digest)")
        if size < 0 or chunk_size <= 0:
            raise ValueError("size must be >= 0 and chunk_size > 0")
        if -(-size // chunk_size) > MAX_CHUNKS:
            raise ValueError(
                f"{size} bytes in {chunk_size}-byte chunks is more than {MAX_CHUNKS} chunks "
                f"(use at least {min_chunk_size(size)}-byte chunks)"
            )
        with self._lock:
            if key in self._leases:
                raise KeyBusyError(f"key {key!r} is busy: another transfer is writing it; retry later")
            p = Partial(self, key, bytes(digest), size, chunk_size)
            self._leases[key] = p
        try:
            p._open(preallocate)
        except BaseException:
            with self._lock:
                self._leases.pop(key, None)
            raise
        return p

    def _release(self, p: Partial) -> None:
        with self._lock:
            if self._leases.get(p.key) is p:
                del self._leases[p.key]

    def gc_partials(self, max_age_s: float, now: float) -> list[str]:
        """Remove partials (not leased) untouched for ``max_age_s``; returns their paths."""
        removed = []
        with self._lock:
            leased = {p.base for p in self._leases.values()}
        for n in os.listdir(self._partial):
            if not n.endswith(".state"):
                continue
            base = os.path.join(self._partial, n[: -len(".state")])
            if base in leased:
                continue
            try:
                age = now - os.stat(base + ".state").st_mtime
            except FileNotFoundError:
                continue
            if age > max_age_s:
                for ext in (".part", ".state"):
                    try:
                        os.unlink(base + ext)
                    except FileNotFoundError:
                        pass
                removed.append(base)
        return removed

    def _publish(self, p: Partial) -> VersionInfo:
        d = self._key_dir(p.key)
        os.makedirs(d, mode=0o700, exist_ok=True)
        final = os.path.join(d, p.digest.hex() + ".obj")
        existed = os.path.exists(final)  # this very version, kept from before: leave it be on failure
        os.replace(p.base + ".part", final)
        try:
            fsync_dir(d)
            write_atomic(os.path.join(d, "LATEST"), p.digest.hex() + "\n")
        except BaseException:
            # LATEST still names the previous version: put the object back as the partial (every
            # chunk done, so a resend only commits), never leave it in objects/ unreferenced
            if not existed:
                try:
                    os.replace(final, p.base + ".part")
                except OSError:
                    try:
                        os.unlink(final)
                    except OSError:
                        pass
            raise
        info = VersionInfo(p.key, p.digest, p.size, final)
        self._prune(p.key, keep={p.digest})
        return info

    def _prune(self, key: str, keep: set[bytes]) -> None:
        vs = self.versions(key)  # newest (LATEST) first, then by age
        for v in vs[self.keep_versions :]:
            if v.digest in keep:
                continue
            try:
                os.unlink(v.path)
            except FileNotFoundError:
                pass


class Partial:
    """An object being received; see the module rules.  Thread-safe per chunk."""

    def __init__(self, store: ObjectStore, key: str, digest: bytes, size: int, chunk_size: int) -> None:
        self.store = store
        self.key = key
        self.digest = digest
        self.size = size
        self.chunk_size = chunk_size
        self.nchunks = (size + chunk_size - 1) // chunk_size
        self.base = os.path.join(store._partial, f"{escape_key(key)}.{digest.hex()}")
        self._fd = -1
        self._sfd = -1
        self._map: mmap.mmap | None = None
        self._have = bytearray((self.nchunks + 7) // 8)
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)  # notified by mark_done (a relay waits on it)
        self._closed = False
        self.resumed = 0
        self.seeded_from: bytes | None = None  # the version whose bytes the chunks not yet received hold
        self.tree = TreeHasher(size)  # the leaves seen whole in verified chunks (rule 8)

    # -- opening / resuming --------------------------------------------------
    def _open(self, preallocate: bool = True) -> None:
        part, state = self.base + ".part", self.base + ".state"
        try:
            resumed = self._try_resume(part, state)
            if not resumed:
                for path in (part, state):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                self._fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if self.size and preallocate:
                    # Refuse early when the space is not there; do not fallocate: on
                    # tmpfs that allocates (and zeroes) every page up front, a fixed
                    # cost of ~0.25 s/GiB before any byte travels.  A disk that fills
                    # up meanwhile still fails cleanly at the write (StorageError).
                    st = os.statvfs(self.store.data_dir)
                    if st.f_bavail * st.f_frsize < self.size:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if self.size:
                    os.ftruncate(self._fd, self.size)  # a sparse file: holes read as zeros
                self._sfd = os.open(state, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._write_header()
                os.ftruncate(
                    self._sfd, _STATE_HDR.size + _REC.size * self.nchunks
                )  # sparse: records read as 0
        except OSError as exc:
            self._close_fds()
            for path in (part, state):
                try:
                    if not self.resumed:
                        os.unlink(path)
                except OSError:
                    pass
            raise StorageError(
                f"cannot store {self.key!r}: {exc.strerror or exc} (need {self.size} bytes in {self.store.data_dir})"
            ) from exc

    def _write_header(self) -> None:
        seeded = self.seeded_from is not None
        os.pwrite(self._sfd, _STATE_HDR.pack(_STATE_MAGIC, self.size, self.chunk_size, self.digest, seeded,
                                             self.seeded_from or bytes(16)), 0)  # fmt: skip

    def _records(self, fd: int):
        """(chunk index, xxh3-64, done) of every record in ``.state``, read a block at a time."""
        for first in range(0, self.nchunks, _RESUME_BLOCK):
            n = min(_RESUME_BLOCK, self.nchunks - first)
            raw = os.pread(fd, _REC.size * n, _STATE_HDR.size + _REC.size * first)
            if len(raw) != _REC.size * n:
                raise OSError(errno.EIO, f"{self.base}.state ends early")
            for k, (h, done) in enumerate(_REC.iter_unpack(raw)):
                yield first + k, h, done

    def _try_resume(self, part: str, state: str) -> bool:
        try:
            sfd = os.open(state, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        fds = [sfd]  # closed on the way out unless the resume takes them over
        try:
            raw = os.pread(sfd, _STATE_HDR.size, 0)
            if (
                len(raw) != _STATE_HDR.size
                or os.fstat(sfd).st_size != _STATE_HDR.size + _REC.size * self.nchunks
            ):
                return False
            magic, size, chunk_size, digest, seeded, seed = _STATE_HDR.unpack(raw)
            if (magic, size, chunk_size, digest) != (_STATE_MAGIC, self.size, self.chunk_size, self.digest):
                return False
            fd = os.open(part, os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            if os.fstat(fd).st_size != self.size:
                return False
            have, n = bytearray(len(self._have)), 0
            for i, _, done in self._records(sfd):
                if done == 1:
                    have[i >> 3] |= 1 << (i & 7)
                    n += 1
            if not n:  # nothing received: start afresh (a seed copy may have stopped half-way)
                return False
            self._have[:] = have
            self.resumed = n
            self.seeded_from = seed if seeded else None
            self._fd, self._sfd = fd, sfd
            fds.clear()
            return True
        except FileNotFoundError:
            return False
        finally:
            for d in fds:
                os.close(d)

    # -- chunks --------------------------------------------------------------
    @property
    def have(self) -> bytes:
        """Bitmap of chunks held: bit i (LSB first within each byte) = chunk i."""
        with self._lock:
            return bytes(self._have)

    def is_done(self, i: int) -> bool:
        return bool(self._have[i >> 3] >> (i & 7) & 1)

    def missing(self) -> list[int]:
        return [i for i in range(self.nchunks) if not self.is_done(i)]

    def _span(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.nchunks:
            raise IndexError(f"chunk {i} outside [0, {self.nchunks})")
        off = i * self.chunk_size
        return off, min(self.chunk_size, self.size - off)

    def _mapping(self) -> mmap.mmap:
        with self._lock:
            if self._map is None:
                self._map = mmap.mmap(self._fd, self.size)
            return self._map

    def span(self, i: int) -> tuple[int, int]:
        """(offset, length) of chunk ``i`` in the object."""
        return self._span(i)

    def fileno(self) -> int:
        """The .part file, for writers that move bytes in the kernel (splice)."""
        self._check()
        return self._fd

    def view(self, i: int) -> memoryview:
        """A zero-copy view of chunk ``i`` in the mapped .part file.

        Reading through it is fast; *writing* fresh (fallocated) pages
        through a shared mapping costs a page fault per 4 KiB and runs ~20x
        slower than ``write`` on ext4 and tmpfs, so writers use ``write``.
        """
        self._check()
        off, ln = self._span(i)
        return memoryview(self._mapping())[off : off + ln]

    def write(self, i: int, data) -> None:
        self._check()
        off, ln = self._span(i)
        mv = memoryview(data).cast("B")
        if mv.nbytes != ln:
            raise ValueError(f"chunk {i} has {ln} bytes, got {mv.nbytes}")
        self.write_at(off, mv)

    def seed_from(self, info: VersionInfo) -> None:
        """Fill a fresh partial with another version of the same size (in the kernel).

        For delta and pages transfers: afterwards only the pages that differ
        need writing.  Refused on a resumed partial (it would overwrite
        chunks already received).
        """
        self._check()
        if self.resumed or any(self._have):
            raise ValueError("cannot seed a partial that already holds chunks")
        if info.size != self.size:
            raise ValueError(f"cannot seed a {self.size}-byte object from a {info.size}-byte version")
        try:
            with open(info.path, "rb") as src:
                done = 0
                while done < self.size:
                    k = os.copy_file_range(src.fileno(), self._fd, self.size - done, done, done)
                    if k == 0:
                        raise OSError(f"{info.path} ended after {done} bytes")
                    done += k
            self.seeded_from = info.digest
            self._write_header()  # a resume knows the chunks not received hold this version's bytes
        except OSError as exc:
            raise StorageError(f"cannot prepare {self.key!r} from its previous version: {exc}") from exc

    def fill_from(self, src_fd: int) -> str | None:
        """Fill the whole partial from ``src_fd`` in the kernel (rule 7); return how ("reflink",
        "copy_file_range"), or None when neither works for this file (the partial is untouched: fill
        it with ``write``).

        Every chunk then counts as received, but nothing is recorded in ``.state``: commit with
        ``verify=True``, which hashes the copy itself (a source that changed since it was sent
        fails there, and nothing is kept).  StorageError on a write error (ENOSPC, EIO).
        """
        self._check()
        try:
            os.ftruncate(self._fd, 0)  # FICLONE replaces the content; copy_file_range fills from byte 0
            how = copy_in_kernel(src_fd, self._fd, self.size)
            if how is None:
                os.ftruncate(self._fd, self.size)  # back to the sparse .part ``write`` expects
                return None
        except OSError as exc:
            raise StorageError(f"cannot store {self.key!r}: {exc.strerror or exc}") from exc
        with self._lock:
            self._have[:] = b"\xff" * len(self._have)  # the bits past the last chunk are never read
        return how

    def write_at(self, offset: int, data) -> None:
        """Write ``data`` at a byte offset (part of a chunk; the caller marks the chunk done)."""
        self._check()
        mv = memoryview(data).cast("B")
        if offset < 0 or offset + mv.nbytes > self.size:
            raise ValueError(f"write of {mv.nbytes} bytes at {offset} outside the {self.size}-byte object")
        try:
            pwrite_all(self._fd, mv, offset)
        except OSError as exc:
            raise StorageError(f"cannot write {self.key!r}: {exc.strerror}") from exc

    def write_pages(self, offset: int, data, flags) -> None:
        """Write the pages of ``data`` flagged in ``flags`` at ``offset`` (runs coalesced, GIL released)."""
        self._check()
        mv = memoryview(data).cast("B")
        if offset < 0 or offset + mv.nbytes > self.size:
            raise ValueError(f"write of {mv.nbytes} bytes at {offset} outside the {self.size}-byte object")
        try:
            _k.write_pages(self._fd, offset, mv, flags, PAGE_SIZE)
        except StorageError as exc:
            raise StorageError(f"cannot write {self.key!r}: {exc}") from exc

    def mark_done(self, i: int, raw_hash: int) -> None:
        self._check()
        self._span(i)
        try:
            os.pwrite(self._sfd, _REC.pack(raw_hash, 1), _STATE_HDR.size + _REC.size * i)
        except OSError as exc:
            raise StorageError(f"cannot record progress of {self.key!r}: {exc.strerror}") from exc
        with self._lock:
            self._have[i >> 3] |= 1 << (i & 7)
            self._landed.notify_all()

    def wait_chunk(self, i: int, timeout_s: float) -> bool:
        """Block until chunk ``i`` is stored and verified (True) or ``timeout_s`` passes (False)."""
        self._span(i)
        with self._lock:
            return self._landed.wait_for(lambda: bool(self._have[i >> 3] >> (i & 7) & 1), timeout_s)

    @property
    def part_path(self) -> str:
        """The .part file (its inode becomes the version at commit: a reader's mapping stays valid)."""
        return self.base + ".part"

    def unmark(self, i: int) -> None:
        """Forget chunk ``i`` (it must come again): in ``.state`` first, then in memory."""
        self._check()
        self._span(i)
        try:
            os.pwrite(self._sfd, _REC.pack(0, 0), _STATE_HDR.size + _REC.size * i)
        except OSError as exc:
            raise StorageError(f"cannot record progress of {self.key!r}: {exc.strerror}") from exc
        with self._lock:
            self._have[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        self.tree.discard(*self._span(i))

    def hashed(self, offset: int, length: int, blocks: bytes, view=None) -> int:
        """The verified chunk at ``offset`` is in the .part; ``blocks`` are its block hashes (its chunk
        hash's: dwcp.digest rule 4) and ``view`` its bytes when the caller still holds them.  The tree
        takes the leaves it holds whole (rule 8; ``TreeHasher.add_chunk``), so commit reads none of them;
        returns how many."""
        return self.tree.add_chunk(offset, length, blocks, view)

    def verify_resumed(self) -> list[int]:
        """Re-hash chunks marked done (after a resume); forget those that do not match."""
        self._check()
        bad: list[int] = []
        if not self.resumed:  # a fresh partial: nothing to re-read (and ~1 s of records at 2**20 chunks)
            return bad
        for i, h, _ in self._records(self._sfd):
            if not self.is_done(i):
                continue
            v = self.view(i)
            try:
                ch, blocks = chunk_hash(v)
                ok = ch == h
                if ok:  # its leaves: commit need not read it again
                    self.hashed(*self._span(i), blocks, v)
            finally:
                v.release()
            if not ok:
                self.unmark(i)
                bad.append(i)
        return bad

    # -- finishing -------------------------------------------------------------
    def commit(self, *, verify: bool = True) -> VersionInfo:
        """Verify the whole object against its digest (rule 8), fsync it and publish it atomically.

        ``verify=False`` skips the re-read for a caller that computed the
        digest from the very buffer it wrote (a sender keeping its own copy
        as the next baseline); anything received from a peer is verified.
        """
        self._check()
        missing = self.missing()
        if missing:
            raise StorageError(f"cannot commit {self.key!r}: {len(missing)} chunks missing")
        if not verify:
            whole = self.digest
        elif self.tree.complete:  # every leaf was seen whole in a verified chunk: nothing to read
            whole = self.tree.root()
        else:
            mv = memoryview(self._mapping())
            try:
                whole = self.tree.root(lambda o, n: mv[o : o + n])  # reads only the leaves not seen whole
            finally:
                mv.release()
        if whole != self.digest:
            self.abort(keep=False)
            raise IntegrityError(
                f"{self.key!r}: the received object's digest {whole.hex()} is not the announced "
                f"{self.digest.hex()}; previous version kept",
                ERR_CHECKSUM,
            )
        try:
            if self._map is not None:
                self._map.flush()
            os.fsync(self._fd)
            self._close_fds()
            info = self.store._publish(self)
            try:
                os.unlink(self.base + ".state")
            except FileNotFoundError:
                pass
        except OSError as exc:
            self.abort(keep=True)
            raise StorageError(f"cannot commit {self.key!r}: {exc.strerror}") from exc
        self._closed = True
        self.store._release(self)
        return info

    def abort(self, keep: bool = True) -> None:
        """Give up the lease; keep the partial for a later resume unless ``keep`` is False."""
        if self._closed:
            return
        self._closed = True
        self._close_fds()
        if not keep:
            for ext in (".part", ".state"):
                try:
                    os.unlink(self.base + ext)
                except FileNotFoundError:
                    pass
        self.store._release(self)

    def _close_fds(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive; the mapping goes with it
                pass
            self._map = None
        for attr in ("_fd", "_sfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def _check(self) -> None:
        if self._closed:
            from dwcp.errors import ClosedResourceError

            raise ClosedResourceError(f"partial of {self.key!r} is closed")

    def __enter__(self) -> Partial:
        return self

    def __exit__(self, *exc) -> None:
        self.abort(keep=True)
