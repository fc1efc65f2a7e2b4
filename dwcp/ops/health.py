"""Health checks, their registry and the node's readiness (sans-IO: observations in, a status out).

Theory of operation
-------------------
A *check* is an object with a ``name`` and ``__call__(now) -> CheckResult``.
It reads its observations through the callables it was built with (or, for
the error rate, from the events recorded into it) and judges them against a
frozen :class:`HealthThresholds`.  Nothing here reads a clock, a socket or a
file: ``now`` is always a parameter (seconds on the caller's monotonic clock).

The :class:`HealthRegistry` holds the checks by name and evaluates them into a
:class:`Report`.  ``/healthz`` serves ``Report.to_dict()`` with
``Report.http_status``; ``/readyz`` serves the :class:`Readiness` the registry
carries, which is a separate notion: a node can be healthy and not ready
(still starting, or draining) or ready and degraded.

Rules
-----
1. Statuses are ordered HEALTHY (0) < DEGRADED (1) < UNHEALTHY (2); the
   ``value`` is what the ``dwcp_health_status`` gauge exports.
2. The overall status is the worst of the checks; no checks is HEALTHY.
3. A check that raises is UNHEALTHY with the exception as its message; the
   exception never leaves ``evaluate``.
4. A check registered with ``interval_s > 0`` is re-run only once its last
   result is at least that old; until then the cached result (with its own
   ``checked_at``) is reported.  A clock that goes backwards re-runs it.
5. ``/healthz`` answers 200 while HEALTHY or DEGRADED and 503 when UNHEALTHY;
   ``/readyz`` answers 200 only when started, serving and not draining.
6. Registration, unregistration and evaluation may happen on any threads.

The checks and their boundaries (all thresholds configurable):

* AMST: each running transfer's stream count within ``[min_streams,
  max_streams]`` (both ends inclusive) is healthy; a running transfer with
  zero streams is unhealthy; a count outside the bounds is degraded.  No
  transfer running is healthy.
* HDE: a compression ratio (raw / wire) strictly below
  ``min_compression_ratio`` is degraded (exactly 1.1 is healthy); the codec
  disabled is degraded; deltas enabled with no baseline held is degraded.
  No ratio yet (no data sent) is not judged.
* Error rate: failed / all requests in the window.  Below
  ``error_rate_degraded`` healthy; from it up to and *including*
  ``error_rate_unhealthy`` degraded; strictly above it unhealthy.  So exactly
  1% is degraded and exactly 5% is degraded.  No requests is healthy.
* Baseline sync, per key: replicas at the latest version are in sync.
  Strictly fewer than ``baseline_min_fraction`` (one half) of the replicas in
  sync is unhealthy (exactly half is not); otherwise a lagging replica while
  the latest version is strictly older than ``baseline_max_age_s`` is
  degraded; otherwise healthy.  The worst key decides.
* Paths: an anomaly a send's detectors raised on a path (dwcp.transport.anomaly:
  a goodput drop, an RTT step, a retransmit spike) strictly younger than
  ``path_anomaly_window_s`` is degraded, with its evidence in the message;
  none is healthy.  The newest anomaly is named; the detail lists one per path.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dwcp.errors import ConfigError

__all__ = [
    "Status",
    "CheckResult",
    "Report",
    "Check",
    "CheckLike",
    "HealthThresholds",
    "HealthRegistry",
    "PathAnomalyCheck",
    "Readiness",
    "AmstCheck",
    "HdeCheck",
    "ErrorRateCheck",
    "ReplicaVersion",
    "BaselineSyncCheck",
]


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
    detail: dict[str, Any] = field(default_factory=dict)
    checked_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "status_code": self.status.value, "message": self.message,
                "checked_at": _wall(self.checked_at), "detail": _json_value(self.detail)}  # fmt: skip


def _wall(monotonic_s: float) -> float | None:
    """A check's time (``time.monotonic()``, which checks are run with) as wall-clock Unix seconds."""
    if not math.isfinite(monotonic_s):
        return None
    return round(time.time() - time.monotonic() + monotonic_s, 3)


