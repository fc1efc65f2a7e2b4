"""kill -9 of either side mid-transfer, restart, resend: it resumes, resends at
most about one chunk per stream, and the stored digest is the sender's."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import dwcp
from dwcp.cli.demo import same_dwcp_env, start_daemon
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.daemon.control import request
from dwcp.digest import object_digest
from dwcp.transport.sender import Sender, TransferError

CHUNK = 1 << 20
SIZE = 48 << 20
STREAMS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uring_runs() -> bool:
    from dwcp._backend import impl

    return dwcp.backend == "ref" or bool(impl.uring_available())


# each engine, on both sides (the daemon's config and the sender's): what a kill -9 costs is the same
ENGINES = [
    pytest.param("uring", marks=pytest.mark.skipif(not _uring_runs(), reason="io_uring does not run here")),
    "epoll",
    "threads",
]


def _daemon(root, port, engine="auto"):
    """start_daemon with a fixed port, so a restart listens where the sender looks."""
    data = os.path.join(root, "rx")
    os.makedirs(data, exist_ok=True)
    cfg = os.path.join(root, "rx.toml")
    with open(cfg, "w") as f:
        f.write(f'[node]\nid = "rx"\n[listen]\nhost = "127.0.0.1"\ndata_port = {port}\n'
                f'[security]\nplaintext = true\n[storage]\ndata_dir = "{data}"\n'
                f'[transport]\nchunk_size_bytes = {CHUNK}\nengine = "{engine}"\n')  # fmt: skip
    # cwd=root: `python -m` puts the cwd first on sys.path, and a source tree
    # there (without the compiled extensions) would shadow the installed dwcp
    proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", cfg], cwd=root, env=same_dwcp_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    sock = os.path.join(data, "control.sock")
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            request(sock, {"op": "status"}, timeout_s=2)
            return proc, sock
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not start")


def _tx(engine="auto") -> TransportConfig:
    return TransportConfig(chunk_size_bytes=CHUNK, stall_timeout_s=3.0, connect_timeout_s=2.0,
                           max_stream_reconnects=4, window_chunks=2, engine=engine)  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_receiver_killed_mid_transfer(tmp_path, engine):
    assert start_daemon  # the demo's helper is the one users run; this test pins the port
    data = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8)
    port = _free_port()
    proc, sock = _daemon(str(tmp_path), port, engine)
    errors = []

    def go():
        try:
            Sender(_tx(engine), SecurityConfig(plaintext=True)).send(data, "127.0.0.1", port, "k9/rx", streams=STREAMS,
                                                                rate_limit_bytes_per_s=24e6)  # fmt: skip
        except (TransferError, OSError) as e:
            errors.append(e)

    t = threading.Thread(target=go)
    t.start()
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t.join(30)
    assert errors, "the send should fail while the receiver is dead"
    first = getattr(errors[0], "stats", {})
    proc, sock = _daemon(str(tmp_path), port, engine)
    try:
        # the resend proposes 4x bigger chunks (as an adapted chunk size may): the receiver answers
        # with its partial's chunk size, and what it holds is kept
        tx = dataclasses.replace(_tx(engine), chunk_size_bytes=4 * CHUNK)
        r = Sender(tx, SecurityConfig(plaintext=True)).send(data, "127.0.0.1", port, "k9/rx", streams=STREAMS)
        n = SIZE // CHUNK
        assert r.chunk_size == CHUNK and r.chunks == n, r.chunk_size_reason
        assert r.verified and r.resumed_chunks > 0
        assert r.chunks_sent == n - r.resumed_chunks
        if first:  # what the dead receiver got but had not persisted: about one chunk per stream
            resent = first["chunks_sent"] + r.chunks_sent - n
            assert resent <= STREAMS * 2, (first, r.chunks_sent)
        st = request(sock, {"op": "status"})
        assert st["keys"] == 1 and st["engine"]["kind"] == engine
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_sender_killed_mid_transfer(tmp_path):
    data = np.random.default_rng(8).integers(0, 256, SIZE, dtype=np.uint8)
    src = tmp_path / "obj.bin"
    data.tofile(src)
    port = _free_port()
    proc, sock = _daemon(str(tmp_path), port)
    argv = [sys.executable, "-m", "dwcp", "send", str(src), "--to", f"127.0.0.1:{port}", "--key", "k9/tx",
            "--streams", str(STREAMS), "--plaintext", "--json", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    try:
        tx = subprocess.Popen(
            [*argv, "--rate", "24M"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=same_dwcp_env(),
        )
        time.sleep(1.2)
        tx.kill()  # SIGKILL: no cleanup on the sending side
        tx.wait()
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=same_dwcp_env()
        )
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        n = r["chunks"]  # the CLI's default 4 MiB chunks
        assert r["verified"] and 0 < r["resumed_chunks"] < n, r
        assert r["chunks_sent"] == n - r["resumed_chunks"], r

        assert r["digest"] == object_digest(data).hex()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.parametrize("junk", [b"\x00" * 100], ids=["zeros"])
def test_daemon_survives_garbage_and_keeps_serving(tmp_path, junk):
    port = _free_port()
    proc, sock = _daemon(str(tmp_path), port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:  # closed with our junk unread: a reset, also fine
                pass
        r = Sender(_tx(), SecurityConfig(plaintext=True)).send(b"hello" * 1000, "127.0.0.1", port, "k9/ok")
        assert r.verified and proc.poll() is None
        assert request(sock, {"op": "status"})["server"]["protocol_errors_total"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
