"""Real daemons in adaptive mode choose their consensus by themselves: one node made Byzantine by the test
hook (DWCP_TEST_BYZANTINE) makes the other three switch Raft -> BFT with a reason naming it, and once it
runs clean again the cluster returns to Raft after the quiet period.  4 nodes (f = 1), plaintext."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dwcp._testbase.daemons import Cluster
from dwcp.cli.demo import same_dwcp_env
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.consensus.byzantine import ENV_VAR
from dwcp.security.certs import bft_signing_key
from dwcp.transport.sender import Sender

CORRECT = ["c0", "c1", "c2"]
BAD = "c3"
QUIET_S = 6.0  # quiet_period_s


class AutoCluster(Cluster):
    """Adaptive consensus with short windows; ``byzantine`` (node -> mode) start with the test hook."""

    tick_ms = 20.0

    def __init__(self, root, n: int, byzantine: dict[str, str]) -> None:
        self.byzantine = dict(byzantine)
        self.pub = {}
        for i in (f"c{k}" for k in range(n)):
            _, self.pub[i] = bft_signing_key(os.path.join(root, i, "consensus", "bft.key"))
        super().__init__(root, n)

    def peer_extra(self, p: str) -> str:
        return f'bft_key = "{self.pub[p]}"\n'

    def consensus_extra(self) -> str:
        return ('algorithm = "raft"\nadaptive = true\nauto_switch = true\nbyzantine_evidence_min = 3\n'
                f"evidence_window_s = 2.0\nquiet_period_s = {QUIET_S}\nswitch_cooldown_s = 2.0\n")  # fmt: skip

    def cfg(self, i: str) -> str:
        path = super().cfg(i)
        if i == "c0":  # c0 serves /metrics
            with open(path) as f:
                text = f.read().replace("metrics_port = -1", "metrics_port = 0")
            with open(path, "w") as f:
                f.write(text)
        return path

    def metrics(self, i: str) -> dict[tuple[str, tuple], float]:
        """(sample name, sorted labels) -> value, from node ``i``'s /metrics."""
        with urllib.request.urlopen(self.status(i)["metrics_endpoint"] + "metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip

    def start(self, i: str) -> None:
        env = same_dwcp_env()
        env.pop(ENV_VAR, None)
        if i in self.byzantine:
            env[ENV_VAR] = self.byzantine[i]
        with open(os.path.join(self.root, f"{i}.log"), "ab") as log:
            self.procs[i] = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", self.cfg(i)],
                                             stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)  # fmt: skip

    def consensus(self, i: str) -> dict:
        return (self.status(i) or {}).get("consensus") or {}

    def everywhere(self, key: str, holder: str, among=None) -> bool:
        def holders(i: str) -> list:
            return (((self.status(i) or {}).get("catalog") or {}).get(key) or {}).get("holders", [])

        return all(holder in holders(i) for i in among or self.ids)

    def log(self, i: str) -> str:
        with open(os.path.join(self.root, f"{i}.log"), errors="replace") as f:
            return f.read()


def _send(cl: Cluster, to: str, key: str, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, 1 << 20, dtype=np.uint8)
    tp = TransportConfig(chunk_size_bytes=1 << 20, connect_timeout_s=5.0)
    r = Sender(tp, SecurityConfig(plaintext=True)).send(data, "127.0.0.1", cl.ports[to], key, streams=1)
    assert r.verified


# one kind of evidence in the default run (each daemon test takes 10-16 s on 2 CPUs); every kind is
# also driven through the same policy and epochs in the simulator (tests/property/test_adaptive_switch.py)
@pytest.mark.parametrize("mode, kind", [("badsig", "bad_signature"),
                                        pytest.param("forge", "forged", marks=pytest.mark.slow),
                                        pytest.param("equivocate", "equivocation", marks=pytest.mark.slow)])  # fmt: skip
