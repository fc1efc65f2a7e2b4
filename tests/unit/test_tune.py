"""`dwcp tune`: NIC facts (sysfs fallback), kernel limits, the stream profile, apply/load."""

from __future__ import annotations

import json
import os

import pytest

from dwcp.transport.nic import NicInfo, apply_profiles, kernel_sysctls, load_profile, profile, read_sysfs

MiB = 1 << 20
BIG = {"rmem_max": 256 * MiB, "wmem_max": 256 * MiB, "tcp_rmem": [4096, 131072, 256 * MiB],
       "tcp_wmem": [4096, 16384, 256 * MiB], "available_congestion_control": ["reno", "cubic", "bbr"]}  # fmt: skip


def test_profile_from_the_bdp():
    p = profile(NicInfo("eth1", speed_mbit_s=10_000, tx_queues=8), rtt_ms=50, sysctls=BIG)
    assert p["bdp_bytes"] == 62_500_000 and p["link_bytes_per_s"] == 1.25e9
    assert p["per_stream_window_bytes"] == 62_500_000  # autotuning allows the whole BDP per stream here
    assert (p["initial_streams"], p["max_streams"]) == (1, 16) and p["warnings"] == []
    small = dict(BIG, tcp_rmem=[4096, 131072, 32 * MiB], tcp_wmem=[4096, 16384, 4 * MiB], rmem_max=4 * MiB,
                 available_congestion_control=["reno", "cubic"])  # fmt: skip
    p = profile(NicInfo("eth1", speed_mbit_s=10_000, tx_queues=8), rtt_ms=50, sysctls=small)
    assert p["per_stream_window_bytes"] == 2 * MiB  # half of tcp_wmem max
    assert p["initial_streams"] == 30 and p["max_streams"] == 60  # ceil(62.5 MB / 2 MiB), x2
    w = "\n".join(p["warnings"])
    assert "sysctl -w net.ipv4.tcp_rmem='4096 131072 125000000'" in w and "net.ipv4.tcp_wmem" in w
    assert "net.core.rmem_max=125000000" in w and "bbr is not available" in w
    assert p["socket_buffer_bytes"] == 125_000_000


def test_profile_for_an_unknown_speed_and_bad_rtt():
    p = profile(NicInfo("veth0", speed_mbit_s=None, tx_queues=1), rtt_ms=10, sysctls=BIG)
    assert p["bdp_bytes"] is None and p["initial_streams"] == 4 and "unknown" in p["why"]
    with pytest.raises(ValueError):
        profile(NicInfo("x"), rtt_ms=0, sysctls=BIG)


def _tree(root, name, files):
    d = root / name
    (d / "queues").mkdir(parents=True)
    for q in files.pop("queues", []):
        (d / "queues" / q).mkdir()
    for k, v in files.items():
        (d / k).write_text(v)
    return d


def test_sysfs_reader_with_unknowns_and_garbage(tmp_path):
    _tree(tmp_path, "eth9", {"mtu": "9000\n", "speed": "25000\n", "duplex": "full\n", "carrier": "1\n",
                              "operstate": "up\n", "queues": ["tx-0", "tx-1", "rx-0"]})  # fmt: skip
    n = read_sysfs("eth9", str(tmp_path))
    assert (n.mtu, n.speed_mbit_s, n.duplex, n.carrier, n.tx_queues, n.rx_queues) == (9000, 25000, "full", True, 2, 1)
    _tree(tmp_path, "veth0", {"mtu": "1500", "speed": "-1", "carrier": "garbage"})
    n = read_sysfs("veth0", str(tmp_path))
    assert n.speed_mbit_s is None and n.carrier is None and n.tx_queues is None
    n = read_sysfs("gone", str(tmp_path))  # nothing there: all unknown, no error
    assert n.mtu is None and n.source == "sysfs"


def test_kernel_sysctls_from_a_fake_proc(tmp_path):
    for rel, v in {"net/core/rmem_max": "212992", "net/core/wmem_max": "oops", "net/ipv4/tcp_rmem": "4096\t131072\t6291456",
                   "net/ipv4/tcp_congestion_control": "cubic", "net/ipv4/tcp_available_congestion_control": "reno cubic"}.items():  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(v + "\n")
    s = kernel_sysctls(str(tmp_path))
    assert s["rmem_max"] == 212992 and s["wmem_max"] is None and s["tcp_rmem"] == [4096, 131072, 6291456]
    assert s["tcp_wmem"] is None and s["available_congestion_control"] == ["reno", "cubic"]


def test_apply_is_atomic_and_load_tolerates_damage(tmp_path):
    ps = [profile(NicInfo("eth1", speed_mbit_s=1000), rtt_ms=20, sysctls=BIG), profile(NicInfo("eth2"), rtt_ms=20, sysctls=BIG)]
    path = apply_profiles(str(tmp_path), ps)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644" and sorted(os.listdir(tmp_path)) == ["tune.json"]
    assert load_profile(str(tmp_path), "eth2") == json.loads(json.dumps(ps[1]))
    assert load_profile(str(tmp_path))["nic"] == "eth1" and load_profile(str(tmp_path), "eth7") is None
    assert load_profile(str(tmp_path / "none")) is None
    (tmp_path / "tune.json").write_text("{not json")
    assert load_profile(str(tmp_path)) is None
    (tmp_path / "tune.json").write_text('{"profiles": 3}')
    assert load_profile(str(tmp_path)) is None
