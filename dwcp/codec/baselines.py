"""Baselines: the versions a delta may be computed against.

Theory of operation
-------------------
A sender keeps, per key, the last versions it sent (by xxh3-128 digest); the
next send of that key can travel as a delta against one of them if the
receiver holds it too.  Deltas are always against a whole version (never a
chain of patches to replay), but a long run of deltas is still bounded:
after ``max_delta_chain`` consecutive deltas, or ``refresh_interval_s``
after the last full send, the next send is full again, so a drifted or
corrupted baseline cannot live forever.

Rules
-----
1. Time is a parameter: every method that depends on it takes ``now``.
2. The store holds references, not copies: a caller must not mutate a
   buffer after putting it here (numpy arrays are marked read-only when
   possible).
3. Pruning drops the least recently used versions first, beyond
   ``max_versions_per_key`` per key and ``max_total_bytes`` in all, and any
   version unused for ``ttl_s``.
4. Thread-safe: one lock, held only for bookkeeping.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from dwcp.errors import ConfigError

__all__ = ["Baseline", "BaselineStore"]


@dataclass(eq=False)
class Baseline:
    key: str
    digest: bytes  # xxh3-128 of the whole version
    data: object  # type of data is a contiguous buffer (bytes, memoryview, mmap, numpy array)
    size: int
    chain: int  # deltas since the last full send (0 = this version went full)
    root_time: float  # when the chain's full send happened
    last_used: float = field(default=0.0)


class BaselineStore:
    def __init__(
        self,
        *,
        max_delta_chain: int = 10,
        refresh_interval_s: float = 300.0,
        max_versions_per_key: int = 2,
        max_total_bytes: int = 16 * 1024**3,
        ttl_s: float = 24 * 3600.0,
    ) -> None:
        if max_delta_chain < 0:
            raise ConfigError(f"max_delta_chain must be >= 0, got {max_delta_chain}")
        if refresh_interval_s <= 0:
            raise ConfigError(f"refresh_interval_s must be positive, got {refresh_interval_s}")
        if max_versions_per_key < 1:
            raise ConfigError(f"max_versions_per_key must be >= 1, got {max_versions_per_key}")
        if max_total_bytes < 0 or ttl_s <= 0:
            raise ConfigError("max_total_bytes must be >= 0 and ttl_s positive")
        self.max_delta_chain = max_delta_chain
        self.refresh_interval_s = refresh_interval_s
        self.max_versions_per_key = max_versions_per_key
        self.max_total_bytes = max_total_bytes
        self.ttl_s = ttl_s
        self._keys: dict[str, OrderedDict[bytes, Baseline]] = {}  # newest last
        self._total = 0
        self._lock = threading.Lock()

    # -- queries ---------------------------------------------------------
    def latest(self, key: str) -> Baseline | None:
        with self._lock:
            versions = self._keys.get(key)
            return next(reversed(versions.values())) if versions else None

    def get(self, key: str, digest: bytes) -> Baseline | None:
        with self._lock:
            versions = self._keys.get(key)
            return versions.get(bytes(digest)) if versions else None

    def plan(self, key: str, now: float) -> Baseline | None:
        """The baseline the next send of ``key`` should delta against, or None for a full send."""
        b = self.latest(key)
        if b is None:
            return None
        if b.chain >= self.max_delta_chain:
            return None
        if now - b.root_time >= self.refresh_interval_s:
            return None
        with self._lock:
            b.last_used = now
        return b

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._keys.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    # -- updates ---------------------------------------------------------
    def record(self, key: str, digest: bytes, data, now: float, delta_from: Baseline | None) -> Baseline:
        """Remember a version that was sent (full when ``delta_from`` is None)."""
        mv = memoryview(data)
        try:  # rule 2: freeze numpy arrays we keep a reference to
            data.setflags(write=False)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
        if delta_from is None:
            chain, root = 0, now
        else:
            chain, root = delta_from.chain + 1, delta_from.root_time
        b = Baseline(key, bytes(digest), data, mv.nbytes, chain, root, now)
        with self._lock:
            versions = self._keys.setdefault(key, OrderedDict())
            old = versions.pop(b.digest, None)
            if old is not None:
                self._total -= old.size
            versions[b.digest] = b
            self._total += b.size
            self._prune_locked(now)
        return b

    def forget(self, key: str) -> int:
        with self._lock:
            versions: dict[bytes, Baseline] = self._keys.pop(key, {})
            for b in versions.values():
                self._total -= b.size
            return len(versions)

    def prune(self, now: float) -> list[Baseline]:
        with self._lock:
            return self._prune_locked(now)

    def _prune_locked(self, now: float) -> list[Baseline]:
        dropped: list[Baseline] = []

        def drop(key: str, b: Baseline) -> None:
            del self._keys[key][b.digest]
            if not self._keys[key]:
                del self._keys[key]
            self._total -= b.size
            dropped.append(b)

        for key, versions in list(self._keys.items()):
            while len(versions) > self.max_versions_per_key:
                drop(key, next(iter(versions.values())))
            for b in list(versions.values()):
                if now - b.last_used > self.ttl_s:
                    drop(key, b)
        if self._total > self.max_total_bytes:
            for b in sorted((b for v in self._keys.values() for b in v.values()), key=lambda b: b.last_used):
                if self._total <= self.max_total_bytes:
                    break
                drop(b.key, b)
        return dropped
