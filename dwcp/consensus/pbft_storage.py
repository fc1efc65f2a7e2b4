"""Durable PBFT state: what a correct node needs to never contradict itself after a restart, and to resume.

A ``PbftNode`` given a storage writes, as it goes (``PbftNode`` documents
what and when):

* the **state** -- view, status, its VIEW-CHANGE in progress, the NEW-VIEW
  that started its view, the stable checkpoint and its proof, the
  request-id reservation -- replaced as a whole, durable at once (it changes
  at view changes, stable checkpoints and every ``RID_BLOCK`` proposals);
* the **log**: records ``[kind, seq, body]`` for the slots above the stable
  checkpoint: ``pp`` (a PRE-PREPARE it accepted or, as primary, issued),
  ``vote`` (its own PREPARE, COMMIT or CHECKPOINT), ``pcert`` (a prepared
  certificate, reported in a later VIEW-CHANGE) and ``ccert`` (a commit
  certificate, served with FETCH); ``compact(h)`` drops the records at or
  below a new stable checkpoint h;
* the **executed** entries ``[seq, pre-prepare]`` since the engine's start,
  append-only.  They are the host's redo log: the daemon persists its catalog
  only at epoch starts, so a restarted node re-emits them and the host
  re-applies them (and the node rebuilds its hash chain from them).

Appends become durable at ``sync()``: the driver calls it after ``ready()``
and before it sends what ``ready()`` returned, so nothing a node signed
reaches a peer before it is on disk, and a burst of appends shares one fsync.

``FilePbftStorage(directory)`` keeps ``pbft.state`` (JSON, replaced
atomically: tmp + fsync + rename + directory fsync), ``pbft.log`` and
``pbft.exec`` (one JSON record per line; the log is rewritten atomically at
compaction).  A crash at any point leaves a loadable state: the state is
written before the log is compacted, and loading skips log records at or
below the state's stable checkpoint.  A torn last record (a crash
mid-write, never synced, so never acted on) is dropped; anything else
malformed is a StorageError, never a silently shorter history.

``MemoryPbftStorage`` is the simulator's disk: ``crash()`` loses what was
appended since the last ``sync()``, as a power cut would.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from dwcp.errors import StorageError

from .storage import AtomicFiles

__all__ = ["FilePbftStorage", "MemoryPbftStorage", "PbftStorage"]

Record = list[Any]  # JSON-safe: [kind, seq, body] in the log, [seq, pre-prepare wire] in the executed entries
LOG_KINDS = ("pp", "vote", "pcert", "ccert")


class PbftStorage(Protocol):
    def load(self) -> tuple[dict[str, Any] | None, list[Record], list[Record]]:
        """(state or None, log records, executed records), as last synced (or compacted)."""
        ...

    def set_state(self, state: dict[str, Any]) -> None: ...

    def append(self, rec: Record) -> None: ...

    def append_exec(self, rec: Record) -> None: ...

    def compact(self, upto: int) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


def _check_log(rec: object) -> Record:
    if (not isinstance(rec, list) or len(rec) != 3 or rec[0] not in LOG_KINDS or type(rec[1]) is not int
            or rec[1] < 0):  # fmt: skip
        raise ValueError(f"not a log record: {str(rec)[:80]}")
    return rec


def _check_exec(rec: object, prev: int) -> Record:
    if not isinstance(rec, list) or len(rec) != 2 or type(rec[0]) is not int or not isinstance(rec[1], dict):
        raise ValueError(f"not an executed record: {str(rec)[:80]}")
    if rec[0] != prev + 1:
        raise ValueError(f"executed seq {rec[0]} after {prev}")
    return rec


class MemoryPbftStorage:
    """In memory; what ``sync()`` has not covered is lost by ``crash()``."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.log: list[Record] = []
        self.execs: list[Record] = []
        self._log_synced = 0
        self._exec_synced = 0

    def load(self) -> tuple[dict[str, Any] | None, list[Record], list[Record]]:
        return self.state, list(self.log), list(self.execs)

    def set_state(self, state: dict[str, Any]) -> None:
        self.state = state

    def append(self, rec: Record) -> None:
        self.log.append(rec)

    def append_exec(self, rec: Record) -> None:
        self.execs.append(rec)

    def compact(self, upto: int) -> None:
        self.log = [
            r for r in self.log if r[1] > upto
        ]  # an atomic rewrite: durable, unsynced records included
        self._log_synced = len(self.log)

    def sync(self) -> None:
        self._log_synced, self._exec_synced = len(self.log), len(self.execs)

    def crash(self) -> None:
        del self.log[self._log_synced :]
        del self.execs[self._exec_synced :]

    def close(self) -> None:
        pass


