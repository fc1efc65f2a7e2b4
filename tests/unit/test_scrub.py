"""dwcp.daemon.scrub: every stored version re-hashed at a bounded rate; a rotten one quarantined."""

from __future__ import annotations

import os

import numpy as np

from dwcp._testbase.store import put
from dwcp.daemon.scrub import Scrubber
from dwcp.storage import ObjectStore

MiB = 1 << 20


def _data(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _scrubber(store, rate=0.0, **kw):
    found = []
    s = Scrubber(store, rate=lambda: rate, interval=lambda: 3600.0, on_corrupt=found.append, **kw)
    return s, found


def test_a_clean_store_passes_and_every_byte_is_read(tmp_path):
    store = ObjectStore(tmp_path)
    sizes = [3 * MiB + 5, MiB, 0, 17]
    for i, n in enumerate(sizes):
        put(store, f"k/{i}", _data(i, n))
    put(store, "k/0", _data(9, 3 * MiB + 5))  # a second version of k/0
    s, found = _scrubber(store)
    out = s.run_once()
    assert out["checked"] == 5 and out["corrupt"] == [] and found == []
    assert out["bytes"] == sum(sizes) + 3 * MiB + 5 and s.status()["ok_total"] == 5 and s.passes == 1


def test_a_flipped_byte_is_found_quarantined_and_reported(tmp_path):
    store = ObjectStore(tmp_path)
    old = put(store, "vm/1", _data(1, 2 * MiB + 3))
    new = put(store, "vm/1", _data(2, 2 * MiB + 3))
    with open(new.path, "r+b") as f:  # bit rot in the latest version, in its last (partial) leaf
        f.seek(2 * MiB + 1)
        b = f.read(1)
        f.seek(2 * MiB + 1)
        f.write(bytes([b[0] ^ 1]))
    s, found = _scrubber(store)
    out = s.run_once()
    assert out["corrupt"] == [{"key": "vm/1", "digest": new.digest.hex(), "size": new.size}]
    assert [i.digest for i in found] == [new.digest] and s.corrupt == 1 and s.ok == 1
    # gone from the store (LATEST names the older version), kept under quarantine/ for a post-mortem
    assert store.get("vm/1", new.digest) is None and store.latest("vm/1").digest == old.digest
    (q,) = os.listdir(tmp_path / "quarantine" / "vm%2F1")
    assert q.startswith(new.digest.hex() + ".obj.")
    assert s.run_once()["corrupt"] == []  # the next pass finds nothing more


def test_a_truncated_version_is_corrupt(tmp_path):
    store = ObjectStore(tmp_path)
    info = put(store, "t", _data(3, MiB + 100))
    os.truncate(info.path, MiB)
    s, found = _scrubber(store)
    assert s.run_once()["corrupt"][0]["key"] == "t" and len(found) == 1


def test_the_rate_bounds_the_reads(tmp_path):
    store = ObjectStore(tmp_path)
    put(store, "r", _data(4, 10 * MiB))
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    s, _ = _scrubber(store, rate=float(2 * MiB), clock=lambda: now[0], sleep=sleep)
    s.run_once()
    # 10 MiB at 2 MiB/s: 5 s of waiting, in steps after each 4 MiB read
    assert abs(now[0] - 5.0) < 1e-9 and len(slept) == 3
    s2, _ = _scrubber(store, rate=0.0, clock=lambda: now[0], sleep=sleep)
    before = len(slept)
    s2.run_once()
    assert len(slept) == before  # unthrottled: no waiting
