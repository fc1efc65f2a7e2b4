"""`dwcp tune` against a veth pair in a network namespace the test creates."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from dwcp.cli.demo import same_dwcp_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create a network namespace")  # fmt: skip


@pytest.fixture
def netns():
    ns = f"dwcp-tune-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "add", "vt0", "type", "veth", "peer", "name", "vt1"],
                    ["ip", "link", "set", "vt0", "mtu", "9000"], ["ip", "link", "set", "vt1", "mtu", "9000"],
                    ["ip", "link", "set", "vt0", "up"], ["ip", "link", "set", "vt1", "up"]):  # fmt: skip
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_tune_reads_veth_and_applies_a_profile(netns, tmp_path):
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "dwcp", "tune", "--json", "--rtt-ms", "20",
                        "--apply", "--state-dir", str(tmp_path)], capture_output=True, text=True, env=same_dwcp_env(),
                       cwd=str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    nics = {n["name"]: n for n in out["nics"]}
    assert set(nics) == {"lo", "vt0", "vt1"}
    v = nics["vt0"]
    assert v["mtu"] == 9000 and v["carrier"] is True and v["tx_queues"] >= 1 and v["source"] == "netlink"
    assert v["speed_mbit_s"] in (None, 10000)  # veth reports 10000 on some kernels, nothing on others
    applied = json.loads((tmp_path / "tune.json").read_text())
    assert {p["nic"] for p in applied["profiles"]} == {"lo", "vt0", "vt1"}
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "dwcp", "tune", "--interface", "nope"],
                       capture_output=True, text=True, env=same_dwcp_env(), cwd=str(tmp_path))  # fmt: skip
    assert r.returncode == 1 and "no such interface: nope" in r.stderr
