"""Socket options and TCP_INFO on real loopback sockets (127.0.0.1, port 0).

Everything here reads the effective value back from the kernel: the point
of these helpers is to report what is in force, not what was asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time

import pytest

from dwcp.errors import ConfigError
from dwcp.transport import sockopts
from dwcp.transport.sockopts import (
    MAX_BUF_BYTES,
    MIN_BUF_BYTES,
    available_congestion_controls,
    bind_source,
    kernel_limits,
    probe_zerocopy,
    tune_socket,
)
from dwcp.transport.tcpinfo import TCP_ESTABLISHED, TcpInfo, parse_tcp_info, read_tcp_info

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux socket options and /proc/sys"
)


@contextlib.contextmanager
def tcp_pair():
    """A connected loopback TCP pair (client, server side)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.create_connection(ls.getsockname(), timeout=5)
    s, _ = ls.accept()
    s.settimeout(5)
    try:
        yield c, s
    finally:
        for x in (c, s, ls):
            x.close()


def _default_cc() -> str | None:
    try:
        with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
            return f.read().strip()
    except OSError:
        return None


# -- /proc/sys facts ----------------------------------------------------------


def test_kernel_facts():
    lim = kernel_limits()
    assert set(lim) == {"rmem_max", "wmem_max", "tcp_rmem", "tcp_wmem"}
    assert lim["rmem_max"] > 0 and lim["wmem_max"] > 0
    for triple in (lim["tcp_rmem"], lim["tcp_wmem"]):
        assert len(triple) == 3 and 0 < triple[0] <= triple[1] <= triple[2]
    ccs = available_congestion_controls()
    assert ccs and all(isinstance(c, str) and c for c in ccs)
    json.dumps(lim)  # for --json


# -- tune_socket ----------------------------------------------------------------


def test_tune_socket_defaults_report_effective_values():
    with tcp_pair() as (c, _):
        applied = tune_socket(c, bdp_bytes=None)
        json.dumps(applied)
        assert applied["nodelay"] is True
        assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert applied["buffers"] == "autotuned" and applied["requested_buf_bytes"] is None
        assert applied["sndbuf_bytes"] == c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert applied["rcvbuf_bytes"] == c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        lowat = c.getsockopt(socket.IPPROTO_TCP, sockopts.TCP_NOTSENT_LOWAT)
        assert applied["notsent_lowat_bytes"] == lowat == sockopts.DEFAULT_NOTSENT_LOWAT_BYTES
        in_use = c.getsockopt(socket.IPPROTO_TCP, sockopts.TCP_CONGESTION, 16).rstrip(b"\0").decode()
        assert applied["congestion"] == in_use
        assert applied["congestion_requested"] == "bbr"
        if "bbr" in available_congestion_controls():
            assert in_use == "bbr"
        else:
            assert in_use == _default_cc()


def test_small_bdp_keeps_autotuning_when_its_ceiling_suffices():
    lim = kernel_limits()
    with tcp_pair() as (c, _):
        applied = tune_socket(c, bdp_bytes=1000)
        assert applied["requested_buf_bytes"] == MIN_BUF_BYTES  # 2 x BDP, clamped up to 256 KiB
        if lim["tcp_wmem"][2] >= MIN_BUF_BYTES and lim["tcp_rmem"][2] >= MIN_BUF_BYTES:
            assert applied["buffers"] == "autotuned"


def test_large_bdp_sets_buffers_within_the_kernel_caps():
    lim = kernel_limits()
    s = socket.socket()
    try:
        applied = tune_socket(s, bdp_bytes=1 << 30)
        assert applied["requested_buf_bytes"] == MAX_BUF_BYTES  # clamped down to 64 MiB
        if lim["tcp_wmem"][2] < MAX_BUF_BYTES:
            assert applied["buffers"] == "explicit"
            # Linux doubles the value set (bookkeeping overhead) after capping it at wmem_max
            assert applied["sndbuf_bytes"] == 2 * min(MAX_BUF_BYTES, lim["wmem_max"])
        if lim["tcp_rmem"][2] < MAX_BUF_BYTES:
            assert applied["rcvbuf_bytes"] == 2 * min(MAX_BUF_BYTES, lim["rmem_max"])
    finally:
        s.close()