def _json_value(v: Any) -> Any:
    """What strict JSON can carry: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


@dataclass(frozen=True)
class Report:
    status: Status
    checks: tuple[CheckResult, ...]
    checked_at: float

    @property
    def http_status(self) -> int:
        return 503 if self.status is Status.UNHEALTHY else 200

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "status_code": self.status.value,
                "checked_at": _wall(self.checked_at),
                "checks": {c.name: c.to_dict() for c in self.checks}}  # fmt: skip


class Check(Protocol):
    name: str

    def __call__(self, now: float) -> CheckResult: ...


@dataclass(frozen=True)
class HealthThresholds:
    """Every threshold of the checks; the defaults are the reference system's."""

    min_streams: int = 1  # AMST: per running transfer, inclusive
    max_streams: int = 16
    min_compression_ratio: float = 1.1  # HDE: raw / wire strictly below this is degraded
    error_rate_degraded: float = 0.01  # degraded at or above this fraction
    error_rate_unhealthy: float = 0.05  # unhealthy strictly above this fraction
    error_window_s: float = 60.0
    error_bucket_s: float = 1.0  # the window's resolution: it spans between window - bucket and window
    baseline_max_age_s: float = 300.0  # a replica lagging a latest version older than this: degraded
    baseline_min_fraction: float = 0.5  # strictly fewer replicas than this fraction in sync: unhealthy
    path_anomaly_window_s: float = 600.0  # paths: an anomaly younger than this is degraded

    def __post_init__(self) -> None:
        probs = []
        if not 0 <= self.min_streams <= self.max_streams:
            probs.append(
                f"min_streams {self.min_streams} / max_streams {self.max_streams}: need 0 <= min <= max"
            )
        if not 0 <= self.error_rate_degraded <= self.error_rate_unhealthy <= 1:
            probs.append(f"error_rate_degraded {self.error_rate_degraded} / error_rate_unhealthy "
                         f"{self.error_rate_unhealthy}: need 0 <= degraded <= unhealthy <= 1")  # fmt: skip
        if not 0 <= self.baseline_min_fraction <= 1:
            probs.append(f"baseline_min_fraction {self.baseline_min_fraction}: need 0 <= fraction <= 1")
        for name in ("min_compression_ratio", "error_window_s", "error_bucket_s", "baseline_max_age_s",
                     "path_anomaly_window_s"):  # fmt: skip
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                probs.append(f"{name} {v} must be positive and finite")
        if not probs and self.error_bucket_s > self.error_window_s:
            probs.append(
                f"error_bucket_s {self.error_bucket_s} longer than error_window_s {self.error_window_s}"
            )
        if probs:
            raise ConfigError(problems=[f"health.{p}" for p in probs])

    @classmethod
    def from_config(cls, config: Any) -> HealthThresholds:
        """From a :class:`dwcp.config.Config` (its ``[health]`` and ``[transport]`` stream bounds)."""
        h, tp = config.health, config.transport
        return cls(min_streams=tp.min_streams, max_streams=tp.max_streams,
                   min_compression_ratio=h.min_compression_ratio, error_rate_degraded=h.error_rate_degraded,
                   error_rate_unhealthy=h.error_rate_unhealthy, error_window_s=h.error_window_s,
                   baseline_max_age_s=h.baseline_max_age_s,
                   path_anomaly_window_s=h.path_anomaly_window_s)  # fmt: skip


# -- registry and readiness ---------------------------------------------------------------


CheckLike = Check | Callable[[float], CheckResult]  # a plain function needs ``register(..., name=)``


@dataclass
class _Entry:
    check: CheckLike
    interval_s: float
    last: CheckResult | None = None


