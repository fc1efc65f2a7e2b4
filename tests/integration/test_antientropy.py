"""Anti-entropy between real daemons on loopback: a home that missed versions pulls them, delta-aware,
from a holder, and every key ends with `replicas` verified copies that `dwcp fetch KEY` serves."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from dwcp._testbase.daemons import Cluster
from dwcp.cli.main import main as cli
from dwcp.cluster.node import ClusterView
from dwcp.cluster.repair import Repair, request_push
from dwcp.config import from_dict
from dwcp.daemon.control import request
from dwcp.digest import object_digest
from dwcp.errors import TransferError
from dwcp.storage import ObjectStore
from dwcp.transport.dialer import Dialer
from dwcp.transport.sender import Sender

MiB = 1 << 20


class RepairingCluster(Cluster):
    def __init__(
        self, root, n: int, interval_s: float, scrub_rate: float = 0, repair_rate: float = 0
    ) -> None:
        self.interval_s, self.scrub_rate, self.repair_rate = interval_s, scrub_rate, repair_rate
        super().__init__(root, n)

    def storage_extra(self) -> str:
        return f"scrub_rate_bytes_per_s = {self.scrub_rate}\nscrub_interval_s = 1.0\n"

    def cluster_extra(self) -> str:
        return f"replicas = 3\nrepair_interval_s = {self.interval_s}\nrepair_rate_bytes_per_s = {self.repair_rate}\n"


def _client(c: Cluster, ack: str = "quorum"):
    """An in-process client of the cluster: its view (replicas = 3) and a sender."""
    peers = [{"id": i, "address": f"127.0.0.1:{c.ports[i]}"} for i in c.ids]
    cfg = from_dict({"node": {"id": "tx"}, "security": {"plaintext": True},
                     "transport": {"chunk_size_bytes": MiB, "stall_timeout_s": 3.0, "max_stream_reconnects": 1},
                     "cluster": {"peers": peers, "replicas": 3, "ack": ack}})  # fmt: skip
    return ClusterView(cfg.cluster, cfg.node), Sender(cfg.transport, cfg.security, node_id="tx")


def _everywhere_then_one_down(c: Cluster, key: str, seed: int):
    """``key``'s first version (8 MiB) on all 3 homes, then the third node stopped: the client's view and
    sender, the version, and the stopped node."""
    view, snd = _client(c)
    v1 = np.random.default_rng(seed).integers(0, 256, 8 * MiB, dtype=np.uint8)
    view.send(snd, v1, key, "cluster")
    down = c.ids[2]
    c.wait(lambda: len(_catalog(c, down).get(key, {}).get("holders", [])) == 3, what="v1 on all 3")
    c.procs[down].terminate()
    c.procs[down].wait(20)
    return view, snd, v1, down


def _catalog(c: Cluster, via: str) -> dict:
    return (c.status(via) or {}).get("catalog") or {}


def _has(c: Cluster, i: str, key: str, digest: str) -> bool:
    return ObjectStore(os.path.join(c.root, i)).get(key, bytes.fromhex(digest)) is not None


@pytest.fixture
def make_cluster(daemons):
    return lambda n, interval_s, scrub_rate=0, repair_rate=0: daemons(RepairingCluster, n, interval_s, scrub_rate,
                                                                      repair_rate)  # fmt: skip


def test_a_replica_killed_during_20_sends_is_repaired_and_every_key_is_fetched(tmp_path, make_cluster):
    """5 daemons, replicas = 3, ack = quorum: 20 sends while one node is killed -9 and restarted; then
    every key has its 3 verified copies (the restarted node pulled what it missed) and `dwcp fetch KEY`
    returns the right bytes for each."""
    c = make_cluster(5, 1.0)
    view, snd = _client(c)
    victim = c.ids[4]
    objects: dict[str, np.ndarray] = {}
    for n in range(20):
        if n == 5:
            os.kill(c.procs[victim].pid, signal.SIGKILL)
            c.procs[victim].wait()
        if n == 13:
            c.start(victim)
        key = f"vm/{n}"
        data = np.random.default_rng(100 + n).integers(0, 256, MiB + n * 4096, dtype=np.uint8)
        r = view.send(snd, data, key, "cluster")
        assert r.ack["verified"] >= 2, r.replicas
        objects[key] = data
    digests = {k: object_digest(v).hex() for k, v in objects.items()}

    def whole() -> bool:
        cat = _catalog(c, c.ids[0])
        return all(
            k in cat and cat[k]["digest"] == d and len(cat[k]["holders"]) == 3 for k, d in digests.items()
        )

    try:
        c.wait(whole, timeout=60, what="3 holders of every key in the catalog")
    except AssertionError:
        cat = _catalog(c, c.ids[0])
        short = {k: cat.get(k) for k, d in digests.items() if len((cat.get(k) or {}).get("holders", [])) != 3}
        raise AssertionError(
            f"short of 3 holders: {short}; the victim's repair: {c.status(victim)['repair']}"
        ) from None
    cat = _catalog(c, c.ids[0])
    for k, d in digests.items():  # the catalog's holders really hold the verified bytes
        assert all(_has(c, h, k, d) for h in cat[k]["holders"]), (k, cat[k])
    # the keys sent while the victim was down that it is a home of: it pulled each (and those sent
    # after its restart while the client's breaker still held it open)
    missed = [f"vm/{n}" for n in range(5, 13) if victim in view.ring.replicas(f"vm/{n}", 3)]
    st = c.status(victim)
    assert missed and st["repair"]["repaired_total"] >= len(missed), (missed, st["repair"])
    for k, data in objects.items():
        out = tmp_path / k.replace("/", "_")
        assert cli(["fetch", k, "-o", str(out), "--config", os.path.join(c.root, f"{c.ids[1]}.toml")]) == 0
        assert out.read_bytes() == data.tobytes(), k


def test_a_stale_replica_pulls_only_what_differs(tmp_path, make_cluster, capsys):
    """A home that was down for the next version gets it by `dwcp repair`, as a delta against the version
    it holds: a fraction of the object on the wire."""
    c = make_cluster(3, 0)  # passes only on demand
    view, snd, v1, down = _everywhere_then_one_down(c, "vm/stale", 7)
    v2 = v1.copy()
    v2[:: 4096 * 20] ^= 0x5A  # 5% of the pages change
    r = view.send(snd, v2, "vm/stale", "cluster")
    assert {x["peer"]: x["state"] for x in r.replicas}[down] == "failed"
    c.start(down)
    d2 = object_digest(v2).hex()
    c.wait(
        lambda: _catalog(c, down).get("vm/stale", {}).get("digest") == d2, what="the restarted node's catalog"
    )
    assert not _has(c, down, "vm/stale", d2)
    capsys.readouterr()
    assert cli(["repair", "vm/stale", "--json", "--config", os.path.join(c.root, f"{down}.toml")]) == 0
    res = json.loads(capsys.readouterr().out)
    (got,) = res["repaired"]
    assert got["key"] == "vm/stale" and got["digest"] == d2 and got["mode"] in ("delta", "pages"), got
    assert got["wire_bytes"] < 0.25 * v2.nbytes, got
    store = ObjectStore(os.path.join(c.root, down))
    info = store.get("vm/stale", bytes.fromhex(d2))
    assert info is not None and open(info.path, "rb").read() == v2.tobytes()
    c.wait(
        lambda: down in _catalog(c, c.ids[0])["vm/stale"]["holders"], what="the repaired copy in the catalog"
    )
    st = c.status(down)
    assert st["repair"]["repaired_total"] == 1 and st["repair"]["wire_bytes_total"] == got["wire_bytes"]
    # a second pass finds nothing to do, and says so
    assert cli(["repair", "--config", os.path.join(c.root, f"{down}.toml")]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    st = request(os.path.join(c.root, down, "control.sock"), {"op": "status"}, timeout_s=5)
    assert st["repair"]["passes"] == 2


def test_a_holder_pushes_only_to_its_peers(make_cluster):
    c = make_cluster(3, 0)
    view, snd = _client(c)
    data = np.random.default_rng(9).integers(0, 256, MiB, dtype=np.uint8)
    view.send(snd, data, "vm/p", "cluster")
    d = object_digest(data).hex()
    rep = Repair("vm/p", d, data.nbytes, 1, 0.0, tuple(c.ids), None)
    dialer = Dialer(snd.transport, snd.security)
    with pytest.raises(TransferError, match="pushes only to its \\[cluster\\] peers, and 'mallory' is none"):
        request_push(
            dialer, "127.0.0.1", c.ports[c.ids[0]], rep, node="mallory", rate_bytes_per_s=0, timeout_s=10
        )
    with pytest.raises(TransferError, match=f"{c.ids[0]} holds no version {'00' * 16}"):
        request_push(dialer, "127.0.0.1", c.ports[c.ids[0]], Repair("vm/p", "00" * 16, 1, 1, 0.0, (), None),
                     node=c.ids[1], rate_bytes_per_s=0, timeout_s=10)  # fmt: skip


def test_bit_rot_is_found_by_the_scrub_within_its_rate_and_repaired_from_a_replica(
    tmp_path, make_cluster, capsys
):
    """Bytes flipped in one node's stored object: no fetch returns them (the fetcher verifies); the
    scrub, at 8 MiB/s with a pass a second, finds the copy within its rate bound, quarantines it, and
    the node pulls the version back from a replica."""
    rate = 8 * MiB
    c = make_cluster(3, 0, scrub_rate=rate)
    view, snd = _client(c, ack="all")
    data = np.random.default_rng(11).integers(0, 256, 4 * MiB, dtype=np.uint8)
    view.send(snd, data, "vm/rot", "cluster")
    d = object_digest(data).hex()
    c.wait(lambda: len(_catalog(c, c.ids[0]).get("vm/rot", {}).get("holders", [])) == 3, what="3 holders")
    victim = c.ids[1]
    info = ObjectStore(os.path.join(c.root, victim)).get("vm/rot", bytes.fromhex(d))
    assert info is not None
    t0 = time.monotonic()
    with open(info.path, "r+b") as f:
        f.seek(3 * MiB + 77)
        f.write(b"\xde\xad\xbe\xef")
    # a fetch from the rotten copy is refused by the fetcher's digest check: never the rotten bytes
    out = tmp_path / "fetched"
    rc = cli(["fetch", "vm/rot", "--from", f"127.0.0.1:{c.ports[victim]}", "-o", str(out), "--plaintext"])
    assert rc != 0 and not out.exists()
    # found within the time the scrub takes to read the store at its rate, plus a pass interval
    bound = data.nbytes / rate + 1.0 + 3.0  # + slack for this shared 2-CPU machine
    c.wait(lambda: (c.status(victim) or {}).get("scrub", {}).get("corrupt_total") == 1, timeout=bound,
           what="the scrub finding the rotten copy")  # fmt: skip
    assert time.monotonic() - t0 <= bound
    # repaired from a replica: the right bytes, listed again
    c.wait(lambda: _has(c, victim, "vm/rot", d), timeout=30, what="the repaired copy")
    fixed = ObjectStore(os.path.join(c.root, victim)).get("vm/rot", bytes.fromhex(d))
    assert fixed is not None and open(fixed.path, "rb").read() == data.tobytes()
    c.wait(lambda: victim in _catalog(c, c.ids[0])["vm/rot"]["holders"], what="the repaired copy listed")
    assert len(os.listdir(os.path.join(c.root, victim, "quarantine", "vm%2Frot"))) == 1
    assert (
        cli(["fetch", "vm/rot", "--from", f"127.0.0.1:{c.ports[victim]}", "-o", str(out), "--plaintext"]) == 0
    )
    assert out.read_bytes() == data.tobytes()
    # `dwcp scrub --now` on a clean node: one pass, reported, nothing corrupt
    capsys.readouterr()
    assert cli(["scrub", "--now", "--json", "--config", os.path.join(c.root, f"{c.ids[2]}.toml")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checked"] == 1 and res["corrupt"] == [] and res["bytes"] == data.nbytes


def test_a_stale_replica_compares_leaf_hashes_and_gets_only_the_leaves_that_differ(
    tmp_path, make_cluster, capsys
):
    """The holders no longer keep the version the stale home holds (no delta is possible): the home
    compares the two versions' trees (root, then leaf hashes), seeds the new version from its own
    bytes, and only the 2 differing leaves of 8 travel."""
    c = make_cluster(3, 0)
    view, snd, v1, down = _everywhere_then_one_down(c, "vm/tree", 12)
    v2 = np.random.default_rng(13).integers(0, 256, 8 * MiB, dtype=np.uint8)
    view.send(snd, v2, "vm/tree", "cluster")
    v3 = v1.copy()
    v3[2 * MiB : 3 * MiB] = np.random.default_rng(14).integers(0, 256, MiB, dtype=np.uint8)
    v3[6 * MiB + 5] ^= 1
    view.send(snd, v3, "vm/tree", "cluster")  # the holders keep v2 and v3 (keep_versions = 2): v1 is gone
    d3 = object_digest(v3).hex()
    assert ObjectStore(os.path.join(c.root, c.ids[0])).get("vm/tree", object_digest(v1)) is None
    c.start(down)
    c.wait(
        lambda: _catalog(c, down).get("vm/tree", {}).get("digest") == d3, what="the restarted node's catalog"
    )
    capsys.readouterr()
    assert cli(["repair", "vm/tree", "--json", "--config", os.path.join(c.root, f"{down}.toml")]) == 0
    (got,) = json.loads(capsys.readouterr().out)["repaired"]
    assert got["digest"] == d3 and got["leaves"] == {"held": 6, "total": 8}, got
    assert got["wire_bytes"] < 2.3 * MiB, got  # 2 leaves of 8 (and the page hashes of pages mode)
    info = ObjectStore(os.path.join(c.root, down)).get("vm/tree", bytes.fromhex(d3))
    assert info is not None and open(info.path, "rb").read() == v3.tobytes()


def test_a_repair_sends_at_most_the_repair_rate(tmp_path, make_cluster, capsys):
    """cluster.repair_rate_bytes_per_s = 2 MiB/s: pulling a missed 8 MiB version (nothing in common with
    what the home holds) takes the holder about 4 s."""
    c = make_cluster(3, 0, repair_rate=2 * MiB)
    view, snd, _v1, down = _everywhere_then_one_down(c, "vm/slow", 15)
    v2 = np.random.default_rng(16).integers(0, 256, 8 * MiB, dtype=np.uint8)
    view.send(snd, v2, "vm/slow", "cluster")
    c.start(down)
    d2 = object_digest(v2).hex()
    c.wait(
        lambda: _catalog(c, down).get("vm/slow", {}).get("digest") == d2, what="the restarted node's catalog"
    )
    t0 = time.monotonic()
    assert cli(["repair", "vm/slow", "--config", os.path.join(c.root, f"{down}.toml")]) == 0
    took = time.monotonic() - t0
    assert _has(c, down, "vm/slow", d2) and took >= 8 * MiB / (2 * MiB) * 0.75, took
