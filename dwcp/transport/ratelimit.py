"""Aggregate rate cap: a sans-IO token bucket shared by every stream, and a thin blocking driver.

Rules
-----
1. Time is a parameter: ``consume(n, now)`` returns how long the caller must
   wait before sending ``n`` bytes.  Tokens may go negative (debt), so a
   chunk larger than the burst still passes, after a proportional wait.
2. ``rate`` None or 0 means unlimited; ``set_rate`` changes it live.
3. One lock: N stream threads share a bucket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dwcp.errors import ConfigError

__all__ = ["TokenBucket", "RateLimiter"]


class TokenBucket:
    def __init__(self, rate_bytes_per_s: float | None, burst_bytes: int, *, now: float = 0.0) -> None:
        if burst_bytes <= 0:
            raise ConfigError(f"burst must be positive, got {burst_bytes}")
        if rate_bytes_per_s is not None and rate_bytes_per_s < 0:
            raise ConfigError(f"rate must be >= 0, got {rate_bytes_per_s}")
        self.rate = float(rate_bytes_per_s or 0.0)
        self.burst = float(burst_bytes)
        self._tokens = self.burst
        self._t = now
        self._started = False
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        if not self._started:
            self._t, self._started = now, True
        if now > self._t:
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now

    def consume(self, n: int, now: float) -> float:
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            if not self.rate:
                return 0.0
            self._refill(now)
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def set_rate(self, rate_bytes_per_s: float | None, now: float) -> None:
        if rate_bytes_per_s is not None and rate_bytes_per_s < 0:
            raise ConfigError(f"rate must be >= 0, got {rate_bytes_per_s}")
        with self._lock:
            self._refill(now)
            self.rate = float(rate_bytes_per_s or 0.0)
            if not self.rate:
                self._tokens = self.burst


class RateLimiter:
    """Blocking driver: ``acquire(n)`` sleeps for the bucket's answer."""

    def __init__(self, bucket: TokenBucket, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.bucket = bucket
        self.clock = clock
        self.sleep = sleep

    def acquire(self, n: int) -> float:
        delay = self.bucket.consume(n, self.clock())
        if delay > 0:
            self.sleep(delay)
        return delay