class HealthRegistry:
    """Checks by name; ``evaluate(now)`` runs them (or reuses cached results) into a Report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.readiness = Readiness()
        self.last: Report | None = None  # the latest report, for a metrics scrape that must not run checks

    def register(self, check: CheckLike, *, name: str | None = None, interval_s: float = 0.0) -> None:
        """Add ``check`` (or replace the one of that name, dropping its cached result).

        ``name`` defaults to ``check.name``; ``interval_s`` > 0 caches its result for that long (rule 4).
        """
        name = name if name is not None else getattr(check, "name", None)
        if not name:
            raise ValueError("a health check needs a name")
        if not (interval_s >= 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s {interval_s} must be >= 0 and finite")
        with self._lock:
            self._entries[name] = _Entry(check, interval_s)

    def unregister(self, name: str) -> bool:
        """Remove the check of that name; False when there was none."""
        with self._lock:
            return self._entries.pop(name, None) is not None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def reconfigure(self, thresholds: HealthThresholds) -> None:
        """Give every check that has ``thresholds`` the new ones and drop the cached results."""
        with self._lock:
            for e in self._entries.values():
                if hasattr(e.check, "thresholds"):
                    e.check.thresholds = thresholds  # type: ignore[attr-defined]
                e.last = None

    def evaluate(self, now: float) -> Report:
        with self._lock:
            entries = list(self._entries.items())
        results = []
        for name, e in entries:
            last = e.last
            if last is not None and e.interval_s > 0 and 0 <= now - last.checked_at < e.interval_s:
                results.append(last)
                continue
            r = _run(name, e.check, now)
            with self._lock:
                if self._entries.get(name) is e:  # not replaced meanwhile
                    e.last = r
            results.append(r)
        worst = max((r.status for r in results), default=Status.HEALTHY)
        report = Report(worst, tuple(results), now)
        self.last = report
        return report

    def healthz(self, now: float) -> tuple[int, dict[str, Any]]:
        """What ``/healthz`` answers: (HTTP status, JSON body)."""
        rep = self.evaluate(now)
        return rep.http_status, rep.to_dict()

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """What ``/readyz`` answers: (HTTP status, JSON body)."""
        return self.readiness.http_status, self.readiness.to_dict()


def _run(name: str, check: CheckLike, now: float) -> CheckResult:
    try:
        r = check(now)
        if not isinstance(r, CheckResult):
            raise TypeError(f"returned {type(r).__name__}, not a CheckResult")
        return CheckResult(name, Status(r.status), r.message, dict(r.detail), now)
    except Exception as exc:
        return CheckResult(name, Status.UNHEALTHY, f"check failed: {type(exc).__name__}: {exc}",
                           {"exception": type(exc).__name__}, now)  # fmt: skip


class Readiness:
    """Ready = started and serving and not draining.  The daemon flips the flags as it goes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = self._serving = self._draining = False

    def mark_started(self) -> None:
        with self._lock:
            self._started = True

    def set_serving(self, serving: bool = True) -> None:
        with self._lock:
            self._serving = serving

    def mark_draining(self) -> None:
        """Shutting down: not ready from now on (a drain is not undone)."""
        with self._lock:
            self._draining = True

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._started and self._serving and not self._draining

    @property
    def http_status(self) -> int:
        return 200 if self.ready else 503

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            started, serving, draining = self._started, self._serving, self._draining
        ready = started and serving and not draining
        why = ("draining: shutting down" if draining else "starting" if not started
               else "not serving" if not serving else "")  # fmt: skip
        out: dict[str, Any] = {"ready": ready, "started": started, "serving": serving, "draining": draining}
        if why:
            out["why"] = why
        return out


# -- the checks ---------------------------------------------------------------------------


class AmstCheck:
    """``streams()`` returns the stream count of each running transfer."""

    name = "amst"

    def __init__(
        self, streams: Callable[[], Iterable[int]], thresholds: HealthThresholds | None = None
    ) -> None:
        self.streams = streams
        self.thresholds = thresholds or HealthThresholds()

    def __call__(self, now: float) -> CheckResult:
        t = self.thresholds
        counts = list(self.streams())
        d = {"transfers": len(counts), "streams": sum(counts), "min_streams": t.min_streams,
             "max_streams": t.max_streams}  # fmt: skip
        stalled = sum(1 for n in counts if n == 0)
        if stalled:
            return CheckResult(self.name, Status.UNHEALTHY, f"{stalled} running transfers have no stream", d)
        out = sum(1 for n in counts if not t.min_streams <= n <= t.max_streams)
        if out:
            return CheckResult(self.name, Status.DEGRADED,
                               f"{out} transfers outside [{t.min_streams}, {t.max_streams}] streams", d)  # fmt: skip
        if not counts:
            return CheckResult(self.name, Status.HEALTHY, "no transfer running", d)
        return CheckResult(self.name, Status.HEALTHY, f"{len(counts)} transfers, streams within bounds", d)


