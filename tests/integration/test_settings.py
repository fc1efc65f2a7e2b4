"""Every [codec] setting and the transport's socket/encode settings do what systemd/dwcp.toml.example says,
on real loopback transfers, and a reload into a running daemon changes what its next send does."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from dwcp._testbase.transfer import server_config
from dwcp._testbase.transfer import tx_config as _tx_config
from dwcp.config import CodecSettings, SecurityConfig, TransportConfig
from dwcp.storage import ObjectStore
from dwcp.transport.fetch import fetch
from dwcp.transport.sender import Sender
from dwcp.transport.server import DataServer
from dwcp.transport.session import TransferReport

PLAIN = SecurityConfig(plaintext=True)
CHUNK = 1 << 20


def tx_config(**kw):
    return _tx_config(**{"adaptive_chunks": False, **kw})


def text_like(n: int, seed: int) -> np.ndarray:
    """Compressible, not trivially: words drawn from a small random vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = [bytes(rng.integers(97, 123, int(k), dtype=np.uint8)) + b" " for k in rng.integers(2, 10, 500)]
    out = b"".join(vocab[i] for i in rng.integers(0, len(vocab), n // 3))
    return np.frombuffer(out[:n].ljust(n, b"."), dtype=np.uint8).copy()


def version(i: int, n: int = 2 * CHUNK) -> np.ndarray:
    """Version ``i`` of one object: a few bytes differ from version ``i - 1``."""
    v = text_like(n, seed=1)
    v[(np.arange(8) * 65537 + i * 4099) % n] = i & 0xFF
    return v


def modes(sender: Sender, server: DataServer, key: str, versions, **kw) -> list[str]:
    return [sender.send(v, *server.address, key, streams=1, **kw).mode for v in versions]


# -- codec.delta -----------------------------------------------------------------


def test_delta_false_sends_every_version_full_not_even_pages(server, tmp_path):
    on = Sender(tx_config(), PLAIN, baselines=ObjectStore(tmp_path / "on"))
    assert modes(on, server, "k/on", [version(0), version(1)]) == ["full", "delta"]
    off = Sender(
        tx_config(), PLAIN, baselines=ObjectStore(tmp_path / "off"), codec=CodecSettings(delta=False)
    )
    r = [off.send(version(i), *server.address, "k/on", streams=1) for i in (2, 3)]
    # the receiver holds the key (it would choose "pages" for a sender offering no baseline): full all the same
    assert [x.mode for x in r] == ["full", "full"]
    assert r[1].refresh == "codec.delta = false" and r[1].wire_bytes > 10_000
    # a sender without a baselines store (a relay hop) honours it too
    bare = Sender(tx_config(), PLAIN, codec=CodecSettings(delta=False))
    assert bare.send(version(4), *server.address, "k/on", streams=1).mode == "full"
    assert Sender(tx_config(), PLAIN).send(version(5), *server.address, "k/on", streams=1).mode == "pages"


# -- codec.max_delta_chain / codec.baseline_refresh_s ----------------------------------


def test_max_delta_chain_sends_a_full_refresh_after_that_many_deltas_across_a_restart(server, tmp_path):
    store = tmp_path / "sent"
    codec = CodecSettings(max_delta_chain=10)
    first = Sender(tx_config(), PLAIN, baselines=ObjectStore(store), codec=codec)
    got = [first.send(version(i), *server.address, "k/chain", streams=1) for i in range(6)]
    again = Sender(tx_config(), PLAIN, baselines=ObjectStore(store), codec=codec)  # the record is on disk
    got += [again.send(version(i), *server.address, "k/chain", streams=1) for i in range(6, 12)]
    assert [r.mode for r in got] == ["full"] + ["delta"] * 10 + ["full"]
    assert [r.delta_chain for r in got] == list(range(11)) + [0]
    assert got[11].refresh.startswith("codec.max_delta_chain = 10: 10 non-full sends")
    assert all(r.refresh is None for r in got[1:11])
    assert ObjectStore(store).read_meta(f"{server.address[0]}:{server.address[1]}/k/chain")["deltas"] == 0


def test_max_delta_chain_zero_sends_every_version_full(server, tmp_path):
    s = Sender(
        tx_config(), PLAIN, baselines=ObjectStore(tmp_path / "sent"), codec=CodecSettings(max_delta_chain=0)
    )
    assert modes(s, server, "k/zero", [version(i) for i in range(3)]) == ["full"] * 3


def test_baseline_refresh_s_counts_from_the_last_full_send_on_the_clock_given(server, tmp_path):
    now = [1000.0]
    s = Sender(tx_config(), PLAIN, baselines=ObjectStore(tmp_path / "sent"),
               codec=CodecSettings(baseline_refresh_s=300.0), clock=lambda: now[0])  # fmt: skip
    got = []
    for i, t in enumerate((1000.0, 1100.0, 1299.0, 1300.0, 1301.0, 1599.0, 1600.5)):
        now[0] = t
        got.append(s.send(version(i), *server.address, "k/age", streams=1))
    assert [r.mode for r in got] == ["full", "delta", "delta", "full", "delta", "delta", "full"]
    assert "codec.baseline_refresh_s = 300: the last full send began 300 s ago" == got[3].refresh
    now[0] = 900.0  # the clock went back: the age is unknown, so the next send is full
    assert s.send(version(7), *server.address, "k/age", streams=1).mode == "full"


# -- codec.zstd_level, zstd_level_min, zstd_level_max -----------------------------------


def zstd_send(server, key: str, codec: CodecSettings, **tp) -> TransferReport:
    s = Sender(tx_config(**tp), PLAIN, codec=codec)
    return s.send(text_like(4 * CHUNK, seed=7), *server.address, key, streams=2)


def test_zstd_level_fixes_the_level_of_every_compressed_chunk(server):
    fast = zstd_send(server, "z/1", CodecSettings(zstd_level=1))
    slow = zstd_send(server, "z/19", CodecSettings(zstd_level=19))
    assert fast.codec.zstd_levels_used == {1: 4} and fast.codec.zstd_level == 1
    assert slow.codec.zstd_levels_used == {19: 4}
    assert slow.wire_bytes < fast.wire_bytes * 0.95  # the level is really used


def test_adaptive_level_stays_within_zstd_level_min_and_max(server):
    # a slow link (1 MB/s) makes compression pay, so the adaptive controller compresses every chunk
    pinned = zstd_send(server, "z/6", CodecSettings(zstd_level_min=6, zstd_level_max=6), link_bytes_per_s=1e6)
    assert pinned.codec.zstd_level == "adaptive" and pinned.codec.zstd_levels_used == {6: 4}
    low = zstd_send(
        server, "z/low", CodecSettings(zstd_level_min=-7, zstd_level_max=-1), link_bytes_per_s=1e6
    )
    assert low.codec.zstd_levels_used and set(low.codec.zstd_levels_used) <= {-7, -3, -1}
    assert low.wire_bytes > pinned.wire_bytes  # the fast levels compress less


def test_the_data_servers_fetch_encoder_uses_the_codec_level(tmp_path):
    data = text_like(4 * CHUNK, seed=8)
    wire = {}
    for level in (1, 19):
        with DataServer(
            server_config(tmp_path / f"rx{level}", sections={"codec": {"zstd_level": level}})
        ) as srv:
            Sender(tx_config(), PLAIN).send(data, *srv.address, "f/x", streams=1)
            r = fetch("f/x", *srv.address, str(tmp_path / f"out{level}"), tx_config(), PLAIN)
            assert r["verified"] and srv.encoder.levels.used == {level: 4}
            wire[level] = r["wire_bytes"]
    assert wire[19] < wire[1] * 0.95


# -- transport.compress_workers ----------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_compress_workers_bounds_the_chunks_encoded_at_once(server, workers):
    s = Sender(tx_config(compress_workers=workers), PLAIN, codec=CodecSettings(zstd_level=3))
    r = s.send(text_like(12 * CHUNK, seed=9), *server.address, f"w/{workers}", streams=4)
    assert r.codec.compress_workers == workers
    assert 1 <= r.codec.encodes_at_once_max <= workers
    assert TransportConfig(compress_workers=0).encode_workers == os.cpu_count()


# -- transport.socket_buffer_bytes ----------------------------------------------------------


def _accepted_socket_of(client: socket.socket) -> socket.socket | None:
    """The server's end of ``client``'s connection, found among this process's descriptors (a dup)."""
    me = client.getsockname()
    for fd in os.listdir("/proc/self/fd"):
        try:
            dup = os.dup(int(fd))
        except OSError:
            continue
        try:
            s = socket.socket(fileno=dup)
        except OSError:  # not a socket: the dup is ours to close
            os.close(dup)
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername() == me:
                return s
        except OSError:
            pass
        s.close()
    return None


def _server_buffers(srv: DataServer, settled: tuple[int, int] | None = None) -> tuple[int, int]:
    """SO_SNDBUF, SO_RCVBUF of the server's end of a fresh connection, once accepted (and ``settled``: its
    thread sets them just after accept; give it 5 s)."""
    with socket.create_connection(srv.address, timeout=5) as c:
        deadline = time.monotonic() + 5
        while True:
            s = _accepted_socket_of(c)
            if s is not None:
                with s:
                    got = (
                        s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                        s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    )
                if settled is None or got == settled:
                    return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the server's socket: {got if s is not None else 'not accepted'} after 5 s"
                )
            time.sleep(0.01)


def test_socket_buffer_bytes_sets_both_buffers_on_sent_and_accepted_streams(tmp_path):
    n = 96 * 1024  # below net.core.[rw]mem_max; Linux reports twice what it keeps
    r = Sender(tx_config(socket_buffer_bytes=n), PLAIN)
    with DataServer(server_config(tmp_path / "rx", socket_buffer_bytes=n)) as srv:
        got = r.send(version(0), *srv.address, "b/x", streams=1).socket
        assert (got["sndbuf_bytes"], got["rcvbuf_bytes"], got["buffers"]) == (2 * n, 2 * n, "explicit")
        assert _server_buffers(srv, settled=(2 * n, 2 * n)) == (2 * n, 2 * n)
    with DataServer(server_config(tmp_path / "rx0")) as srv:
        got = Sender(tx_config(), PLAIN).send(version(0), *srv.address, "b/x", streams=1).socket
        assert got["buffers"] == "autotuned" and got["rcvbuf_bytes"] != 2 * n
        assert _server_buffers(srv) != (2 * n, 2 * n)


# -- transport.zerocopy -------------------------------------------------------------------------


def test_zerocopy_false_skips_the_probe_and_the_report_says_why(server):
    off = Sender(tx_config(zerocopy=False), PLAIN).send(version(0), *server.address, "zc/x", streams=1).socket
    assert off["zerocopy_available"] is None and off["zerocopy_used"] is False
    assert off["zerocopy_reason"] == "transport.zerocopy = false: not probed"
    on = Sender(tx_config(), PLAIN).send(version(0), *server.address, "zc/x", streams=1).socket
    assert on["zerocopy_available"] is True and on["zerocopy_used"] is False  # Linux >= 4.14
    assert "loopback" in on["zerocopy_reason"]  # the kernel copies there anyway: sender rule 8
    forced = Sender(tx_config(), PLAIN, zerocopy_loopback=True)
    zc = forced.send(version(0), *server.address, "zc/x", streams=1).socket
    assert zc["zerocopy_used"] is True and zc["zerocopy_sends"] >= 1
    assert zc["zerocopy_copied"] == zc["zerocopy_completions"] == zc["zerocopy_calls"]
    assert "the kernel copied all of them (loopback always copies)" in zc["zerocopy_reason"]


# -- reload -----------------------------------------------------------------------------------


def test_a_reload_gives_the_running_daemons_sends_and_fetches_the_new_codec_settings(server, tmp_path):
    from dwcp.config import load_toml
    from dwcp.daemon.main import Daemon

    path = tmp_path / "dwcp.toml"
    base = (f'[node]\nid = "tx"\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = -1\n'
            f'[security]\nplaintext = true\n[storage]\ndata_dir = "{tmp_path / "tx"}"\n'
            '[transport]\nchunk_size_bytes = 1048576\nadaptive_chunks = false\n')  # fmt: skip
    path.write_text(base + "[codec]\nzstd_level = 1\n")
    d = Daemon(load_toml(str(path)), config_path=str(path))
    d.server.start()
    try:
        src = tmp_path / "obj"
        to = "{}:{}".format(*server.address)

        def send(i: int) -> dict:
            version(i).tofile(src)
            return d.handle({"op": "send", "to": to, "path": str(src), "key": "r/x", "streams": 1})

        assert [send(0)["mode"], send(1)["mode"]] == ["full", "delta"]
        path.write_text(base.replace("adaptive_chunks = false\n", "adaptive_chunks = false\nsocket_buffer_bytes = "
                                     "98304\ncompress_workers = 1\nzerocopy = false\n")
                        + "[codec]\nzstd_level = 19\ndelta = false\n")  # fmt: skip
        r = d.reload()
        assert r["ok"] and r["needs_restart"] == []
        assert sorted(r["applied"]) == [
            "codec.delta: true -> false", "codec.zstd_level: 1 -> 19", "transport.compress_workers: 0 -> 1",
            "transport.socket_buffer_bytes: 0 -> 98304", "transport.zerocopy: true -> false"]  # fmt: skip
        third = send(2)
        assert third["mode"] == "full" and third["refresh"] == "codec.delta = false"
        assert set(third["codec"]["zstd_levels_used"]) == {19} and third["codec"]["compress_workers"] == 1
        assert third["socket"]["rcvbuf_bytes"] == 2 * 98304 and third["socket"]["zerocopy_available"] is None
        assert d.server.encoder.levels.fixed_level == 19 and d.server.encoder.config.compress_workers == 1
    finally:
        d.server.close()


def test_encoder_runs_at_most_compress_workers_encodes_at_once():
    from dwcp.codec import ChunkEncoder, CodecConfig

    chunk = text_like(CHUNK, seed=3)
    for workers in (1, 3):
        enc = ChunkEncoder(CodecConfig(zstd_level=3, compress_workers=workers))
        go = threading.Barrier(6)

        def work(e=enc, b=go) -> None:
            b.wait()
            for _ in range(4):
                e.encode(chunk)

        ts = [threading.Thread(target=work) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert enc.busy == 0 and 1 <= enc.peak_concurrent <= workers
