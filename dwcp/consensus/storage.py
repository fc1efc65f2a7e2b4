"""Durable Raft storage: hard state, snapshot and log in the node's data directory, fsynced.

* ``raft.hard`` holds term, vote and commit (JSON, replaced atomically:
  tmp + fsync + rename + directory fsync).
* ``raft.snap`` holds the newest snapshot: one JSON line (index, term,
  voters, size, crc32) then the state machine's bytes; replaced atomically
  the same way.
* ``raft.log`` holds the entries after the snapshot, append-only, one JSON
  record per line (term, index, kind, data in hex); ``sync()`` fsyncs what
  was appended since the last call (the driver calls it before sending, so
  a burst of appends shares one fsync).  A conflicting suffix (a new leader overwriting uncommitted
  entries) and a compaction rewrite the file atomically.

A crash at any point leaves a loadable state.  Compacting writes the
snapshot first and the shorter log second, so after a crash between the two
the log may still hold entries the snapshot covers: loading skips them (and
if the entry at the snapshot's index has another term -- a follower's
log replaced by a leader's snapshot -- everything after it is dropped too),
then rewrites the log.  A torn last record (a crash mid-write, never
acknowledged) is dropped; anything else malformed is a StorageError, never a
silently shorter log.  The commit index alone is not worth two fsyncs per commit on every node
(Raft's safety needs term and vote durable, not the commit index, which a
restarted node learns again): it is written with the next term or vote
change, snapshot or close.  A write that fails (disk full) raises StorageError;
the node then stops (its errors are sticky) and a restart reloads the disk.
"""

from __future__ import annotations

import json
import os
import zlib

from dwcp.durable import write_all, write_atomic
from dwcp.errors import StorageError

from .raft import Entry, HardState, MemoryStorage, SnapshotMeta

__all__ = ["FileStorage"]


class AtomicFiles:
    """Writes for a durable store in ``self.dir``: every write goes through ``_write`` (a test may make it
    fail), ``_replace`` swaps a whole file atomically (``dwcp.durable.write_atomic``: tmp + fsync + rename +
    directory fsync)."""

    dir: str

    def _write(self, fd: int, data: bytes) -> None:
        write_all(fd, data)

    def _replace(self, path: str, data: bytes) -> None:
        write_atomic(path, data, write=self._write)


_KINDS = {"data": b"data", "noop": b"noop", "conf": b"conf"}


def _record(e: Entry) -> bytes:
    """``json.dumps([term, index, kind, data hex])`` plus a newline, byte for byte (the kinds and hex digits
    need no escaping), built with one %-format: 7x cheaper, and every node writes every entry."""
    kind = _KINDS.get(e.kind)
    if kind is None:  # not a kind the wire lets in: the general form
        return json.dumps([e.term, e.index, e.kind, e.data.hex()], separators=(",", ":")).encode() + b"\n"
    return b'[%d,%d,"%b","%b"]\n' % (e.term, e.index, kind, e.data.hex().encode())


