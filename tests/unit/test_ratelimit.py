"""TokenBucket (sans-IO, fake time) and its blocking driver RateLimiter."""

from __future__ import annotations

import heapq
import math
import random
import threading
import time

import pytest

from dwcp.errors import ConfigError
from dwcp.transport.ratelimit import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.t += d


def drive(bucket: TokenBucket, consumers: int, sizes, *, start: float = 0.0, until: float | None = None):
    """Simulate ``consumers`` senders sharing ``bucket`` on a fake clock.

    Each sender asks for its next piece when it becomes ready, waits the
    answer, "sends" at that instant and is ready again.  Returns (bytes sent,
    time of the last send, pieces sent).
    """
    ready = [(start, i) for i in range(consumers)]
    heapq.heapify(ready)
    total, last, pieces = 0, start, 0
    for n in sizes:
        t, i = heapq.heappop(ready)
        if until is not None and t >= until:
            heapq.heappush(ready, (t, i))
            break
        sent_at = t + bucket.consume(n, t)
        total += n
        pieces += 1
        last = max(last, sent_at)
        heapq.heappush(ready, (sent_at, i))
    return total, last, pieces


def test_long_run_rate_is_accurate_with_many_consumers():
    rate, burst = 10e6, 256 * 1024
    rng = random.Random(7)
    sizes = [rng.randint(1, 1 << 20) for _ in range(20_000)]  # many bigger than the burst
    b = TokenBucket(rate, burst)
    total, elapsed, _ = drive(b, consumers=16, sizes=sizes)
    # the first burst is free; everything after it is paced at the rate
    assert total > 100 * burst
    assert abs(total / elapsed - rate) / rate < 0.01
    assert abs((total - burst) / elapsed - rate) / rate < 1e-6


def test_burst_is_free_then_paced_and_never_accumulates_beyond_it():
    b = TokenBucket(1000.0, 500)
    assert b.consume(500, 0.0) == 0.0  # a full bucket: the burst passes at once
    assert b.consume(100, 0.0) == pytest.approx(0.1)  # then 100 B of debt at 1000 B/s
    assert b.tokens(0.1) == pytest.approx(0.0)
    # a long idle refills to the burst, not beyond
    assert b.tokens(1000.0) == pytest.approx(500.0)
    assert b.consume(500, 1000.0) == 0.0
    assert b.consume(1, 1000.0) == pytest.approx(0.001)


def test_a_chunk_larger_than_the_burst_passes_after_a_proportional_wait():
    b = TokenBucket(1e6, 64 * 1024)
    d = b.consume(4 << 20, 0.0)
    assert d == pytest.approx(((4 << 20) - 64 * 1024) / 1e6)
    # the next caller queues behind that debt
    assert b.consume(1000, 0.0) == pytest.approx(d + 1000 / 1e6)
    # and zero bytes only reports the debt that is left
    assert b.consume(0, d) == pytest.approx(1000 / 1e6)


def test_rate_change_mid_way_is_followed():
    b = TokenBucket(1e6, 64 * 1024)
    rng = random.Random(3)
    sizes = [rng.randint(1, 256 * 1024) for _ in range(100_000)]
    it = iter(sizes)
    sent1, t1, _ = drive(b, 4, it, until=10.0)
    b.set_rate(3e6, 10.0)
    sent2, t2, _ = drive(b, 4, it, start=10.0, until=30.0)
    assert abs(sent1 / 10.0 - 1e6) / 1e6 < 0.03  # the free burst and the last piece blur the edges
    assert abs(sent2 / 20.0 - 3e6) / 3e6 < 0.01
    b.set_rate(0.5e6, 30.0)
    sent3, _, _ = drive(b, 4, it, start=30.0, until=70.0)
    assert abs(sent3 / 40.0 - 0.5e6) / 0.5e6 < 0.02


