"""dwcp.transport.nicplan (a NIC profile -> what a send applies), dwcp.tune.irq (the queue IRQ CPUs) and
dwcp.transport.engine.receive_cpus (where a daemon's receive loops run)."""

from __future__ import annotations

import os

import pytest

from dwcp.config import TransportConfig
from dwcp.transport.engine import read_receive_cpus, receive_cpus
from dwcp.transport.nicplan import plan_nic
from dwcp.tune import NicInfo, Sysctls, stream_profile
from dwcp.tune.irq import is_rx_irq, is_tx_irq, parse_cpu_list, read_rx_irq_cpus, read_tx_irq_cpus

MiB = 1 << 20

# what `dwcp tune --apply` writes for a 4-queue 10G NIC whose tx IRQs run on CPUs 2 and 3
PROFILE = {
    "nic": "eth1", "speed_mbit_s": 10_000, "mtu": 9000, "tx_queues": 4, "rtt_s": 0.02,
    "link_bytes_per_s": 1.25e9, "bdp_bytes": 25_000_000, "per_stream_window_bytes": 4 * MiB,
    "min_streams": 1, "initial_streams": 6, "max_streams": 8, "socket_buffer_bytes": 8 * MiB,
    "chunk_size_bytes": 16 * MiB, "why": "...", "warnings": [], "tx_irq_cpus": [2, 3],
}  # fmt: skip


def test_every_field_applies_when_the_config_leaves_it_open():
    p = plan_nic(PROFILE, TransportConfig(), allowed_cpus={0, 1, 2, 3})
    assert p.to_json() == {
        "nic": "eth1",
        "applied": {"max_streams": 8, "socket_buffer_bytes": 8 * MiB, "chunk_size_bytes": 16 * MiB,
                    "link_bytes_per_s": 1.25e9, "cpu_affinity": [2, 3]},
        # with a link rate the first count is its BDP at the measured RTT, not at the one tune assumed
        "skipped": {"initial_streams": "from the link rate at the control stream's measured RTT (the profile's "
                                       "count assumed an RTT of 0.02 s)"},
    }  # fmt: skip
    assert (p.max_streams, p.initial_streams, p.socket_buffer_bytes, p.chunk_size_bytes, p.link_bytes_per_s,
            p.cpus) == (8, None, 8 * MiB, 16 * MiB, 1.25e9, (2, 3))  # fmt: skip


def test_without_a_link_rate_the_profiles_first_count_applies():
    prof = {**PROFILE, "link_bytes_per_s": None}
    p = plan_nic(prof, TransportConfig())
    assert p.initial_streams == p.applied["initial_streams"] == 6 and "initial_streams" not in p.skipped
    assert "initial_streams" in plan_nic(prof, TransportConfig(), loopback=True).skipped


def test_an_explicit_config_value_wins_and_the_report_says_so():
    tp = TransportConfig(max_streams=32, initial_streams=3, socket_buffer_bytes=MiB, chunk_size_bytes=2 * MiB,
                         link_bytes_per_s=1e8)  # fmt: skip
    p = plan_nic(PROFILE, tp)
    assert set(p.applied) == {"cpu_affinity"}
    for name, value in (("max_streams", 32), ("initial_streams", 3), ("socket_buffer_bytes", MiB),
                        ("chunk_size_bytes", 2 * MiB)):  # fmt: skip
        assert p.skipped[name] == f"transport.{name} = {value} in the config wins"
    assert p.skipped["link_bytes_per_s"] == "transport.link_bytes_per_s = 1e+08 in the config wins"
    assert (p.max_streams, p.initial_streams, p.socket_buffer_bytes, p.chunk_size_bytes, p.link_bytes_per_s) == (
        None, None, None, None, None)  # fmt: skip


def test_cli_flags_win_a_fixed_stream_count_and_a_fixed_chunk_size():
    # --chunk-size N turns into chunk_size_bytes = N, adaptive_chunks = false (dwcp.cli.main)
    tp = TransportConfig(chunk_size_bytes=MiB, adaptive_chunks=False)
    p = plan_nic(PROFILE, tp, fixed_streams=2)
    assert (
        p.skipped["max_streams"]
        == p.skipped["initial_streams"]
        == "fixed at 2 streams by the caller (--streams 2)"
    )
    assert p.skipped["chunk_size_bytes"].startswith("transport.adaptive_chunks = false")
    assert p.max_streams is None and p.chunk_size_bytes is None and p.socket_buffer_bytes == 8 * MiB