def test_missing_congestion_control_falls_back_silently(monkeypatch):
    monkeypatch.setattr(sockopts, "available_congestion_controls", lambda: ["reno", "cubic"])
    with tcp_pair() as (c, _):
        applied = tune_socket(c, bdp_bytes=None, congestion="bbr")
        assert applied["congestion_requested"] == "bbr"
        assert applied["congestion"] == _default_cc()
    with tcp_pair() as (c, _):
        applied = tune_socket(c, bdp_bytes=None, congestion="no-such-cc")
        assert applied["congestion"] == _default_cc()


def test_everything_off():
    with tcp_pair() as (c, _):
        applied = tune_socket(c, bdp_bytes=None, congestion=None, notsent_lowat_bytes=None, nodelay=False)
        assert applied["nodelay"] is False
        assert applied["notsent_lowat_bytes"] is None
        assert applied["congestion"] == _default_cc()


def test_tune_socket_never_fails_on_a_non_tcp_socket():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        applied = tune_socket(u, bdp_bytes=10 << 20)
        assert applied["nodelay"] is False and applied["congestion"] is None
    finally:
        u.close()


# -- probe_zerocopy -------------------------------------------------------------


def test_probe_zerocopy():
    with tcp_pair() as (c, _):
        assert probe_zerocopy(c) is True  # Linux >= 4.14
        assert c.getsockopt(socket.SOL_SOCKET, sockopts.SO_ZEROCOPY) == 1
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert probe_zerocopy(a) is False
    closed = socket.socket()
    closed.close()
    assert probe_zerocopy(closed) is False


# -- bind_source ----------------------------------------------------------------


def test_bind_source_address_and_interface():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    s = socket.socket()
    try:
        bind_source(s, source_address="127.0.0.1", interface="lo" if os.geteuid() == 0 else None)
        s.connect(ls.getsockname())
        assert s.getsockname()[0] == "127.0.0.1"
        if os.geteuid() == 0:
            assert s.getsockopt(socket.SOL_SOCKET, sockopts.SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"
        ls.accept()[0].close()
    finally:
        s.close()
        ls.close()


def test_bind_source_nothing_is_a_no_op():
    s = socket.socket()
    with s:
        bind_source(s, source_address=None, interface=None)
        assert s.getsockname() == ("0.0.0.0", 0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"source_address": "192.0.2.1"}, "not an address of this host"),  # TEST-NET-1
        ({"source_address": "not-an-ip"}, "not an IP address"),
        ({"source_address": "::1"}, "IPv6"),  # on an IPv4 socket
        ({"interface": "dwcp-nope0"}, "interface"),
        ({"interface": "x" * 16}, "not a valid network interface name"),
    ],
)
def test_bind_source_errors_are_config_errors(kw, match):
    s = socket.socket()
    with s, pytest.raises(ConfigError, match=match):
        bind_source(s, **kw)


# -- TCP_INFO -------------------------------------------------------------------


def test_tcp_info_on_a_loopback_connection():
    sent = 2_000_000
    with tcp_pair() as (c, s):
        got = []

        def reader():  # read exactly ``sent`` bytes on the server side
            n = 0
            while n < sent:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                n += len(chunk)
            got.append(n)

        t = threading.Thread(target=reader)
        t.start()
        c.sendall(b"\xa5" * sent)
        t.join(10)
        assert got == [sent]
        deadline = time.monotonic() + 2
        info = read_tcp_info(c)
        while info is not None and info.bytes_acked is not None and info.bytes_acked < sent:
            assert time.monotonic() < deadline, info
            time.sleep(0.01)
            info = read_tcp_info(c)
        assert isinstance(info, TcpInfo)
        assert info.state == TCP_ESTABLISHED and info.established
        assert info.rtt_us > 0 and info.min_rtt_us is not None and info.min_rtt_us > 0
        assert info.bytes_acked >= sent
        assert info.snd_cwnd > 0 and info.total_retrans >= 0 and info.retransmits == 0
        assert info.delivery_rate_bytes_per_s is not None and info.delivery_rate_bytes_per_s > 0
        assert info.busy_time_us is not None and info.delivered is not None and info.delivered > 0
        rinfo = read_tcp_info(s)
        assert rinfo is not None and rinfo.bytes_received >= sent
        json.dumps(info.as_dict())


