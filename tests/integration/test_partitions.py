"""The Raft catalog between real daemons, each in its own network namespace, under partitions made with
iptables: no acknowledged write is lost, no term has two leaders (from every node's log), and the
cluster takes writes again within LIVENESS_S of healing."""

from __future__ import annotations

import threading
import time

import pytest

from dwcp._testbase.netcluster import NetCluster

pytestmark = pytest.mark.skipif(NetCluster.unavailable() is not None, reason=str(NetCluster.unavailable()))

LIVENESS_S = 10.0  # after healing: an election (10 ticks of 50 ms, PreVote, a random spread) and a commit


@pytest.fixture
def netcluster(tmp_path):
    made = []

    def make(n: int) -> NetCluster:
        root = tmp_path / f"nc{len(made)}"
        root.mkdir()
        nc = NetCluster(str(root), n)
        made.append(nc)
        nc.wait(nc.leader, timeout=30, what="a first leader")
        return nc

    yield make
    for nc in made:
        nc.close()


class Writes:
    """Catalog writes through the given nodes, in the background, each key once: what was acknowledged."""

    def __init__(self, nc: NetCluster) -> None:
        self.nc, self.acked, self.n = nc, set(), 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def attempt(self, i: str, timeout_s: float = 20.0) -> threading.Thread:
        with self._lock:
            key, self.n = f"k/{self.n}", self.n + 1

        def run() -> None:
            if self.nc.write(i, key, timeout_s=timeout_s):
                with self._lock:
                    self.acked.add(key)

        t = threading.Thread(target=run)
        t.start()
        self._threads.append(t)
        return t

    def some(self, nodes, count: int, timeout_s: float = 20.0) -> int:
        """``count`` writes through ``nodes`` in turn, each waited for; how many were acknowledged."""
        before = len(self.acked)
        for k in range(count):
            self.attempt(nodes[k % len(nodes)], timeout_s).join(timeout_s + 10)
        return len(self.acked) - before

    def join(self) -> None:
        for t in self._threads:
            t.join(60)


def _check(nc: NetCluster, w: Writes, healed_at: float) -> float:
    """After healing: writes come back within LIVENESS_S; every acknowledged write is in every node's
    catalog; no term had two leaders.  Returns the seconds until the first write after healing."""
    deadline = healed_at + LIVENESS_S
    while not w.some([nc.ids[0]], 1, timeout_s=5.0):
        assert time.monotonic() < deadline, f"no write acknowledged within {LIVENESS_S} s of healing"
    back = time.monotonic() - healed_at
    w.join()
    for i in nc.ids:
        nc.wait(lambda i=i: w.acked <= set((nc.status(i) or {}).get("catalog") or {}), timeout=30,
                what=f"every acknowledged write in {i}'s catalog")  # fmt: skip
    two = {t: ls for t, ls in nc.leaders_by_term().items() if len(ls) > 1}
    assert not two, f"two leaders in one term: {two}"
    return back


def test_3_nodes_leader_cut_off_majority_goes_on(netcluster):
    nc = netcluster(3)
    w = Writes(nc)
    assert w.some(nc.ids, 3) == 3
    old = nc.leader()
    rest = [i for i in nc.ids if i != old]
    nc.partition(set(rest), {old})
    stale = w.attempt(old, timeout_s=15.0)  # the cut-off leader cannot commit: never acknowledged
    new = nc.wait(lambda: nc.leader(rest), timeout=LIVENESS_S, what="a leader on the majority side")
    assert new != old
    assert w.some(rest, 4) >= 3  # the majority takes writes (one may meet the election)
    stale.join(30)
    nc.heal()
    _check(nc, w, time.monotonic())
    assert f"k/{3}" not in w.acked  # the write through the cut-off leader


def test_4_nodes_split_50_50_nobody_commits_until_healed(netcluster):
    nc = netcluster(4)
    w = Writes(nc)
    assert w.some(nc.ids, 2) == 2
    nc.partition({"n0", "n1"}, {"n2", "n3"})
    time.sleep(1.0)
    tries = [w.attempt(i, timeout_s=12.0) for i in nc.ids]  # 2 of 4 is no majority, on either side
    for t in tries:
        t.join(30)
    assert len(w.acked) == 2
    nc.heal()
    _check(nc, w, time.monotonic())


@pytest.mark.parametrize("groups", [[{"n0", "n1", "n2"}, {"n3", "n4"}], [{"n0", "n1"}, {"n2", "n3"}, {"n4"}]],
                         ids=["majority-minority", "three-way"])  # fmt: skip
def test_5_nodes_partitions(netcluster, groups):
    nc = netcluster(5)
    w = Writes(nc)
    assert w.some(nc.ids, 3) == 3
    nc.partition(*groups)
    big = max(groups, key=len)
    minority = [i for g in groups if g is not big for i in sorted(g)]
    stale = [w.attempt(i, timeout_s=12.0) for i in minority]
    if len(big) >= 3:  # a majority: it elects (or keeps) a leader and takes writes
        nc.wait(lambda: nc.leader(sorted(big)), timeout=LIVENESS_S, what="a leader in the majority")
        assert w.some(sorted(big), 3) >= 2
    for t in stale:
        t.join(30)
    nc.heal()
    _check(nc, w, time.monotonic())


def test_3_nodes_flapping_partitions(netcluster):
    nc = netcluster(3)
    w = Writes(nc)
    assert w.some(nc.ids, 2) == 2
    for k in range(6):  # a different node cut off every 1.5 s, healed for 1 s between, writes throughout
        nc.partition({i for i in nc.ids if i != nc.ids[k % 3]}, {nc.ids[k % 3]})
        for i in nc.ids:
            w.attempt(i, timeout_s=10.0)
        time.sleep(1.5)
        nc.heal()
        time.sleep(1.0)
    _check(nc, w, time.monotonic())
