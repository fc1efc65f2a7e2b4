"""A send to a far region through a relay daemon, with three daemons in three regions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from dwcp.cli.demo import same_dwcp_env, start_daemon
from dwcp.daemon.control import request
from dwcp.digest import object_digest


def test_send_via_a_relay_region_lands_verified_at_the_far_region(tmp_path):
    nodes = {"near": "b", "far": "c"}
    procs, socks, ports = {}, {}, {}
    try:
        # the relay forwards only to a member of its cluster: the far node is one
        procs["far"], _cfg, socks["far"], ports["far"] = start_daemon(str(tmp_path / "d"), "far", None)
        procs["near"], _cfg, socks["near"], ports["near"] = start_daemon(
            str(tmp_path / "d"),
            "near",
            None,
            extra=f'\n[cluster]\n[[cluster.peers]]\nid = "far"\naddress = "127.0.0.1:{ports["far"]}"\n',
        )
        peers = "".join(f'[[cluster.peers]]\nid = "{n}"\naddress = "127.0.0.1:{ports[n]}"\nregion = "{r}"\n'
                        for n, r in nodes.items())  # fmt: skip
        cfg = tmp_path / "tx.toml"
        cfg.write_text(f'[node]\nid = "tx"\nregion = "a"\n[security]\nplaintext = true\n[storage]\n'
                       f'data_dir = "{tmp_path / "tx"}"\n[transport]\nchunk_size_bytes = 1048576\n[cluster]\n{peers}')  # fmt: skip
        data = np.random.default_rng(5).integers(0, 256, 8 << 20, dtype=np.uint8)
        src = tmp_path / "obj"
        data.tofile(src)
        r = subprocess.run([sys.executable, "-m", "dwcp", "send", str(src), "--to", "region:c", "--via", "region:b",
                            "--key", "vm/far", "--config", str(cfg), "--json"], capture_output=True, text=True,
                           env=same_dwcp_env(), cwd=str(tmp_path), timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert "via" in res, (res.get("failover"), r.stderr[-2000:])
        assert (
            res["via"] == "near"
            and res["peer"] == "far"
            and res["relayed"]["to"] == f"127.0.0.1:{ports['far']}"
        )
        assert res["digest"] == object_digest(data).hex()
        for n in nodes:  # the relay keeps a copy; the far region has it
            assert request(socks[n], {"op": "status"}, timeout_s=5)["keys"] == 1
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(20)
