"""Replication on loopback: a chained send against one copy, a repair against a delta send, the scrub's rate.

    python perf/bench_replication.py [--size-mib 1024] [--runs 3] [--dirty 0.05] [--scrub-rate-mib 64]
                                     [--data-root /dev/shm] [--out FILE]

Three `dwcp daemon` processes (the Raft catalog on, plaintext, data dirs under --data-root, anti-entropy
only on demand: ``repair_interval_s = 0``), and this process as the client with ``[cluster] replicas = 3``.
Each run uses fresh keys and removes them (``dwcp rm``) once measured, so the stores hold at most one run.

Sends (issue 16: chain <= 1.3x single, since the chain pipelines):

* chain: ``ClusterView.send`` -- one send to the first home, which stores and forwards each chunk
  as it verifies to the second, which does the same to the third (``ack = "all"``: timed until the
  third holds it verified);
* fan-out (a peer): what a client without replication does for 3 copies -- the same object sent
  to each home in turn, one full send each;
* single (the peer of the target): one send to one home (one copy): the floor of the chain's time.

Repair (issue 16: repair wire bytes <= 2x the delta's): key K at version v1 (the object) on all three
homes (a chain send); v2 = v1 with ``--dirty`` of its 4 KiB pages rewritten with random bytes (spread
over the object, seeded).  One home (not the Raft leader) is stopped, v2 is sent to the other two
(a send each), the third is started again and, once its catalog lists v2, ``dwcp repair K`` runs on
it through its control socket (anti-entropy on demand: it compares leaf hashes, seeds a partial from
v1 and pulls v2 from a holder, which offers v1 as the delta base).  Timed: the repair call; measured:
its report's wire bytes (and the daemon's ``repair.wire_bytes_total`` delta, the counter behind
``dwcp_repair_wire_bytes_total``).  The peer, in the same run: a plain delta send of v2 against v1
(``Sender.send(v2, base=v1)``, as ``dwcp send --base``) to a home holding v1 under another key.

Scrub (issue 16: the rate vs the configured rate): one home holding only the object (1 version):

* background: ``[storage] scrub_rate_bytes_per_s = --scrub-rate-mib`` set by a config reload (with
  ``scrub_interval_s = 1``), the pass the daemon's scrub loop then makes (its ``status`` report:
  bytes / seconds), and the rate set back to 0;
* now at the rate: ``dwcp scrub --now --rate R`` with R the same rate (``dwcp scrub --now`` alone is
  documented unthrottled: it does not read the configured rate);
* unthrottled: ``dwcp scrub --now --rate 10G``, far above what hashing can do: the hash rate.

Reported for each case: median seconds (of --runs), and CPU seconds (user + sys of the three
daemons, children included, read from /proc, plus this process's, over the timed span) with
``cpu_floor_s = cpu_s / os.cpu_count()``: the wall time the case cannot beat on this machine, so a
ratio can be judged against what its CPUs allow (``ratios`` has the floors' ratios too).  Ratios are
of medians.  Writes perf/results/bench_replication.json (or --out).

Memory: the send cases run in an order rotated each run, and each case's copies are removed before
the next (the repair's v2 and the delta's base file exist only during the repair), so the data root
holds at most one case's copies.  On the shared VM this was written on, a send into tmpfs pages the
VM had not handed out before ran at ~350 MB/s instead of ~1.5 GB/s, once about 5 GiB were in use:
with every copy kept, the last case of a run measured the VM's memory, not the send.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import exit_cleanly_on_sigterm, machine, write_json  # noqa: E402

PAGE = 4096
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + sys CPU seconds of process ``pid`` (all its threads, and its waited-for children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime (fields 14-17)


class CPU:
    """CPU seconds spent by the daemons ``pids()`` and this process between ``start`` and ``stop``."""

    def __init__(self, pids) -> None:
        self.pids = pids

    def _now(self) -> tuple[dict[int, float], float]:
        t = os.times()
        return {p: proc_cpu_s(p) for p in self.pids()}, t.user + t.system

    def start(self) -> CPU:
        self.d0, self.c0 = self._now()
        return self

    def stop(self) -> dict[str, float]:
        d1, c1 = self._now()
        daemons = sum(d1[p] - self.d0[p] for p in d1 if p in self.d0)
        client = c1 - self.c0
        total = daemons + client
        return {
            "daemons": daemons,
            "client": client,
            "total": total,
            "floor_s": total / (os.cpu_count() or 1),
        }


def med(xs: list) -> float:
    return statistics.median(xs) if xs else float("nan")


def med_cpu(xs: list[dict[str, float]]) -> dict[str, float]:
    return {k: med([x[k] for x in xs]) for k in xs[0]} if xs else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dirty", type=float, default=0.05, help="fraction of 4 KiB pages v2 rewrites (repair)")
    ap.add_argument("--scrub-rate-mib", type=float, default=64.0, help="the configured scrub rate, MiB/s")
    ap.add_argument("--data-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--out")
    args = ap.parse_args()
    exit_cleanly_on_sigterm()

    import numpy as np

    from dwcp._testbase.daemons import Cluster
    from dwcp.cluster.node import ClusterView
    from dwcp.config import from_dict
    from dwcp.daemon.control import request
    from dwcp.transport.sender import Sender

    class Homes(Cluster):
        scrub_rate = 0.0

        def cluster_extra(self) -> str:
            return "replicas = 3\nrepair_interval_s = 0\n"

        def storage_extra(self) -> str:
            return (
                f"scrub_rate_bytes_per_s = {self.scrub_rate:.0f}\nscrub_interval_s = 1\nkeep_versions = 2\n"
            )

    size = args.size_mib << 20
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size, dtype=np.uint8)
    # v2: --dirty of v1's pages rewritten with random bytes, spread over the object (seeded)
    n_pages = size // PAGE
    dirty = np.sort(np.random.default_rng(2).choice(n_pages, size=round(args.dirty * n_pages), replace=False))

    def make_v2():  # made for the repair and dropped after it: the send cases run with less memory in use
        v2 = data.copy()
        v2[: n_pages * PAGE].reshape(n_pages, PAGE)[dirty] = np.random.default_rng(3).integers(
            0, 256, (len(dirty), PAGE), dtype=np.uint8
        )
        return v2

    leaves_dirty = len(np.unique(dirty * PAGE >> 20))

    times: dict[str, list[float]] = {"chain": [], "fanout": [], "single": []}
    wire: dict[str, list[int]] = {"chain": [], "fanout": [], "single": []}
    cpu: dict[str, list[dict[str, float]]] = {"chain": [], "fanout": [], "single": []}
    rep: dict[str, list] = {
        "seconds": [],
        "wire_bytes": [],
        "counter_wire_bytes": [],
        "cpu": [],
        "report": [],
    }
    peer: dict[str, list] = {"seconds": [], "wire_bytes": [], "cpu": [], "mode": []}
    scrub: dict[str, dict[str, list]] = {
        c: {"rate": [], "bytes": [], "seconds": [], "cpu": []}
        for c in ("background", "now_at_rate", "unthrottled")
    }
    rate = args.scrub_rate_mib * (1 << 20)
    fast = 10.0 * (1 << 30)

    with tempfile.TemporaryDirectory(dir=args.data_root, prefix="dwcp-bench-repl-") as root:
        c = Homes(root, 3)
        try:
            sock = {i: os.path.join(root, i, "control.sock") for i in c.ids}

            def ask(i: str, req: dict, timeout_s: float | None = 600) -> dict:
                r = request(sock[i], req, timeout_s=timeout_s)
                if not r.get("ok", True):
                    raise RuntimeError(f"{i}: {req['op']}: {r}")
                return r

            def rm(i: str, key: str) -> None:
                try:
                    ask(i, {"op": "rm", "key": key}, timeout_s=60)
                except (RuntimeError, OSError):
                    pass  # not stored there

            def lists(i: str, key: str, digest: str) -> bool:
                """Whether ``i``'s catalog lists ``digest`` as ``key``'s latest version."""
                return ((c.status(i) or {}).get("catalog") or {}).get(key, {}).get("digest") == digest

            def scrubbed(i: str, passes: int) -> bool:
                """Whether ``i``'s scrub made a pass after its ``passes``-th."""
                return ask(i, {"op": "status"})["scrub"]["passes"] > passes

            def pids() -> list[int]:
                return [p.pid for p in c.procs.values() if p.poll() is None]

            meter = CPU(pids)
            leader = c.wait(c.leader, what="a first leader")
            peers = [{"id": i, "address": f"127.0.0.1:{c.ports[i]}"} for i in c.ids]
            cfg = from_dict({"node": {"id": "client"}, "security": {"plaintext": True},
                             "cluster": {"peers": peers, "replicas": 3, "ack": "all", "policy": "round_robin"}})  # fmt: skip
            snd = Sender(cfg.transport, cfg.security, node_id="client")
            port = c.ports
            v1_path = os.path.join(root, "v1.bin")
            victim = next(i for i in reversed(c.ids) if i != leader)
            live = [i for i in c.ids if i != victim]

            for run in range(args.runs):
                # -- sends: chain, fan-out, single, in an order rotated each run; each case's copies are
                # removed before the next, so every case writes into memory the VM has already given
                # out (see the module docstring: beyond a few GiB, new tmpfs pages cost more than the send)
                def chain(run: int) -> int:
                    view = ClusterView(cfg.cluster, cfg.node)  # a fresh view: the same chain order each run
                    r = view.send(snd, data, f"chain/{run}", "cluster")
                    assert r.ack["verified"] == 3, r.replicas
                    return r.transfer.wire_bytes

                def fanout(run: int) -> int:
                    return sum(
                        snd.send(data, "127.0.0.1", port[i], f"fanout/{run}").wire_bytes for i in c.ids
                    )

                def single(run: int) -> int:
                    return snd.send(data, "127.0.0.1", port[c.ids[0]], f"single/{run}").wire_bytes

                cases = [("chain", chain), ("fanout", fanout), ("single", single)]
                for name, fn in cases[run % 3 :] + cases[: run % 3]:
                    m, t0 = meter.start(), time.perf_counter()
                    w = fn(run)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(m.stop())
                    wire[name].append(w)
                    for i in c.ids:
                        rm(i, f"{name}/{run}")

                # -- repair: v1 on all three, v2 on two, the third repairs
                key = f"repair/{run}"
                v2 = make_v2()
                r = ClusterView(cfg.cluster, cfg.node).send(snd, data, key, "cluster")
                assert r.ack["verified"] == 3, r.replicas
                p = c.procs[victim]
                p.terminate()
                p.wait(60)
                d2 = {snd.send(v2, "127.0.0.1", port[i], key).digest for i in live}
                assert len(d2) == 1, d2
                (digest2,) = d2
                c.wait(partial(lists, leader, key, digest2), what=f"the catalog to list v2 of {key}")
                c.start(victim)
                c.wait(partial(lists, victim, key, digest2), timeout=60,
                       what=f"{victim} back, its catalog listing v2 of {key}")  # fmt: skip
                before = ask(victim, {"op": "status"})["repair"]["wire_bytes_total"]
                m, t0 = meter.start(), time.perf_counter()
                ans = ask(victim, {"op": "repair", "key": key}, timeout_s=3600)
                rep["seconds"].append(time.perf_counter() - t0)
                rep["cpu"].append(m.stop())
                after = ask(victim, {"op": "status"})["repair"]["wire_bytes_total"]
                if ans.get("failed") or len(ans.get("repaired", [])) != 1:
                    raise RuntimeError(f"repair of {key} on {victim}: {ans}")
                done = ans["repaired"][0]
                rep["wire_bytes"].append(int(done["wire_bytes"]))
                rep["counter_wire_bytes"].append(after - before)
                rep["report"].append(done)
                held = ask(victim, {"op": "ls", "prefix": key})["keys"]
                assert any(v["digest"] == digest2 for k in held if k["key"] == key for v in k["versions"]), (
                    held
                )
                # the peer: a delta send of v2 against v1 to a home holding v1 (another key)
                pkey, to = f"peer/{run}", port[live[0]]
                snd.send(data, "127.0.0.1", to, pkey)
                data.tofile(v1_path)
                m, t0 = meter.start(), time.perf_counter()
                r = snd.send(v2, "127.0.0.1", to, pkey, base=v1_path)
                peer["seconds"].append(time.perf_counter() - t0)
                peer["cpu"].append(m.stop())
                peer["wire_bytes"].append(r.wire_bytes)
                peer["mode"].append(r.mode)
                for i in c.ids:
                    rm(i, key)
                rm(live[0], pkey)
                os.unlink(v1_path)
                del v2

                # -- scrub: one home holding only the object
                s = live[-1]
                skey = f"scrub/{run}"
                snd.send(data, "127.0.0.1", port[s], skey)
                left = [k["key"] for k in ask(s, {"op": "ls"})["keys"]]
                assert left == [skey], left
                passes = ask(s, {"op": "status"})["scrub"]["passes"]
                c.scrub_rate = rate
                c.cfg(s)
                m = meter.start()
                ask(s, {"op": "reload"})
                try:
                    c.wait(partial(scrubbed, s, passes), timeout=2 * size / rate + 30,
                           what="a background scrub pass")  # fmt: skip
                finally:
                    c.scrub_rate = 0.0
                    c.cfg(s)
                    ask(s, {"op": "reload"})
                cu = m.stop()
                last = ask(s, {"op": "status"})["scrub"]["last"]
                for case, got in (("background", last), ("now_at_rate", None), ("unthrottled", None)):
                    if got is None:
                        m = meter.start()
                        got = ask(s, {"op": "scrub", "rate": rate if case == "now_at_rate" else fast}, 3600)
                        cu = m.stop()
                    assert got["checked"] == 1 and not got["corrupt"], got
                    scrub[case]["bytes"].append(got["bytes"])
                    scrub[case]["seconds"].append(got["seconds"])
                    scrub[case]["rate"].append(got["bytes"] / got["seconds"])
                    scrub[case]["cpu"].append(cu)
                rm(s, skey)
        finally:
            c.close()

    ms = {k: med(v) for k, v in times.items()}
    mw = {k: med(v) for k, v in wire.items()}
    mc = {k: med_cpu(v) for k, v in cpu.items()}
    rw, pw = med(rep["wire_bytes"]), med(peer["wire_bytes"])
    rep_cpu, peer_cpu = med_cpu(rep["cpu"]), med_cpu(peer["cpu"])
    sc = {
        k: {"rate_bytes_per_s": med(v["rate"]), "bytes": med(v["bytes"]), "seconds": med(v["seconds"]),
            "rate_all": v["rate"], "cpu_s": med_cpu(v["cpu"]),
            "configured_rate_bytes_per_s": {"background": rate, "now_at_rate": rate, "unthrottled": fast}[k]}
        for k, v in scrub.items()
    }  # fmt: skip
    for k in ("background", "now_at_rate"):
        sc[k]["rate_vs_configured"] = sc[k]["rate_bytes_per_s"] / rate
    result = {
        "machine": machine(), "object_bytes": data.nbytes, "runs": args.runs, "data_root": args.data_root,
        "seconds": ms, "seconds_all": times, "client_wire_bytes": mw,
        "rate_bytes_per_s": {k: data.nbytes / v for k, v in ms.items()},
        "cpu_s": mc, "cpu_all": cpu,
        "repair": {
            "dirty_fraction": args.dirty, "dirty_pages": len(dirty), "pages": n_pages,
            "dirty_bytes": len(dirty) * PAGE, "leaves_dirty": leaves_dirty, "leaves": -(-size // (1 << 20)),
            "repaired_node": victim, "seconds": med(rep["seconds"]), "seconds_all": rep["seconds"],
            "wire_bytes": rw, "wire_bytes_all": rep["wire_bytes"],
            "counter_wire_bytes_all": rep["counter_wire_bytes"], "reports": rep["report"], "cpu_s": rep_cpu,
            "peer_delta_send": {"seconds": med(peer["seconds"]), "seconds_all": peer["seconds"], "wire_bytes": pw,
                                "wire_bytes_all": peer["wire_bytes"], "mode": peer["mode"], "cpu_s": peer_cpu},
        },
        "scrub": sc,
        "ratios": {"chain_vs_fanout_time": ms["chain"] / ms["fanout"],
                   "chain_vs_single_time": ms["chain"] / ms["single"],
                   "chain_vs_single_cpu_floor": mc["chain"]["floor_s"] / mc["single"]["floor_s"],
                   "chain_vs_fanout_cpu_floor": mc["chain"]["floor_s"] / mc["fanout"]["floor_s"],
                   "chain_vs_fanout_client_bytes": mw["chain"] / mw["fanout"],
                   "repair_vs_delta_wire": rw / pw, "repair_wire_vs_object": rw / data.nbytes,
                   "repair_vs_delta_time": med(rep["seconds"]) / med(peer["seconds"]),
                   "scrub_background_vs_configured": sc["background"]["rate_vs_configured"],
                   "scrub_now_vs_configured": sc["now_at_rate"]["rate_vs_configured"]},
    }  # fmt: skip
    write_json(result, args.out, "bench_replication.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
