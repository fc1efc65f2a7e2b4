"""Health checks and their aggregate (sans-IO: observations in, a status out, ``now`` a parameter).

Statuses are ordered HEALTHY < DEGRADED < UNHEALTHY; the overall status is
the worst of the checks.  A check that raises is UNHEALTHY with the error as
its message -- it never takes the registry down.  ``/healthz`` answers 200
while the node is healthy or degraded and 503 when unhealthy; ``/readyz``
answers 200 only while the daemon serves and is not draining.

The checks (thresholds from ``[health]``):

* AMST -- the streams of running transfers are within [min, max]; zero
  streams while a transfer runs is unhealthy; no transfer is healthy.
* HDE -- compression ratio below ``min_compression_ratio`` is degraded;
  deltas disabled is degraded; deltas enabled but no baselines held is
  degraded (the next send of every key goes full).
* Error rate -- failed / all transfers over the last ``error_window_s``:
  below ``error_rate_degraded`` healthy, from it up to and including
  ``error_rate_unhealthy`` degraded, above it unhealthy; no transfers healthy.
  (1% exactly is degraded, 5% exactly is degraded, 5.01% unhealthy.)
* Baseline sync -- per key, the fraction of its replicas at the latest
  version: all healthy; a lagging replica whose version is older than
  ``baseline_max_age_s`` degraded; fewer than half at the latest unhealthy
  (exactly half is degraded).  The worst key decides.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dwcp.config import HealthConfig

__all__ = ["Status", "CheckResult", "Report", "HealthRegistry", "AmstCheck", "HdeCheck", "ErrorRateCheck",
           "BaselineSyncCheck"]  # fmt: skip


class Status(enum.IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    status: Status
    checks: tuple[CheckResult, ...]
    at: float

    @property
    def http_status(self) -> int:
        return 503 if self.status is Status.UNHEALTHY else 200

    def to_dict(self) -> dict:
        return {"status": str(self.status), "at": self.at,
                "checks": {c.name: {"status": str(c.status), "message": c.message, **c.detail} for c in self.checks}}  # fmt: skip


Check = Callable[[float], CheckResult]


class HealthRegistry:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()
        self.last: Report | None = None

    def register(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def unregister(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def evaluate(self, now: float) -> Report:
        with self._lock:
            checks = list(self._checks.items())
        results = []
        for name, check in checks:
            try:
                r = check(now)
                if r.name != name:
                    r = CheckResult(name, r.status, r.message, r.detail)
            except Exception as exc:
                r = CheckResult(name, Status.UNHEALTHY, f"check failed: {type(exc).__name__}: {exc}")
            results.append(r)
        worst = max((r.status for r in results), default=Status.HEALTHY)
        self.last = Report(worst, tuple(results), now)
        return self.last


class AmstCheck:
    """``transfers()`` returns the stream count of each running transfer."""

    def __init__(self, transfers: Callable[[], list[int]], min_streams: int, max_streams: int) -> None:
        self.transfers = transfers
        self.min_streams, self.max_streams = min_streams, max_streams

    def __call__(self, now: float) -> CheckResult:
        counts = self.transfers()
        d = {"transfers": len(counts), "streams": sum(counts)}
        if not counts:
            return CheckResult("amst", Status.HEALTHY, "no transfer running", d)
        if any(n == 0 for n in counts):
            return CheckResult("amst", Status.UNHEALTHY, "a running transfer has no stream", d)
        out = [n for n in counts if not self.min_streams <= n <= self.max_streams]
        if out:
            return CheckResult("amst", Status.DEGRADED,
                               f"{len(out)} transfers outside [{self.min_streams}, {self.max_streams}] streams", d)  # fmt: skip
        return CheckResult("amst", Status.HEALTHY, f"{len(counts)} transfers, streams within bounds", d)


class HdeCheck:
    """``ratio()`` returns raw/wire so far (None before any data); ``baselines()`` how many are held."""

    def __init__(self, ratio: Callable[[], float | None], baselines: Callable[[], int], *, delta_enabled: bool,
                 min_ratio: float) -> None:  # fmt: skip
        self.ratio, self.baselines = ratio, baselines
        self.delta_enabled, self.min_ratio = delta_enabled, min_ratio

    def __call__(self, now: float) -> CheckResult:
        r, held = self.ratio(), self.baselines()
        d = {"compression_ratio": r, "baselines": held}
        if not self.delta_enabled:
            return CheckResult("hde", Status.DEGRADED, "deltas are disabled (codec.delta = false)", d)
        if r is not None and r < self.min_ratio:
            return CheckResult("hde", Status.DEGRADED, f"compression ratio {r:.2f} below {self.min_ratio}", d)
        if held == 0:
            return CheckResult("hde", Status.DEGRADED, "no baselines held: the next send of every key goes full", d)
        return CheckResult("hde", Status.HEALTHY, f"ratio {r if r is None else round(r, 2)}, {held} baselines", d)


class ErrorRateCheck:
    """Transfer outcomes over a sliding window, in one-second buckets (O(1) per record, bounded memory)."""

    def __init__(self, window_s: float = 60.0, degraded: float = 0.01, unhealthy: float = 0.05) -> None:
        self.window_s, self.degraded, self.unhealthy = window_s, degraded, unhealthy
        self._buckets: deque[list] = deque()  # [second, ok, failed]
        self._ok = self._failed = 0
        self._lock = threading.Lock()

    def record(self, ok: bool, now: float) -> None:
        sec = int(now)
        with self._lock:
            self._expire(now)
            if not self._buckets or self._buckets[-1][0] != sec:
                self._buckets.append([sec, 0, 0])
            self._buckets[-1][1 if ok else 2] += 1
            if ok:
                self._ok += 1
            else:
                self._failed += 1

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            _, ok, failed = self._buckets.popleft()
            self._ok -= ok
            self._failed -= failed

    def rate(self, now: float) -> tuple[float, int]:
        with self._lock:
            self._expire(now)
            n = self._ok + self._failed
            return (self._failed / n if n else 0.0), n

    def __call__(self, now: float) -> CheckResult:
        rate, n = self.rate(now)
        d = {"error_rate": rate, "transfers": n, "window_s": self.window_s}
        if n == 0:
            return CheckResult("error_rate", Status.HEALTHY, "no transfers in the window", d)
        if rate > self.unhealthy:
            return CheckResult("error_rate", Status.UNHEALTHY, f"{rate:.1%} of transfers failed", d)
        if rate >= self.degraded:
            return CheckResult("error_rate", Status.DEGRADED, f"{rate:.1%} of transfers failed", d)
        return CheckResult("error_rate", Status.HEALTHY, f"{rate:.1%} of transfers failed", d)


@dataclass(frozen=True)
class ReplicaVersion:
    replica: str
    version: int  # higher is newer
    created_at: float  # when that version was made (seconds, same clock as now)


class BaselineSyncCheck:
    """``replicas()`` returns {key: [ReplicaVersion, ...]} (from the catalog)."""

    def __init__(self, replicas: Callable[[], dict[str, list[ReplicaVersion]]], max_age_s: float = 300.0) -> None:
        self.replicas, self.max_age_s = replicas, max_age_s

    def __call__(self, now: float) -> CheckResult:
        worst, why, fractions = Status.HEALTHY, "every replica holds the latest version", {}
        for key, rs in sorted(self.replicas().items()):
            if not rs:
                continue
            latest = max(r.version for r in rs)
            at = [r for r in rs if r.version == latest]
            frac = len(at) / len(rs)
            fractions[key] = frac
            if frac < 0.5:
                st, msg = Status.UNHEALTHY, f"{key}: {len(at)} of {len(rs)} replicas at the latest version"
            elif frac < 1 and any(now - r.created_at > self.max_age_s for r in rs if r.version < latest):
                st, msg = Status.DEGRADED, f"{key}: a replica lags with a version older than {self.max_age_s:.0f} s"
            elif frac == 0.5:
                st, msg = Status.DEGRADED, f"{key}: only half of the replicas at the latest version"
            else:
                st, msg = Status.HEALTHY, ""
            if st > worst:
                worst, why = st, msg
        d = {"keys": len(fractions), "min_fraction": min(fractions.values(), default=1.0)}
        return CheckResult("baseline_sync", worst, why, d)


def thresholds_checks(h: HealthConfig) -> ErrorRateCheck:
    """The error-rate check configured from ``[health]``."""
    return ErrorRateCheck(h.error_window_s, h.error_rate_degraded, h.error_rate_unhealthy)
