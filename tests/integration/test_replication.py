"""Replication: one send stores `replicas` verified copies on the key's ring homes, hop to hop.

Real daemons on loopback (with the Raft catalog, which must list each holder after its verified
commit), and `dwcp send --to cluster` as a user runs it, under each `cluster.ack` policy, with a
home down before the send and with the middle of the chain killed -9 during it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dwcp._testbase.daemons import Cluster
from dwcp.cli.demo import same_dwcp_env
from dwcp.cluster.node import ClusterView
from dwcp.config import acks_needed, load_toml
from dwcp.digest import object_digest

MiB = 1 << 20


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "d").mkdir()
    c = Cluster(str(tmp_path / "d"), 3)
    try:
        c.wait(c.leader, what="a first leader")
        yield c
    finally:
        c.close()


def _tx(tmp_path, c: Cluster, ack: str, replicas: int = 3) -> str:
    peers = "".join(f'[[cluster.peers]]\nid = "{i}"\naddress = "127.0.0.1:{c.ports[i]}"\n' for i in c.ids)
    cfg = tmp_path / f"tx-{ack}.toml"
    cfg.write_text(f'[node]\nid = "tx"\n[security]\nplaintext = true\n[storage]\ndata_dir = "{tmp_path / "tx"}"\n'
                   f'[transport]\nchunk_size_bytes = 1048576\nstall_timeout_s = 3.0\nmax_stream_reconnects = 2\n'
                   f'[cluster]\nreplicas = {replicas}\nack = "{ack}"\nprobe_interval_s = 1.0\n'
                   # round_robin: a fresh view's first pick is the lowest id, so the test knows the chain
                   f'policy = "round_robin"\n{peers}')  # fmt: skip
    return str(cfg)


def _send(
    tmp_path, cfg: str, src, key: str, *extra: str, json_out: bool = True
) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dwcp", "send", str(src), "--to", "cluster", "--key", key,
                           "--config", cfg, *(["--json"] if json_out else []), *extra], capture_output=True, text=True,
                          env=same_dwcp_env(), cwd=str(tmp_path), timeout=120)  # fmt: skip


def _object(tmp_path, seed: int, size: int):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    src = tmp_path / f"obj{seed}"
    data.tofile(src)
    return data, src


def _holds(c: Cluster, i: str, key: str, digest: str) -> bool:
    """Whether node ``i`` stores ``key`` at ``digest``: its own store, through its control socket."""
    st = c.status(i) or {}
    return any(k == key and v["digest"] == digest for k, v in (st.get("catalog") or {}).items()) and i in (
        (st.get("catalog") or {}).get(key, {}).get("holders", [])
    )


def _stored_bytes(c: Cluster, i: str, key: str) -> bytes:
    from dwcp.storage import ObjectStore

    store = ObjectStore(os.path.join(c.root, i))
    info = store.latest(key)
    assert info is not None, f"{i} holds no version of {key}"
    with open(info.path, "rb") as f:
        return f.read()


def test_a_send_stores_three_verified_copies_and_the_catalog_lists_them(tmp_path, cluster):
    c = cluster
    data, src = _object(tmp_path, 1, 6 * MiB)
    r = _send(tmp_path, _tx(tmp_path, c, "quorum"), src, "vm/rep")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    digest = object_digest(data).hex()
    assert res["digest"] == digest and res["verified"]
    assert sorted(x["peer"] for x in res["replicas"]) == sorted(c.ids)
    assert res["ack"]["policy"] == "quorum" and res["ack"]["needed"] == 2 and res["ack"]["verified"] >= 2
    # quorum returned after 2; the third follows (or already holds it): every home ends up with the bytes
    c.wait(lambda: all(_holds(c, i, "vm/rep", digest) for i in c.ids), what="3 holders in the catalog")
    for i in c.ids:
        assert _stored_bytes(c, i, "vm/rep") == data.tobytes()
    # the client sent the object once: the first home's wire bytes are about its size, not 3x
    assert res["wire_bytes"] < 1.2 * data.nbytes
    # the same again, as a person reads it: every home holds this version already
    r = _send(tmp_path, _tx(tmp_path, c, "all"), src, "vm/rep", json_out=False)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 replicas verified (ack = all: " in r.stdout and r.stdout.count(" stored") == 3, r.stdout


def test_ack_policies_with_a_home_down(tmp_path, cluster):
    """One of three homes is down: quorum (2) and one (1) succeed and name it; all (3) fails naming it."""
    c = cluster
    down = c.ids[2]
    c.procs[down].terminate()
    c.procs[down].wait(20)
    digest_of = {}
    for ack, seed in (("quorum", 2), ("one", 3)):
        data, src = _object(tmp_path, seed, 3 * MiB)
        r = _send(tmp_path, _tx(tmp_path, c, ack), src, f"vm/{ack}")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["ack"] == {
            "policy": ack,
            "needed": acks_needed(ack, 3),
            "verified": res["ack"]["verified"],
        }
        assert res["ack"]["verified"] >= acks_needed(ack, 3)
        states = {x["peer"]: x["state"] for x in res["replicas"]}
        # under ack = one the first home answers at once: the hops after it are still pending (the down
        # home failed outright where the client tried it first)
        tried_first = down in [f["peer"] for f in res["failover"]]
        assert states[down] == ("failed" if ack == "quorum" or tried_first else "pending"), res["replicas"]
        assert states[res["peer"]] == "stored"
        digest_of[ack] = object_digest(data).hex()
    live = [i for i in c.ids if i != down]
    for ack in ("quorum", "one"):  # both live homes hold each key (ack=one's second copy in the background)
        c.wait(lambda ack=ack: all(_holds(c, i, f"vm/{ack}", digest_of[ack]) for i in live),
               what=f"vm/{ack} on both live homes")  # fmt: skip
    data, src = _object(tmp_path, 4, 3 * MiB)
    r = _send(tmp_path, _tx(tmp_path, c, "all"), src, "vm/all")
    assert r.returncode != 0
    err = r.stderr + r.stdout
    assert "cluster.ack = 'all' needs 3" in err and down in err, err
    assert "2 of 3 replicas verified" in err, err  # the copies made are said, and they stay
    c.wait(lambda: all(_holds(c, i, "vm/all", object_digest(data).hex()) for i in live), what="vm/all kept")


def test_the_middle_of_the_chain_killed_mid_send_is_skipped(tmp_path, cluster):
    """kill -9 of the second home while chunks flow through it: the first home forwards to the third
    instead, and the send succeeds at quorum with the dead home named."""
    c = cluster
    cfg = _tx(tmp_path, c, "quorum")
    conf = load_toml(cfg)
    key = "vm/chain"
    view = ClusterView(conf.cluster, conf.node)
    first, middle, last = view.homes(key, "cluster")
    data, src = _object(tmp_path, 5, 24 * MiB)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=_send(tmp_path, cfg, src, key, "--rate", "8000000",
                                                            "--streams", "2")))  # fmt: skip
    t.start()
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the chain never reached the middle home"
        st = c.status(middle) or {}
        if st.get("transfers") and st["transfers"][0]["chunks_received"] >= 3:
            break
        time.sleep(0.05)
    os.kill(c.procs[middle].pid, signal.SIGKILL)
    c.procs[middle].wait()
    t.join(120)
    r = out["r"]
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    states = {x["peer"]: x["state"] for x in res["replicas"]}
    assert res["peer"] == first and states == {first: "stored", middle: "failed", last: "stored"}, res[
        "replicas"
    ]
    digest = object_digest(data).hex()
    for i in (first, last):
        assert _stored_bytes(c, i, key) == data.tobytes()
    c.wait(lambda: all(_holds(c, i, key, digest) for i in (first, last)), what="both holders in the catalog")


def _fetch(tmp_path, c: Cluster, via: str, key: str, out, *extra: str) -> subprocess.CompletedProcess:
    """`dwcp fetch KEY` without --from, on node ``via`` (its config: the catalog of its daemon)."""
    return subprocess.run([sys.executable, "-m", "dwcp", "fetch", key, "-o", str(out), "--config",
                           os.path.join(c.root, f"{via}.toml"), "--json", *extra], capture_output=True, text=True,
                          env=same_dwcp_env(), cwd=str(tmp_path), timeout=120)  # fmt: skip


def test_fetch_by_key_asks_the_catalog_fails_over_and_fetches_older_versions(tmp_path, cluster):
    c = cluster
    cfg = _tx(tmp_path, c, "all")
    v1, src1 = _object(tmp_path, 6, 3 * MiB)
    v2 = v1.copy()
    v2[: 64 << 10] ^= 0xFF  # the next version: its first 64 KiB changed
    src2 = tmp_path / "obj6b"
    v2.tofile(src2)
    for src in (src1, src2):
        r = _send(tmp_path, cfg, src, "vm/f")
        assert r.returncode == 0, r.stderr
    d1, d2 = object_digest(v1).hex(), object_digest(v2).hex()
    c.wait(lambda: all(_holds(c, i, "vm/f", d2) for i in c.ids), what="version 2 everywhere")
    # the latest version, from the node itself (it holds it: no network hop)
    r = _fetch(tmp_path, c, "c0", "vm/f", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["peer"] == "c0" and res["digest"] == d2 and res["version"] == 2 and res["failover"] == []
    assert (tmp_path / "out").read_bytes() == v2.tobytes()
    # c0's copy is lost: c0 refuses, the next holder serves it, and the report says so
    from dwcp.storage import ObjectStore

    info = ObjectStore(os.path.join(c.root, "c0")).get("vm/f", bytes.fromhex(d2))
    assert info is not None
    os.unlink(info.path)
    r = _fetch(tmp_path, c, "c0", "vm/f", tmp_path / "out2")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["peer"] in ("c1", "c2") and [f["peer"] for f in res["failover"]] == ["c0"], res
    assert "holds no version" in res["failover"][0]["error"]
    assert (tmp_path / "out2").read_bytes() == v2.tobytes()
    # the older version, by its digest, as a person types it
    r = subprocess.run([sys.executable, "-m", "dwcp", "fetch", "vm/f", "-o", str(tmp_path / "old"), "--version", d1,
                        "--config", os.path.join(c.root, "c1.toml")], capture_output=True, text=True,
                       env=same_dwcp_env(), cwd=str(tmp_path), timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "version 1" in r.stdout and d1 in r.stdout
    assert (tmp_path / "old").read_bytes() == v1.tobytes()
    # what the catalog does not list is said, with what it does list
    r = _fetch(tmp_path, c, "c1", "vm/f", tmp_path / "x", "--version", "ab" * 16)
    assert r.returncode != 0 and f"lists no version {'ab' * 16}" in r.stderr and d1 in r.stderr, r.stderr
    r = _fetch(tmp_path, c, "c1", "vm/nothing", tmp_path / "x")
    assert r.returncode != 0 and "lists no version of it" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


class OneAckCluster(Cluster):
    def cluster_extra(self) -> str:
        return 'replicas = 3\nack = "one"\n'


def test_cli_cluster_sends_go_through_the_local_daemon_and_use_what_it_knows(tmp_path):
    """`dwcp send --to cluster --config NODE.toml` hands the file's descriptor to NODE's daemon, which
    replicates it with what it has learnt (its prober's view of the peers, its breakers) and counts it;
    `--direct` sends from the CLI process, which has to find out by trying."""
    from dwcp.daemon.control import request

    (tmp_path / "d").mkdir()
    c = OneAckCluster(str(tmp_path / "d"), 3)
    try:
        c.wait(c.leader, what="a first leader")
        cfg = os.path.join(c.root, "c0.toml")
        sock = os.path.join(c.root, "c0", "control.sock")
        # c0 came up first, and its first probes found no peer: wait for the next round to find them
        c.wait(lambda: all(p["healthy"] for p in request(sock, {"op": "status"}, timeout_s=5)["cluster"]["peers"].values()),
               what="c0's prober seeing its peers")  # fmt: skip
        data, src = _object(tmp_path, 21, 2 * MiB)
        r = _send(tmp_path, cfg, src, "vm/d1")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["through_daemon"] is True and res["digest"] == object_digest(data).hex()
        # the daemon is a member too: its ring (the one anti-entropy uses) has all 3, itself included
        assert sorted(x["peer"] for x in res["replicas"]) == ["c0", "c1", "c2"]
        assert request(sock, {"op": "status"}, timeout_s=5)["sends_ok"] == 1
        down = c.ids[2]
        c.procs[down].terminate()
        c.procs[down].wait(20)
        c.wait(lambda: not request(sock, {"op": "status"}, timeout_s=5)["cluster"]["peers"][down]["healthy"],
               what="the daemon's prober noticing")  # fmt: skip
        data, src = _object(tmp_path, 22, MiB)
        r = _send(tmp_path, cfg, src, "vm/d2")
        assert r.returncode == 0, r.stderr
        states = {x["peer"]: x for x in json.loads(r.stdout)["replicas"]}
        assert states[down] == {"peer": down, "state": "failed", "error": "unhealthy"}  # known, not tried
        r = _send(tmp_path, cfg, src, "vm/d3", "--direct")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert "through_daemon" not in res
        assert {x["peer"]: x["state"] for x in res["replicas"]}[down] in ("failed", "pending")
        assert (
            request(sock, {"op": "status"}, timeout_s=5)["sends_ok"] == 2
        )  # the direct one is not the daemon's
        # the daemon reads the descriptor the CLI opened, not the path (which it might not be allowed to open)
        fd = os.open(src, os.O_RDONLY)
        try:
            got = request(sock, {"op": "send", "path": "/nonexistent/x", "to": "cluster", "key": "vm/fd"},
                          timeout_s=60, fds=[fd])  # fmt: skip
        finally:
            os.close(fd)
        assert got["ok"] and got["digest"] == object_digest(data).hex(), got
    finally:
        c.close()
