"""Reference twin of dwcp/_fast/stats.pyx: the same CounterBlock with a lock."""

from __future__ import annotations

import operator
import threading

from ._cyargs import ssize

__all__ = ["CounterBlock"]

_U64 = 1 << 64


class CounterBlock:
    def __init__(self, size) -> None:
        size = ssize(size)
        if size < 1 or size > (1 << 24):
            raise ValueError(f"size must be in [1, 2**24], got {size}")
        self.size = size
        self._slots = [0] * size
        self._lock = threading.Lock()

    def _index(self, i) -> int:
        i = ssize(i)
        if i < 0 or i >= self.size:
            raise IndexError(f"counter index {i} outside [0, {self.size})")
        return i

    def add(self, i, v=1) -> None:
        i = ssize(i)  # Cython converts the arguments in order, then checks the index
        v = operator.index(v)
        if not 0 <= v < _U64:
            raise OverflowError(
                "can't convert negative value to uint64_t"
                if v < 0
                else "value too large to convert to uint64_t"
            )
        i = self._index(i)
        with self._lock:
            self._slots[i] = (self._slots[i] + v) % _U64

    def get(self, i) -> int:
        return self._slots[self._index(i)]

    def set_gauge(self, i, v) -> None:
        i = ssize(i)
        v = operator.index(v)
        if not -(1 << 63) <= v < (1 << 63):
            raise OverflowError("value too large to convert to int64_t")
        i = self._index(i)
        with self._lock:
            self._slots[i] = v % _U64

    def get_gauge(self, i) -> int:
        v = self._slots[self._index(i)]
        return v - _U64 if v >= 1 << 63 else v

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self._slots)