def test_a_measured_path_wins_over_the_profile():
    p = plan_nic(PROFILE, TransportConfig(), measured_chunk="measured", measured_streams="ended at 5")
    assert p.skipped == {"chunk_size_bytes": "measured", "initial_streams": "ended at 5"}
    assert p.max_streams == 8 and p.chunk_size_bytes is None and p.initial_streams is None


def test_the_first_count_stays_within_the_config_min_and_the_applied_max():
    p = plan_nic(
        {**PROFILE, "initial_streams": 20, "max_streams": 2, "link_bytes_per_s": None},
        TransportConfig(min_streams=3, max_streams=16),
    )
    assert (p.max_streams, p.initial_streams) == (3, 3)  # the config's min_streams holds


@pytest.mark.parametrize("missing", ["max_streams", "initial_streams", "socket_buffer_bytes", "chunk_size_bytes",
                                     "link_bytes_per_s", "tx_irq_cpus"])  # fmt: skip
def test_a_field_an_older_tune_json_lacks_is_not_applied(missing):
    full = {**PROFILE, "link_bytes_per_s": None}  # (a link rate would decide the first count)
    prof = {k: v for k, v in full.items() if k != missing}
    p = plan_nic(prof, TransportConfig())
    key = "cpu_affinity" if missing == "tx_irq_cpus" else missing
    assert key not in p.applied and "older dwcp" in p.skipped[key]
    assert set(p.applied) == set(plan_nic(full, TransportConfig()).applied) - {key}  # the others still apply


def test_the_oldest_profiles_hold_only_a_link_rate():
    p = plan_nic({"nic": "lo", "link_bytes_per_s": 5e8}, TransportConfig())
    assert p.applied == {"link_bytes_per_s": 5e8}
    assert set(p.skipped) == {"max_streams", "initial_streams", "socket_buffer_bytes", "chunk_size_bytes",
                              "cpu_affinity"}  # fmt: skip


@pytest.mark.parametrize(
    "field, value",
    [("max_streams", 0), ("max_streams", 300), ("max_streams", True), ("initial_streams", "4"),
     ("socket_buffer_bytes", -1), ("chunk_size_bytes", 5000), ("chunk_size_bytes", 128 * MiB),
     ("link_bytes_per_s", float("inf")), ("link_bytes_per_s", "fast"), ("tx_irq_cpus", [0, -1]),
     ("tx_irq_cpus", "0-3")],
)  # fmt: skip
def test_a_value_out_of_range_is_skipped(field, value):
    p = plan_nic({**PROFILE, "link_bytes_per_s": None, field: value}, TransportConfig())
    key = "cpu_affinity" if field == "tx_irq_cpus" else field
    assert key not in p.applied and "is not" in p.skipped[key]


def test_unknowns_leave_the_transport_its_defaults():
    prof = {**PROFILE, "socket_buffer_bytes": 0, "link_bytes_per_s": None}
    p = plan_nic(prof, TransportConfig())
    assert "autotun" in p.skipped["socket_buffer_bytes"] or "kernel" in p.skipped["socket_buffer_bytes"]
    assert "unknown" in p.skipped["link_bytes_per_s"] and p.link_bytes_per_s is None


def test_a_loopback_peer_keeps_the_loopback_link_guess():
    p = plan_nic(PROFILE, TransportConfig(), loopback=True)
    assert "loopback" in p.skipped["link_bytes_per_s"] and p.link_bytes_per_s is None


def test_a_profile_buffer_too_small_for_the_measured_path_is_not_set():
    p = plan_nic(PROFILE, TransportConfig())  # 8 MiB buffers, 1.25 GB/s
    assert p.for_path(0.002, 1.25e9) is p  # 2 x BDP = 5 MB: the buffer holds it
    q = p.for_path(0.05, 1.25e9)  # 2 x BDP = 125 MB: an 8 MiB buffer would cap every window
    assert q.socket_buffer_bytes is None and "socket_buffer_bytes" not in q.applied
    assert q.skipped["socket_buffer_bytes"].startswith("the profile's 8388608 bytes are below 2 x the BDP")
    assert p.for_path(0.05, None) is p  # no link rate (loopback, unknown): nothing to judge by


# -- CPU affinity ---------------------------------------------------------------


