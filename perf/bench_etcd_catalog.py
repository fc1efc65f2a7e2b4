"""The catalog in etcd: propose latency at a fixed rate and sustained ops/s, against etcd itself as the peer.

    python perf/bench_etcd_catalog.py [--rate 500] [--seconds 5] [--runs 3] [--data-root DIR] [--out FILE]

Starts one etcd member (the `etcd` binary) on loopback with its data under
--data-root (default: the disk under /tmp; /dev/shm takes fsync out), then:

* ours: two EtcdCatalog nodes on it; one proposes catalog "version" commands,
  timed from propose() to the entry applied on the proposing node (etcd txn
  + the watch bringing it back + apply): at --rate per second from 8
  threads (p50/p99/max), then as fast as 32 threads can (ops/s);
* peer, same etcd, same run: the same txn (put-if-absent of the same JSON
  value) straight to the gateway over keep-alive HTTP, no watch: etcd's own
  commit path as a client sees it, same rate and threads; and, if etcdctl is
  installed, an `etcdctl put` loop (one process per put: the CLI's cost).

Our overhead over etcd is ours - peer.  JSON to perf/results/bench_etcd_catalog.json.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import ensure_tool, fixed_rate, machine, max_rate, pct, write_json  # noqa: E402

from dwcp._testbase.daemons import free_ports  # noqa: E402
from dwcp.consensus.etcd import EtcdCatalog  # noqa: E402


def start_etcd(etcd: str, root: str) -> tuple[subprocess.Popen, str]:
    cp, pp = free_ports(2)
    url, peer = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    log = open(os.path.join(root, "etcd.log"), "wb")
    proc = subprocess.Popen([etcd, "--name", "b", "--data-dir", os.path.join(root, "data"), "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
                             peer, "--initial-cluster", f"b={peer}"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.loads(r.read()).get("health") == "true":
                    return proc, url
        except (OSError, ValueError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("etcd did not become healthy")


def cmd(k: int) -> dict:
    return {
        "op": "version",
        "key": f"bench/{k % 1000}",
        "digest": f"{k:032x}",
        "size": k,
        "holder": "bench",
        "at": 0.0,
    }


class RawGateway:
    """The peer: the same put-if-absent txn, straight to the gateway, one keep-alive connection per thread."""

    def __init__(self, url: str, prefix: str) -> None:
        host, port = url.split("//")[1].split(":")
        self.host, self.port, self.prefix = host, int(port), prefix
        self.local = threading.local()

    def put(self, k: int) -> None:
        c = self.local.__dict__.get("c")
        if c is None:
            c = self.local.c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        key = base64.b64encode(f"{self.prefix}/log/{k:016x}".encode()).decode()
        val = base64.b64encode(json.dumps({**cmd(k), "id": f"{k:016x}"}).encode()).decode()
        body = json.dumps({"compare": [{"key": key, "target": "CREATE", "create_revision": 0}],
                           "success": [{"request_put": {"key": key, "value": val}}]})  # fmt: skip
        c.request("POST", "/v3/kv/txn", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200 or b'"succeeded":true' not in r.read():
            raise RuntimeError("raw txn failed")


def measure(op: Callable[[int], object], rate: float, seconds: float, base: int) -> dict:
    lat = fixed_rate(op, rate, seconds, base)
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat) * 1000, "n": len(lat),
            "max_ops_s": max_rate(op, seconds, base + 10**7)}  # fmt: skip


def etcdctl_loop(etcdctl: str, url: str, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        subprocess.run([etcdctl, "--endpoints", url, "put", f"/bench/ctl/{n}", "x"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "ETCDCTL_API": "3"})  # fmt: skip
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-root")
    ap.add_argument("--out")
    args = ap.parse_args()
    etcd = ensure_tool("etcd", "etcd-server")
    if etcd is None:
        print("the etcd binary is missing (apt-get install etcd-server)", file=sys.stderr)
        return 2
    etcdctl = shutil.which("etcdctl")
    root = tempfile.mkdtemp(prefix="dwcp-etcd-bench-", dir=args.data_root)
    proc, url = start_etcd(etcd, root)
    res: dict = {"machine": machine(), "data_root": args.data_root or tempfile.gettempdir(), "rate_ops_s": args.rate,
                 "seconds": args.seconds, "runs": {"ours": [], "peer_raw_gateway": []}}  # fmt: skip
    try:
        for r in range(args.runs):  # interleaved: ours then the peer, each run on a fresh prefix
            a = EtcdCatalog((url,), f"/bench/ours{r}", snapshot_check_s=3600)
            b = EtcdCatalog((url,), f"/bench/ours{r}", snapshot_check_s=3600)
            for n in (a, b):
                n.start()
                n.wait_caught_up(10)
            try:
                res["runs"]["ours"].append(measure(lambda k, a=a: a.propose(cmd(k), timeout_s=10), args.rate,
                                                   args.seconds, 0))  # fmt: skip
                res["runs"]["ours"][-1]["follower_applied"] = b.status()["entries_applied"]
            finally:
                a.close()
                b.close()
            raw = RawGateway(url, f"/bench/raw{r}")
            res["runs"]["peer_raw_gateway"].append(measure(raw.put, args.rate, args.seconds, 0))
        for name, rs in res["runs"].items():
            res[name] = {k: statistics.median(x[k] for x in rs) for k in ("p50_ms", "p99_ms", "max_ops_s")}
        if etcdctl:
            res["peer_etcdctl_put_loop_ops_s"] = etcdctl_loop(etcdctl, url, min(args.seconds, 3.0))
        res["ratios"] = {"p50_vs_raw": res["ours"]["p50_ms"] / res["peer_raw_gateway"]["p50_ms"],
                         "p99_vs_raw": res["ours"]["p99_ms"] / res["peer_raw_gateway"]["p99_ms"],
                         "max_ops_vs_raw": res["ours"]["max_ops_s"] / res["peer_raw_gateway"]["max_ops_s"]}  # fmt: skip
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    write_json(res, args.out, "bench_etcd_catalog.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
