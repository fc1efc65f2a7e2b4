"""dwcp.digest by its rules: the root of the leaf hashes, the same however the bytes are seen."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.digest import DOMAIN, LEAF_BYTES, TreeHasher, chunk_hash, hash_of_blocks, object_digest

L = LEAF_BYTES


def data(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("n", [0, 1, L - 1, L, L + 1, 3 * L + 17])
def test_the_root_hashes_the_size_and_the_leaf_hashes_in_order(n):
    """Rule 2, spelled out with the xxhash package."""
    d = data(n, n)
    leaves = b"".join(xxhash.xxh3_128_digest(d[o : o + L]) for o in range(0, n, L))
    assert object_digest(d) == xxhash.xxh3_128_digest(DOMAIN + n.to_bytes(8, "little") + leaves)


def test_size_and_order_matter():
    a, b = data(L, 1), data(L, 2)
    assert object_digest(a + b) != object_digest(b + a)
    assert object_digest(b"") != object_digest(b"\0") != object_digest(b"\0\0")
    assert object_digest(bytes(L)) != object_digest(bytes(L + 1))  # zeros of other lengths
    assert object_digest(data(5 * L)) != xxhash.xxh3_128_digest(
        data(5 * L)
    )  # protocol 2 is not the old digest


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5 * L + 3),
    cut=st.lists(st.integers(1, 3 * L), min_size=1, max_size=8),
    order=st.randoms(use_true_random=False),
)
def test_chunks_added_in_any_order_and_size_give_the_whole_objects_root(n, cut, order):
    """Rule 1, 3: chunk sizes need not be leaf multiples; the leaves a chunk cut are read at the end."""
    d = data(n, 7)
    spans, off, i = [], 0, 0
    while off < n:
        ln = min(cut[i % len(cut)], n - off)
        spans.append((off, ln))
        off, i = off + ln, i + 1
    order.shuffle(spans)
    t = TreeHasher(n)
    for o, ln in spans:
        t.add(o, d[o : o + ln])
    reads = []

    def read(o: int, ln: int) -> bytes:
        reads.append(o)
        return d[o : o + ln]

    assert t.root(read) == object_digest(d)
    assert sorted(reads) == [i * L for i in t.missing()]  # exactly the leaves no chunk held whole, once each


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5 * L + 3),
    cut=st.lists(st.integers(1, 3 * L), min_size=1, max_size=8),
)
def test_chunk_hashes_are_over_blocks_and_aligned_chunks_give_the_leaves(n, cut):
    """Rule 4: a chunk's hash is over its 1 MiB blocks from its own start; a chunk on a leaf boundary
    gives the tree its leaves (add_blocks), and the tree gives a sender the chunk's blocks (leaves_of)."""
    d = data(n, 11)
    whole = TreeHasher(n)
    whole.add(0, d)
    t = TreeHasher(n)
    off, i = 0, 0
    while off < n:
        ln = min(cut[i % len(cut)], n - off)
        c = d[off : off + ln]
        ch, blocks = chunk_hash(c)
        assert blocks == b"".join(xxhash.xxh3_128_digest(c[o : o + L]) for o in range(0, ln, L))
        assert ch == hash_of_blocks(blocks) == xxhash.xxh3_64_intdigest(blocks)
        added = t.add_blocks(off, ln, blocks)
        aligned_end = off + ln == n or (off + ln) % L == 0
        if off % L:
            assert added == 0 and whole.leaves_of(off, ln) is None
        else:
            assert added == ln // L + (1 if ln % L and off + ln == n else 0)
            assert whole.leaves_of(off, ln) == (blocks if aligned_end else None)
        off, i = off + ln, i + 1
    reads = []
    assert t.root(lambda o, k: (reads.append(o), d[o : o + k])[1]) == object_digest(d)
    assert sorted(reads) == [i * L for i in t.missing()]


def test_add_blocks_checks_its_arguments():
    t = TreeHasher(3 * L)
    with pytest.raises(ValueError, match="outside"):
        t.add_blocks(2 * L, 2 * L, bytes(32))
    with pytest.raises(ValueError, match="block hashes for"):
        t.add_blocks(0, L + 1, bytes(16))
    assert t.leaves_of(0, L) is None  # nothing added yet: the caller hashes the bytes


def test_whole_leaf_chunks_need_no_reads_and_missing_leaves_need_a_reader():
    d = data(4 * L + 5)
    t = TreeHasher(len(d))
    for o in range(0, len(d), 2 * L):
        t.add(o, d[o : o + 2 * L])
    assert t.missing() == [] and t.complete and t.root() == object_digest(d)
    u = TreeHasher(len(d))
    u.add(0, d[: 2 * L])
    assert not u.complete
    with pytest.raises(ValueError, match="leaf 2 of 5 was never added"):
        u.root()


def test_discarded_leaves_are_read_again():
    d = data(3 * L)
    t = TreeHasher(len(d))
    t.add(0, d)
    t.discard(L + 5, 10)  # a chunk inside leaf 1 is to come again
    assert t.missing() == [1]
    assert t.root(lambda o, n: d[o : o + n]) == object_digest(d)
    t.discard(0, 0)
    assert t.missing() == [1]


def test_bounds_are_checked():
    t = TreeHasher(10)
    with pytest.raises(ValueError, match="outside"):
        t.add(5, b"x" * 6)
    with pytest.raises(ValueError):
        TreeHasher(-1)


def test_memory_follows_what_was_added_not_the_announced_size():
    t = TreeHasher(1 << 44)  # 16 TiB announced
    assert t.nleaves == 1 << 24 and len(t.missing.__self__._leaves) == 0  # nothing allocated per leaf


def test_several_threads_may_add_at_once():
    d = data(16 * L)
    t = TreeHasher(len(d))
    ts = [threading.Thread(target=t.add, args=(o, d[o : o + 2 * L])) for o in range(0, len(d), 2 * L)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    assert t.root() == object_digest(d)