def test_a_single_queue_nic_pins_nothing_and_says_why():
    p = plan_nic({**PROFILE, "nic": "eth0", "tx_queues": 1, "tx_irq_cpus": [0]}, TransportConfig())
    assert p.cpus is None and "cpu_affinity" not in p.applied
    assert p.skipped["cpu_affinity"].startswith("eth0 has a single tx queue")


@pytest.mark.parametrize(
    "tx_queues, irq_cpus, allowed, cpus, why",
    [
        (4, [2, 3], None, (2, 3), None),
        (4, [3, 2, 3], {0, 1, 2, 3}, (2, 3), None),
        (4, [1, 2, 3], {0, 1, 2}, (1, 2), None),  # only the CPUs this process may use
        (4, [2, 3], {0, 1}, None, "none of the CPUs this process may run on"),
        (4, [], None, None, "no tx-queue IRQ"),
        (4, None, None, None, "unknown to `dwcp tune`"),
        (None, [2], None, None, "tx queues is unknown"),
    ],
)
def test_the_affinity_decision(tx_queues, irq_cpus, allowed, cpus, why):
    p = plan_nic({**PROFILE, "tx_queues": tx_queues, "tx_irq_cpus": irq_cpus}, TransportConfig(),
                 allowed_cpus=allowed)  # fmt: skip
    assert p.cpus == cpus
    if why is None:
        assert p.applied["cpu_affinity"] == list(cpus) and "cpu_affinity" not in p.skipped
    else:
        assert why in p.skipped["cpu_affinity"] and "cpu_affinity" not in p.applied


def test_an_affinity_no_thread_got_moves_to_skipped():
    p = plan_nic(PROFILE, TransportConfig()).without_affinity("sched_setaffinity failed: EINVAL")
    assert p.cpus is None and "cpu_affinity" not in p.applied
    assert p.skipped["cpu_affinity"] == "sched_setaffinity failed: EINVAL" and p.applied["max_streams"] == 8


# -- dwcp tune: the tx IRQ CPUs ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, cpus",
    [("0", (0,)), ("0-3", (0, 1, 2, 3)), ("0-1,8,10-11\n", (0, 1, 8, 10, 11)), ("3,1,1", (1, 3)),
     ("", None), (None, None), ("a-b", None), ("3-1", None), ("-1", None)],
)  # fmt: skip
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "action, tx",
    [("eth0-TxRx-0", True), ("eth0-tx-1", True), ("virtio2-output.0", True), ("eth0", True), ("eth0-0", True),
     ("eth0-rx-0", False), ("virtio2-input.0", False), ("virtio2-config", False)],
)  # fmt: skip
def test_which_irqs_serve_a_tx_queue(action, tx):
    assert is_tx_irq(action) is tx


@pytest.mark.parametrize(
    "action, rx",
    [("eth0-TxRx-0", True), ("eth0-rx-1", True), ("virtio2-input.0", True), ("eth0", True), ("eth0-0", True),
     ("eth0-tx-0", False), ("virtio2-output.0", False), ("virtio2-config", False)],
)  # fmt: skip
def test_which_irqs_serve_an_rx_queue(action, rx):
    assert is_rx_irq(action) is rx


INTERRUPTS = """\
           CPU0       CPU1       CPU2       CPU3
 37:          0          0          0          0 PCI-MSIX   0-edge      virtio2-config
 38:          0       7824          0          0 PCI-MSIX   1-edge      virtio2-input.0
 39:       5529          0          0          0 PCI-MSIX   2-edge      virtio2-output.0
 40:          3          0          0          0 PCI-MSIX   0-edge      eth1-TxRx-0
 41:          3          0          0          0 PCI-MSIX   1-edge      eth1-TxRx-1
 42:          3          0          0          0 PCI-MSIX   2-edge      eth1-rx-2
 43:          3          0          0          0 PCI-MSIX   3-edge      eth10-TxRx-0
NMI:          0          0          0          0   Non-maskable interrupts
"""


def _tree(tmp_path, affinity: dict[int, dict[str, str]]):
    proc, net = tmp_path / "proc", tmp_path / "sys/class/net"
    proc.mkdir()
    (proc / "interrupts").write_text(INTERRUPTS)
    for irq, files in affinity.items():
        (proc / "irq" / str(irq)).mkdir(parents=True)
        for name, text in files.items():
            (proc / "irq" / str(irq) / name).write_text(text + "\n")
    for nic in ("eth0", "eth1"):
        (net / nic).mkdir(parents=True)
    (tmp_path / "sys/devices/virtio2").mkdir(parents=True)
    os.symlink(tmp_path / "sys/devices/virtio2", net / "eth0/device")
    return str(proc), str(net)


