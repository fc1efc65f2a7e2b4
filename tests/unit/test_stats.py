"""CounterBlock (hot-path counters): fast == ref, exact under threads, wraps like a u64."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

U64 = 1 << 64

needs_fast = pytest.mark.skipif(os.environ.get("DWCP_IMPL") == "ref", reason="fast backend not under test")


def test_add_get_wrap_and_gauges(impl):
    b = impl.CounterBlock(3)
    assert b.size == 3 and b.snapshot() == [0, 0, 0]
    b.add(0)
    b.add(0, 41)
    b.add(2, U64 - 1)
    b.add(2, 2)  # wraps
    assert b.snapshot() == [42, 0, 1] and b.get(0) == 42
    b.set_gauge(1, -5)
    assert b.get_gauge(1) == -5 and b.get(1) == U64 - 5


@pytest.mark.parametrize("call", [
    lambda b: b.add(3), lambda b: b.add(-1), lambda b: b.get(3), lambda b: b.set_gauge(9, 1), lambda b: b.get_gauge(-1),
])  # fmt: skip
def test_index_errors(impl, call):
    with pytest.raises(IndexError):
        call(impl.CounterBlock(3))


@pytest.mark.parametrize("call,exc", [
    (lambda b: b.add(0, -1), OverflowError), (lambda b: b.add(0, U64), OverflowError),
    (lambda b: b.set_gauge(0, 1 << 63), OverflowError), (lambda b: b.add(0, 1.5), TypeError),
    (lambda b: b.add("0"), TypeError),
])  # fmt: skip
def test_value_errors(impl, call, exc):
    with pytest.raises(exc):
        call(impl.CounterBlock(3))


@pytest.mark.parametrize("size", [0, -1, (1 << 24) + 1])
def test_size_errors(impl, size):
    with pytest.raises(ValueError):
        impl.CounterBlock(size)


_op = st.one_of(
    st.tuples(st.just("add"), st.integers(-2, 5), st.integers(-1, U64)),
    st.tuples(st.just("set"), st.integers(-2, 5), st.integers(-(1 << 63) - 1, 1 << 63)),
    st.tuples(st.just("get"), st.integers(-2, 5), st.just(0)),
    st.tuples(st.just("gauge"), st.integers(-2, 5), st.just(0)),
)


def _play(cls, ops):
    b, out = cls(4), []
    for name, i, v in ops:
        try:
            if name == "add":
                r = b.add(i, v)
            elif name == "set":
                r = b.set_gauge(i, v)
            else:
                r = b.get(i) if name == "get" else b.get_gauge(i)
            out.append(("ok", r))
        except (IndexError, OverflowError) as exc:
            out.append(("err", type(exc)))
    return out, b.snapshot()


@needs_fast
@given(st.lists(_op, max_size=40))
def test_fast_equals_ref(fast, ref, ops):
    assert _play(fast.CounterBlock, ops) == _play(ref.CounterBlock, ops)


def test_no_update_is_lost_under_threads(impl):
    b = impl.CounterBlock(4)
    n, threads = 20_000, 8
    seen: list[list[int]] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(b.snapshot())

    def writer(k):
        for j in range(n):
            b.add(j % 2)  # two shared hot slots
            b.add(2, k)

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    stop.set()
    r.join()
    assert b.snapshot() == [threads * n // 2, threads * n // 2, n * sum(range(threads)), 0]
    for a, c in zip(seen, seen[1:]):  # counters only grow, as a scrape sees them
        assert all(x <= y for x, y in zip(a, c))
