"""Health checks at and around every threshold, and their aggregate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.daemon.health import (
    AmstCheck,
    BaselineSyncCheck,
    CheckResult,
    ErrorRateCheck,
    HdeCheck,
    HealthRegistry,
    ReplicaVersion,
    Status,
)

H, D, U = Status.HEALTHY, Status.DEGRADED, Status.UNHEALTHY


@pytest.mark.parametrize("counts,want", [([], H), ([2, 4], H), ([1, 16], H), ([0], U), ([3, 0], U), ([17], D), ([4, 20], D)])
def test_amst(counts, want):
    assert AmstCheck(lambda: counts, 1, 16)(0.0).status is want


@pytest.mark.parametrize("ratio,held,delta,want", [
    (2.0, 3, True, H), (None, 3, True, H), (1.1, 1, True, H), (1.09, 3, True, D), (5.0, 0, True, D),
    (5.0, 3, False, D),
])  # fmt: skip
def test_hde(ratio, held, delta, want):
    r = HdeCheck(lambda: ratio, lambda: held, delta_enabled=delta, min_ratio=1.1)(0.0)
    assert r.status is want and r.detail["baselines"] == held


@pytest.mark.parametrize("failed,total,want", [
    (0, 0, H), (0, 100, H), (99, 10_000, H), (1, 100, D), (5, 100, D), (501, 10_000, U), (6, 100, U),
])  # fmt: skip
def test_error_rate_boundaries(failed, total, want):
    c = ErrorRateCheck(60, 0.01, 0.05)
    for i in range(total):
        c.record(i >= failed, 10.0)
    assert c(10.0).status is want


def test_error_rate_window_slides():
    c = ErrorRateCheck(60, 0.01, 0.05)
    for _ in range(10):
        c.record(False, 0.0)
    assert c(59.0).status is U
    assert c(60.5).status is H and c.rate(60.5) == (0.0, 0)  # the failures left the window


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=200), st.floats(0, 100))
def test_error_rate_equals_a_brute_force_count(events, tail):
    c, t, log = ErrorRateCheck(30, 0.01, 0.05), 0.0, []
    for ok, dt in events:
        t += dt
        c.record(ok, t)
        log.append((int(t), ok))
    now = t + tail
    inside = [ok for sec, ok in log if sec > now - 30]
    want = (inside.count(False) / len(inside) if inside else 0.0, len(inside))
    assert c.rate(now) == pytest.approx(want)


def rv(replica, version, age, now=1000.0):
    return ReplicaVersion(replica, version, now - age)


@pytest.mark.parametrize("replicas,want", [
    ({}, H),
    ({"k": [rv("a", 3, 10), rv("b", 3, 10), rv("c", 3, 10)]}, H),
    ({"k": [rv("a", 3, 10), rv("b", 3, 10), rv("c", 2, 60)]}, H),  # lagging, but not for long
    ({"k": [rv("a", 3, 10), rv("b", 3, 10), rv("c", 2, 301)]}, D),  # lagging behind a version older than 5 min
    ({"k": [rv("a", 3, 10), rv("b", 2, 10)]}, D),  # exactly half
    ({"k": [rv("a", 3, 10), rv("b", 2, 10), rv("c", 2, 10)]}, U),  # fewer than half
    ({"k": [rv("a", 1, 10)], "j": [rv("a", 3, 10), rv("b", 2, 10), rv("c", 1, 10)]}, U),  # the worst key decides
])  # fmt: skip
def test_baseline_sync(replicas, want):
    assert BaselineSyncCheck(lambda: replicas, 300)(1000.0).status is want


def test_registry_is_the_worst_and_survives_a_raising_check():
    reg = HealthRegistry()
    assert reg.evaluate(0).status is H and reg.evaluate(0).http_status == 200
    reg.register("a", lambda now: CheckResult("a", H, "fine"))
    reg.register("b", lambda now: CheckResult("b", D, "meh"))
    rep = reg.evaluate(1.0)
    assert rep.status is D and rep.http_status == 200
    reg.register("c", lambda now: 1 / 0)  # type: ignore[arg-type,return-value]
    rep = reg.evaluate(2.0)
    assert rep.status is U and rep.http_status == 503
    assert rep.to_dict()["checks"]["c"] == {"status": "unhealthy", "message": "check failed: ZeroDivisionError: division by zero"}
    reg.unregister("c")
    assert reg.evaluate(3.0).status is D and reg.last is not None and reg.last.at == 3.0


@given(st.lists(st.sampled_from([H, D, U]), max_size=6))
def test_overall_is_the_max(statuses):
    reg = HealthRegistry()
    for i, s in enumerate(statuses):
        reg.register(f"c{i}", lambda now, s=s, i=i: CheckResult(f"c{i}", s, ""))
    assert reg.evaluate(0).status == max(statuses, default=H)
