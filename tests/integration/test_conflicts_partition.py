"""Concurrent writers of one key on either side of a REAL partition (daemons in network namespaces of
their own, iptables DROP between them), under both ``cluster.conflicts`` policies.

Version A of the key is written through n0 and committed everywhere; then {n0, n1} | {n2}: B is written
through n0 (the majority: committed) and C through n2 (the minority: its catalog has no quorum).  n2
stores C with its origin (writer n2, an HLC reading after B's, parent A) and answers:

* ``reject``: with an error (ERR_CONFLICT, after its 10 s try at the catalog): stored but not committed;
* ``lww``: with success, the catalog record proposed in the background.

n2 then restarts while still cut off, so that whatever record it had in flight is gone (as after any
partition longer than its try): only the origin it keeps with C in the key's META remains.  After
healing, anti-entropy (``dwcp repair`` on every node) lists C with that origin and the catalog judges it:

* ``reject``: B, the first committed, stays the latest everywhere; C is a conflict naming both writers and
  versions, its copy set aside under n2's ``conflicts/`` (not lost);
* ``lww``: both kept and listed in HLC order, C (the later reading) the latest; the conflict recorded;

and in both, every node's catalog converges on the same latest version within CONVERGE_S, a fetch of the
key from every node returns the winner's bytes, and ``dwcp status KEY`` reports the conflict everywhere.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from dwcp._testbase.netcluster import PORT, NetCluster
from dwcp.daemon.control import request
from dwcp.digest import object_digest
from dwcp.wire import consts as C

pytestmark = pytest.mark.skipif(NetCluster.unavailable() is not None, reason=str(NetCluster.unavailable()))

KEY = "vm/k"
SIZE = 256 << 10
CONVERGE_S = 20.0


class PolicyNet(NetCluster):
    def extra_sections(self) -> str:
        # the sender waits longer for its DONE than a receiver tries the catalog (10 s): it gets the answer
        return "[transport]\nconnect_timeout_s = 2.0\nstall_timeout_s = 15.0\n"


def _version(root: str, name: str) -> tuple[str, str, bytes]:
    data = os.urandom(SIZE)
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(data)
    return path, object_digest(data).hex(), data


def _history(nc: NetCluster, i: str) -> dict:
    try:
        return request(nc.sock(i), {"op": "history", "key": KEY}, timeout_s=5)
    except OSError:
        return {}


def _latest(nc: NetCluster, i: str) -> str | None:
    vs = _history(nc, i).get("versions") or []
    return vs[-1]["digest"] if vs else None


def _stored_latest(nc: NetCluster, i: str) -> str | None:
    try:
        with open(os.path.join(nc.root, i, "objects", KEY.replace("/", "%2F"), "LATEST")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _set_aside(nc: NetCluster, i: str) -> list[str]:
    d = os.path.join(nc.root, i, "conflicts", KEY.replace("/", "%2F"))
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize("policy", ["reject", "lww"])
def test_writers_on_both_sides_of_a_partition(tmp_path, policy):
    root = str(tmp_path)
    with PolicyNet(root, 3, conflicts=policy, replicas=3) as nc:
        nc.wait(nc.leader, timeout=30, what="a first leader")
        (pa, da, _), (pb, db, bb), (pc, dc, bc) = (_version(root, n) for n in "ABC")
        assert nc.send("n0", pa, KEY)["ok"]
        for i in nc.ids:  # committed, and applied on n2 too: C's parent there is A
            nc.wait(lambda i=i: _latest(nc, i) == da, timeout=10, what=f"A in {i}'s catalog")

        nc.partition({"n0", "n1"}, {"n2"})
        nc.wait(lambda: nc.leader(["n0", "n1"]), timeout=10, what="a leader on the majority side")
        assert nc.send("n0", pb, KEY)["ok"]  # committed on the majority side
        for i in ("n0", "n1"):
            nc.wait(lambda i=i: _latest(nc, i) == db, timeout=10, what=f"B in {i}'s catalog")

        rc = nc.send("n2", pc, KEY)
        if policy == "reject":  # not acknowledged: stored, but it could not be judged
            assert not rc["ok"] and f"{KEY}: stored here but not committed" in rc["error"], rc
            assert f"(code {C.ERR_CONFLICT})" in rc["error"], rc
        else:  # lww: nothing to refuse, so answered at once; the record is made in the background
            assert rc["ok"] and rc["digest"] == dc, rc
        # either way C is kept, as n2's latest, with its origin: not dropped
        assert _stored_latest(nc, "n2") == dc and not _set_aside(nc, "n2")
        with open(os.path.join(root, "n2", "objects", KEY.replace("/", "%2F"), "META.json")) as f:
            origin = json.load(f)["origins"][dc]
        assert origin["writer"] == "n2" and origin["parent"] == da
        assert _latest(nc, "n2") == da  # its catalog has not moved: no quorum
        nc.restart("n2")  # what it had in flight is gone: only the origin in META remains
        assert _stored_latest(nc, "n2") == dc

        nc.heal()
        winner, wbytes = (db, bb) if policy == "reject" else (dc, bc)
        healed = time.monotonic()
        # n2 catches up first (as it would before its next anti-entropy pass): its catalog knows the key,
        # with A and B, and not C -- C must still be listed and judged
        nc.wait(lambda: _latest(nc, "n2") == db, timeout=10, what="n2's catalog caught up")

        def converged() -> bool:
            for i in nc.ids:
                r = request(nc.sock(i), {"op": "repair"}, timeout_s=30)
                assert r.get("ok"), (i, r)
            hs = {i: _history(nc, i) for i in nc.ids}
            return all(
                h.get("versions")
                and h["versions"][-1]["digest"] == winner
                and len(h.get("conflicts") or []) == 1
                for h in hs.values()
            ) and all(_stored_latest(nc, i) == winner for i in nc.ids)

        nc.wait(converged, timeout=CONVERGE_S, what="one latest version everywhere, the conflict judged")
        print(f"{policy}: converged {time.monotonic() - healed:.1f} s after healing")

        hist = {}
        for i in nc.ids:
            r = nc.dwcp(i, "status", KEY, "--json")
            assert r.returncode == 0, r.stderr
            hist[i] = json.loads(r.stdout)
        h = hist["n0"]
        assert all(x["versions"] == h["versions"] and x["conflicts"] == h["conflicts"] for x in hist.values())
        (conf,) = h["conflicts"]
        assert (conf["digest"], conf["writer"], conf["parent"], conf["policy"]) == (dc, "n2", da, policy)
        assert (conf["latest"], conf["latest_writer"]) == (db, "n0")
        assert conf["hlc"] > conf["latest_hlc"]  # C was written after B, by the clocks
        vs = h["versions"]
        if policy == "reject":
            assert [v["digest"] for v in vs] == [da, db] and conf["outcome"] == "rejected"
            assert conf["holders"] == ["n2"]  # who keeps the refused copy
            (kept,) = _set_aside(nc, "n2")  # not lost: set aside on n2, whole
            assert kept.startswith(dc + ".obj")
            with open(os.path.join(root, "n2", "conflicts", KEY.replace("/", "%2F"), kept), "rb") as f:
                assert f.read() == bc
        else:
            assert [v["digest"] for v in vs] == [da, db, dc] and conf["outcome"] == "won"
            assert [v["writer"] for v in vs] == ["n0", "n0", "n2"] and vs[1]["hlc"] < vs[2]["hlc"]
            assert "n2" in vs[2]["holders"] and not any(_set_aside(nc, i) for i in nc.ids)
        r = nc.dwcp("n1", "status", KEY)
        assert r.returncode == 0 and f"conflict ({policy}: {conf['outcome']})" in r.stdout, r.stdout
        assert f"by n2 replaced {da} while {db} by n0 was the latest" in r.stdout, r.stdout

        for i in nc.ids:  # every node serves the winner, from its own store
            out = os.path.join(root, f"got-{i}")
            r = nc.dwcp(i, "fetch", KEY, "--from", f"{nc.addr[i]}:{PORT}", "-o", out, "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["digest"] == winner
            with open(out, "rb") as f:
                assert f.read() == wbytes
