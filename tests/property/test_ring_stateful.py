"""Ring buffers against a collections.deque model (hypothesis stateful tests).

Every backend runs in lockstep with the model, so each step also checks
``fast == ref`` (results, exception types, len/free/view_count).  Under
DWCP_IMPL=ref only the reference runs.  ``test_random_op_sequences`` adds
``fast == ref`` on random call sequences that include invalid arguments.
"""

from __future__ import annotations

import gc
import os
from collections import Counter, deque

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp._backend import load
from dwcp.errors import ClosedResourceError, LocalProtocolError

NAMES = ["ref"] if os.environ.get("DWCP_IMPL", "auto") == "ref" else ["ref", "fast"]
IMPLS = [load(n) for n in NAMES]
SLOT = 8
NSLOTS = 4
MAX_HELD = 3


def _all_raise(exc, calls) -> None:
    for call in calls:
        with pytest.raises(exc):
            call()


class RingModel(RuleBasedStateMachine):
    """One RingBuffer per backend against a deque of committed items."""

    def __init__(self) -> None:
        super().__init__()
        self.rings = [m.RingBuffer(SLOT, NSLOTS) for m in IMPLS]
        self.model: deque[bytes] = deque()
        self.head = self.tail = 0  # the model's producer/consumer counters
        self.pinned: Counter[int] = Counter()  # slot -> live views the test holds
        self.held: list[tuple[int, list[memoryview]]] = []  # views kept after commit/release
        self.acq: list[memoryview] | None = None  # open acquire(), one view per backend
        self.peeked: list[memoryview] | None = None  # open peek()

    # -- model helpers -------------------------------------------------------
    def _can_write(self) -> bool:
        return self.head - self.tail < NSLOTS and not self.pinned[self.head % NSLOTS]

    def _free(self) -> int:
        return sum(1 for i in range(self.head, self.tail + NSLOTS) if not self.pinned[i % NSLOTS])

    def _append(self, data: bytes) -> None:
        self.model.append(data)
        self.head += 1

    def _popleft(self) -> bytes:
        self.tail += 1
        return self.model.popleft()

    def _same(self, fn):
        outs = []
        for r in self.rings:
            try:
                outs.append(fn(r))
            except Exception as e:  # noqa: BLE001 - compared below
                outs.append(type(e))
        assert all(o == outs[0] for o in outs), outs
        return outs[0]

    def _keep_or_drop(self, slot: int, views: list[memoryview], keep: bool) -> None:
        if keep and len(self.held) < MAX_HELD:
            self.held.append((slot, views))
        else:
            views.clear()  # CPython frees the views here (no cycles), no gc needed
            self.pinned[slot] -= 1

    # -- producer ------------------------------------------------------------
    @rule(data=st.binary(max_size=SLOT + 2))
    def push(self, data):
        got = self._same(lambda r: r.push(data))
        if len(data) > SLOT:
            assert got is ValueError
        elif self.acq is not None:
            assert got is LocalProtocolError
        else:
            assert got is self._can_write()
            if got:
                self._append(data)

    @precondition(lambda self: self.acq is None)
    @rule()
    def acquire(self):
        views = [r.acquire() for r in self.rings]
        if not self._can_write():
            assert views == [None] * len(views)
            return
        assert all(len(v) == SLOT and not v.readonly for v in views)
        self.acq = views
        self.pinned[self.head % NSLOTS] += 1

    @precondition(lambda self: self.acq is not None)
    @rule(data=st.binary(max_size=SLOT), keep=st.booleans())
    def commit(self, data, keep):
        assert self.acq is not None
        for v, r in zip(self.acq, self.rings):
            v[: len(data)] = data
            r.commit(len(data))
        slot, views, self.acq = self.head % NSLOTS, self.acq, None
        self._append(data)
        self._keep_or_drop(slot, views, keep)

    @precondition(lambda self: self.acq is None)
    @rule(n=st.integers(0, SLOT))
    def commit_without_acquire(self, n):
        assert self._same(lambda r: r.commit(n)) is LocalProtocolError

    @rule(n=st.integers(0, 6), size=st.sampled_from([2, 4]))
    def push_batch(self, n, size):
        src = bytes(range(n * size))
        got = self._same(lambda r: r.push_batch(src, size))
        if self.acq is not None:
            assert got is LocalProtocolError
            return
        expect = 0
        while expect < n and self._can_write():
            self._append(src[expect * size : (expect + 1) * size])
            expect += 1
        assert got == expect

    # -- consumer ------------------------------------------------------------
    @rule()
    def pop(self):
        got = self._same(lambda r: r.pop())
        if self.peeked is not None:
            assert got is LocalProtocolError
        else:
            assert got == (self._popleft() if self.model else None)

    @rule(size=st.integers(0, SLOT + 1))
    def pop_into(self, size):
        bufs = [bytearray(size) for _ in self.rings]
        got = self._same(lambda r: r.pop_into(bufs[self.rings.index(r)]))
        if self.peeked is not None:
            assert got is LocalProtocolError
        elif not self.model:
            assert got == -1
        elif len(self.model[0]) > size:
            assert got is ValueError  # and nothing popped
        else:
            item = self._popleft()
            assert got == len(item) and all(b[: len(item)] == item for b in bufs)

    @precondition(lambda self: self.peeked is None)
    @rule()
    def peek(self):
        views = [r.peek() for r in self.rings]
        if not self.model:
            assert views == [None] * len(views)
            return
        assert all(v.readonly and bytes(v) == self.model[0] for v in views)
        self.peeked = views
        self.pinned[self.tail % NSLOTS] += 1

    @precondition(lambda self: self.peeked is not None)
    @rule(keep=st.booleans())
    def release(self, keep):
        assert self.peeked is not None
        for r in self.rings:
            r.release()
        slot, views, self.peeked = self.tail % NSLOTS, self.peeked, None
        self._popleft()
        self._keep_or_drop(slot, views, keep)

    @precondition(lambda self: self.peeked is None)
    @rule()
    def release_without_peek(self):
        assert self._same(lambda r: r.release()) is LocalProtocolError

    @rule(n=st.integers(0, 6), size=st.sampled_from([2, 4]))
    def pop_batch(self, n, size):
        outs = [bytearray(n * size) for _ in self.rings]
        got = self._same(lambda r: r.pop_batch(outs[self.rings.index(r)], size))
        if self.peeked is not None:
            assert got is LocalProtocolError
            return
        expect = 0
        for item in list(self.model)[:n]:
            if len(item) != size:
                break
            expect += 1
        assert got == expect
        for i in range(expect):
            item = self._popleft()
            assert all(o[i * size : (i + 1) * size] == item for o in outs)

    # -- views -----------------------------------------------------------------
    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def drop_held_view(self, data):
        slot, views = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        assert len({bytes(v) for v in views}) == 1, "a held slot was overwritten"
        self._keep_or_drop(slot, views, keep=False)

    @precondition(lambda self: self.held or self.acq or self.peeked)
    @rule()
    def close_with_live_views(self):
        _all_raise(BufferError, [r.close for r in self.rings])

    @invariant()
    def sizes(self):
        n = len(self.rings)
        assert [len(r) for r in self.rings] == [len(self.model)] * n
        assert [r.free for r in self.rings] == [self._free()] * n
        assert [r.view_count for r in self.rings] == [sum(self.pinned.values())] * n

    def teardown(self):
        self.held.clear()
        self.acq = self.peeked = None
        gc.collect()
        for r in self.rings:
            r.close()
            with pytest.raises(ClosedResourceError):
                r.pop()


