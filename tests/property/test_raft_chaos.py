"""Raft under chaos in the deterministic simulator: safety always, liveness once a quorum can talk.

The default run uses a bounded number of seeds; --run-slow runs many more.
A failure prints its seed: `Sim(..., seed=N)` replays it exactly.
"""

from __future__ import annotations

import json

from dwcp._testbase.raftsim import FullDisk, Sim
from dwcp.consensus.raft import Role

# (fast, slow) seed counts per scenario: --run-slow (or DWCP_SLOW_TESTS=1) runs the slow ones
SEEDS = {
    "test_random_faults_never_break_safety_and_progress_resumes": (12, 400),
    "test_50_50_partition_no_progress_no_split_brain": (6, 200),
    "test_70_30_majority_commits_and_the_minority_converges": (6, 200),
    "test_leader_crash_gives_a_new_leader_and_loses_nothing_committed": (6, 200),
    "test_cascading_crashes_stop_progress_only_without_a_quorum": (4, 100),
    "test_flapping_partitions_and_message_storms": (4, 100),
    "test_compaction_under_random_faults_keeps_every_catalog_equal": (10, 300),
    "test_compaction_under_partitions_the_minority_catches_up_by_snapshot": (6, 200),
    "test_a_lagging_follower_is_caught_up_by_snapshot": (6, 200),
    "test_disk_full_on_one_node_stops_it_cleanly_and_it_rejoins": (8, 300),
    "test_a_slow_node_and_a_storm_of_replayed_messages": (6, 200),
    "test_prevote_a_partitioned_node_rejoining_does_not_disrupt_the_leader": (6, 200),
}


def cmd(k: int, holder: str = "h") -> bytes:
    """A catalog command (so the catalogs have something to disagree about)."""
    return json.dumps({"op": "version", "key": f"k{k % 7}", "digest": f"{k:032x}", "size": k,
                       "holder": holder}).encode()  # fmt: skip


def test_same_seed_same_run():
    a, b = Sim(5, seed=42, drop=0.1), Sim(5, seed=42, drop=0.1)
    for s in (a, b):
        s.wait_leader()
        for k in range(5):
            s.wait_commit(b"v%d" % k)
    assert a.now == b.now and a.history == b.history and a.delivered == b.delivered


def test_random_faults_never_break_safety_and_progress_resumes(seed):
    s = Sim(5, seed=seed, drop=0.05, dup=0.05, min_delay=1, max_delay=6)
    r = s.rng
    s.wait_leader()
    for k in range(30):
        s.propose(b"p%d" % k)
        s.run(r.randint(1, 15))
        x = r.random()
        if x < 0.1:  # crash up to two nodes (f = 2 of 5)
            down = [i for i in s.ids if i not in s.alive]
            if len(down) < 2:
                s.crash(r.choice(sorted(s.alive)))
        elif x < 0.2:
            for i in [i for i in s.ids if i not in s.alive]:
                s.restart(i)
        elif x < 0.3:
            ids = s.ids[:]
            r.shuffle(ids)
            cut = r.randint(1, 4)
            s.partition(set(ids[:cut]), set(ids[cut:]))
        elif x < 0.4:
            s.heal()
    s.heal()
    for i in [i for i in s.ids if i not in s.alive]:
        s.restart(i)
    idx = s.wait_commit(b"final")
    s.check_agreement()
    # all state machines equal up to "final" (entries after it may still be on their way to some)
    assert len({tuple(v[:idx]) for v in s.applied.values()}) == 1


def test_50_50_partition_no_progress_no_split_brain(seed):
    s = Sim(4, seed=seed)
    s.wait_leader()
    before = len(s.history)
    s.partition({"n0", "n1"}, {"n2", "n3"})
    for k in range(20):
        for i in s.leaders():
            try:
                s.nodes[i].propose(b"split%d" % k)
            except Exception:
                pass
        s.run(10)
    assert len(s.history) <= before + 1  # at most an entry that was already in flight
    s.heal()
    s.wait_commit(b"after")
    s.check_agreement()