def test_a_byzantine_daemon_switches_the_cluster_to_bft_and_raft_returns_once_it_is_clean(
    tmp_path, mode, kind
):
    cl = AutoCluster(str(tmp_path), 4, byzantine={BAD: mode})
    try:
        cl.wait(lambda: all(cl.consensus(i) for i in cl.ids), timeout=30, what="4 daemons up")
        assert "is BYZANTINE on purpose" in cl.log(BAD)  # the hook says so, loudly
        # the correct nodes find the evidence and switch to bft by themselves
        cl.wait(lambda: all(cl.consensus(i).get("algorithm") == "bft" for i in CORRECT), timeout=30,
                what="the correct nodes in bft")  # fmt: skip
        for i in CORRECT:
            ad = cl.consensus(i)["adaptive"]
            assert ad["mode"] == "auto" and ad["signed_envelopes"]
            first = ad["switches"][0]
            assert (first["from"], first["to"], first["cause"]) == ("raft", "bft", "byzantine_evidence"), ad
            assert f"{BAD}:" in first["reason"], first
            assert ad["switches_auto"] == {"byzantine_evidence->bft": 1}, ad
            assert set(ad["evidence"]) <= {BAD}, ad  # nobody else is blamed
        # who proposed held evidence (as a Raft follower, the node talks to the leader only)
        assert "proposes switching to bft" in "".join(cl.log(i) for i in CORRECT)
        # the catalog works in bft; and there, where the node talks to everyone (equivocate: with each COMMIT
        # of these writes), every correct node holds evidence against it
        for k in range(3):
            _send(cl, "c0", f"auto/a{k}", k)
        cl.wait(lambda: all(cl.everywhere(f"auto/a{k}", "c0", CORRECT) for k in range(3)), timeout=30,
                what="auto/a* recorded in bft")  # fmt: skip

        def evidence(i: str) -> dict:
            return cl.consensus(i)["adaptive"]["evidence"].get(BAD, {})

        cl.wait(lambda: all(evidence(i).get(kind) and sum(evidence(i).values()) >= 3 for i in CORRECT), timeout=20,
                what=f"{kind} evidence against c3 on every correct node")  # fmt: skip
        # exported: the switch by its reason, the evidence by peer and kind
        m = cl.metrics("c0")
        assert m[("dwcp_consensus_switches_total", (("reason", "byzantine_evidence"), ("to", "bft")))] == 1
        assert m[("dwcp_consensus_byzantine_evidence_total", (("kind", kind), ("peer", BAD)))] >= 1
        assert not any(
            n == "dwcp_consensus_byzantine_evidence_total" and dict(lb)["peer"] != BAD for n, lb in m
        )
        if mode == "badsig":  # it misbehaves in every message: longer than the quiet period, and still bft
            time.sleep(QUIET_S + 1)
            assert all(
                cl.consensus(i)["algorithm"] == "bft" and cl.consensus(i)["epoch"] == 1 for i in CORRECT
            )
        # the node restarted clean: no new evidence, and after the quiet period everybody runs raft again
        cl.procs[BAD].send_signal(signal.SIGKILL)
        cl.procs[BAD].wait()
        del cl.byzantine[BAD]
        cl.start(BAD)

        def all_raft() -> bool:
            st = [cl.consensus(i) for i in cl.ids]
            return (
                len({(c.get("algorithm"), c.get("epoch")) for c in st}) == 1
                and st[0].get("algorithm") == "raft"
            )

        cl.wait(all_raft, timeout=40, what="all 4 back in raft, in one epoch")
        for i in CORRECT:
            last = cl.consensus(i)["adaptive"]["switches"][-1]
            assert last["to"] == "raft" and last["cause"] in ("quiet_period", "caught_up"), last
        assert any(
            h["cause"] == "quiet_period" for i in CORRECT for h in cl.consensus(i)["adaptive"]["switches"]
        )
        _send(cl, "c3", "auto/b", 2)
        cl.wait(lambda: cl.everywhere("auto/b", "c3"), timeout=30, what="auto/b recorded in raft again")
        cl.wait(lambda: all(cl.everywhere(f"auto/a{k}", "c0") for k in range(3)), timeout=30,
                what="nothing lost: auto/a* everywhere")  # fmt: skip
        assert not cl.consensus(BAD)["adaptive"]["byzantine_test_hook"]
    finally:
        cl.close()


def test_auto_switch_needs_every_peers_bft_key(tmp_path):
    cl = AutoCluster.__new__(AutoCluster)
    cl.root, cl.ids, cl.byzantine = str(tmp_path), ["c0", "c1", "c2", "c3"], {}
    cl.ports = {i: 7000 + k for k, i in enumerate(cl.ids)}
    cl.pub = {i: "" for i in cl.ids}  # no keys
    out = subprocess.run([sys.executable, "-m", "dwcp", "daemon", "--config", cl.cfg("c0")], capture_output=True,
                         text=True, env=same_dwcp_env(), cwd=str(tmp_path), timeout=60)  # fmt: skip
    assert out.returncode != 0 and "auto_switch" in out.stderr and "bft_key" in out.stderr, out.stderr