TestRing = RingModel.TestCase


class QueueModel(RuleBasedStateMachine):
    """One MPMCQueue per backend against a bounded deque."""

    CAP = 8

    def __init__(self) -> None:
        super().__init__()
        self.qs = [m.MPMCQueue(self.CAP) for m in IMPLS]
        self.model: deque[int] = deque()
        self.closed = False

    def _same(self, fn):
        outs = []
        for q in self.qs:
            try:
                outs.append(fn(q))
            except Exception as e:  # noqa: BLE001 - compared below
                outs.append(type(e))
        assert all(o == outs[0] for o in outs), outs
        return outs[0]

    @rule(x=st.integers(0, 2**64 - 1))
    def try_put(self, x):
        got = self._same(lambda q: q.try_put(x))
        if self.closed:
            assert got is ClosedResourceError
        else:
            assert got is (len(self.model) < self.CAP)
            if got:
                self.model.append(x)

    @rule(x=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64)))
    def put_out_of_range(self, x):
        assert self._same(lambda q: q.try_put(x)) is OverflowError

    @rule(x=st.integers(0, 2**64 - 1))
    def put_no_wait(self, x):
        got = self._same(lambda q: q.put(x, timeout=0))
        if self.closed:
            assert got is ClosedResourceError
        elif len(self.model) < self.CAP:
            assert got is None
            self.model.append(x)
        else:
            assert got is TimeoutError

    @rule()
    def try_get(self):
        got = self._same(lambda q: q.try_get())
        if self.model:
            assert got == self.model.popleft()
        else:
            assert got is (ClosedResourceError if self.closed else None)

    @rule()
    def get_no_wait(self):
        got = self._same(lambda q: q.get(timeout=0))
        if self.model:
            assert got == self.model.popleft()
        else:
            assert got is (ClosedResourceError if self.closed else TimeoutError)

    @rule(xs=st.lists(st.integers(0, 2**64 - 1), max_size=12))
    def put_batch(self, xs):
        import numpy as np

        got = self._same(lambda q: q.put_batch(np.array(xs, dtype=np.uint64)))
        if self.closed:
            assert got is ClosedResourceError
            return
        n = min(len(xs), self.CAP - len(self.model))
        assert got == n
        self.model.extend(xs[:n])

    @rule(n=st.integers(0, 12))
    def get_batch(self, n):
        import numpy as np

        dsts = [np.zeros(n, np.uint64) for _ in self.qs]
        got = self._same(lambda q: q.get_batch(dsts[self.qs.index(q)]))
        if self.closed and not self.model:
            assert got is ClosedResourceError
            return
        k = min(n, len(self.model))
        assert got == k
        expect = [self.model.popleft() for _ in range(k)]
        assert all(d[:k].tolist() == expect for d in dsts)

    @rule()
    def close(self):
        self._same(lambda q: q.close())
        self.closed = True

    @invariant()
    def size(self):
        assert [len(q) for q in self.qs] == [len(self.model)] * len(self.qs)
        assert [q.closed for q in self.qs] == [self.closed] * len(self.qs)


