"""`dwcp tune`: profile math, sysctl and sysfs parsing on fake trees, the netlink/ethtool merge, apply/load, the CLI."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import stat

import pytest

from dwcp.cli import tune_cmd
from dwcp.tune import (
    NicInfo,
    Sysctls,
    apply_profiles,
    congestion_warnings,
    load_profile,
    parse_sysctls,
    read_nics,
    read_sysctls,
    read_sysfs,
    stream_profile,
)
from dwcp.tune import nic as nic_mod
from dwcp.tune.profile import chunk_size_bytes

MiB = 1 << 20
BIG = Sysctls(rmem_max_bytes=256 * MiB, wmem_max_bytes=256 * MiB, tcp_rmem_bytes=(4096, 131072, 256 * MiB),
              tcp_wmem_bytes=(4096, 16384, 256 * MiB), congestion_control="bbr",
              available_congestion_control=("reno", "cubic", "bbr"))  # fmt: skip
SMALL = Sysctls(rmem_max_bytes=4 * MiB, wmem_max_bytes=4 * MiB, tcp_rmem_bytes=(4096, 131072, 32 * MiB),
                tcp_wmem_bytes=(4096, 16384, 4 * MiB), congestion_control="cubic",
                available_congestion_control=("reno", "cubic"))  # fmt: skip
TEN_G = NicInfo("eth1", speed_mbit_s=10_000, tx_queues=8)


# -- profile math ----------------------------------------------------------------


def test_a_big_buffer_fills_the_bdp_with_one_stream():
    # 10 Gbit/s = 1.25e9 B/s; x 50 ms = 62.5 MB in flight; windows up to 128 MiB (half of 256 MiB)
    p = stream_profile(TEN_G, rtt_s=0.05, sysctls=BIG)
    assert p.link_bytes_per_s == 1.25e9 and p.bdp_bytes == 62_500_000
    assert p.per_stream_window_bytes == 62_500_000
    assert (p.min_streams, p.initial_streams, p.max_streams) == (1, 1, 16)  # max = 2 x 8 tx queues
    assert p.socket_buffer_bytes == 64 * MiB  # 2 x window = 125 MB, clamped like the transport does
    assert p.chunk_size_bytes == 16 * MiB  # 100 ms of link is 125 MB: capped at 16 MiB
    assert p.warnings == ()


def test_small_buffers_need_many_streams_and_say_which_sysctl_to_raise():
    # windows: min(max(32 MiB, 4 MiB), max(4 MiB, 4 MiB)) / 2 = 2 MiB; ceil(62.5e6 / 2 MiB) = 30 streams
    p = stream_profile(TEN_G, rtt_s=0.05, sysctls=SMALL)
    assert p.per_stream_window_bytes == 2 * MiB and p.socket_buffer_bytes == 4 * MiB
    assert (p.initial_streams, p.max_streams) == (30, 30)  # the BDP decides above 2 x 8 tx queues
    need = 120 * MiB  # 2 x BDP = 125e6 rounded up to MiB
    assert list(p.warnings) == [
        f"net.core.rmem_max = {4 * MiB} is below 2 x the BDP of eth1 (125000000 bytes): "
        f"sysctl -w net.core.rmem_max={need}",
        f"net.core.wmem_max = {4 * MiB} is below 2 x the BDP of eth1 (125000000 bytes): "
        f"sysctl -w net.core.wmem_max={need}",
        f"net.ipv4.tcp_rmem max {32 * MiB} is below 2 x the BDP of eth1 (125000000 bytes): "
        f"sysctl -w net.ipv4.tcp_rmem='4096 131072 {need}'",
        f"net.ipv4.tcp_wmem max {4 * MiB} is below 2 x the BDP of eth1 (125000000 bytes): "
        f"sysctl -w net.ipv4.tcp_wmem='4096 16384 {need}'",
    ]
    many_queues = stream_profile(
        NicInfo("eth1", speed_mbit_s=10_000, tx_queues=32), rtt_s=0.05, sysctls=SMALL
    )
    assert (many_queues.initial_streams, many_queues.max_streams) == (30, 64)
    assert not any("tx queue" in w for w in many_queues.warnings)


def test_unreadable_sysctls_use_linux_defaults_and_raise_no_warning():
    # 1 Gbit/s x 20 ms = 2.5 MB; default windows: min(6 MiB, 4 MiB) / 2 = 2 MiB -> 2 streams
    p = stream_profile(NicInfo("eth0", speed_mbit_s=1000), rtt_s=0.02, sysctls=Sysctls())
    assert p.bdp_bytes == 2_500_000 and p.per_stream_window_bytes == 2 * MiB
    assert (p.initial_streams, p.max_streams) == (2, 4)  # unknown queues count as one; the floor is 4
    assert p.chunk_size_bytes == 8 * MiB and p.warnings == ()


def test_a_tiny_bdp_still_gets_a_64_kib_window():
    p = stream_profile(NicInfo("eth0", speed_mbit_s=10, tx_queues=4), rtt_s=0.001, sysctls=BIG)
    assert p.bdp_bytes == 1250 and p.per_stream_window_bytes == 64 * 1024 and p.initial_streams == 1


def test_an_unknown_speed_gives_a_probing_profile():
    p = stream_profile(NicInfo("veth0", tx_queues=1), rtt_s=0.01, sysctls=BIG)
    assert p.bdp_bytes is None and p.link_bytes_per_s is None and p.socket_buffer_bytes == 0
    assert (p.initial_streams, p.max_streams, p.chunk_size_bytes) == (4, 16, 4 * MiB)
    assert "unknown" in p.why and p.warnings == ()
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d and d["warnings"] == [] and d["nic"] == "veth0"


@pytest.mark.parametrize("rtt_s", [0.0, -0.001, math.nan, math.inf])
def test_a_bad_rtt_is_refused(rtt_s):
    with pytest.raises(ValueError, match="rtt_s"):
        stream_profile(TEN_G, rtt_s=rtt_s, sysctls=BIG)


@pytest.mark.parametrize(
    "rate, chunk",
    [
        (None, 4 * MiB),
        (1.25e6, 1 * MiB),
        (125_000.0, 1 * MiB),
        (125e6, 8 * MiB),
        (40e6, 2 * MiB),
        (1.25e10, 16 * MiB),
    ],
)
def test_chunk_size_is_about_100_ms_of_link(rate, chunk):
    assert chunk_size_bytes(rate) == chunk


def test_congestion_warnings():
    assert congestion_warnings(BIG) == []
    (w,) = congestion_warnings(SMALL)
    assert "have: reno cubic" in w and w.endswith(
        "modprobe tcp_bbr && sysctl -w net.ipv4.tcp_congestion_control=bbr"
    )
    (w,) = congestion_warnings(Sysctls())
    assert "unreadable" in w


# -- /proc/sys and sysfs on fake trees --------------------------------------------------


def _write(root, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_sysctls_from_a_fake_proc_sys(tmp_path):
    _write(tmp_path, "net/core/rmem_max", "212992\n")
    _write(tmp_path, "net/core/wmem_max", "oops\n")
    _write(tmp_path, "net/ipv4/tcp_rmem", "4096\t131072\t6291456\n")
    _write(tmp_path, "net/ipv4/tcp_wmem", "4096 16384\n")  # two numbers, not three
    _write(tmp_path, "net/ipv4/tcp_congestion_control", "cubic\n")
    _write(tmp_path, "net/ipv4/tcp_available_congestion_control", "reno cubic\n")
    s = read_sysctls(str(tmp_path))
    assert s == Sysctls(rmem_max_bytes=212992, wmem_max_bytes=None, tcp_rmem_bytes=(4096, 131072, 6291456),
                        tcp_wmem_bytes=None, congestion_control="cubic",
                        available_congestion_control=("reno", "cubic"))  # fmt: skip
    assert read_sysctls(str(tmp_path / "nowhere")) == Sysctls()


def test_sysctl_garbage_is_unknown():
    s = parse_sysctls({"net.core.rmem_max": "-5", "net.ipv4.tcp_rmem": "9 8 7", "net.ipv4.tcp_wmem": "1 2 x",
                       "net.ipv4.tcp_congestion_control": "a b"})  # fmt: skip
    assert s == Sysctls()


def _nic_tree(root, name: str, files: dict[str, str], queues=(), driver: str | None = None):
    d = root / name
    (d / "queues").mkdir(parents=True)
    for q in queues:
        (d / "queues" / q).mkdir()
    for k, v in files.items():
        (d / k).write_text(v)
    if driver:
        (d / "device").mkdir()
        os.symlink(f"../../../bus/pci/drivers/{driver}", d / "device" / "driver")


def test_a_physical_nic_from_sysfs(tmp_path):
    _nic_tree(tmp_path, "eth9", {"mtu": "9000\n", "speed": "25000\n", "duplex": "full\n", "carrier": "1\n",
                                 "operstate": "up\n"}, queues=["tx-0", "tx-1", "rx-0", "rx-1", "rx-2"],
              driver="ixgbe")  # fmt: skip
    n = read_sysfs("eth9", str(tmp_path))
    assert n == NicInfo("eth9", mtu=9000, speed_mbit_s=25000, duplex="full", carrier=True, operstate="up",
                        tx_queues=2, rx_queues=3, driver="ixgbe", source="sysfs")  # fmt: skip
    assert n.to_dict()["offloads"] == {}


@pytest.mark.parametrize("speed", ["-1", "0", "4294967295", "fast", ""])
def test_virtual_or_garbled_sysfs_is_unknown(tmp_path, speed):
    _nic_tree(tmp_path, "veth0", {"mtu": "1500", "speed": speed, "duplex": "unknown", "carrier": "garbage",
                                  "operstate": "lowerlayerdown"})  # fmt: skip
    n = read_sysfs("veth0", str(tmp_path))
    assert (n.mtu, n.speed_mbit_s, n.duplex, n.carrier, n.tx_queues, n.driver) == (
        1500,
        None,
        None,
        None,
        None,
        None,
    )
    assert n.operstate == "lowerlayerdown"


def test_unreadable_sysfs_files_and_missing_nics_are_unknown(tmp_path):
    _nic_tree(tmp_path, "br0", {"mtu": "0"})
    (tmp_path / "br0" / "speed").mkdir()  # reading it fails (EISDIR), like EINVAL without carrier
    n = read_sysfs("br0", str(tmp_path))
    assert n.mtu is None and n.speed_mbit_s is None
    assert read_sysfs("gone", str(tmp_path)) == NicInfo("gone")


def test_without_netlink_every_nic_comes_from_sysfs(tmp_path, monkeypatch):
    monkeypatch.setattr(nic_mod, "_netlink_links", lambda: None)
    _nic_tree(tmp_path, "eth9", {"mtu": "9000", "speed": "1000"}, queues=["tx-0"])
    _nic_tree(tmp_path, "lo", {"mtu": "65536", "speed": "-1"})
    nics = read_nics(sysfs_root=str(tmp_path))
    assert [(n.name, n.mtu, n.speed_mbit_s, n.source) for n in nics] == [
        ("eth9", 9000, 1000, "sysfs"), ("lo", 65536, None, "sysfs")]  # fmt: skip
    assert [n.name for n in read_nics(["lo"], sysfs_root=str(tmp_path))] == ["lo"]


# -- the netlink + ethtool merge, with fakes for pyroute2 ---------------------------------


class _NotSupported(Exception):
    """Stands for pyroute2.ethtool.ioctl.NotSupportedError (EOPNOTSUPP)."""


class _Mode:
    def __init__(self, speed, duplex):
        self.speed, self.duplex = speed, duplex


class _Features:
    offload_flags = {"tcp-segmentation-offload": True, "generic-receive-offload": False, "scatter-gather": True,
                     "rx-checksumming": True, "receive-hashing": True}  # fmt: skip


class _Channels:
    combined_count, tx_count, rx_count = 4, 0, 2


class _FakeEthtool:
    """eth9 answers everything; anything else refuses every query, like lo does."""

    closed = False

    def _only_eth9(self, name, answer):
        if name != "eth9":
            raise _NotSupported(name)
        return answer

    def get_link_mode(self, name):
        return self._only_eth9(name, _Mode(40000, "Full"))

    def get_features(self, name):
        return self._only_eth9(name, _Features())

    def get_channels(self, name):
        return self._only_eth9(name, _Channels())

    def close(self):
        self.closed = True


def test_netlink_and_ethtool_facts_win_and_refusals_are_unknown(tmp_path, monkeypatch):
    links = [{"ifname": "lo", "mtu": 65536, "carrier": 1, "operstate": "UNKNOWN", "num_tx_queues": 1, "num_rx_queues": 1},
             {"ifname": "eth9", "mtu": 1500, "carrier": 0, "operstate": "DOWN", "num_tx_queues": 64, "num_rx_queues": 64},
             {"ifname": "veth3", "mtu": 9000, "carrier": 1, "operstate": "UP", "num_tx_queues": 2, "num_rx_queues": 2}]  # fmt: skip
    eth = _FakeEthtool()
    monkeypatch.setattr(nic_mod, "_netlink_links", lambda: links)
    monkeypatch.setattr(nic_mod, "_open_ethtool", lambda: eth)
    _nic_tree(tmp_path, "eth9", {"mtu": "1400", "speed": "1000"}, queues=["tx-0"], driver="mlx5_core")
    _nic_tree(tmp_path, "veth3", {"speed": "10000", "duplex": "full"}, queues=["tx-0", "rx-0"])
    eth9, lo, veth = read_nics(sysfs_root=str(tmp_path), proc=str(tmp_path / "no-proc"))  # sorted by name
    assert eth.closed
    # eth9: ethtool's speed and channels beat sysfs; netlink's MTU and carrier beat sysfs; driver from sysfs
    assert eth9 == NicInfo("eth9", mtu=1500, speed_mbit_s=40000, duplex="full", carrier=False, operstate="down",
                           tx_queues=4, rx_queues=6, driver="mlx5_core", source="netlink",
                           offloads=(("tso", True), ("gro", False), ("sg", True), ("rx_checksum", True)))  # fmt: skip
    # veth3: ethtool refuses, sysfs speed and queues fill in
    assert (veth.speed_mbit_s, veth.duplex, veth.tx_queues, veth.rx_queues, veth.offloads) == (
        10000,
        "full",
        1,
        1,
        (),
    )
    # lo: nothing in sysfs either: speed unknown, queues from netlink
    assert (lo.speed_mbit_s, lo.tx_queues, lo.carrier, lo.operstate) == (None, 1, True, "unknown")
    # no /proc/interrupts: the tx IRQs' CPUs are unknown, not "none"
    assert eth9.tx_irq_cpus is None and eth9.to_dict()["tx_irq_cpus"] is None
    assert [n.name for n in read_nics(["veth3"], sysfs_root=str(tmp_path))] == ["veth3"]


def test_without_ethtool_netlink_and_sysfs_still_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(nic_mod, "_netlink_links", lambda: [{"ifname": "eth9", "mtu": 1500, "carrier": 1}])
    monkeypatch.setattr(nic_mod, "_open_ethtool", lambda: None)
    _nic_tree(tmp_path, "eth9", {"speed": "2500"})
    (n,) = read_nics(sysfs_root=str(tmp_path))
    assert (n.mtu, n.speed_mbit_s, n.carrier, n.offloads) == (1500, 2500, True, ())


# -- tune.json ---------------------------------------------------------------------------


def _profiles():
    return [stream_profile(NicInfo("eth1", speed_mbit_s=1000), rtt_s=0.02, sysctls=BIG).to_dict(),
            stream_profile(NicInfo("eth2"), rtt_s=0.02, sysctls=BIG).to_dict()]  # fmt: skip


def test_apply_writes_atomically_and_load_round_trips(tmp_path):
    state = tmp_path / "state"
    ps = _profiles()
    path = apply_profiles(str(state), ps, rtt_s=0.02)
    assert path == str(state / "tune.json") and os.listdir(state) == ["tune.json"]  # no temporary left
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert json.loads((state / "tune.json").read_text()) == {"version": 1, "rtt_s": 0.02, "profiles": ps}
    assert load_profile(str(state), "eth2") == ps[1] and load_profile(str(state)) == ps[0]
    assert load_profile(str(state), "eth7") is None
    apply_profiles(str(state), ps[1:], rtt_s=0.05)  # replaces the old file
    assert load_profile(str(state)) == ps[1] and os.listdir(state) == ["tune.json"]


def test_a_failed_apply_leaves_the_old_file(tmp_path):
    apply_profiles(str(tmp_path), _profiles(), rtt_s=0.02)
    before = (tmp_path / "tune.json").read_bytes()
    with pytest.raises(TypeError):
        apply_profiles(str(tmp_path), [{"nic": "x", "oops": object()}], rtt_s=0.02)
    assert (tmp_path / "tune.json").read_bytes() == before and os.listdir(tmp_path) == ["tune.json"]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]", b'{"version": 2, "profiles": []}',
                                     b'{"version": 1, "profiles": 3}', b'{"version": 1, "profiles": [{"x": 1}]}'])  # fmt: skip
def test_load_tolerates_a_damaged_file(tmp_path, caplog, content):
    (tmp_path / "tune.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="dwcp.tune"):
        assert load_profile(str(tmp_path)) is None
    assert "ignoring" in caplog.text


def test_load_without_a_file_is_silent(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dwcp.tune"):
        assert load_profile(str(tmp_path / "never")) is None
    assert caplog.text == ""


# -- the command ----------------------------------------------------------------------


def test_tune_json_apply_on_loopback(tmp_path, capsys):
    assert (
        tune_cmd.main(
            ["--json", "--interface", "lo", "--rtt-ms", "5", "--apply", "--state-dir", str(tmp_path)]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in out["nics"]] == ["lo"] and out["nics"][0]["mtu"] > 0
    assert out["rtt_s"] == 0.005 and out["rtt_source"] == "--rtt-ms"
    assert out["applied"] == str(tmp_path / "tune.json")
    assert load_profile(str(tmp_path), "lo") == out["profiles"][0]


def test_tune_human_output_defaults_to_1_ms(capsys):
    assert tune_cmd.main(["--interface", "lo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("RTT 1 ms (default (not measured))") and "\nlo: " in out and "streams 1/" in out


def test_tune_state_dir_from_the_config(tmp_path, capsys):
    data = tmp_path / "data"
    cfg = tmp_path / "dwcp.toml"
    cfg.write_text(f'[security]\nplaintext = true\n[storage]\ndata_dir = "{data}"\n')
    assert tune_cmd.main(["--json", "--interface", "lo", "--apply", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == str(data / "tune.json")
    assert load_profile(str(data), "lo") is not None


def test_tune_errors_are_one_line(capsys, tmp_path):
    assert tune_cmd.main(["--interface", "lo", "--interface", "nope0"]) == 1
    assert capsys.readouterr().err == "dwcp tune: error: no such interface: nope0\n"
    assert tune_cmd.main(["--apply", "--config", str(tmp_path / "missing.toml"), "--interface", "lo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    with pytest.raises(SystemExit) as e:
        tune_cmd.main(["--rtt-ms", "0"])
    assert e.value.code == 2 and "positive" in capsys.readouterr().err


def test_add_parser_hooks_into_a_dispatcher():
    p = argparse.ArgumentParser(prog="dwcp")
    tune_cmd.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["tune", "--json", "--rtt-ms", "30", "--interface", "lo", "--interface", "eth0"])
    assert (args.command, args.json, args.rtt_ms, args.interface, args.apply) == (
        "tune",
        True,
        30.0,
        ["lo", "eth0"],
        False,
    )
