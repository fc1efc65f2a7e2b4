"""Aggregate rate cap: a sans-IO token bucket shared by every stream, and a thin blocking driver.

Theory of operation
-------------------
The bucket holds up to ``burst_bytes`` tokens and refills at ``rate`` bytes
per second.  ``consume(n, now)`` takes ``n`` tokens *at once* and answers how
long the caller must wait before putting those bytes on the wire.  The
balance may go negative (debt): a chunk larger than the burst passes after a
wait proportional to its size, and every later caller queues behind that
debt, so N streams together never exceed the rate over any long window.

Rules
-----
1. Time is a parameter.  The bucket never reads a clock or sleeps; the
   driver (``RateLimiter``) does both, injected so tests use a fake clock.
   A ``now`` earlier than the last one seen refills nothing.
2. ``rate`` None or 0 means unlimited: ``consume`` returns 0 and keeps no
   debt.  ``set_rate`` changes the rate live (config reload); tokens earned
   so far are credited at the old rate, debt is repaid at the new one.
3. One lock.  N stream threads share a bucket; each call is atomic.
4. Operator input (rate, burst) is validated with ConfigError; a negative
   ``n`` is a caller bug (ValueError).
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Callable

from dwcp.errors import ConfigError

__all__ = ["TokenBucket", "RateLimiter"]


def _check_rate(rate: float | None) -> float:
    if rate is None:
        return 0.0
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"rate must be a number of bytes per second, got {rate!r}") from None
    if not math.isfinite(r) or r < 0:
        raise ConfigError(f"rate must be a finite number >= 0 bytes per second (0 = unlimited), got {rate!r}")
    return r


class TokenBucket:
    """Sans-IO token bucket; see the module's rules."""

    def __init__(self, rate_bytes_per_s: float | None, burst_bytes: int) -> None:
        try:
            burst = operator.index(burst_bytes)  # whole bytes; numpy integers welcome
        except TypeError:
            burst = 0
        if isinstance(burst_bytes, bool) or burst <= 0:
            raise ConfigError(f"burst must be a positive whole number of bytes, got {burst_bytes!r}")
        self._rate = _check_rate(rate_bytes_per_s)
        self._burst = float(burst)
        self._tokens = self._burst
        self._t: float | None = None  # the first consume() or set_rate() starts the clock
        self._lock = threading.Lock()

    @property
    def rate_bytes_per_s(self) -> float | None:
        """The current rate, None when unlimited."""
        return self._rate or None

    @property
    def burst_bytes(self) -> int:
        return int(self._burst)

    def tokens(self, now: float) -> float:
        """The balance at ``now`` (negative = debt); for reports and tests."""
        with self._lock:
            self._refill(now)
            return self._tokens

    def _refill(self, now: float) -> None:
        if self._t is None:
            self._t = now
            return
        if now > self._t:
            if self._rate:
                self._tokens = min(self._burst, self._tokens + (now - self._t) * self._rate)
            self._t = now

    def consume(self, n: int, now: float) -> float:
        """Take ``n`` bytes' worth; return the seconds to wait before sending them."""
        if n < 0:
            raise ValueError(f"cannot consume a negative number of bytes ({n})")
        with self._lock:
            self._refill(now)
            if not self._rate:
                return 0.0
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def set_rate(self, rate_bytes_per_s: float | None, now: float) -> None:
        """Change the rate from ``now`` on (None or 0 = unlimited)."""
        rate = _check_rate(rate_bytes_per_s)
        with self._lock:
            self._refill(now)
            if not self._rate or not rate:
                # leaving or entering unlimited: no debt carries over, start with a full burst
                self._tokens = self._burst
            self._rate = rate


class RateLimiter:
    """Blocking driver: ``acquire(n)`` sleeps for as long as the bucket says."""

    def __init__(
        self,
        bucket: TokenBucket,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = bucket
        self.clock = clock
        self.sleep = sleep

    def acquire(self, n: int) -> float:
        """Wait until ``n`` bytes may be sent; return the seconds waited."""
        delay = self.bucket.consume(n, self.clock())
        if delay > 0:
            self.sleep(delay)
        return delay

    def set_rate(self, rate_bytes_per_s: float | None) -> None:
        self.bucket.set_rate(rate_bytes_per_s, self.clock())
