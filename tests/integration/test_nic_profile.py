"""A `dwcp tune` profile of the loopback route's NIC, applied by real sends on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from dwcp.cli.demo import same_dwcp_env
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.transport.dialer import Dialer
from dwcp.transport.sender import Sender
from dwcp.transport.sockopts import kernel_limits
from dwcp.tune import egress_nic
from dwcp.tune.store import apply_profiles

PLAIN = SecurityConfig(plaintext=True)
MiB = 1 << 20


@pytest.fixture(scope="module")
def lo_nic() -> str:
    nic = egress_nic("127.0.0.1")
    if nic is None:
        pytest.skip("no netlink: the loopback route's NIC cannot be found out")
    return nic  # "lo" on Linux


def _buffer_bytes() -> int:
    """A buffer size the kernel keeps as set (below net.core.[rw]mem_max) and not autotuning's."""
    lim = kernel_limits()
    cap = min(lim["rmem_max"] or 212992, lim["wmem_max"] or 212992)
    if cap < 300_000:
        pytest.skip(f"net.core.[rw]mem_max {cap} leaves no room for an explicit buffer above 256 KiB")
    return min(MiB, cap)


def _profile(nic: str, **kw) -> dict:
    """A profile as `dwcp tune --apply` writes it (a link of unknown speed: lo), ``kw`` overriding."""
    return {"nic": nic, "speed_mbit_s": None, "mtu": 65536, "tx_queues": 1, "rtt_s": 0.001,
            "link_bytes_per_s": None, "bdp_bytes": None, "per_stream_window_bytes": 2 * MiB, "min_streams": 1,
            "initial_streams": 2, "max_streams": 3, "socket_buffer_bytes": _buffer_bytes(),
            "chunk_size_bytes": 2 * MiB, "why": "test", "warnings": [], "tx_irq_cpus": [], **kw}  # fmt: skip


