"""Durable Raft storage: hard state and log in the node's data directory, fsynced.

``raft.hard`` holds term, vote and commit (JSON, replaced atomically:
tmp + fsync + rename + directory fsync).  ``raft.log`` is append-only, one
JSON record per line (term, index, kind, data in hex), fsynced after each
append; a conflicting suffix (rare: a new leader overwriting uncommitted
entries) rewrites the file atomically.  On load, a torn last line (a crash
mid-write, never acknowledged) is dropped; anything else malformed is a
StorageError, never a silently shorter log.
"""

from __future__ import annotations

import json
import os

from dwcp.errors import StorageError

from .raft import Entry, HardState, MemoryStorage

__all__ = ["FileStorage"]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(e: Entry) -> bytes:
    return json.dumps([e.term, e.index, e.kind, e.data.hex()], separators=(",", ":")).encode() + b"\n"


class FileStorage(MemoryStorage):
    def __init__(self, directory: str) -> None:
        super().__init__()
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._hard_path = os.path.join(directory, "raft.hard")
        self._log_path = os.path.join(directory, "raft.log")
        self._load()
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _load(self) -> None:
        try:
            with open(self._hard_path) as f:
                h = json.load(f)
            self.hard = HardState(int(h["term"]), h["vote"], int(h["commit"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{self._hard_path} is damaged: {exc}") from None
        try:
            with open(self._log_path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            lines = [b""]
        torn = lines.pop()  # after the last newline: empty, or a record a crash cut short
        for n, line in enumerate(lines, 1):
            try:
                term, index, kind, data = json.loads(line)
                e = Entry(int(term), int(index), str(kind), bytes.fromhex(data))
            except (ValueError, TypeError) as exc:
                raise StorageError(f"{self._log_path} line {n} is damaged: {exc}") from None
            if e.index != len(self.log):
                raise StorageError(f"{self._log_path} line {n}: index {e.index} after {len(self.log) - 1}")
            self.log.append(e)
        if torn:
            with open(self._log_path, "r+b") as f:  # drop the torn tail for good
                f.truncate(sum(len(x) + 1 for x in lines))
        if self.hard.commit > len(self.log) - 1:
            raise StorageError(f"{self.dir}: commit index {self.hard.commit} beyond the log ({len(self.log) - 1})")

    def set_hard(self, hs: HardState) -> None:
        if hs == self.hard:
            return
        tmp = self._hard_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"term": hs.term, "vote": hs.vote, "commit": hs.commit}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._hard_path)
        _fsync_dir(self.dir)
        self.hard = hs

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        rewrite = first < len(self.log)
        super().append(entries)
        try:
            if rewrite:
                tmp = self._log_path + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(b"".join(_record(e) for e in self.log[1:]))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._log_path)
                _fsync_dir(self.dir)
                os.close(self._fd)
                self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            else:
                os.write(self._fd, b"".join(_record(e) for e in entries))
                os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot persist the raft log in {self.dir}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
