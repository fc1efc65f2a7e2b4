"""Per-peer circuit breaker (sans-IO): CLOSED -> OPEN -> HALF_OPEN -> CLOSED.

In the spirit of resilience4j / Envoy outlier detection:

* CLOSED: calls flow.  It opens after ``consecutive_failures`` failures in
  a row, or when at least ``min_calls`` outcomes in the last ``window_s``
  seconds have a failure rate >= ``failure_rate``.
* OPEN: calls are refused (``allow`` is False) for ``open_s`` seconds, then
  the breaker is HALF_OPEN.  Each reopening doubles ``open_s`` up to
  ``max_open_s`` (a peer that keeps failing is probed less and less).
* HALF_OPEN: at most ``half_open_calls`` trial calls are let through; if
  ``half_open_calls`` of them succeed it closes (and the backoff resets),
  one failure opens it again.

Time is a parameter (``now``, seconds, monotonic); nothing here sleeps.
``allow(now)`` reserves a trial slot in HALF_OPEN, so every allowed call
must be followed by exactly one ``record(ok, now)``.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from dwcp.errors import ConfigError

__all__ = ["BreakerConfig", "CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the metric's value


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5  # Envoy's consecutive_5xx default
    failure_rate: float = 0.5  # resilience4j's failureRateThreshold default
    min_calls: int = 10
    window_s: float = 60.0
    open_s: float = 30.0  # Envoy's base_ejection_time default
    max_open_s: float = 300.0
    half_open_calls: int = 3

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.min_calls < 1 or self.half_open_calls < 1:
            raise ConfigError("breaker: consecutive_failures, min_calls and half_open_calls must be >= 1")
        if not 0 < self.failure_rate <= 1:
            raise ConfigError(f"breaker: failure_rate must be in (0, 1], got {self.failure_rate}")
        if not (0 < self.open_s <= self.max_open_s and self.window_s > 0):
            raise ConfigError("breaker: need 0 < open_s <= max_open_s and window_s > 0")


class CircuitBreaker:
    def __init__(self, config: BreakerConfig = BreakerConfig()) -> None:
        self.config = config
        self.state = CLOSED
        self._lock = threading.Lock()
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures_in_window = 0
        self._opened_at = 0.0
        self._open_for = config.open_s
        self._trials = 0  # HALF_OPEN: calls let through
        self._trial_ok = 0
        self.opened_total = 0
        self.transitions: list[tuple[float, str, str]] = []  # (now, from, to), last 100

    def _to(self, state: str, now: float) -> None:
        self.transitions.append((now, self.state, state))
        del self.transitions[:-100]
        self.state = state

    def _expire(self, now: float) -> None:
        w = self.config.window_s
        while self._outcomes and self._outcomes[0][0] <= now - w:
            _, ok = self._outcomes.popleft()
            if not ok:
                self._failures_in_window -= 1

    def _open(self, now: float, backoff: bool) -> None:
        if backoff:
            self._open_for = min(self._open_for * 2, self.config.max_open_s)
        self._opened_at = now
        self.opened_total += 1
        self._to(OPEN, now)

    def current(self, now: float) -> str:
        """The state at ``now`` (OPEN turns HALF_OPEN once its time is up)."""
        with self._lock:
            self._tick(now)
            return self.state

    def _tick(self, now: float) -> None:
        if self.state == OPEN and now - self._opened_at >= self._open_for:
            self._trials = self._trial_ok = 0
            self._to(HALF_OPEN, now)

    def allow(self, now: float) -> bool:
        """May a call go to this peer now?  (In HALF_OPEN this takes one of the trial slots.)"""
        with self._lock:
            self._tick(now)
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN and self._trials < self.config.half_open_calls:
                self._trials += 1
                return True
            return False

    def record(self, ok: bool, now: float) -> None:
        """The outcome of a call that ``allow`` let through."""
        c = self.config
        with self._lock:
            self._tick(now)
            if self.state == HALF_OPEN:
                if not ok:
                    self._open(now, backoff=True)
                    return
                self._trial_ok += 1
                if self._trial_ok >= c.half_open_calls:
                    self._reset(now)
                return
            if self.state == OPEN:
                return  # a call that started before the breaker opened
            self._outcomes.append((now, ok))
            if not ok:
                self._failures_in_window += 1
            self._expire(now)
            self._consecutive = 0 if ok else self._consecutive + 1
            n = len(self._outcomes)
            if self._consecutive >= c.consecutive_failures or (
                n >= c.min_calls and self._failures_in_window / n >= c.failure_rate
            ):
                self._open(now, backoff=False)

    def _reset(self, now: float) -> None:
        self._outcomes.clear()
        self._failures_in_window = 0
        self._consecutive = 0
        self._open_for = self.config.open_s
        self._to(CLOSED, now)

    def snapshot(self, now: float) -> dict:
        with self._lock:
            self._tick(now)
            self._expire(now)
            n = len(self._outcomes)
            return {"state": self.state, "consecutive_failures": self._consecutive,
                    "failure_rate": self._failures_in_window / n if n else 0.0, "calls_in_window": n,
                    "opened_total": self.opened_total,
                    "open_remaining_s": max(0.0, self._open_for - (now - self._opened_at)) if self.state == OPEN else 0.0}  # fmt: skip