def test_debt_is_repaid_at_the_new_rate():
    b = TokenBucket(1000.0, 100)
    b.consume(100, 0.0)
    assert b.consume(1000, 0.0) == pytest.approx(1.0)
    b.set_rate(2000.0, 0.5)  # 500 B repaid at the old rate, 500 B left
    assert b.consume(0, 0.5) == pytest.approx(0.25)


@pytest.mark.parametrize("unlimited", [None, 0, 0.0])
def test_unlimited(unlimited):
    b = TokenBucket(unlimited, 10)
    assert b.rate_bytes_per_s is None
    for t in range(100):
        assert b.consume(10**12, float(t)) == 0.0


def test_switching_to_and_from_unlimited():
    b = TokenBucket(1000.0, 500)
    assert b.consume(10_500, 0.0) == pytest.approx(10.0)
    b.set_rate(None, 1.0)  # unlimited: the debt is forgiven
    assert b.consume(10**9, 1.0) == 0.0
    b.set_rate(1000.0, 2.0)  # limited again: starts with a full burst
    assert b.consume(500, 2.0) == 0.0
    assert b.consume(500, 2.0) == pytest.approx(0.5)
    assert b.rate_bytes_per_s == 1000.0 and b.burst_bytes == 500


@pytest.mark.parametrize("rate", [-1, -0.5, math.nan, math.inf, "fast", [1]])
def test_invalid_rate_is_a_config_error(rate):
    with pytest.raises(ConfigError):
        TokenBucket(rate, 10)
    b = TokenBucket(1.0, 10)
    with pytest.raises(ConfigError):
        b.set_rate(rate, 0.0)
    assert b.rate_bytes_per_s == 1.0  # a refused change leaves the bucket as it was


@pytest.mark.parametrize("burst", [0, -1, 1.5, True, None, "1"])
def test_invalid_burst_is_a_config_error(burst):
    with pytest.raises(ConfigError) as ei:
        TokenBucket(1e6, burst)
    assert isinstance(ei.value, ValueError)  # ConfigError is a ValueError for argparse-style callers


def test_negative_consume_is_a_caller_bug():
    with pytest.raises(ValueError):
        TokenBucket(1e6, 10).consume(-1, 0.0)


def test_time_going_backwards_refills_nothing():
    b = TokenBucket(1000.0, 100)
    b.consume(100, 5.0)
    assert b.consume(100, 4.0) == pytest.approx(0.1)  # no tokens for the earlier "now"
    assert b.tokens(5.1) == pytest.approx(0.0)  # 100 B of debt, repaid 0.1 s later


def test_threads_share_one_bucket_without_lost_updates():
    b = TokenBucket(1.0, 1000)
    b.consume(0, 0.0)
    per_thread, threads = 5000, 8
    barrier = threading.Barrier(threads)

    def worker():
        barrier.wait()
        for _ in range(per_thread):
            b.consume(3, 0.0)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert b.tokens(0.0) == 1000 - 3 * per_thread * threads


def test_rate_limiter_sleeps_what_the_bucket_says():
    clock = FakeClock()
    lim = RateLimiter(TokenBucket(1e6, 64 * 1024), clock=clock, sleep=clock.sleep)
    rng = random.Random(1)
    total = 0
    for _ in range(5000):
        n = rng.randint(1, 256 * 1024)
        lim.acquire(n)
        total += n
    assert abs((total - 64 * 1024) / clock.t - 1e6) / 1e6 < 1e-9
    assert all(d > 0 for d in clock.sleeps)
    lim.set_rate(None)
    t = clock.t
    assert lim.acquire(10**9) == 0.0 and clock.t == t


def test_real_clock_smoke():
    lim = RateLimiter(TokenBucket(4e6, 64 * 1024))
    t0 = time.monotonic()
    for _ in range(16):
        lim.acquire(64 * 1024)  # 1 MiB in all; the first 64 KiB are the free burst
    elapsed = time.monotonic() - t0
    expected = 15 * 64 * 1024 / 4e6  # ~0.25 s
    assert expected * 0.95 <= elapsed < 0.45