class HdeCheck:
    """``ratio()`` returns raw / wire bytes so far (None before any data); ``baselines()`` how many are held.

    ``codec_enabled`` and ``delta_enabled`` are plain attributes the daemon sets from its config.
    """

    name = "hde"

    def __init__(self, ratio: Callable[[], float | None], baselines: Callable[[], int],
                 thresholds: HealthThresholds | None = None, *, codec_enabled: bool = True,
                 delta_enabled: bool = True) -> None:  # fmt: skip
        self.ratio, self.baselines = ratio, baselines
        self.thresholds = thresholds or HealthThresholds()
        self.codec_enabled, self.delta_enabled = codec_enabled, delta_enabled

    def __call__(self, now: float) -> CheckResult:
        floor = self.thresholds.min_compression_ratio
        r, held = self.ratio(), self.baselines()
        d = {"compression_ratio": r, "baselines": held, "min_compression_ratio": floor,
             "codec_enabled": self.codec_enabled, "delta_enabled": self.delta_enabled}  # fmt: skip
        why = []
        if not self.codec_enabled:
            why.append("the HDE codec is disabled: objects travel raw")
        if r is not None and r < floor:
            why.append(f"compression ratio {r:.3g} below {floor:g}")
        if self.codec_enabled and self.delta_enabled and held == 0 and r is not None:
            # (a fresh node, before any transfer, holds none and is not degraded for it)
            why.append("no baselines held: the next send of every key goes full")
        if why:
            return CheckResult(self.name, Status.DEGRADED, "; ".join(why), d)
        shown = "n/a" if r is None else f"{r:.3g}"
        return CheckResult(self.name, Status.HEALTHY, f"compression ratio {shown}, {held} baselines", d)


