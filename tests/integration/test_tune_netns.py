"""`dwcp tune` against virtual NICs in a network namespace the test creates.

The namespace holds a veth pair (MTU 9000 on one end), a bridge and a veth
left down: every one of them refuses some ethtool query, and none may crash
the reader.  Needs root and iproute2 with ``ip netns``; skipped otherwise.
"""

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
                                reason="needs root and iproute2 (`ip netns`) to create a network namespace")  # fmt: skip


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns():
    ns = f"dwcp-tune-{secrets.token_hex(4)}"
    r = _ip("netns", "add", ns)
    if r.returncode != 0:
        pytest.skip(f"`ip netns add` failed (no CAP_SYS_ADMIN or no netns support?): {r.stderr.strip()}")
    try:
        for cmd in (
            ["link", "add", "vt0", "type", "veth", "peer", "name", "vt1"],
            ["link", "set", "vt0", "mtu", "9000"],
            ["link", "set", "vt0", "up"],
            ["link", "set", "vt1", "up"],
            ["link", "add", "vdown0", "type", "veth", "peer", "name", "vdown1"],  # left down: no carrier
            ["link", "add", "br0", "type", "bridge"],
        ):  # fmt: skip
            r = _ip("-n", ns, *cmd)
            assert r.returncode == 0, f"ip -n {ns} {' '.join(cmd)}: {r.stderr}"
        yield ns
    finally:
        _ip("netns", "del", ns)


def _tune(ns: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "dwcp.cli.tune_cmd", *args],
        capture_output=True, text=True, env=same_dwcp_env(), cwd=cwd, timeout=60,
    )  # fmt: skip


def test_tune_reads_the_namespace_nics_and_applies(netns, tmp_path):
    r = _tune(netns, "--json", "--rtt-ms", "20", "--apply", "--state-dir", str(tmp_path), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    nics = {n["name"]: n for n in out["nics"]}
    assert set(nics) == {"lo", "vt0", "vt1", "vdown0", "vdown1", "br0"}  # this namespace's, not the host's
    vt0, vt1 = nics["vt0"], nics["vt1"]
    assert (vt0["mtu"], vt1["mtu"]) == (9000, 1500)
    assert vt0["carrier"] is True and vt0["operstate"] == "up" and vt0["source"] == "netlink"
    assert vt0["tx_queues"] >= 1 and vt0["rx_queues"] >= 1 and vt0["driver"] is None
    assert vt0["speed_mbit_s"] in (None, 10000)  # veth says 10000 through ethtool on recent kernels
    assert nics["vdown0"]["carrier"] is False and nics["vdown0"]["operstate"] == "down"
    assert nics["lo"]["speed_mbit_s"] is None and nics["br0"]["speed_mbit_s"] in (None, 10000)

    profiles = {p["nic"]: p for p in out["profiles"]}
    p = profiles["vt0"]
    if vt0["speed_mbit_s"] == 10000:
        assert p["bdp_bytes"] == 25_000_000  # 1.25e9 B/s x 20 ms
        assert 1 <= p["initial_streams"] <= p["max_streams"] <= 64
        assert p["max_streams"] >= max(4, 2 * vt0["tx_queues"], p["initial_streams"])
    else:
        assert p["bdp_bytes"] is None and p["initial_streams"] == 4
    applied = json.loads((tmp_path / "tune.json").read_text())
    assert applied["rtt_s"] == 0.02 and {q["nic"] for q in applied["profiles"]} == set(nics)


def test_tune_restricted_to_one_interface_and_a_missing_one(netns, tmp_path):
    r = _tune(netns, "--interface", "vt0", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith("vt0: ") and "mtu 9000" in r.stdout and "br0" not in r.stdout
    r = _tune(netns, "--interface", "eth0-not-here", cwd=str(tmp_path))
    assert r.returncode == 1 and r.stderr == "dwcp tune: error: no such interface: eth0-not-here\n"


def test_receive_cpus_find_the_ingress_nic(netns, tmp_path):
    """A daemon's receive loops follow the NIC its listen address is on (or the default route's for a
    wildcard): veth has 4 rx queues here but no IRQs, and the reason says so; an address no NIC holds
    is named."""
    for cmd in (
        ["link", "add", "vq0", "numtxqueues", "4", "numrxqueues", "4", "type", "veth", "peer", "name", "vq1"],
        ["addr", "add", "10.77.0.1/24", "dev", "vq0"],
        ["link", "set", "vq0", "up"],
        ["link", "set", "vq1", "up"],
        ["route", "add", "default", "via", "10.77.0.2", "dev", "vq0"],
    ):  # fmt: skip
        r = _ip("-n", netns, *cmd)
        assert r.returncode == 0, f"ip -n {netns} {' '.join(cmd)}: {r.stderr}"
    code = ("import json,sys; from dwcp.transport.engine import read_receive_cpus; "
            "print(json.dumps([read_receive_cpus(h) for h in sys.argv[1:]]))")  # fmt: skip
    r = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code, "10.77.0.1", "0.0.0.0", "10.77.0.9"],
        capture_output=True, text=True, env=same_dwcp_env(), cwd=str(tmp_path), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    held, wildcard, missing = json.loads(r.stdout)
    assert held == [None, "not pinned: no rx-queue IRQ of vq0 found in /proc/interrupts"]
    assert wildcard == [None, "not pinned: no rx-queue IRQ of vq0 found in /proc/interrupts"]
    assert missing == [None, "not pinned: no NIC holds the listen address 10.77.0.9"]