class _Watch:
    """Wrap ``Dialer.dial``: each stream's SO_SNDBUF/SO_RCVBUF read back with getsockopt, and the
    CPUs its thread may run on, as the stream connects."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[tuple[str, int, int, set[int]]] = []
        real = Dialer.dial

        def dial(dialer, host, port, **kw):
            fs, applied = real(dialer, host, port, **kw)
            s = fs.sock
            self.seen.append((threading.current_thread().name, s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                              s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                              os.sched_getaffinity(threading.get_native_id())))  # fmt: skip
            return fs, applied

        monkeypatch.setattr(Dialer, "dial", dial)

    def streams(self):
        return [s for s in self.seen if s[0].startswith("dwcp-stream-")]


def _tp(**kw) -> TransportConfig:
    # max_streams, chunk_size_bytes, socket_buffer_bytes and initial_streams left at their defaults
    return TransportConfig(stall_timeout_s=5.0, connect_timeout_s=5.0, **kw)


def test_an_auto_send_applies_the_profile_of_its_egress_nic(server, tmp_path, lo_nic, monkeypatch):
    buf = _buffer_bytes()
    apply_profiles(str(tmp_path / "tune"), [_profile(lo_nic)], rtt_s=0.001)
    watch = _Watch(monkeypatch)
    data = os.urandom(24 * MiB)
    r = Sender(_tp(), PLAIN, tune_dir=str(tmp_path / "tune")).send(data, *server.address, "nic/auto")
    assert r.nic == {
        "nic": lo_nic,
        "applied": {"max_streams": 3, "socket_buffer_bytes": buf, "chunk_size_bytes": 2 * MiB},
        "skipped": {"link_bytes_per_s": "the peer is on loopback: its link is taken as 800 Gbit/s",
                    # loopback's guessed link rate at the measured RTT decides the first count
                    "initial_streams": "from the link rate at the control stream's measured RTT (the profile's "
                                       "count assumed an RTT of 0.001 s)",
                    "cpu_affinity": f"{lo_nic} has a single tx queue: its one IRQ serves every stream wherever the "
                                    "threads run, so nothing is pinned"},
    }  # fmt: skip
    assert r.to_json()["nic"] == r.nic
    assert r.chunk_size == 2 * MiB and "profile of " + lo_nic in r.chunk_size_reason
    # max streams caps the controller
    s = r.streams
    assert s.auto and 1 <= s.initial <= 3 and s.max <= 3 and all(d["streams"] <= 3 for d in s.decisions)
    # every stream's socket has the buffers (Linux reports twice what was set), the control stream's too
    assert watch.streams() and len(watch.seen) == len(watch.streams()) + 1
    assert all((snd, rcv) == (2 * buf, 2 * buf) for _, snd, rcv, _ in watch.seen)
    assert (r.socket["sndbuf_bytes"], r.socket["rcvbuf_bytes"], r.socket["buffers"]) == (
        2 * buf,
        2 * buf,
        "explicit",
    )
    # a single-queue NIC: no thread pinned
    assert all(cpus == os.sched_getaffinity(0) for *_, cpus in watch.streams())


def test_explicit_settings_win_over_the_profile(server, tmp_path, lo_nic, monkeypatch):
    apply_profiles(str(tmp_path / "tune"), [_profile(lo_nic)], rtt_s=0.001)
    watch = _Watch(monkeypatch)
    tp = _tp(max_streams=5, socket_buffer_bytes=512 * 1024)
    r = Sender(tp, PLAIN, tune_dir=str(tmp_path / "tune")).send(os.urandom(4 * MiB), *server.address, "nic/cfg",
                                                                 streams=1)  # fmt: skip
    assert r.nic is not None
    assert r.nic["applied"] == {"chunk_size_bytes": 2 * MiB}
    assert r.nic["skipped"]["max_streams"] == "fixed at 1 streams by the caller (--streams 1)"
    assert (
        r.nic["skipped"]["socket_buffer_bytes"] == "transport.socket_buffer_bytes = 524288 in the config wins"
    )
    assert all((snd, rcv) == (2 * 512 * 1024,) * 2 for _, snd, rcv, _ in watch.seen)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_multi_queue_nic_pins_the_stream_threads_to_its_tx_irq_cpus(server, tmp_path, lo_nic, monkeypatch):
    cpu = min(os.sched_getaffinity(0))
    # lo has one queue; the profile claims two, with their IRQs on this process's first CPU
    apply_profiles(str(tmp_path / "tune"), [_profile(lo_nic, tx_queues=2, tx_irq_cpus=[cpu])], rtt_s=0.001)
    watch = _Watch(monkeypatch)
    r = Sender(_tp(), PLAIN, tune_dir=str(tmp_path / "tune")).send(
        os.urandom(8 * MiB), *server.address, "nic/pin"
    )
    assert (
        r.nic is not None
        and r.nic["applied"]["cpu_affinity"] == [cpu]
        and "cpu_affinity" not in r.nic["skipped"]
    )
    assert watch.streams() and all(cpus == {cpu} for *_, cpus in watch.streams())
    # the calling thread (and the control stream, dialed from it) is left alone
    assert os.sched_getaffinity(0) != {cpu} or len(os.sched_getaffinity(0)) == 1


def test_without_a_link_rate_the_profiles_first_count_applies(server, tmp_path, lo_nic, monkeypatch):
    # what decides the first count on loopback is its guessed link rate: take it away (the sender's
    # loopback test) and the profile's count is all there is
    import dwcp.transport.sender as sender_mod

    monkeypatch.setattr(sender_mod, "_is_loopback", lambda host: False)
    apply_profiles(str(tmp_path / "tune"), [_profile(lo_nic)], rtt_s=0.001)
    r = Sender(_tp(), PLAIN, tune_dir=str(tmp_path / "tune")).send(
        os.urandom(8 * MiB), *server.address, "nic/n0"
    )
    assert r.nic is not None and r.nic["applied"]["initial_streams"] == 2 and r.streams.initial == 2
    assert "from the profile of " + lo_nic in r.streams.decisions[0]["reason"]


def test_no_profile_no_nic_object(server, tmp_path, lo_nic):
    apply_profiles(str(tmp_path / "tune"), [_profile("not-" + lo_nic)], rtt_s=0.001)
    r = Sender(_tp(), PLAIN, tune_dir=str(tmp_path / "tune")).send(
        os.urandom(MiB), *server.address, "nic/none"
    )
    assert r.nic is None and r.to_json()["nic"] is None


def test_dwcp_send_json_reports_the_nic_object(server, tmp_path, lo_nic):
    data_dir = tmp_path / "node"
    (tmp_path / "dwcp.toml").write_text(f'[security]\nplaintext = true\n[storage]\ndata_dir = "{data_dir}"\n')
    apply_profiles(str(data_dir), [_profile(lo_nic)], rtt_s=0.001)
    (tmp_path / "obj").write_bytes(os.urandom(6 * MiB))
    to = "{}:{}".format(*server.address)
    argv = ["send", str(tmp_path / "obj"), "--to", to, "--key", "nic/cli", "--config", str(tmp_path / "dwcp.toml"),
            "--json"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "dwcp", *argv], capture_output=True, text=True, cwd=tmp_path,
                       env=same_dwcp_env(), timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["nic"]["nic"] == lo_nic and out["nic"]["applied"]["max_streams"] == 3
    assert out["streams"]["max"] <= 3 and out["chunk_size"] == 2 * MiB
