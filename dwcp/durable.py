"""Durable writes: the one place that writes, fsyncs, renames and fsyncs a directory.

Every file dwcp must find whole after a crash goes through here: the
object store's LATEST, Raft and PBFT state, keys and certificates, tuning
profiles, chunking state, the epoch file, and a fetched object.

Rules
-----
1. A file is replaced, never rewritten in place: the new content goes to a
   temporary file beside the target (same directory, so the rename stays on
   one file system), is fsynced, then renamed over the target, then the
   directory is fsynced.  A reader sees the old file or the new one, never
   half of one, and after a crash the directory holds one or the other.
2. A temporary file is born with the target's mode or narrower
   (``os.open`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and that mode), then
   ``fchmod``-ed to exactly that mode (a umask may have narrowed it).  A
   0600 key is never readable by anyone else, not even for an instant, and
   a planted file or symlink at the temporary name is never reused.
3. Temporary names are random (``.<random>.<name>.tmp``), so two writers of
   one target never share one; a write that fails removes its temporary
   file and leaves the target as it was.
4. Failures are ``OSError``, raised unchanged: each caller turns them into
   its own error (``StorageError``, ``ConfigError``) with its own message.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

__all__ = ["write_all", "pwrite_all", "create_temp", "discard", "write_atomic", "publish", "fsync_dir"]

_TEMP_TRIES = 16  # 48 random bits a name: a clash is an attacker or a bug, not bad luck


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` (any buffer) to ``fd`` at ``offset`` (``os.pwrite`` may write less than asked:
    signals, huge writes)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a rename or creation in it survives a crash."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_temp(path: str, mode: int = 0o600) -> tuple[int, str]:
    """Create a temporary file beside ``path`` with ``mode`` exactly; return (fd, its path).

    The caller writes it, fsyncs it, closes it, then ``publish``-es it (or ``discard``-s it).
    """
    d, name = os.path.split(path)
    for _ in range(_TEMP_TRIES):
        tmp = os.path.join(d, f".{secrets.token_hex(6)}.{name}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it (a 0644 certificate under umask 077)
        except BaseException:
            os.close(fd)
            discard(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path} after {_TEMP_TRIES} tries")


def discard(tmp: str) -> None:
    """Remove a temporary file that will not be published (gone already is fine)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def publish(tmp: str, path: str, *, sync_dir: bool = True) -> None:
    """Rename a finished, fsynced temporary file over ``path``, then fsync the directory.

    ``sync_dir=False`` leaves the directory fsync to a caller that publishes
    several files into one directory and fsyncs it once (``fsync_dir``).
    """
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(path))


def write_atomic(
    path: str,
    data: bytes | str,
    *,
    mode: int = 0o600,
    sync_dir: bool = True,
    write: Callable[[int, bytes], None] = write_all,
) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8): temporary file, fsync, rename, directory fsync.

    ``write`` writes the bytes to the temporary file's descriptor; a store
    that routes every write through one method (for fault injection) passes it.
    On any failure the temporary file is removed and ``path`` is untouched.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = create_temp(path, mode)
    try:
        try:
            write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    if sync_dir:
        fsync_dir(os.path.dirname(path))