def test_70_30_majority_commits_and_the_minority_converges(seed):
    s = Sim(5, seed=seed)
    s.wait_leader()
    s.partition({"n0", "n1", "n2"}, {"n3", "n4"})
    s.run(60)
    idx = s.wait_commit(b"majority", nodes={"n0", "n1", "n2"})
    assert all(len(s.applied[i]) < idx for i in ("n3", "n4"))
    s.heal()
    idx = s.wait_commit(b"healed")
    s.check_agreement()
    logs = {i: [(e.term, e.data) for e in s.applied[i][:idx]] for i in s.ids}
    assert len({tuple(v) for v in logs.values()}) == 1  # same height and same hash everywhere


def test_leader_crash_gives_a_new_leader_and_loses_nothing_committed(seed):
    s = Sim(5, seed=seed, max_delay=3)
    s.wait_leader()
    for k in range(5):
        s.wait_commit(b"c%d" % k)
    committed = dict(s.history)
    old = s.leader()
    s.crash(old)
    t0 = s.now
    while s.leader() in (None, old):
        s.step()
        assert s.now - t0 < 200, "no new leader"
    # within a few election timeouts (PreVote adds a round: 400 seeds gave at most 73 ticks, median 18.5)
    assert s.now - t0 <= 8 * s.election_ticks
    s.wait_commit(b"next")
    s.restart(old)
    s.wait_commit(b"back")
    s.check_agreement()
    assert all(s.history[i] == e for i, e in committed.items())


def test_cascading_crashes_stop_progress_only_without_a_quorum(seed):
    s = Sim(5, seed=seed)
    s.wait_leader()
    s.crash("n0")
    s.crash("n1")
    s.wait_commit(b"three alive")
    s.crash("n2")
    before = len(s.history)
    for k in range(10):
        s.propose(b"lost%d" % k)
        s.run(20)
    assert len(s.history) == before  # two of five cannot commit
    s.restart("n0")
    s.wait_commit(b"quorum again", nodes={"n0", "n3", "n4"})
    s.check_agreement()


def test_flapping_partitions_and_message_storms(seed):
    s = Sim(5, seed=seed, drop=0.2, dup=0.3, max_delay=10)
    s.wait_leader(max_ticks=3000)
    for k in range(15):
        if k % 2:
            s.partition({"n0", "n1"}, {"n2", "n3", "n4"})
        else:
            s.heal()
        s.propose(b"f%d" % k)
        s.run(25)
    s.heal()
    s.wait_commit(b"settled", max_ticks=5000)
    s.check_agreement()


def test_compaction_under_random_faults_keeps_every_catalog_equal(seed):
    s = Sim(5, seed=seed, drop=0.05, dup=0.05, max_delay=6, compact=0.05)
    r = s.rng
    s.wait_leader()
    for k in range(40):
        s.propose(cmd(k))
        s.run(r.randint(1, 15))
        x = r.random()
        if x < 0.1 and len(s.alive) > 3:
            s.crash(r.choice(sorted(s.alive)))
        elif x < 0.2:
            for i in [i for i in s.ids if i not in s.alive]:
                s.restart(i)
        elif x < 0.3:
            ids = s.ids[:]
            r.shuffle(ids)
            s.partition(set(ids[:2]), set(ids[2:]))
        elif x < 0.4:
            s.heal()
    s.heal()
    for i in [i for i in s.ids if i not in s.alive]:
        s.restart(i)
    s.wait_commit(cmd(10**6))
    s.check_agreement()
    s.check_catalogs()
    assert s.snapshots_taken > 0


def test_compaction_under_partitions_the_minority_catches_up_by_snapshot(seed):
    s = Sim(5, seed=seed, compact=0.2)
    s.wait_leader()
    lead = s.leader()
    minority = set([i for i in s.ids if i != lead][:2])
    s.partition(set(s.ids) - minority, minority)
    for k in range(30):
        s.wait_commit(cmd(k), nodes=set(s.ids) - minority)
    # every majority node has compacted past what the minority holds
    for i in set(s.ids) - minority:
        s.nodes[i].compact(s.nodes[i].applied, _snap(s, i))
    before = dict(s.snapshots_installed)
    s.heal()
    s.wait_commit(cmd(999))
    s.check_agreement()
    s.check_catalogs()
    assert all(s.snapshots_installed[i] > before.get(i, 0) for i in minority)


