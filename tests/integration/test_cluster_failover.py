"""Four daemons on loopback in two regions: a send to region:r1 survives the kill -9
of the peer it started on, finishing on the next peer in the key's ring order with a verified
digest (one replica: with more, the send is a replication chain, tests/integration/test_replication.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from dwcp.cli.demo import same_dwcp_env, start_daemon
from dwcp.daemon.control import request
from dwcp.digest import object_digest


def test_send_fails_over_to_the_next_replica_when_its_peer_dies(tmp_path):
    nodes = {"n1": "r1", "n2": "r1", "n3": "r2", "n4": "r2"}
    procs, socks, ports = {}, {}, {}
    try:
        for n in nodes:
            procs[n], _cfg, socks[n], ports[n] = start_daemon(str(tmp_path / "d"), n, None)
        peers = "".join(f'[[cluster.peers]]\nid = "{n}"\naddress = "127.0.0.1:{ports[n]}"\nregion = "{r}"\n'
                        for n, r in nodes.items())  # fmt: skip
        cfg = tmp_path / "tx.toml"
        cfg.write_text(f'[node]\nid = "tx"\nregion = "r2"\n[security]\nplaintext = true\n[storage]\n'
                       f'data_dir = "{tmp_path / "tx"}"\n[transport]\nchunk_size_bytes = 1048576\n'
                       f'stall_timeout_s = 3.0\nmax_stream_reconnects = 4\n[cluster]\nreplicas = 1\n{peers}')  # fmt: skip
        data = np.random.default_rng(4).integers(0, 256, 32 << 20, dtype=np.uint8)
        src = tmp_path / "obj"
        data.tofile(src)
        out: dict = {}

        def send():
            out["r"] = subprocess.run([sys.executable, "-m", "dwcp", "send", str(src), "--to", "region:r1", "--key",
                                       "vm/failover", "--config", str(cfg), "--json", "--rate", "12000000",
                                       "--streams", "2"], capture_output=True, text=True, env=same_dwcp_env(),
                                      cwd=str(tmp_path), timeout=120)  # fmt: skip

        t = threading.Thread(target=send)
        t.start()
        victim = None
        deadline = time.monotonic() + 20
        while victim is None:
            assert time.monotonic() < deadline, "the transfer never started on an r1 peer"
            for n in ("n1", "n2"):
                st = request(socks[n], {"op": "status"}, timeout_s=5)
                if st["transfers"] and st["transfers"][0]["chunks_received"] >= 3:
                    victim = n
            time.sleep(0.05)
        os.kill(procs[victim].pid, signal.SIGKILL)  # mid-transfer
        procs[victim].wait()
        t.join(120)
        r = out["r"]
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        other = "n2" if victim == "n1" else "n1"
        assert res["peer"] == other and res["region"] == "r1"
        assert [f["peer"] for f in res["failover"]] == [victim]
        assert res["digest"] == object_digest(data).hex() and res["verified"]
        st = request(socks[other], {"op": "status"}, timeout_s=5)
        assert st["keys"] == 1
        for n in ("n3", "n4"):  # the other region was not touched
            assert request(socks[n], {"op": "status"}, timeout_s=5)["keys"] == 0
        # the same send through a daemon that has the cluster (n3, region r2): its metrics show the cluster
        others = "".join(f'[[cluster.peers]]\nid = "{n}"\naddress = "127.0.0.1:{ports[n]}"\nregion = "{r}"\n'
                         for n, r in nodes.items() if n != "n3")  # fmt: skip
        dcfg = tmp_path / "d" / "n3.toml"
        dcfg.write_text(dcfg.read_text() + f"[cluster]\nreplicas = 1\n{others}")
        assert request(socks["n3"], {"op": "reload"}, timeout_s=10)["ok"]
        r = request(
            socks["n3"], {"op": "send", "path": str(src), "to": "region:r1", "key": "vm/again"}, timeout_s=60
        )
        assert r["ok"] and r["peer"] == other, r
        st = request(socks["n3"], {"op": "status"}, timeout_s=5)
        import urllib.request

        text = urllib.request.urlopen(st["metrics_endpoint"] + "metrics", timeout=10).read().decode()
        assert 'dwcp_cluster_breaker_state{peer="n1"}' in text and "dwcp_cluster_lb_decisions_total" in text
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