class FileStorage(MemoryStorage, AtomicFiles):
    def __init__(self, directory: str) -> None:
        super().__init__()
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._hard_path = os.path.join(directory, "raft.hard")
        self._log_path = os.path.join(directory, "raft.log")
        self._snap_path = os.path.join(directory, "raft.snap")
        self._fd = -1
        self._hard_dirty = False
        self._unsynced = False
        self._load()
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # -- loading -------------------------------------------------------------------
    def _load(self) -> None:
        try:
            with open(self._hard_path) as f:
                h = json.load(f)
            self.hard = HardState(int(h["term"]), h["vote"], int(h["commit"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{self._hard_path} is damaged: {exc}") from None
        self._load_snap()
        try:
            with open(self._log_path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            lines = [b""]
        torn = lines.pop()  # after the last newline: empty, or a record a crash cut short
        snap = self.snap
        prev: int | None = None
        stale = False  # records the snapshot covers, or a suffix it replaced: rewrite the file
        replaced = False
        for n, line in enumerate(lines, 1):
            try:
                term, index, kind, data = json.loads(line)
                e = Entry(int(term), int(index), str(kind), bytes.fromhex(data))
            except (ValueError, TypeError) as exc:
                raise StorageError(f"{self._log_path} line {n} is damaged: {exc}") from None
            if (prev is None and e.index > snap.index + 1) or (prev is not None and e.index != prev + 1):
                raise StorageError(f"{self._log_path} line {n}: index {e.index} after {prev or snap.index}")
            prev = e.index
            if e.index <= snap.index or replaced:
                stale = True
                replaced = replaced or (e.index == snap.index and e.term != snap.term)
                continue
            self.log.append(e)
        if torn or stale:
            self._rewrite_log()
        if self.hard.commit > len(self.log) - 1 + snap.index:
            raise StorageError(f"{self.dir}: commit index {self.hard.commit} beyond the log "
                               f"({len(self.log) - 1 + snap.index})")  # fmt: skip

    def _load_snap(self) -> None:
        try:
            with open(self._snap_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        try:
            head, _, data = raw.partition(b"\n")
            h = json.loads(head)
            meta = SnapshotMeta(int(h["index"]), int(h["term"]), tuple(str(v) for v in h["voters"]))
            if len(data) != int(h["size"]) or zlib.crc32(data) != int(h["crc32"]) or meta.index < 1:
                raise ValueError("size or checksum mismatch")
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{self._snap_path} is damaged: {exc}") from None
        self.snap, self.snap_data = meta, data
        self.log = [Entry(meta.term, meta.index, "noop")]

    # -- writing (AtomicFiles: every write goes through _write, which a test may make fail) -------
    def _rewrite_log(self) -> None:
        self._replace(self._log_path, b"".join(_record(e) for e in self.log[1:]))
        self._unsynced = False
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _failed(self, what: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot persist the raft {what} in {self.dir}: {exc.strerror or exc}")

    def set_hard(self, hs: HardState) -> None:
        if hs == self.hard:
            return
        if (hs.term, hs.vote) == (self.hard.term, self.hard.vote):
            # only the commit index moved: Raft's safety needs term and vote durable, not the commit
            # index (a restarted node learns it again from the leader), so it is written with the next
            # term/vote change, snapshot or close -- not with two fsyncs per commit on every node
            self.hard = hs
            self._hard_dirty = True
            return
        self._write_hard(hs)

    def _write_hard(self, hs: HardState) -> None:
        try:
            self._replace(
                self._hard_path, json.dumps({"term": hs.term, "vote": hs.vote, "commit": hs.commit}).encode()
            )
        except OSError as exc:
            raise self._failed("hard state", exc) from exc
        self.hard = hs
        self._hard_dirty = False

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        rewrite = entries[0].index <= self.log[0].index + len(self.log) - 1
        super().append(entries)
        try:
            if rewrite:
                self._rewrite_log()
            else:
                self._write(self._fd, b"".join(_record(e) for e in entries))
                self._unsynced = True
        except OSError as exc:
            raise self._failed("log", exc) from exc

    def sync(self) -> None:
        """Make appended entries durable: one fsync for everything appended since the last one.  The driver
        calls it before it sends what ``ready()`` returned (so several appends share one fsync)."""
        if self._unsynced:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._failed("log", exc) from exc
            self._unsynced = False

    def _save_snap(self, meta: SnapshotMeta, data: bytes) -> None:
        head = {"index": meta.index, "term": meta.term, "voters": list(meta.voters), "size": len(data),
                "crc32": zlib.crc32(data)}  # fmt: skip
        self._replace(self._snap_path, json.dumps(head).encode() + b"\n" + data)

    def compact(self, meta: SnapshotMeta, data: bytes) -> None:
        super().compact(meta, data)
        try:
            self._save_snap(meta, data)  # first the snapshot, then the shorter log (see the module doc)
            self._rewrite_log()
        except OSError as exc:
            raise self._failed("snapshot", exc) from exc
        if self._hard_dirty:
            self._write_hard(self.hard)

    def install(self, meta: SnapshotMeta, data: bytes) -> None:
        super().install(meta, data)
        try:
            self._save_snap(meta, data)
            self._rewrite_log()
        except OSError as exc:
            raise self._failed("snapshot", exc) from exc

    def close(self) -> None:
        if self._hard_dirty:
            try:
                self._write_hard(self.hard)
            except StorageError:
                pass  # the commit index is advisory (see set_hard)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