def _line(rec: Record) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


class FilePbftStorage(AtomicFiles):
    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._state_path = os.path.join(directory, "pbft.state")
        self._log_path = os.path.join(directory, "pbft.log")
        self._exec_path = os.path.join(directory, "pbft.exec")
        self._log_fd = self._exec_fd = -1
        self._unsynced: set[int] = set()
        self._state: dict[str, Any] | None = None
        self._log: list[Record] = []  # the log as on disk (kept for compaction rewrites)
        self._execs: list[Record] = []  # only until load() hands them over: the node keeps what it needs
        self._load()
        self._log_fd = self._open(self._log_path)
        self._exec_fd = self._open(self._exec_path)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # -- loading -------------------------------------------------------------------
    def _load(self) -> None:
        try:
            with open(self._state_path, "rb") as f:
                st = json.loads(f.read())
            if not isinstance(st, dict):
                raise ValueError("not an object")
            self._state = st
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise StorageError(f"{self._state_path} is damaged: {exc}") from None
        h = int(self._state.get("h", 0)) if self._state else 0
        log, torn_log = self._read(self._log_path, executed=False)
        self._log = [r for r in log if r[1] > h]
        if torn_log or len(self._log) != len(log):
            self._rewrite_log()
        self._execs, torn_exec = self._read(self._exec_path, executed=True)
        if torn_exec:
            self._replace(self._exec_path, b"".join(_line(r) for r in self._execs))

    def _read(self, path: str, *, executed: bool) -> tuple[list[Record], bool]:
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return [], False
        torn = lines.pop()  # after the last newline: empty, or a record a crash cut short
        out: list[Record] = []
        prev = 0
        for n, line in enumerate(lines, 1):
            try:
                rec = _check_exec(json.loads(line), prev) if executed else _check_log(json.loads(line))
            except ValueError as exc:
                raise StorageError(f"{path} line {n} is damaged: {exc}") from None
            prev = rec[0] if executed else prev
            out.append(rec)
        return out, bool(torn)

    def load(self) -> tuple[dict[str, Any] | None, list[Record], list[Record]]:
        execs, self._execs = self._execs, []
        return self._state, list(self._log), execs

    # -- writing -------------------------------------------------------------------
    def _rewrite_log(self) -> None:
        self._replace(self._log_path, b"".join(_line(r) for r in self._log))
        if self._log_fd >= 0:
            self._unsynced.discard(self._log_fd)
            os.close(self._log_fd)
            self._log_fd = self._open(self._log_path)

    def _failed(self, what: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot persist the pbft {what} in {self.dir}: {exc.strerror or exc}")

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            self._replace(self._state_path, json.dumps(state, separators=(",", ":")).encode())
        except OSError as exc:
            raise self._failed("state", exc) from exc
        self._state = state

    def append(self, rec: Record) -> None:
        self._log.append(rec)
        try:
            self._write(self._log_fd, _line(rec))
        except OSError as exc:
            raise self._failed("log", exc) from exc
        self._unsynced.add(self._log_fd)

    def append_exec(self, rec: Record) -> None:
        try:
            self._write(self._exec_fd, _line(rec))
        except OSError as exc:
            raise self._failed("executed entries", exc) from exc
        self._unsynced.add(self._exec_fd)

    def compact(self, upto: int) -> None:
        """Drop the log records at or below the stable checkpoint ``upto`` (the node wrote the state first)."""
        self._log = [r for r in self._log if r[1] > upto]
        try:
            self._rewrite_log()
        except OSError as exc:
            raise self._failed("log", exc) from exc

    def sync(self) -> None:
        """Make the appends durable (one fsync per file written since the last call).  The driver calls it
        after ``ready()`` and before sending what it returned."""
        for fd in sorted(self._unsynced):
            try:
                os.fsync(fd)
            except OSError as exc:
                raise self._failed("log", exc) from exc
        self._unsynced.clear()

    def close(self) -> None:
        for fd in (self._log_fd, self._exec_fd):
            if fd >= 0:
                os.close(fd)
        self._log_fd = self._exec_fd = -1
        self._unsynced.clear()
