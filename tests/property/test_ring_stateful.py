"""Ring buffers against a collections.deque model (hypothesis stateful tests)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp._backend import load

IMPLS = [load("ref"), load("fast")]
SLOT = 8
NSLOTS = 4


class RingModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rings = [m.RingBuffer(SLOT, NSLOTS) for m in IMPLS]
        self.model: deque[bytes] = deque()
        self.held: list[list] = [[] for _ in IMPLS]  # views kept alive after release
        self.held_slots: set[int] = set()  # slot positions those views pin
        self.head = self.tail = 0  # the model's producer/consumer counters

    def _can_write(self) -> bool:
        return self.head - self.tail < NSLOTS and self.head % NSLOTS not in self.held_slots

    def _free(self) -> int:
        return sum(1 for i in range(self.head, self.tail + NSLOTS) if i % NSLOTS not in self.held_slots)

    def _append(self, data: bytes) -> None:
        self.model.append(data)
        self.head += 1

    def _popleft(self) -> bytes:
        self.tail += 1
        return self.model.popleft()

    @rule(data=st.binary(max_size=SLOT))
    def push(self, data):
        got = [r.push(data) for r in self.rings]
        expect = self._can_write()
        assert got == [expect] * len(self.rings)
        if expect:
            self._append(data)

    @rule(data=st.binary(max_size=SLOT))
    def acquire_commit(self, data):
        views = [r.acquire() for r in self.rings]
        if not self._can_write():
            assert views == [None] * len(self.rings)
            return
        for v, r in zip(views, self.rings):
            v[: len(data)] = data
            r.commit(len(data))
        del views
        self._append(data)

    @rule()
    def pop(self):
        got = [r.pop() for r in self.rings]
        expect = self._popleft() if self.model else None
        assert got == [expect] * len(self.rings)

    @rule(keep=st.booleans())
    def peek_release(self, keep):
        views = [r.peek() for r in self.rings]
        if not self.model:
            assert views == [None] * len(self.rings)
            return
        slot = self.tail % NSLOTS
        expect = self._popleft()
        assert [bytes(v) for v in views] == [expect] * len(self.rings)
        for r in self.rings:
            r.release()
        if keep and len(self.held_slots) < 2:
            for h, v in zip(self.held, views):
                h.append(v)
            self.held_slots.add(slot)
        del views


    @precondition(lambda self: self.held_slots)
    @rule()
    def drop_views(self):
        for h in self.held:
            h.clear()
        self.held_slots.clear()


    @rule(n=st.integers(0, 6))
    def push_batch(self, n):
        src = bytes(range(n * 4))
        got = [r.push_batch(src, 4) for r in self.rings]
        expect = 0
        while expect < n and self._can_write():
            self._append(src[expect * 4 : expect * 4 + 4])
            expect += 1
        assert got == [expect] * len(self.rings)

    @rule(n=st.integers(0, 6))
    def pop_batch(self, n):
        outs = [bytearray(n * 4) for _ in self.rings]
        got = [r.pop_batch(o, 4) for r, o in zip(self.rings, outs)]
        expect = 0
        for item in list(self.model)[:n]:
            if len(item) != 4:
                break
            expect += 1
        assert got == [expect] * len(self.rings)
        for i in range(expect):
            item = self._popleft()
            assert all(o[i * 4 : i * 4 + 4] == item for o in outs)

    @invariant()
    def sizes(self):
        assert [len(r) for r in self.rings] == [len(self.model)] * len(self.rings)
        assert [r.free for r in self.rings] == [self._free()] * len(self.rings)
        assert [r.view_count for r in self.rings] == [len(self.held_slots)] * len(self.rings)

    def teardown(self):
        for h in self.held:
            h.clear()
        for r in self.rings:
            r.close()


TestRing = RingModel.TestCase


class QueueModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.qs = [m.MPMCQueue(8) for m in IMPLS]
        self.model: deque[int] = deque()

    @rule(x=st.integers(0, 2**64 - 1))
    def put(self, x):
        got = [q.try_put(x) for q in self.qs]
        assert got == [len(self.model) < 8] * len(self.qs)
        if got[0]:
            self.model.append(x)

    @rule()
    def get(self):
        got = [q.try_get() for q in self.qs]
        assert got == [self.model.popleft() if self.model else None] * len(self.qs)

    @invariant()
    def size(self):
        assert [len(q) for q in self.qs] == [len(self.model)] * len(self.qs)


TestQueue = QueueModel.TestCase


@pytest.mark.parametrize("name", ["ref", "fast"])
def test_models_cover_both_backends(name):
    assert load(name).RingBuffer is not None