class ErrorRateCheck:
    """Request outcomes over a sliding window of ``error_bucket_s`` buckets.

    The window at ``now`` is the ``n = round(error_window_s / error_bucket_s)``
    buckets ending with the one ``now`` falls in (bucket ``k`` holds the times
    ``k * b <= t < (k + 1) * b``).  ``record`` is O(1) amortised; memory is at
    most ``n`` buckets whatever the request rate.  An event stamped before the
    newest bucket (threads racing to record) counts in the newest bucket.
    New thresholds with another ``error_bucket_s`` start an empty window (the
    old buckets do not map onto the new ones); a new window length keeps them.
    """

    name = "error_rate"

    def __init__(self, thresholds: HealthThresholds | None = None) -> None:
        self.thresholds = thresholds or HealthThresholds()
        self._lock = threading.Lock()
        self._buckets: deque[list[int]] = deque()  # [bucket index, ok, failed], oldest first
        self._ok = self._failed = 0
        self._bucket_s = self.thresholds.error_bucket_s  # what the indices in _buckets count in

    def _geometry(self) -> tuple[float, int]:
        """(bucket width, buckets in the window); call with the lock held."""
        t = self.thresholds
        if t.error_bucket_s != self._bucket_s:
            self._buckets.clear()
            self._ok = self._failed = 0
            self._bucket_s = t.error_bucket_s
        return t.error_bucket_s, max(1, round(t.error_window_s / t.error_bucket_s))

    def _expire(self, k_now: int, n: int) -> None:
        while self._buckets and self._buckets[0][0] <= k_now - n:
            _, ok, failed = self._buckets.popleft()
            self._ok -= ok
            self._failed -= failed

    def record(self, ok: bool, now: float) -> None:
        with self._lock:
            b, n = self._geometry()
            k = math.floor(now / b)
            self._expire(k, n)
            if self._buckets and self._buckets[-1][0] >= k:
                bucket = self._buckets[-1]
            else:
                bucket = [k, 0, 0]
                self._buckets.append(bucket)
            if ok:
                bucket[1] += 1
                self._ok += 1
            else:
                bucket[2] += 1
                self._failed += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(failed, all) requests in the window at ``now``."""
        with self._lock:
            b, n = self._geometry()
            self._expire(math.floor(now / b), n)
            return self._failed, self._ok + self._failed

    def __call__(self, now: float) -> CheckResult:
        t = self.thresholds
        failed, total = self.counts(now)
        rate = failed / total if total else 0.0
        d = {"error_rate": rate, "failed": failed, "requests": total, "window_s": t.error_window_s}
        if total == 0:
            return CheckResult(self.name, Status.HEALTHY, "no requests in the window", d)
        msg = f"{failed} of {total} requests failed ({rate:.2%}) in the last {t.error_window_s:g} s"
        if rate > t.error_rate_unhealthy:
            return CheckResult(self.name, Status.UNHEALTHY, msg, d)
        if rate >= t.error_rate_degraded:
            return CheckResult(self.name, Status.DEGRADED, msg, d)
        return CheckResult(self.name, Status.HEALTHY, msg, d)


@dataclass(frozen=True)
class ReplicaVersion:
    replica: str
    version: int  # higher is newer
    created_at: float  # when this version was made (seconds, on the clock of ``now``)


class BaselineSyncCheck:
    """``replicas()`` returns {key: [ReplicaVersion, ...]}: the version each replica of a key holds.

    A latest version's age is taken from the earliest ``created_at`` among
    the replicas holding it.
    """

    name = "baseline_sync"
    MAX_LISTED = 10  # keys named in the detail, per status: the JSON stays bounded

    def __init__(self, replicas: Callable[[], Mapping[str, Iterable[ReplicaVersion]]],
                 thresholds: HealthThresholds | None = None) -> None:  # fmt: skip
        self.replicas = replicas
        self.thresholds = thresholds or HealthThresholds()

    def judge(self, replicas: Iterable[ReplicaVersion], now: float) -> tuple[Status, float, str]:
        """One key: (status, fraction in sync, why)."""
        t = self.thresholds
        rs = list(replicas)
        latest = max(r.version for r in rs)
        in_sync = [r for r in rs if r.version == latest]
        frac = len(in_sync) / len(rs)
        if len(in_sync) < t.baseline_min_fraction * len(rs):
            return (
                Status.UNHEALTHY,
                frac,
                f"{len(in_sync)} of {len(rs)} replicas at the latest version {latest}",
            )
        age = now - min(r.created_at for r in in_sync)
        if len(in_sync) < len(rs) and age > t.baseline_max_age_s:
            return (Status.DEGRADED, frac, f"{len(rs) - len(in_sync)} of {len(rs)} replicas still lag version "
                    f"{latest}, made {age:.0f} s ago (> {t.baseline_max_age_s:g} s)")  # fmt: skip
        return Status.HEALTHY, frac, ""

    def __call__(self, now: float) -> CheckResult:
        worst, why = Status.HEALTHY, "every key's replicas in sync"
        fractions: list[float] = []
        listed: dict[Status, list[str]] = {Status.DEGRADED: [], Status.UNHEALTHY: []}
        counts = {Status.DEGRADED: 0, Status.UNHEALTHY: 0}
        for key, reps in sorted(self.replicas().items()):
            rs = list(reps)
            if not rs:
                continue
            st, frac, msg = self.judge(rs, now)
            fractions.append(frac)
            if st is Status.HEALTHY:
                continue
            counts[st] += 1
            if len(listed[st]) < self.MAX_LISTED:
                listed[st].append(key)
            if st > worst:
                worst, why = st, f"{key}: {msg}"
        d = {"keys": len(fractions), "min_fraction": min(fractions, default=1.0),
             "degraded_keys": counts[Status.DEGRADED], "unhealthy_keys": counts[Status.UNHEALTHY],
             "degraded": listed[Status.DEGRADED], "unhealthy": listed[Status.UNHEALTHY]}  # fmt: skip
        if worst is not Status.HEALTHY:
            n = counts[worst]
            if n > 1:
                why += f" (and {n - 1} more {worst} keys)"
        return CheckResult(self.name, worst, why, d)


class PathAnomalyCheck:
    """``anomalies()`` returns [(age_s, peer, nic, anomaly)], each anomaly an ``Anomaly.to_json()``:
    what the paths' traces hold (the daemon reads them from its state directory)."""

    name = "paths"
    MAX_LISTED = 10

    def __init__(self, anomalies: Callable[[], Iterable[tuple[float, str, str, Mapping[str, Any]]]],
                 thresholds: HealthThresholds | None = None) -> None:  # fmt: skip
        self.anomalies = anomalies
        self.thresholds = thresholds or HealthThresholds()

    def __call__(self, now: float) -> CheckResult:
        window = self.thresholds.path_anomaly_window_s
        recent = sorted((a for a in self.anomalies() if 0 <= a[0] < window), key=lambda a: a[0])
        if not recent:
            return CheckResult(self.name, Status.HEALTHY, f"no path anomaly in the last {window:g} s",
                               {"anomalies": 0})  # fmt: skip
        age, peer, nic, a = recent[0]
        per_path: dict[str, dict] = {}
        for age_i, p, n, ai in recent:
            per_path.setdefault(f"{p} via {n}", {"age_s": round(age_i, 1), **dict(ai)})
        listed = dict(list(per_path.items())[: self.MAX_LISTED])
        why = f"{peer} via {nic}, {age:.0f} s ago: {a.get('detail', a.get('signal', '?'))}"
        if len(per_path) > 1:
            why += f" (and {len(per_path) - 1} more paths)"
        return CheckResult(self.name, Status.DEGRADED, why, {"anomalies": len(recent), "paths": listed})
