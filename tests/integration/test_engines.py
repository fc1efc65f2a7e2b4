"""Every engine ([transport] engine: uring, epoll, threads) end to end on 127.0.0.1, on both sides: a
real DataServer and Sender, plaintext and sealed records; the bytes land, the pumps carried them (or,
for threads, there are none), and a corrupted chunk, a killed stream and a stream stalled mid-chunk
cost what they cost on the threaded engine.  On DWCP_IMPL=ref the pumps are the pure-Python twins."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import dwcp
from dwcp._backend import impl as K
from dwcp._testbase.fuzzer import FaultProxy
from dwcp._testbase.transfer import server_config, stored, tx_config
from dwcp.config import SecurityConfig
from dwcp.errors import ConfigError
from dwcp.security import aead
from dwcp.transport.engine import start_engine
from dwcp.transport.sender import Sender
from dwcp.transport.server import DataServer

PLAIN = SecurityConfig(plaintext=True)
MiB = 1 << 20


def _uring_runs() -> bool:
    return dwcp.backend == "ref" or bool(K.uring_available())


ENGINES = [
    pytest.param("uring", marks=pytest.mark.skipif(not _uring_runs(), reason="io_uring does not run here")),
    "epoll",
    "threads",
]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


def _server(tmp_path, engine, **kw) -> DataServer:
    srv = DataServer(server_config(tmp_path / "rx", engine=engine, engine_slots=4, **kw))
    srv.start()
    return srv


def _data(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_a_full_send_lands_through_the_engine(tmp_path, engine):
    srv = _server(tmp_path, engine)
    try:
        data = _data(1, 9 * MiB + 70000)  # more streams than slots; a short last chunk (still >= 64 KiB)
        r = Sender(tx_config(engine=engine, max_streams=3), PLAIN).send(
            data, *srv.address, "eng/full", streams=6
        )
        assert stored(srv, "eng/full") == data.tobytes()
        info, sent = srv.engine.info(), r.socket["engine"]
        assert info["kind"] == engine and sent["kind"] == engine
        if engine == "threads":
            assert srv.engine.pumps == [] and "slots" not in info and "bytes" not in sent
        else:  # every RAW payload went through the pumps: the receiver's slots, the sender's loop
            assert info["bytes"] >= data.nbytes and info["jobs"] >= 10 and info["slots"] == 4
            assert sent["bytes"] >= data.nbytes
    finally:
        srv.close()
    assert all(p.closed for p in srv.engine.pumps)


@pytest.mark.skipif(not aead.available()[0], reason=f"no AES-GCM here: {aead.available()[1]}")
def test_sealed_records_through_the_engine(tmp_path, engine, pki):
    node = pki["rx"]
    srv = _server(tmp_path, engine, plaintext=False, certs=node)
    try:
        data = _data(2, 6 * MiB + 7)
        tx = pki["tx"]
        sec = SecurityConfig(ca_cert=tx.ca_cert, cert=tx.cert, key=tx.key)
        r = Sender(tx_config(engine=engine), sec).send(data, *srv.address, "eng/sealed", streams=3)
        assert r.socket["records"] == "sealed"
        assert stored(srv, "eng/sealed") == data.tobytes()
        if engine != "threads":  # sealed in the sender's slots, opened in the receiver's
            assert srv.engine.info()["bytes"] >= data.nbytes and r.socket["engine"]["bytes"] >= data.nbytes
    finally:
        srv.close()


def test_a_corrupted_chunk_is_resent(tmp_path, engine):
    srv = _server(tmp_path, engine)
    try:
        data = _data(3, 4 * MiB)
        with FaultProxy(srv.address) as proxy:
            proxy.corrupt_after(64 + 100 + MiB // 2, conn=2)
            r = Sender(tx_config(engine=engine), PLAIN).send(data, *proxy.address, "eng/corrupt", streams=1)
            assert proxy.faults_fired == 1
        assert r.chunks_resent >= 1 and srv.stats["chunks_nacked_total"] >= 1
        assert stored(srv, "eng/corrupt") == data.tobytes()
    finally:
        srv.close()


def test_a_killed_stream_costs_its_window(tmp_path, engine):
    srv = _server(tmp_path, engine)
    try:
        # 16 chunks: whichever data stream connected first (the proxy's connection 2) carries 2 MiB or more
        data = _data(4, 16 * MiB)
        with FaultProxy(srv.address) as proxy:
            proxy.cut_after(2 * MiB, conn=2)
            r = Sender(tx_config(window_chunks=2, engine=engine), PLAIN).send(
                data, *proxy.address, "eng/cut", streams=2
            )
            assert proxy.faults_fired == 1
        assert r.stream_errors and r.chunks_sent <= r.chunks + 2 * 2
        assert stored(srv, "eng/cut") == data.tobytes()
    finally:
        srv.close()


def test_a_stream_stalled_mid_chunk_lets_go_after_the_stall_timeout(tmp_path, engine):
    # the pump's wait is bounded by the stream's stall timeout: the claim is released and the chunk is
    # taken by another stream long before the idle timeout
    srv = _server(tmp_path, engine, stall_timeout_s=1.5, idle_timeout_s=60.0)
    try:
        data = _data(5, 4 * MiB)
        with FaultProxy(srv.address) as proxy:
            proxy.blackhole_after(100_000, conn=2)
            t0 = time.monotonic()
            r = Sender(tx_config(stall_timeout_s=1.5, engine=engine), PLAIN).send(
                data, *proxy.address, "eng/stall", streams=2
            )
            took = time.monotonic() - t0
        assert took < 20, took
        assert stored(srv, "eng/stall") == data.tobytes() and r.stream_errors
    finally:
        srv.close()


def test_the_engine_setting_is_checked_and_reported():
    with pytest.raises(ConfigError, match="engine 'fast'"):
        server_config("/tmp/x", engine="fast")
    with pytest.raises(ConfigError, match="engine_slots 0"):
        server_config("/tmp/x", engine_slots=0)
    e = start_engine("auto", 2)
    try:
        want = "uring" if dwcp.backend == "fast" and K.uring_available() else "epoll"
        assert e.kind == want and e.reason.startswith("auto" if want == "uring" else "io_uring unavailable")
        assert e.info()["slots"] == 2
    finally:
        e.close()


def test_a_daemon_and_the_cli_say_which_engine_moved_the_bytes(tmp_path):
    """As a user sees it: `[transport] engine` in the daemon's config, `dwcp status` and `dwcp send --json`
    name the engine and why; changing it on a reload needs a restart (and says so)."""
    import json
    import os
    import subprocess
    import sys

    from dwcp.cli.demo import same_dwcp_env, start_daemon
    from dwcp.daemon.control import request

    proc, cfg, sock, port = start_daemon(str(tmp_path), "rx", None, extra='\n[transport]\nengine = "epoll"\n')
    try:
        st = request(sock, {"op": "status"}, timeout_s=5)
        assert st["engine"]["kind"] == "epoll" and st["engine"]["reason"].startswith(
            "transport.engine = epoll"
        )
        src = tmp_path / "obj.bin"
        src.write_bytes(os.urandom(3 * MiB + 100_000))
        out = subprocess.run([sys.executable, "-m", "dwcp", "send", str(src), "--to", f"127.0.0.1:{port}",
                              "--key", "eng/cli", "--plaintext", "--json", "--state-dir", str(tmp_path / "sent")],
                             capture_output=True, text=True, env=same_dwcp_env(), cwd=str(tmp_path), timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        sent = json.loads(out.stdout)["socket"]["engine"]
        want = "uring" if dwcp.backend == "fast" and K.uring_available() else "epoll"
        assert sent["kind"] == want and sent["bytes"] >= src.stat().st_size - (64 << 10)
        assert request(sock, {"op": "status"}, timeout_s=5)["engine"]["bytes"] >= src.stat().st_size
        text = open(cfg).read().replace('engine = "epoll"', 'engine = "threads"')
        with open(cfg, "w") as f:
            f.write(text)
        r = request(sock, {"op": "reload"}, timeout_s=10)
        assert r["ok"] and r["needs_restart"] == ['transport.engine: "epoll" -> "threads"']
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("backend", ["fast", "ref"])
def test_the_pump_loop_thread_can_be_pinned(backend, fast, ref):
    """A send pins its pump next to the NIC's tx IRQs (sender rule 10): native_id is the loop thread."""
    import os

    impl = {"fast": fast, "ref": ref}[backend]
    p = impl.Pump("epoll", 1, 4096)
    try:
        tid = p.native_id
        assert str(tid) in os.listdir("/proc/self/task") and tid != threading.get_native_id()
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(tid, cpus[:1])
        assert os.sched_getaffinity(tid) == set(cpus[:1]) and os.sched_getaffinity(0) == set(cpus)
    finally:
        p.close()


