"""A hybrid logical clock (Kulkarni et al., 2014): wall-clock milliseconds that never go backwards.

A reading is one integer, ``physical_ms << 16 | logical``: it orders like the wall clock while the
clocks agree, and still strictly increases on a node whose clock steps back, or that has seen a later
reading from another node (``observe``).  The catalog orders concurrent versions of a key by it
(``cluster.conflicts = "lww"``, dwcp.consensus.catalog).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["HLC", "LOGICAL_BITS"]

LOGICAL_BITS = 16


class HLC:
    def __init__(self, wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self._wall_ms = wall_ms
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A reading later than every reading this clock gave or observed."""
        with self._lock:
            wall = self._wall_ms() << LOGICAL_BITS
            self._last = wall if wall > self._last else self._last + 1
            return self._last

    def observe(self, remote: int) -> None:
        """Another node's reading: later readings here come after it."""
        with self._lock:
            if remote > self._last:
                self._last = remote

    @staticmethod
    def physical_ms(reading: int) -> int:
        return reading >> LOGICAL_BITS
