"""The scrub: re-hash every stored version at a bounded rate, and quarantine what rotted.

Theory of operation
-------------------
A stored version's file is named by its object digest, the root of its leaf
hashes (``dwcp.digest``), so a copy can be checked alone: read it leaf by
leaf, rebuild the root, compare.  The background scrub runs a pass every
``storage.scrub_interval_s`` over every version of every key, reading at most
``storage.scrub_rate_bytes_per_s`` (0: no background scrub); ``dwcp scrub
--now`` runs one pass at once, unthrottled, and reports it.

A version whose bytes no longer give its digest (bit rot, a torn write, a
file changed behind the daemon's back) is *quarantined*: moved under
``<data dir>/quarantine/`` (``ObjectStore.remove_version``), so no fetch or
relay reads it again; the catalog is told this node no longer holds it (a
``drop``); and anti-entropy is asked to pull the version back from a holder
at once (``on_corrupt``).  A fetch never returns rotten bytes in any case:
the fetcher verifies the digest and fails over to the next holder.

Rules
-----
1. Versions are immutable, so a pass needs no lock: a version pruned or
   quarantined under it is skipped; two passes racing quarantine a file once
   (only the one that moved it counts it).
2. Throttled by sleeping between 4 MiB reads: over any pass, bytes read /
   elapsed <= the rate.
3. Counted: bytes read, versions checked by result, passes, the last pass's
   end (wall clock), in metrics and ``dwcp status``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from dwcp.digest import LEAF_BYTES, TreeHasher
from dwcp.errors import DWCPError
from dwcp.storage import ObjectStore, VersionInfo

__all__ = ["Scrubber"]

log = logging.getLogger("dwcp.scrub")

READ_BYTES = 4 * LEAF_BYTES  # one read: whole leaves, so the tree needs no read-back


class Scrubber:
    """``on_corrupt(info)`` runs after a rotten version was quarantined (the catalog drop and the
    repair); ``rate()`` and ``interval()`` are read at each pass (a reload changes them)."""

    def __init__(self, store: ObjectStore, *, rate: Callable[[], float], interval: Callable[[], float],
                 on_corrupt: Callable[[VersionInfo], None], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] | None = None) -> None:  # fmt: skip
        self.store, self.rate, self.interval, self.on_corrupt, self.clock = (
            store,
            rate,
            interval,
            on_corrupt,
            clock,
        )
        self._stop = threading.Event()
        self.sleep = sleep if sleep is not None else self._stop.wait
        self.bytes_read = 0
        self.ok = 0
        self.corrupt = 0
        self.passes = 0
        self.last_pass_end: float | None = None  # wall clock
        self.last: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None

    def check(self, info: VersionInfo, rate: float) -> bool | None:
        """Whether ``info``'s bytes still give its digest (None: it is gone), reading at ``rate``."""
        try:
            fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            tree = TreeHasher(size)
            t0, done = self.clock(), 0
            while done < size:
                block = os.pread(fd, min(READ_BYTES, size - done), done)
                if not block:  # truncated under us: its size no longer matches what was read
                    return False
                tree.add(done, block)
                done += len(block)
                self.bytes_read += len(block)
                if rate:  # rule 2
                    ahead = done / rate - (self.clock() - t0)
                    if ahead > 0:
                        self.sleep(ahead)
                if self._stop.is_set():
                    return None  # not judged: stopping
            return tree.root(lambda o, n: os.pread(fd, n, o)) == info.digest and size == info.size
        finally:
            os.close(fd)

    def run_once(self, *, rate: float | None = None) -> dict[str, Any]:
        """One pass over every stored version (at ``rate``, default the configured one; 0: unthrottled)."""
        r = self.rate() if rate is None else rate
        t0, read0 = time.time(), self.bytes_read
        checked, bad = 0, []
        for key in self.store.keys():
            for info in self.store.versions(key):
                if self._stop.is_set():
                    break
                good = self.check(info, r)
                if good is None:
                    continue
                checked += 1
                if good:
                    self.ok += 1
                    continue
                try:
                    moved = self.store.remove_version(info, quarantine=True)
                except DWCPError as exc:  # a transfer holds the key: the next pass tries again
                    log.warning("scrub: %s version %s is corrupt and could not be quarantined yet: %s", key,
                                info.digest.hex(), exc)  # fmt: skip
                    continue
                if not moved:
                    continue
                self.corrupt += 1
                bad.append({"key": key, "digest": info.digest.hex(), "size": info.size})
                log.error("scrub: %s version %s fails its digest: quarantined; repairing it from a replica", key,
                          info.digest.hex())  # fmt: skip
                try:
                    self.on_corrupt(info)
                except Exception:  # the repair is best effort: anti-entropy's next pass retries
                    log.exception("scrub: repairing %s failed", key)
        self.passes += 1
        self.last_pass_end = time.time()
        self.last = {"checked": checked, "corrupt": bad, "bytes": self.bytes_read - read0,
                     "seconds": self.last_pass_end - t0}  # fmt: skip
        return self.last

    def status(self) -> dict[str, Any]:
        return {"passes": self.passes, "bytes_total": self.bytes_read, "ok_total": self.ok,
                "corrupt_total": self.corrupt, "last_pass_end": self.last_pass_end, "last": self.last}  # fmt: skip

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                started = self.clock()
                if self.rate() > 0:
                    try:
                        self.run_once()
                    except Exception:  # a pass that breaks must not end the scrub: the next one retries
                        log.exception("scrub pass failed")
                self._stop.wait(max(1.0, self.interval() - (self.clock() - started)))

        self._thread = threading.Thread(target=loop, name="dwcp-scrub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