def test_tcp_info_is_none_for_non_tcp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a, b = socket.socketpair(socket.AF_UNIX)
    with u, a, b:
        assert read_tcp_info(u) is None
        assert read_tcp_info(a) is None
    assert read_tcp_info(object()) is None  # type: ignore[arg-type]


def _fake_tcp_info(length: int) -> bytes:
    """A struct tcp_info image with recognisable values, cut to ``length`` bytes."""
    raw = bytearray(256)
    raw[0] = TCP_ESTABLISHED
    raw[2] = 3  # retransmits
    for _field, fmt, off, value in [
        ("lost", "I", 32, 7),
        ("rtt", "I", 68, 50_000),
        ("rttvar", "I", 72, 2_500),
        ("snd_cwnd", "I", 80, 42),
        ("total_retrans", "I", 100, 9),
        ("pacing_rate", "Q", 104, 125_000_000),
        ("bytes_acked", "Q", 120, 10**10),
        ("bytes_received", "Q", 128, 12345),
        ("min_rtt", "I", 148, 49_000),
        ("delivery_rate", "Q", 160, 118_000_000),
        ("busy_time", "Q", 168, 5_000_000),
        ("delivered", "I", 192, 777_777),
        ("bytes_sent", "Q", 200, 10**10 + 5000),
        ("bytes_retrans", "Q", 208, 4242),
    ]:
        struct.pack_into("=" + fmt, raw, off, value)
    return bytes(raw[:length])


def test_parse_full_tcp_info():
    info = parse_tcp_info(_fake_tcp_info(256))
    assert info == TcpInfo(
        state=1, retransmits=3, rtt_us=50_000, rttvar_us=2_500, snd_cwnd=42, total_retrans=9, lost=7,
        pacing_rate_bytes_per_s=125_000_000, bytes_acked=10**10, bytes_received=12345, min_rtt_us=49_000,
        delivery_rate_bytes_per_s=118_000_000, busy_time_us=5_000_000, delivered=777_777, bytes_sent=10**10 + 5000,
        bytes_retrans=4242,
    )  # fmt: skip


@pytest.mark.parametrize(
    "length,last_present,first_missing",
    [
        (104, "total_retrans", "pacing_rate_bytes_per_s"),  # Linux 2.6 .. 3.14
        (120, "pacing_rate_bytes_per_s", "bytes_acked"),  # 3.15 (pacing, max pacing)
        (144, "bytes_received", "min_rtt_us"),  # 4.1 .. 4.5
        (160, "min_rtt_us", "delivery_rate_bytes_per_s"),  # 4.6 .. 4.8
        (168, "delivery_rate_bytes_per_s", "busy_time_us"),  # 4.9
        (192, "busy_time_us", "delivered"),  # 4.10 .. 4.17
        (200, "delivered", "bytes_sent"),  # 4.18
    ],
)
def test_older_kernels_shorter_structs_leave_fields_none(length, last_present, first_missing):
    info = parse_tcp_info(_fake_tcp_info(length))
    assert info is not None and info.rtt_us == 50_000 and info.total_retrans == 9
    d = info.as_dict()
    names = list(d)
    assert d[last_present] is not None
    assert all(d[k] is None for k in names[names.index(first_missing) :])


def test_too_short_to_be_tcp_info():
    assert parse_tcp_info(_fake_tcp_info(103)) is None
    assert parse_tcp_info(b"") is None


def test_unset_pacing_rate_reads_as_none():
    raw = bytearray(_fake_tcp_info(256))
    struct.pack_into("=Q", raw, 104, 2**64 - 1)
    info = parse_tcp_info(bytes(raw))
    assert info is not None and info.pacing_rate_bytes_per_s is None