def _snap(s: Sim, i: str) -> bytes:
    from dwcp._testbase.raftsim import _snapshot_bytes

    return _snapshot_bytes(s.applied[i], s.catalogs[i])


def test_a_lagging_follower_is_caught_up_by_snapshot(seed):
    s = Sim(3, seed=seed, drop=0.02)
    s.wait_leader()
    lead = s.leader()
    lag = next(i for i in s.ids if i != lead)
    s.crash(lag)
    for k in range(25):
        s.wait_commit(cmd(k))
    for i in s.alive:
        s.nodes[i].compact(s.nodes[i].applied, _snap(s, i))
    # back from its disk: its log ends before the leader's snapshot
    s.restart(lag)
    s.wait_commit(cmd(100))
    assert s.snapshots_installed[lag] == 1 and s.disks[lag].snap.index > 0
    # and again from an empty disk (a replaced machine), while the leader stays up
    s.crash(lag)
    for k in range(25, 40):
        s.wait_commit(cmd(k))
    for i in s.alive:
        s.nodes[i].compact(s.nodes[i].applied, _snap(s, i))
    s.restart(lag, wipe=True)
    s.wait_commit(cmd(200))
    assert s.snapshots_installed[lag] == 2
    # crash and restart with its disk: the snapshot is kept and restored first, the log replays after it
    s.crash(lag)
    s.restart(lag)
    assert s.nodes[lag].storage.snap.index > 0
    s.wait_commit(cmd(300))
    assert s.snapshots_installed[lag] == 3
    s.check_agreement()
    s.check_catalogs()


def test_disk_full_on_one_node_stops_it_cleanly_and_it_rejoins(seed):
    s = Sim(5, seed=seed, drop=0.02, compact=0.1)
    victim = s.ids[seed % 5]
    disk = FullDisk(s.rng.randint(100, 3000))
    s.restart(victim, disk=disk)
    s.wait_leader()
    for k in range(60):
        s.propose(cmd(k, "x" * s.rng.randint(0, 40)))
        s.run(s.rng.randint(1, 6))
    s.wait_commit(cmd(1000))
    assert [i for i, _ in s.storage_failures] and {i for i, _ in s.storage_failures} == {victim}
    assert victim not in s.alive and s.nodes[victim].failed is not None
    s.check_agreement()
    s.check_catalogs()
    # space freed: restarted from what its disk holds, it catches up (by log or by snapshot)
    disk.budget = 1 << 30
    s.restart(victim)
    s.wait_commit(cmd(2000))
    s.check_agreement()
    s.check_catalogs()


def test_a_slow_node_and_a_storm_of_replayed_messages(seed):
    s = Sim(5, seed=seed, dup=0.3, replay=0.3, max_delay=5, compact=0.05)
    s.slow = {s.ids[seed % 5]: 25}
    s.wait_leader(max_ticks=3000)
    for k in range(30):
        s.propose(cmd(k))
        s.run(s.rng.randint(1, 10))
    s.wait_commit(cmd(500), max_ticks=5000)
    s.slow = {}
    s.wait_commit(cmd(501), max_ticks=5000)
    s.check_agreement()
    s.check_catalogs()


def test_prevote_a_partitioned_node_rejoining_does_not_disrupt_the_leader(seed):
    def run(pre_vote: bool) -> tuple[int, int]:
        s = Sim(5, seed=seed, pre_vote=pre_vote)
        lead = s.wait_leader()
        s.wait_commit(b"x")
        term = s.nodes[lead].term
        loner = next(i for i in s.ids if i != lead)
        s.partition({loner}, set(s.ids) - {loner})
        s.run(20 * s.election_ticks)  # many election timeouts alone
        s.heal()
        s.run(10 * s.election_ticks)
        s.wait_commit(b"y")
        s.check_agreement()
        return s.nodes[loner].term - term, int(s.leader() != lead or s.nodes[lead].role is not Role.LEADER)

    assert run(pre_vote=True) == (0, 0)  # no term inflation, the same leader
    assert run(pre_vote=False)[0] > 0  # without PreVote the loner's terms climb (and depose the leader)