TestQueue = QueueModel.TestCase


# -- fast == ref on random call sequences, invalid arguments included ------------

_ARG = st.one_of(
    st.integers(-3, 12),
    st.just(2**64),
    st.binary(max_size=12),
    st.builds(bytearray, st.binary(max_size=12)),
    st.sampled_from([None, "s", 1.5, True]),
)
_RING_OPS = [
    "acquire",
    "commit",
    "push",
    "push_batch",
    "peek",
    "release",
    "pop",
    "pop_into",
    "pop_batch",
    "close",
]
_RING_OP = st.tuples(st.sampled_from(_RING_OPS), _ARG, _ARG)
_QUEUE_OPS = ["try_put", "try_get", "put", "get", "close"]
_QUEUE_OP = st.tuples(st.sampled_from(_QUEUE_OPS), _ARG)


def _ring_call(r, op, a, b, held):
    if op in ("acquire", "peek"):
        v = getattr(r, op)()
        if v is None:
            return None
        held.append(v)  # keep views alive: exercises the view-count rules too
        if len(held) > 2:
            held.pop(0)
        return ("view", len(v), v.readonly, bytes(v))
    if op in ("release", "pop", "close"):
        return getattr(r, op)()
    if op in ("commit", "push", "pop_into"):
        out = getattr(r, op)(a)
        return (out, bytes(a)) if isinstance(a, bytearray) else out
    out = getattr(r, op)(a, b)
    return (out, bytes(a)) if isinstance(a, bytearray) else out


def _outcomes(make, ops, call):
    obj, held, outs = make(), [], []
    for op in ops:
        if isinstance(op[1], bytearray):  # each backend writes its own copy
            op = (op[0], bytearray(op[1]), *op[2:])
        try:
            outs.append(call(obj, *op, held))
        except Exception as e:  # noqa: BLE001 - compared below
            outs.append(type(e))
    outs.append(
        ("len/view_count", _outcome(lambda: len(obj)), _outcome(lambda: getattr(obj, "view_count", 0)))
    )
    return outs


def _outcome(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return type(e)


@pytest.mark.skipif(len(IMPLS) < 2, reason="compares the fast backend with the reference")
@given(ring_ops=st.lists(_RING_OP, max_size=40), queue_ops=st.lists(_QUEUE_OP, max_size=30))
def test_random_op_sequences(ring_ops, queue_ops):
    ref, fast = IMPLS
    assert _outcomes(lambda: ref.RingBuffer(4, 4), ring_ops, _ring_call) == _outcomes(
        lambda: fast.RingBuffer(4, 4), ring_ops, _ring_call
    )

    def queue_call(q, op, a, held):
        if op in ("try_put", "put"):
            return getattr(q, op)(a) if op == "try_put" else q.put(a, timeout=0)
        if op == "get":
            return q.get(timeout=0)
        return getattr(q, op)()

    assert _outcomes(lambda: ref.MPMCQueue(4), queue_ops, queue_call) == _outcomes(
        lambda: fast.MPMCQueue(4), queue_ops, queue_call
    )
