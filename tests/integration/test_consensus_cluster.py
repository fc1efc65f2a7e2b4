"""Real daemons replicating the catalog with Raft over the data port: kill -9 of the leader."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from dwcp._testbase.daemons import Cluster
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.transport.sender import Sender


@pytest.mark.parametrize("n", [3, 5])
def test_leader_killed_during_catalog_writes(tmp_path, n):
    c = Cluster(str(tmp_path), n)
    try:
        lead = c.wait(c.leader, what="a first leader")
        data = np.random.default_rng(n).integers(0, 256, 256 << 10, dtype=np.uint8)
        snd = Sender(TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True))
        for k in range(4):  # each stored version is recorded through the catalog
            snd.send(data, "127.0.0.1", c.ports[c.ids[k % n]], f"obj/{k}")
        c.wait(
            lambda: all(len((c.status(i) or {}).get("catalog") or {}) == 4 for i in c.ids),
            what="4 keys everywhere",
        )
        before = c.status(c.ids[0])["catalog"]
        health = c.status(c.ids[1])["health"]["checks"]
        assert health["baseline_sync"]["status"] == "healthy"  # fed by the replicated catalog
        # kill -9 the leader while more versions are being recorded
        rest = [i for i in c.ids if i != lead]
        os.kill(c.procs[lead].pid, signal.SIGKILL)
        t0 = time.monotonic()
        snd.send(data, "127.0.0.1", c.ports[rest[0]], "obj/after")
        new = c.wait(lambda: c.leader(rest), what="a new leader")
        assert time.monotonic() - t0 < 2.0 + 1.0, (
            "new leader took too long"
        )  # 2 s target, 1 s of polling slack
        c.wait(
            lambda: all("obj/after" in ((c.status(i) or {}).get("catalog") or {}) for i in rest),
            what="the new write",
        )
        # no committed entry lost: every survivor still has the old versions, and so does the restarted leader
        c.start(lead)
        c.wait(
            lambda: len((c.status(lead) or {}).get("catalog") or {}) == 5, what="the old leader catching up"
        )
        for i in c.ids:
            cat = c.status(i)["catalog"]
            assert {k: v for k, v in cat.items() if k in before} == before
        assert new != lead
    finally:
        c.close()


def test_in_process_cluster_snapshots_catch_up_a_wiped_node_and_reads_are_linearizable(tmp_path):
    """Three drivers over real sockets: compaction every 20 entries, a follower wiped and caught up by
    INSTALL_SNAPSHOT, and a read on a follower that sees every write committed before it."""
    import shutil

    from dwcp._testbase.transfer import server_config
    from dwcp.consensus.driver import RaftDriver
    from dwcp.consensus.raft import Role
    from dwcp.transport.dialer import Dialer
    from dwcp.transport.server import DataServer, message_stream
    from dwcp.wire import consts as C

    ids = ["r0", "r1", "r2"]
    servers = {i: DataServer(server_config(str(tmp_path / i), node=i)) for i in ids}
    addr = {i: "{}:{}".format(*s.start()) for i, s in servers.items()}

    def driver(i: str) -> RaftDriver:
        d = RaftDriver(i, {p: addr[p] for p in ids if p != i}, str(tmp_path / i), dialer=Dialer.plaintext(),
                       tick_s=0.02, snapshot_every=20)  # fmt: skip
        d.start()
        return d

    drivers: dict[str, RaftDriver] = {}
    for i in ids:  # a node's streams stay open across its driver's restart below: deliver to the current one
        servers[i].register("raft", message_stream(C.FRAME_RAFT, lambda m, p, i=i: drivers[i].deliver(m, p)))
    drivers.update({i: driver(i) for i in ids})
    try:
        deadline = time.monotonic() + 10
        while not any(d.node.role is Role.LEADER for d in drivers.values()):
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.01)
        lead = next(i for i, d in drivers.items() if d.node.role is Role.LEADER)
        lag = next(i for i in ids if i != lead)
        drivers[lag].close()
        shutil.rmtree(tmp_path / lag / "raft")  # a replaced disk
        for k in range(60):
            drivers[lead].propose({"op": "version", "key": f"k{k % 5}", "digest": f"{k:032x}", "size": k,
                                   "holder": "h"})  # fmt: skip
        assert drivers[lead].storage.snap.index >= 40
        drivers[lag] = driver(lag)
        last = drivers[lead].propose(
            {"op": "version", "key": "last", "digest": "f" * 32, "size": 1, "holder": "h"}
        )
        assert last["ok"]
        # a read on the wiped follower: after the write above committed, it must see it
        got = drivers[lag].read(lambda c: c.where(), timeout_s=10)
        assert "last" in got and got == drivers[lead].read(lambda c: c.where())
        assert drivers[lag].installed >= 1
    finally:
        for d in drivers.values():
            d.close()
        for s in servers.values():
            s.close()
