"""Concurrent writers of one key, between real daemons with the Raft catalog: each send carries its
origin (writer, HLC reading, the version it replaces); the catalog decides by cluster.conflicts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dwcp._testbase.daemons import Cluster
from dwcp.cli.main import main as cli
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import object_digest
from dwcp.errors import TransferError
from dwcp.transport.sender import Sender
from dwcp.wire import consts as C

MiB = 1 << 20


class PolicyCluster(Cluster):
    def __init__(self, root, n: int, policy: str) -> None:
        self.policy = policy
        super().__init__(root, n)

    def cluster_extra(self) -> str:
        return f'replicas = 1\nconflicts = "{self.policy}"\nrepair_interval_s = 0\n'


@pytest.fixture
def make(daemons):
    return lambda policy: daemons(PolicyCluster, 3, policy)


def _obj(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, MiB, dtype=np.uint8)


def _latest(c: Cluster, i: str, key: str) -> str | None:
    return ((c.status(i) or {}).get("catalog") or {}).get(key, {}).get("digest")


def _send(c: Cluster, to: str, data, key: str, writer: str, hlc: int, parent: str):
    snd = Sender(TransportConfig(chunk_size_bytes=MiB), SecurityConfig(plaintext=True), node_id=writer)
    return snd.send(
        data, "127.0.0.1", c.ports[to], key, origin={"writer": writer, "hlc": hlc, "parent": parent}
    )


def _two_versions(c: Cluster, seed: int, hlc: int) -> tuple[str, str]:
    """vm/k's version 1 (A, by w0) and version 2 (B, by eu at ``hlc``, replacing A), both through c0,
    each seen by c1's catalog; their digests."""
    a, b = _obj(seed), _obj(seed + 1)
    da, db = object_digest(a).hex(), object_digest(b).hex()
    _send(c, "c0", a, "vm/k", "w0", 100, "")
    c.wait(lambda: _latest(c, "c1", "vm/k") == da, what="version 1 everywhere")
    _send(c, "c0", b, "vm/k", "eu", hlc, da)  # replaces A: the new latest
    c.wait(lambda: _latest(c, "c1", "vm/k") == db, what="version 2 everywhere")
    return da, db


def _history(c: Cluster, via: str, key: str, capsys) -> dict:
    capsys.readouterr()
    assert cli(["status", key, "--json", "--config", os.path.join(c.root, f"{via}.toml")]) == 0
    return json.loads(capsys.readouterr().out)


def test_reject_the_first_committed_wins_and_the_second_writer_is_told(make, capsys):
    c = make("reject")
    x = _obj(3)
    da, db, dx = *_two_versions(c, 1, 200), object_digest(x).hex()
    # another writer, which also saw A (across a partition, say), writes through c1
    with pytest.raises(TransferError) as ei:
        _send(c, "c1", x, "vm/k", "us", 300, da)
    assert ei.value.code == C.ERR_CONFLICT
    assert f"version {dx} by us replaces {da}, but the latest is {db} by eu" in str(ei.value)
    assert _latest(c, "c0", "vm/k") == db  # the first committed stays the latest
    # not lost: c1 set its copy aside, and the history says who holds it
    assert os.listdir(os.path.join(c.root, "c1", "conflicts", "vm%2Fk"))[0].startswith(dx)
    c.wait(lambda: _history(c, "c2", "vm/k", capsys)["conflicts"], what="c2 applying the conflict")
    h = _history(c, "c2", "vm/k", capsys)
    assert [v["digest"] for v in h["versions"]] == [da, db]
    (conf,) = h["conflicts"]
    assert (conf["digest"], conf["outcome"], conf["holders"], conf["latest"]) == (dx, "rejected", ["c1"], db)
    capsys.readouterr()
    assert cli(["status", "vm/k", "--config", os.path.join(c.root, "c2.toml")]) == 0
    text = capsys.readouterr().out
    assert (
        "version 2 (latest)" in text and "conflict (reject: rejected)" in text and "kept aside by c1" in text
    )


def test_lww_keeps_both_and_the_later_clock_is_the_latest(make, capsys):
    c = make("lww")
    x = _obj(6)
    da, db, dx = *_two_versions(c, 4, 300), object_digest(x).hex()
    _send(c, "c1", x, "vm/k", "us", 200, da)  # concurrent, and earlier by the clock: kept, not the latest
    c.wait(lambda: len(_history(c, "c2", "vm/k", capsys)["conflicts"]) == 1, what="the conflict recorded")
    h = _history(c, "c2", "vm/k", capsys)
    assert [v["digest"] for v in h["versions"]] == [da, dx, db] and h["conflicts"][0]["outcome"] == "lost"
    assert _latest(c, "c0", "vm/k") == db
    # a daemon's own sends carry their origin: an ordinary next version through c2 is no conflict
    y = _obj(7)
    src = os.path.join(c.root, "y")
    y.tofile(src)
    capsys.readouterr()
    assert (
        cli(
            [
                "send",
                src,
                "--to",
                "c0",
                "--key",
                "vm/k",
                "--json",
                "--config",
                os.path.join(c.root, "c2.toml"),
            ]
        )
        == 0
    )
    dy = object_digest(y).hex()
    c.wait(lambda: _latest(c, "c1", "vm/k") == dy, what="the next version")
    h = _history(c, "c1", "vm/k", capsys)
    assert (
        len(h["conflicts"]) == 1 and h["versions"][-1]["writer"] == "c2" and h["versions"][-1]["parent"] == db
    )
