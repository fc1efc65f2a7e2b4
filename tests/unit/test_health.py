"""dwcp.ops.health: every check at and around every threshold, the registry, readiness, JSON."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.errors import ConfigError
from dwcp.ops.health import (
    AmstCheck,
    BaselineSyncCheck,
    CheckResult,
    ErrorRateCheck,
    HdeCheck,
    HealthRegistry,
    HealthThresholds,
    Readiness,
    ReplicaVersion,
    Status,
)

H, D, U = Status.HEALTHY, Status.DEGRADED, Status.UNHEALTHY


def test_status_order_and_metric_values():
    assert H < D < U
    assert [s.value for s in (H, D, U)] == [0, 1, 2]
    assert max(H, U, D) is U
    assert str(D) == "degraded"


def test_thresholds_defaults_and_validation():
    t = HealthThresholds()
    assert (t.min_compression_ratio, t.error_rate_degraded, t.error_rate_unhealthy) == (1.1, 0.01, 0.05)
    assert (t.error_window_s, t.baseline_max_age_s, t.baseline_min_fraction) == (60.0, 300.0, 0.5)
    with pytest.raises(AttributeError):
        t.min_streams = 3  # type: ignore[misc]
    with pytest.raises(ConfigError) as ei:
        HealthThresholds(min_streams=5, max_streams=2, error_rate_degraded=0.1, error_rate_unhealthy=0.05,
                         error_window_s=0)  # fmt: skip
    assert len(ei.value.problems) == 3
    with pytest.raises(ConfigError):
        HealthThresholds(error_window_s=1.0, error_bucket_s=2.0)
    with pytest.raises(ConfigError):
        HealthThresholds(min_compression_ratio=math.nan)


def test_thresholds_from_config():
    from dwcp.config import Config, HealthConfig, SecurityConfig, TransportConfig

    cfg = Config(security=SecurityConfig(plaintext=True), transport=TransportConfig(min_streams=2, max_streams=8),
                 health=HealthConfig(min_compression_ratio=1.5, error_window_s=30.0, baseline_max_age_s=60.0))  # fmt: skip
    t = HealthThresholds.from_config(cfg)
    assert (t.min_streams, t.max_streams, t.min_compression_ratio) == (2, 8, 1.5)
    assert (t.error_window_s, t.baseline_max_age_s) == (30.0, 60.0)


# -- AMST -----------------------------------------------------------------------------------

AMST_T = HealthThresholds(min_streams=2, max_streams=16)


@pytest.mark.parametrize("counts,want", [
    ([], H),                      # no transfer, zero streams: healthy
    ([2], H), ([16], H),          # both bounds inclusive
    ([1], D), ([17], D),          # just outside
    ([3, 9, 16], H), ([4, 17], D), ([1, 4], D),
    ([0], U), ([5, 0], U), ([0, 17], U),  # a running transfer with no stream: unhealthy, whatever else
])  # fmt: skip
def test_amst(counts, want):
    r = AmstCheck(lambda: counts, AMST_T)(0.0)
    assert r.status is want
    assert r.detail["transfers"] == len(counts) and r.detail["streams"] == sum(counts)


def test_amst_reads_its_observations_each_time():
    counts: list[int] = [4]
    c = AmstCheck(lambda: counts, AMST_T)
    assert c(0.0).status is H
    counts[:] = [0]
    assert c(1.0).status is U


# -- HDE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,held,codec,delta,want", [
    (2.0, 3, True, True, H),
    (None, 3, True, True, H),      # nothing sent yet: the ratio is not judged
    (1.1, 1, True, True, H),       # exactly the threshold is healthy (degraded is strictly below)
    (1.1000001, 1, True, True, H),
    (1.0999999, 3, True, True, D),
    (0.5, 3, True, True, D),
    (5.0, 0, True, True, D),       # deltas on, no baseline held
    (5.0, 0, True, False, H),      # deltas off: baselines are not needed
    (5.0, 3, False, True, D),      # codec disabled
    (None, 0, False, False, D),
])  # fmt: skip
def test_hde(ratio, held, codec, delta, want):
    c = HdeCheck(lambda: ratio, lambda: held, codec_enabled=codec, delta_enabled=delta)
    assert c(0.0).status is want


def test_hde_messages_name_every_reason():
    r = HdeCheck(lambda: 1.0, lambda: 0, codec_enabled=True)(0.0)
    assert "below 1.1" in r.message and "no baselines" in r.message
    r = HdeCheck(lambda: None, lambda: 2, codec_enabled=False)(0.0)
    assert r.status is D and "disabled" in r.message
    r = HdeCheck(lambda: 1.5, lambda: 2, HealthThresholds(min_compression_ratio=2.0))(0.0)
    assert r.status is D and "below 2" in r.message


# -- error rate -----------------------------------------------------------------------------


def _fill(c: ErrorRateCheck, failed: int, total: int, now: float = 100.0) -> None:
    for i in range(total):
        c.record(i >= failed, now)


@pytest.mark.parametrize("failed,total,want", [
    (0, 0, H),                                  # no requests
    (0, 1000, H),
    (9, 1000, H), (99, 10000, H),               # just under 1%
    (1, 100, D), (10, 1000, D), (3, 300, D),    # exactly 1%: degraded
    (3, 100, D),
    (5, 100, D), (50, 1000, D), (7, 140, D),    # exactly 5%: degraded
    (501, 10000, U), (6, 100, U),               # just over 5%
    (1, 1, U),
])  # fmt: skip
def test_error_rate_boundaries(failed, total, want):
    c = ErrorRateCheck()
    _fill(c, failed, total)
    r = c(100.0)
    assert r.status is want, r.message
    assert (r.detail["failed"], r.detail["requests"]) == (failed, total)


def test_error_rate_thresholds_are_configurable():
    c = ErrorRateCheck(HealthThresholds(error_rate_degraded=0.1, error_rate_unhealthy=0.2))
    _fill(c, 5, 100)
    assert c(100.0).status is H
    _fill(c, 15, 100)  # 20 of 200 = 10%
    assert c(100.0).status is D


def test_error_rate_window_slides():
    c = ErrorRateCheck(HealthThresholds(error_window_s=60.0))
    c.record(False, 10.2)
    for _ in range(99):
        c.record(True, 30.0)
    assert c(30.0).status is D  # 1 of 100
    assert c(69.9).status is D  # bucket 10 is still one of the 60 ending with bucket 69
    assert c(70.0).status is H  # bucket 10 left the window
    assert c.counts(70.0) == (0, 99)
    assert c.counts(90.0) == (0, 0)
    assert c(90.0).status is H and c(90.0).message == "no requests in the window"


def test_error_rate_memory_is_bounded():
    c = ErrorRateCheck(HealthThresholds(error_window_s=10.0, error_bucket_s=1.0))
    for i in range(10_000):
        c.record(i % 7 != 0, i * 0.01)
    assert len(c._buckets) <= 10
    assert c.counts(99.99)[1] == 1000  # 10 s of 100 requests a second


def test_error_rate_reconfigured_window():
    reg = HealthRegistry()
    c = ErrorRateCheck(HealthThresholds(error_window_s=60.0))
    reg.register(c)
    c.record(False, 10.0)
    c.record(True, 40.0)
    reg.reconfigure(HealthThresholds(error_window_s=20.0))  # same buckets, shorter window
    assert c.counts(40.0) == (0, 1)
    reg.reconfigure(
        HealthThresholds(error_window_s=20.0, error_bucket_s=0.5)
    )  # other buckets: a fresh window
    assert c.counts(40.0) == (0, 0)
    c.record(False, 41.0)
    assert c.counts(41.0) == (1, 1) and c.counts(60.9) == (1, 1) and c.counts(61.0) == (0, 0)


def test_error_rate_late_event_counts_in_the_newest_bucket():
    c = ErrorRateCheck(HealthThresholds(error_window_s=60.0))
    c.record(True, 50.0)
    c.record(False, 49.0)  # a racing thread's older stamp
    assert len(c._buckets) == 1
    assert c.counts(109.0) == (1, 2)
    assert c.counts(110.0) == (0, 0)


def _brute_force(
    events: list[tuple[float, bool]], now: float, window_s: float, bucket_s: float
) -> tuple[int, int]:
    n = max(1, round(window_s / bucket_s))
    k_now = math.floor(now / bucket_s)
    inside = [ok for t, ok in events if k_now - n < math.floor(t / bucket_s) <= k_now]
    return sum(1 for ok in inside if not ok), len(inside)


@given(
    steps=st.lists(st.tuples(st.floats(0, 30, allow_nan=False), st.booleans(), st.booleans()), max_size=200),
    window=st.sampled_from([(60.0, 1.0), (10.0, 0.5), (5.0, 5.0), (3.0, 0.25)]),
)
def test_error_rate_equals_a_brute_force_count(steps, window):
    """Interleaved records and queries at non-decreasing times: the check equals a recount of all events."""
    window_s, bucket_s = window
    t = HealthThresholds(error_window_s=window_s, error_bucket_s=bucket_s)
    c = ErrorRateCheck(t)
    now, events = 0.0, list[tuple[float, bool]]()
    for dt, ok, query in steps:
        now += dt
        if query:
            failed, total = _brute_force(events, now, window_s, bucket_s)
            assert c.counts(now) == (failed, total)
            rate = failed / total if total else 0.0
            want = H if total == 0 or rate < 0.01 else D if rate <= 0.05 else U
            assert c(now).status is want
        else:
            c.record(ok, now)
            events.append((now, ok))


# -- baseline sync --------------------------------------------------------------------------


def rv(replica: str, version: int, age: float, now: float = 10_000.0) -> ReplicaVersion:
    return ReplicaVersion(replica, version, now - age)


@pytest.mark.parametrize("reps,want", [
    ([], H),
    ([rv("a", 3, 9999)], H),                                             # one replica is always in sync
    ([rv("a", 3, 9999), rv("b", 3, 9999)], H),
    ([rv("a", 3, 299), rv("b", 2, 9999)], H),                            # half, lag younger than 5 min
    ([rv("a", 3, 300), rv("b", 2, 9999)], H),                            # exactly 5 min: not older
    ([rv("a", 3, 300.5), rv("b", 2, 9999)], D),                          # older than 5 min, half in sync
    ([rv("a", 3, 10), rv("b", 3, 10), rv("c", 2, 500)], H),
    ([rv("a", 3, 301), rv("b", 3, 301), rv("c", 2, 500)], D),            # 2 of 3, stale
    ([rv("a", 3, 10), rv("b", 2, 500), rv("c", 2, 500)], U),             # 1 of 3: fewer than half
    ([rv("a", 3, 10), rv("b", 3, 10), rv("c", 2, 9), rv("d", 1, 9)], H),  # exactly half, fresh
    ([rv("a", 3, 400), rv("b", 3, 10), rv("c", 2, 9), rv("d", 1, 9)], D),  # exactly half, the latest is 400 s old
    ([rv("a", 3, 1), rv("b", 2, 9), rv("c", 2, 9), rv("d", 1, 9)], U),   # 1 of 4
    ([rv(str(i), 2 if i < 5 else 1, 1) for i in range(11)], U),          # 5 of 11 < 5.5
])  # fmt: skip
def test_baseline_sync(reps, want):
    r = BaselineSyncCheck(lambda: {"k": reps} if reps else {})(10_000.0)
    assert r.status is want, r.message


def test_baseline_sync_worst_key_decides_and_the_detail_is_bounded():
    keys = {f"k{i:03}": [rv("a", 2, 1), rv("b", 1, 1), rv("c", 1, 1)] for i in range(25)}
    keys["fine"] = [rv("a", 1, 1)]
    keys["stale"] = [rv("a", 2, 1000), rv("b", 1, 1000)]
    r = BaselineSyncCheck(lambda: keys)(10_000.0)
    assert r.status is U
    assert r.message.startswith("k000:") and "24 more" in r.message
    assert r.detail["unhealthy_keys"] == 25 and len(r.detail["unhealthy"]) == BaselineSyncCheck.MAX_LISTED
    assert r.detail["degraded"] == ["stale"] and r.detail["keys"] == 27
    assert r.detail["min_fraction"] == pytest.approx(1 / 3)


def test_baseline_sync_thresholds_are_configurable():
    reps = {"k": [rv("a", 2, 100), rv("b", 2, 100), rv("c", 1, 100)]}
    assert BaselineSyncCheck(lambda: reps)(10_000.0).status is H
    assert BaselineSyncCheck(lambda: reps, HealthThresholds(baseline_max_age_s=60.0))(10_000.0).status is D
    assert BaselineSyncCheck(lambda: reps, HealthThresholds(baseline_min_fraction=0.9))(10_000.0).status is U


# -- registry -------------------------------------------------------------------------------


class Fixed:
    def __init__(self, name: str, status: Status) -> None:
        self.name, self.status, self.calls = name, status, 0

    def __call__(self, now: float) -> CheckResult:
        self.calls += 1
        return CheckResult(self.name, self.status, f"{self.status} at {now}", {"n": self.calls})


def test_registry_is_the_worst_and_survives_a_raising_check():
    reg = HealthRegistry()
    rep = reg.evaluate(1.0)
    assert rep.status is H and rep.checks == () and rep.http_status == 200
    reg.register(Fixed("a", H))
    reg.register(Fixed("b", D))
    assert reg.evaluate(2.0).status is D and reg.evaluate(2.0).http_status == 200

    def boom(now: float) -> CheckResult:
        raise RuntimeError("catalog unreachable")

    reg.register(boom, name="boom")
    rep = reg.evaluate(3.0)
    assert rep.status is U and rep.http_status == 503
    b = rep.check("boom")
    assert b is not None and b.status is U and "RuntimeError: catalog unreachable" in b.message
    assert b.checked_at == 3.0
    assert reg.unregister("boom") and not reg.unregister("boom")
    assert reg.evaluate(4.0).status is D
    assert reg.last is not None and reg.last.checked_at == 4.0


def test_a_check_returning_garbage_is_unhealthy_and_the_registry_names_results():
    reg = HealthRegistry()
    reg.register(lambda now: "fine", name="bad")  # type: ignore[arg-type,return-value]
    reg.register(Fixed("inner", H), name="outer")
    rep = reg.evaluate(0.0)
    assert rep.check("bad").status is U  # type: ignore[union-attr]
    assert rep.check("outer") is not None and rep.check("inner") is None


def test_register_replaces_and_rejects_bad_arguments():
    reg = HealthRegistry()
    reg.register(Fixed("a", U))
    reg.register(Fixed("a", H))
    assert reg.names() == ["a"] and reg.evaluate(0.0).status is H
    with pytest.raises(ValueError):
        reg.register(Fixed("", H))
    with pytest.raises(ValueError):
        reg.register(Fixed("x", H), interval_s=-1.0)


def test_caching_per_check():
    reg = HealthRegistry()
    slow, fast = Fixed("slow", H), Fixed("fast", H)
    reg.register(slow, interval_s=10.0)
    reg.register(fast)
    reg.evaluate(100.0)
    slow.status = U
    rep = reg.evaluate(109.9)  # cached: still the healthy result of t=100
    assert rep.status is H and rep.check("slow").checked_at == 100.0  # type: ignore[union-attr]
    assert (slow.calls, fast.calls) == (1, 2)
    rep = reg.evaluate(110.0)  # exactly the interval: re-run
    assert rep.status is U and slow.calls == 2
    reg.evaluate(50.0)  # the clock went backwards: re-run, never trust a result from the future
    assert slow.calls == 3
    reg.register(slow, interval_s=10.0)  # re-registering drops the cache
    reg.evaluate(51.0)
    assert slow.calls == 4


def test_reconfigure_gives_checks_new_thresholds_and_drops_caches():
    reg = HealthRegistry()
    amst = AmstCheck(lambda: [3])
    reg.register(amst, interval_s=60.0)
    assert reg.evaluate(0.0).status is H
    reg.reconfigure(HealthThresholds(min_streams=4, max_streams=8))
    assert amst.thresholds.min_streams == 4
    assert reg.evaluate(1.0).status is D


def test_json_shape():
    reg = HealthRegistry()
    reg.register(Fixed("a", D))
    reg.register(HdeCheck(lambda: math.inf, lambda: 2))
    code, body = reg.healthz(7.5)
    assert code == 200
    assert json.loads(json.dumps(body, allow_nan=False)) == body
    # checked at 7.5 on the monotonic clock checks run with; reported as wall-clock Unix seconds
    wall = time.time() - time.monotonic() + 7.5
    assert body["status"] == "degraded" and body["status_code"] == 1 and abs(body["checked_at"] - wall) < 1
    a = body["checks"]["a"]
    assert {k: v for k, v in a.items() if k != "checked_at"} == {
        "status": "degraded",
        "status_code": 1,
        "message": "degraded at 7.5",
        "detail": {"n": 1},
    }
    assert abs(a["checked_at"] - wall) < 1
    assert body["checks"]["hde"]["detail"]["compression_ratio"] is None  # inf is not JSON
    assert body["checks"]["hde"]["status"] == "healthy"


def test_readiness():
    r = Readiness()
    assert not r.ready and r.http_status == 503 and r.to_dict()["why"] == "starting"
    r.mark_started()
    assert not r.ready and r.to_dict()["why"] == "not serving"
    r.set_serving()
    assert r.ready and r.http_status == 200 and "why" not in r.to_dict()
    r.mark_draining()
    assert not r.ready and r.to_dict() == {"ready": False, "started": True, "serving": True, "draining": True,
                                           "why": "draining: shutting down"}  # fmt: skip
    reg = HealthRegistry()
    reg.register(Fixed("bad", U))
    reg.readiness.mark_started()
    reg.readiness.set_serving()
    assert reg.readyz() == (200, {"ready": True, "started": True, "serving": True, "draining": False})
    assert reg.healthz(0.0)[0] == 503  # unhealthy and ready are separate answers


def test_concurrent_registration_and_evaluation():
    reg = HealthRegistry()
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn(i: int) -> None:
        try:
            for j in range(300):
                reg.register(Fixed(f"c{i}-{j % 5}", D if j % 2 else H), interval_s=j % 3)
                if j % 4 == 0:
                    reg.unregister(f"c{i}-{(j + 2) % 5}")
        except BaseException as exc:
            errors.append(exc)

    def evaluate() -> None:
        try:
            now = 0.0
            while not stop.is_set():
                now += 0.5
                rep = reg.evaluate(now)
                assert rep.status == max((c.status for c in rep.checks), default=H)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=evaluate) for _ in range(2)]
    writers = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert len(reg.names()) <= 20


@given(st.lists(st.sampled_from(list(Status)), max_size=12), st.sets(st.integers(0, 11)))
def test_overall_is_the_max_of_the_parts(statuses, raising):
    reg = HealthRegistry()
    for i, s in enumerate(statuses):
        if i in raising:
            reg.register(lambda now: 1 / 0, name=f"c{i}")  # type: ignore[arg-type,return-value]
        else:
            reg.register(Fixed(f"c{i}", s))
    rep = reg.evaluate(0.0)
    want = [U if i in raising else s for i, s in enumerate(statuses)]
    assert [c.status for c in rep.checks] == want
    assert rep.status is max(want, default=H)
    assert rep.http_status == (503 if U in want else 200)
    assert json.loads(json.dumps(rep.to_dict()))["status_code"] == rep.status.value