def test_streams_spread_over_the_loops(tmp_path):
    """engine_loops: each loop is one core's worth of copying and hashing; a transfer's streams take
    them round-robin on both sides, and the status adds them up."""
    srv = _server(tmp_path, "epoll", engine_loops=2)
    try:
        assert len(srv.engine.pumps) == 2 and srv.engine.info()["loops"] == 2
        data = _data(6, 8 * MiB)
        r = Sender(tx_config(engine="epoll", engine_loops=3), PLAIN).send(
            data, *srv.address, "eng/loops", streams=4
        )
        assert stored(srv, "eng/loops") == data.tobytes()
        assert r.socket["engine"]["loops"] == 3 and r.socket["engine"]["bytes"] >= data.nbytes
        per_loop = [p.info()["bytes"] for p in srv.engine.pumps]
        assert all(b > 0 for b in per_loop) and sum(per_loop) == srv.engine.info()["bytes"] >= data.nbytes
    finally:
        srv.close()
    e = start_engine("epoll", 1, loops=3)
    try:
        assert [e.pick() for _ in range(6)] == e.pumps * 2
    finally:
        e.close()
    with pytest.raises(ConfigError, match="engine_loops 65"):
        server_config("/tmp/x", engine_loops=65)


def test_fs_type_reads_the_longest_mount_point(tmp_path):
    from dwcp.transport.engine import fs_type

    mi = tmp_path / "mountinfo"
    mi.write_text(
        "22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "25 22 0:21 / /dev/shm rw,nosuid shared:4 - tmpfs tmpfs rw\n"
        "26 22 0:22 / /srv/my\\040data rw shared:5 - xfs /dev/vdb rw\n"
        "not a mount line\n"
    )
    assert fs_type("/dev/shm/dwcp", str(mi)) == "tmpfs"
    assert fs_type("/dev/shmx", str(mi)) == "ext4"  # a prefix of a name is not a mount point above it
    assert fs_type("/srv/my data/objects", str(mi)) == "xfs"
    assert fs_type("/var/lib/dwcp", str(mi)) == "ext4"
    assert fs_type("/x", str(tmp_path / "absent")) is None


