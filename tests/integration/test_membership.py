"""Membership through consensus between real daemons: 3 -> 5 -> 4 under writes, nothing lost.

`dwcp cluster add|remove` proposes a member record through the Raft catalog; the leader moves the
voters one node at a time to match, links follow on every node, and anti-entropy re-replicates the
keys whose homes moved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

from dwcp._testbase.daemons import Cluster
from dwcp.cli.demo import same_dwcp_env
from dwcp.cluster.ring import HashRing
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import object_digest
from dwcp.transport.sender import Sender


class GrowingCluster(Cluster):
    """c0..c4 with ports for all; c0-c2 start as the cluster, c3 and c4 come up knowing it (their
    configs name every node), and join when added."""

    def __init__(self, root) -> None:
        self.founders = ["c0", "c1", "c2"]
        super().__init__(root, 5)

    def cluster_extra(self) -> str:
        return "replicas = 2\nrepair_interval_s = 1.0\n"

    def cfg(self, i: str) -> str:
        if i in self.founders:  # the founders' configs know only each other
            ids, self.ids = self.ids, self.founders
            try:
                return super().cfg(i)
            finally:
                self.ids = ids
        return super().cfg(i)


def _cli(c: Cluster, via: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dwcp", *args, "--config", os.path.join(c.root, f"{via}.toml")],
                          capture_output=True, text=True, env=same_dwcp_env(), cwd=c.root, timeout=60)  # fmt: skip


def _voters(c: Cluster, i: str) -> list[str]:
    return ((c.status(i) or {}).get("raft") or {}).get("voters") or []


def test_membership_3_to_5_to_4_under_writes(tmp_path):
    (tmp_path / "g").mkdir()
    c = GrowingCluster(str(tmp_path / "g"))
    try:
        c.wait(lambda: c.leader(c.founders), what="a leader among the founders")
        acked: dict[str, str] = {}  # key -> digest: each send acknowledged (verified, committed) by c0
        stop = threading.Event()
        errors: list[str] = []

        def writer() -> None:
            snd = Sender(
                TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True), node_id="w"
            )
            n = 0
            while not stop.is_set() and n < 400:
                data = np.random.default_rng(n).integers(0, 256, 64 << 10, dtype=np.uint8)
                key = f"obj/{n}"
                try:
                    snd.send(data, "127.0.0.1", c.ports["c0"], key)
                    acked[key] = object_digest(data).hex()
                except Exception as exc:  # noqa: BLE001 - a send may fail while the leader changes: not acked
                    errors.append(f"{key}: {exc}")
                n += 1
                time.sleep(0.02)

        def more_writes(n: int = 5) -> None:  # each change lands between acknowledged writes
            start = len(acked)
            c.wait(lambda: len(acked) >= start + n, timeout=30, what=f"{n} more acknowledged writes")

        t = threading.Thread(target=writer)
        t.start()
        try:
            for new in ("c3", "c4"):  # 3 -> 4 -> 5, each added through a founder's CLI
                more_writes()
                r = _cli(c, "c1", "cluster", "add", new, f"127.0.0.1:{c.ports[new]}")
                assert r.returncode == 0, r.stderr
                c.wait(lambda new=new: new in _voters(c, "c0") and new in _voters(c, new), timeout=30,
                       what=f"{new} a voter, on the leader's side and its own")  # fmt: skip
            assert sorted(_voters(c, "c0")) == ["c0", "c1", "c2", "c3", "c4"]
            more_writes()
            lead = c.leader()
            gone = next(i for i in ("c1", "c2") if i != lead)  # a follower leaves: 5 -> 4
            r = _cli(c, "c0", "cluster", "remove", gone)
            assert r.returncode == 0, r.stderr
            rest = [i for i in c.ids if i != gone]
            c.wait(
                lambda: all(sorted(_voters(c, i)) == rest for i in rest),
                timeout=30,
                what="4 voters everywhere",
            )
            c.procs[gone].terminate()
            c.procs[gone].wait(20)
            more_writes()  # writes go on with the 4
        finally:
            stop.set()
            t.join(60)
        assert len(acked) > 20, errors[:5]

        # nothing acknowledged is lost: every key, on every remaining member's catalog, at its digest
        def whole(i: str) -> bool:
            cat = (c.status(i) or {}).get("catalog") or {}
            return all(cat.get(k, {}).get("digest") == d for k, d in acked.items())

        c.wait(lambda: all(whole(i) for i in rest), timeout=60, what="every acknowledged key on the 4")
        # the keys whose homes moved (to the newcomers, away from the one that left) are re-replicated
        ring = HashRing(rest, vnodes=150)

        def homed() -> bool:
            cat = (c.status("c0") or {}).get("catalog") or {}
            return all(set(ring.replicas(k, 2)) <= set(cat[k]["holders"]) for k in acked)

        c.wait(homed, timeout=90, what="every key on its homes among the 4")
        r = _cli(c, "c3", "cluster", "members", "--json")
        assert r.returncode == 0, r.stderr
        assert gone not in r.stdout and all(i in r.stdout for i in rest)
    finally:
        c.close()