def test_tx_irq_cpus_from_a_fake_tree(tmp_path):
    proc, net = _tree(tmp_path, {
        38: {"smp_affinity_list": "1"},  # rx: not counted
        39: {"smp_affinity_list": "0-3", "effective_affinity_list": "2"},  # delivered on 2 of 0-3
        40: {"smp_affinity_list": "1"},  # an older kernel: no effective_affinity_list
        41: {"smp_affinity_list": "3", "effective_affinity_list": ""},
        42: {"smp_affinity_list": "0"},  # rx-only
        43: {"smp_affinity_list": "2"},  # eth10's
    })  # fmt: skip
    assert read_tx_irq_cpus("eth0", proc=proc, net=net) == (2,)  # virtio: virtio2-output.*
    assert read_tx_irq_cpus("eth1", proc=proc, net=net) == (1, 3)
    assert read_tx_irq_cpus("lo", proc=proc, net=net) == ()
    assert read_tx_irq_cpus("eth1", proc=str(tmp_path / "none"), net=net) is None
    # the receive side of the same tree: virtio's input queue, eth1's combined queues and its rx-only one
    assert read_rx_irq_cpus("eth0", proc=proc, net=net) == (1,)
    assert read_rx_irq_cpus("eth1", proc=proc, net=net) == (0, 1, 3)
    assert read_rx_irq_cpus("lo", proc=proc, net=net) == ()
    assert read_rx_irq_cpus("eth1", proc=str(tmp_path / "none"), net=net) is None


def test_receive_loops_go_to_the_ingress_nics_rx_irq_cpus():
    got = receive_cpus(
        "eth1", "the NIC holding 10.0.0.1", rx_queues=4, rx_irq_cpus=(1, 3), allowed={0, 1, 2, 3}
    )
    assert got == ((1, 3), "the rx-queue IRQ CPUs of eth1 (the NIC holding 10.0.0.1, 4 rx queues)")
    # only the CPUs this process may run on; none of them: not pinned, with the reason
    assert receive_cpus("eth1", "f", rx_queues=4, rx_irq_cpus=(1, 3), allowed={3})[0] == (3,)
    cpus, why = receive_cpus("eth1", "f", rx_queues=4, rx_irq_cpus=(1, 3), allowed={0})
    assert cpus is None and "not ones this process may use" in why
    # one queue: one IRQ serves every stream, wherever the loops run
    cpus, why = receive_cpus("eth0", "f", rx_queues=1, rx_irq_cpus=(1,), allowed=None)
    assert cpus is None and "1 rx queue" in why
    cpus, why = receive_cpus("eth1", "f", rx_queues=None, rx_irq_cpus=(1,), allowed=None)
    assert cpus is None and "unknown number" in why
    cpus, why = receive_cpus("eth1", "f", rx_queues=4, rx_irq_cpus=(), allowed=None)
    assert cpus is None and "no rx-queue IRQ of eth1" in why
    cpus, why = receive_cpus(None, "no NIC holds the listen address 10.9.9.9", rx_queues=4, rx_irq_cpus=(1,),
                             allowed=None)  # fmt: skip
    assert cpus is None and why == "not pinned: no NIC holds the listen address 10.9.9.9"


def test_a_loopback_daemon_pins_nothing_and_says_why():
    for host in ("127.0.0.1", "::1"):
        cpus, why = read_receive_cpus(host)
        assert cpus is None and "loopback" in why
    cpus, why = read_receive_cpus("not-an-address.invalid")
    assert cpus is None and "not-an-address.invalid" in why


def test_the_profile_carries_the_nics_tx_irq_cpus():
    nic = NicInfo("eth1", speed_mbit_s=10_000, tx_queues=4, tx_irq_cpus=(2, 3))
    d = stream_profile(nic, rtt_s=0.02, sysctls=Sysctls()).to_dict()
    assert d["tx_irq_cpus"] == [2, 3] and nic.to_dict()["tx_irq_cpus"] == [2, 3]
    assert stream_profile(NicInfo("veth0"), rtt_s=0.02, sysctls=Sysctls()).to_dict()["tx_irq_cpus"] is None
    # the plan of what `dwcp tune` wrote applies it
    assert plan_nic(d, TransportConfig()).applied["cpu_affinity"] == [2, 3]