@pytest.mark.skipif(
    not (dwcp.backend == "fast" and K.uring_available()), reason="needs the native io_uring pump"
)
def test_slots_are_registered_only_where_the_loop_writes_with_io_uring(tmp_path):
    """Registered slots are pinned memory: a data dir on tmpfs (written with pwrite in the loop) does
    without them."""
    import os
    import tempfile

    srv = DataServer(server_config(tmp_path / "rx", engine="uring", engine_slots=2, engine_loops=1))
    srv.start()
    try:
        on_disk = srv.engine.info()
    finally:
        srv.close()
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm (tmpfs) here")
    shm = tempfile.mkdtemp(dir="/dev/shm")
    try:
        srv = DataServer(
            server_config(os.path.join(shm, "rx"), engine="uring", engine_slots=2, engine_loops=1)
        )
        srv.start()
        try:
            on_tmpfs = srv.engine.info()
            data = _data(7, 3 * MiB)
            Sender(tx_config(), PLAIN).send(data, *srv.address, "eng/shm", streams=1)
            assert stored(srv, "eng/shm") == data.tobytes()
        finally:
            srv.close()
    finally:
        import shutil

        shutil.rmtree(shm, ignore_errors=True)
    assert on_tmpfs["registered"] is False and "unregistered" in on_tmpfs["reason"]
    if on_disk["registered"] is False:  # over RLIMIT_MEMLOCK (unprivileged): said, with the errno
        assert on_disk["register_errno"] != 0


def test_engine_cpus_pins_the_loops_of_both_sides(tmp_path):
    """transport.engine_cpus: the daemon's receive loops and a send's loops run on those CPUs."""
    import os

    cpu = sorted(os.sched_getaffinity(0))[-1]
    srv = _server(tmp_path, "epoll", engine_loops=2, engine_cpus=[cpu])
    try:
        assert srv.engine.info()["cpus"] == [cpu] and srv.engine.info()["cpus_why"] == "transport.engine_cpus"
        assert all(os.sched_getaffinity(p.native_id) == {cpu} for p in srv.engine.pumps)
        data = _data(8, 2 * MiB)
        r = Sender(tx_config(engine="epoll", engine_cpus=[cpu]), PLAIN).send(
            data, *srv.address, "eng/cpus", streams=1
        )
        assert stored(srv, "eng/cpus") == data.tobytes() and r.socket["engine"]["cpus"] == [cpu]
        assert r.socket["engine"]["cpus_why"] == "transport.engine_cpus"
    finally:
        srv.close()
    # without the setting, a loopback daemon and send derive nothing to pin, and say why
    srv = _server(tmp_path / "auto", "epoll", engine_loops=2)
    try:
        info = srv.engine.info()
        assert info["cpus"] is None and "loopback" in info["cpus_why"]
        r = Sender(tx_config(engine="epoll"), PLAIN).send(data, *srv.address, "eng/cpus2", streams=1)
        assert r.socket["engine"]["cpus"] is None and r.socket["engine"]["cpus_why"].startswith("not pinned")
    finally:
        srv.close()
    with pytest.raises(ConfigError, match=r"engine_cpus \[-1\]"):
        server_config("/tmp/x", engine_cpus=[-1])
    with pytest.raises(ConfigError, match="engine_cpus"):
        server_config("/tmp/x", engine_cpus=["two"])
