"""What a send reads: special files refused, a file that shrinks mid-send, a block device,
a baseline that must equal what the receiver verified, and a receiver that refuses the object."""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dwcp._testbase.images import dirty_version, vm_image
from dwcp._testbase.transfer import stored
from dwcp._testbase.transfer import tx_config as _tx_config
from dwcp.cli.demo import same_dwcp_env
from dwcp.config import SecurityConfig
from dwcp.digest import object_digest
from dwcp.storage import ObjectStore, close_mapping
from dwcp.transport.framesock import FrameSocket
from dwcp.transport.sender import Sender, TransferError
from dwcp.transport.server import DataServer
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

PLAIN = SecurityConfig(plaintext=True)
MiB = 1 << 20


def tx_config(**kw):
    return _tx_config(**{"adaptive_chunks": False, **kw})


def dwcp_send(path, server, key, *extra, tmp_path, timeout=20):
    host, port = server.address
    return subprocess.run([sys.executable, "-m", "dwcp", "send", str(path), "--to", f"{host}:{port}", "--key", key,
                           "--plaintext", "--state-dir", str(tmp_path / "sent"), *extra],
                          capture_output=True, text=True, cwd=tmp_path, env=same_dwcp_env(None),
                          timeout=timeout)  # fmt: skip


def assert_one_line_error(r, *words):
    assert r.returncode == 7, (r.returncode, r.stderr)  # EXIT_STORAGE: the sender's own file
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("dwcp send: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


# -- item 5: special files ---------------------------------------------------------


def test_a_fifo_without_a_writer_is_refused_at_once(server, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    r = dwcp_send(fifo, server, "special/fifo", tmp_path=tmp_path, timeout=10)  # the old code hung in open()
    assert time.monotonic() - t0 < 10
    assert_one_line_error(r, f"{fifo} is a FIFO, not a regular file", "regular files and block devices")
    assert server.store.latest("special/fifo") is None


def test_a_fifo_with_a_writer_is_refused_not_stored_empty(server, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer (and reader) that never blocks
    try:
        os.write(fd, b"some bytes in the pipe")
        r = dwcp_send(fifo, server, "special/fifo", tmp_path=tmp_path)
    finally:
        os.close(fd)
    assert_one_line_error(r, "is a FIFO, not a regular file")
    assert server.store.latest("special/fifo") is None


def test_dev_zero_is_refused_not_stored_empty(server, tmp_path):
    r = dwcp_send("/dev/zero", server, "special/zero", tmp_path=tmp_path)
    assert_one_line_error(r, "/dev/zero is a character device, not a regular file")
    assert server.store.latest("special/zero") is None


def test_a_directory_is_refused(server, tmp_path):
    r = dwcp_send(tmp_path, server, "special/dir", tmp_path=tmp_path)
    assert_one_line_error(r, f"{tmp_path} is a directory, not a regular file")


def _loop_device(backing: str) -> str:
    """Attach ``backing`` to a free loop device, or skip saying why not."""
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root (losetup)")
    exe = shutil.which("losetup")
    if exe is None:
        pytest.skip("losetup is not installed")
    r = subprocess.run([exe, "-f", "--show", backing], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"cannot attach a loop device here: {r.stderr.strip()}")
    return r.stdout.strip()


def test_a_block_device_is_sent_whole(server, tmp_path):
    data = vm_image(8 * MiB, seed=11)
    backing = tmp_path / "disk.img"
    data.tofile(backing)
    dev = _loop_device(str(backing))
    try:
        r = dwcp_send(dev, server, "vm/loop", "--json", "--chunk-size", "1M", tmp_path=tmp_path)
    finally:
        subprocess.run([shutil.which("losetup") or "losetup", "-d", dev], timeout=10, check=False)
    assert r.returncode == 0, r.stderr
    assert stored(server, "vm/loop") == data.tobytes()


# -- item 4: a file that shrinks during the send -------------------------------------


def test_a_file_truncated_mid_send_fails_with_one_line_not_sigbus(server, tmp_path):
    src = tmp_path / "vm.img"
    np.random.default_rng(3).integers(0, 256, 48 * MiB, dtype=np.uint8).tofile(src)
    host, port = server.address
    proc = subprocess.Popen([sys.executable, "-m", "dwcp", "send", str(src), "--to", f"{host}:{port}", "--key",
                             "vm/shrinks", "--plaintext", "--state-dir", str(tmp_path / "sent"), "--chunk-size",
                             "1M", "--streams", "2", "--rate", "16M"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=same_dwcp_env(None))  # fmt: skip
    try:
        # once chunks flow (the receiver has taken some), cut the file to 2 MiB: ~3 s of sending remain
        deadline = time.monotonic() + 10
        while server.stats.get("chunks_received_total", 0) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the send never started"
            time.sleep(0.02)
        os.truncate(src, 2 * MiB)
        t_cut = time.monotonic()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != -7, "killed by SIGBUS"
    assert time.monotonic() - t_cut < 5, "the failure should end the transfer at once, not after retries"
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line_error(r, f"{src} shrank from {48 * MiB} to {2 * MiB} bytes during the send",
                          "nothing was stored")  # fmt: skip
    assert server.store.latest("vm/shrinks") is None


def test_a_file_that_grows_after_its_digest_is_not_committed(server, tmp_path):
    from dwcp.transport.source import FileSource, SourceChangedError

    path = tmp_path / "grows.img"
    np.random.default_rng(4).integers(0, 256, 8 * MiB, dtype=np.uint8).tofile(path)
    grown = threading.Event()

    def progress(done, total):
        if not grown.is_set():
            with open(path, "ab") as f:
                f.write(b"more")
            grown.set()

    with FileSource.open(str(path)) as src:
        with pytest.raises(SourceChangedError, match=f"{path} grew from {8 * MiB} to {8 * MiB + 4} bytes"):
            Sender(tx_config(), PLAIN).send(src, *server.address, "vm/grows", streams=1,
                                            rate_limit_bytes_per_s=8e6, progress=progress)  # fmt: skip
    assert grown.is_set()
    assert server.store.latest("vm/grows") is None


def test_a_file_source_sends_full_then_delta(server, tmp_path):
    from dwcp.transport.source import FileSource

    v1 = vm_image(16 * MiB, seed=5)
    v2 = dirty_version(v1, fraction=0.05, seed=6)
    path = tmp_path / "vm.img"
    sender = Sender(tx_config(), PLAIN, baselines=ObjectStore(tmp_path / "sent"))
    for want_mode, data in (("full", v1), ("delta", v2)):
        data.tofile(path)
        with FileSource.open(str(path)) as src:
            r = sender.send(src, *server.address, "vm/file", streams=3)
        assert r.mode == want_mode and r.digest == object_digest(data).hex()
        assert stored(server, "vm/file") == data.tobytes()
    assert r.wire_bytes < v2.nbytes / 20


# -- item 3: the kept baseline equals what the receiver verified -----------------------


def _send_changing_after_first_chunk(sender, server, path, key, how):
    """Send ``path`` (mapped, or as a FileSource); rewrite its first chunk once the receiver acked it."""
    changed: list[tuple[int, int]] = []

    def progress(done, total):
        if done >= MiB and not changed:
            with open(path, "r+b") as f:
                f.write(b"\xa5" * 4096)  # chunk 0 only: the chunks still to come are unchanged
            changed.append((done, total))

    if how == "mmap":
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            r = sender.send(m, *server.address, key, streams=1, rate_limit_bytes_per_s=6e6, progress=progress)
        finally:
            close_mapping(m)  # a view may live on in a stream thread's last frame until collected
    else:
        from dwcp.transport.source import FileSource

        with FileSource.open(str(path)) as src:
            r = sender.send(
                src, *server.address, key, streams=1, rate_limit_bytes_per_s=6e6, progress=progress
            )
    assert changed and changed[0][0] < changed[0][1], "premise: the file changed while the send ran"
    return r


@pytest.mark.parametrize("how", ["mmap", "file"])
def test_a_source_changed_after_its_chunk_was_sent_does_not_poison_the_baseline(
    server, tmp_path, caplog, how
):
    v1 = np.random.default_rng(7).integers(0, 256, 8 * MiB, dtype=np.uint8)
    path = tmp_path / "vm.img"
    v1.tofile(path)
    baselines = ObjectStore(tmp_path / "sent")
    sender = Sender(tx_config(), PLAIN, baselines=baselines)
    host, port = server.address
    with caplog.at_level(logging.WARNING, logger="dwcp.sender"):
        r1 = _send_changing_after_first_chunk(sender, server, path, "vm/changes", how)
    assert r1.digest == object_digest(v1).hex() and stored(server, "vm/changes") == v1.tobytes()
    kept = baselines.latest(f"{host}:{port}/vm/changes")
    if kept is not None:  # what is kept is what the receiver verified, or nothing
        assert bytes(baselines.open_version(kept)) == v1.tobytes()
    assert "changed after it was sent" in caplog.text
    # the next send of the key (the file as it is now) goes through
    now = np.fromfile(path, dtype=np.uint8)
    r2 = sender.send(now, host, port, "vm/changes", streams=2)
    assert r2.verified and stored(server, "vm/changes") == now.tobytes()
    kept = baselines.latest(f"{host}:{port}/vm/changes")
    assert kept is not None and bytes(baselines.open_version(kept)) == now.tobytes()


def test_a_corrupted_kept_baseline_is_dropped_and_the_send_goes_on(server, tmp_path, caplog):
    v1 = vm_image(8 * MiB, seed=8)
    v2 = dirty_version(v1, fraction=0.05, seed=9)
    baselines = ObjectStore(tmp_path / "sent")
    sender = Sender(tx_config(), PLAIN, baselines=baselines)
    host, port = server.address
    sender.send(v1, host, port, "vm/rot", streams=2)
    kept = baselines.latest(f"{host}:{port}/vm/rot")
    assert kept is not None
    os.chmod(kept.path, 0o600)
    with open(kept.path, "r+b") as f:  # bit rot in our own copy
        f.seek(5 * MiB + 123)
        f.write(b"\xff\x00\xff")
    with caplog.at_level(logging.WARNING, logger="dwcp.sender"):
        r2 = sender.send(v2, host, port, "vm/rot", streams=2)
    assert r2.verified and stored(server, "vm/rot") == v2.tobytes()
    assert r2.mode == "delta"  # the receiver's choice; the chunks went without the bad base
    assert "fails its digest: dropped" in caplog.text and kept.path in caplog.text
    assert baselines.get(f"{host}:{port}/vm/rot", kept.digest) is None
    now = baselines.latest(f"{host}:{port}/vm/rot")
    assert now is not None and bytes(baselines.open_version(now)) == v2.tobytes()


# -- item 7 (sender): a receiver that refuses the object on a data stream ----------------


class FakeReceiver:
    """Answers a send's HELLO with WELCOME (full), then each data stream's first chunk with ERROR ``code``."""

    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.address = self.lsock.getsockname()
        self.data_streams = 0
        self.done = False  # the sender said DONE (it should not)
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._conn, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)  # started first: close() joins only started threads

    def _conn(self, s: socket.socket) -> None:
        fs = FrameSocket(s, timeout_s=5.0)
        try:
            h, hello = fs.recv_control(C.FRAME_HELLO)
            tid = h.transfer_id
            if hello["role"] == "control":
                fs.send(
                    encode_control(C.FRAME_WELCOME, tid, {"mode": "full", "token": "ab" * 32, "have": ""})
                )
                got = fs.recv_control(C.FRAME_DONE, C.FRAME_CLOSE)
                self.done = got is not None and got[0].frame_type == C.FRAME_DONE
                return
            self.data_streams += 1
            dh = fs.recv_header()
            if dh is None:  # the send already ended (another stream heard the refusal)
                return
            fs.skip_payload(dh)
            fs.send(encode_control(C.FRAME_ERROR, tid, {"code": self.code, "message": self.message}))
            DataServer._linger(
                fs
            )  # as the real receiver: a close with chunks unread would reset the ERROR away
        except (OSError, TypeError):
            pass
        finally:
            fs.close()

    def close(self) -> None:
        self.lsock.close()
        for t in self._threads:
            t.join(5)


@pytest.mark.parametrize("code", [C.ERR_STORAGE, C.ERR_FORBIDDEN, C.ERR_TOO_LARGE])
def test_a_refusal_on_a_data_stream_ends_the_transfer_at_once(code):
    why = "cannot write 'vm/1': No space left on device (need 8388608 bytes in /var/lib/dwcp)"
    rx = FakeReceiver(code, why)
    try:
        t0 = time.monotonic()
        with pytest.raises(TransferError) as ei:
            Sender(tx_config(max_stream_reconnects=32), PLAIN).send(b"x" * (8 * MiB), *rx.address, "vm/1",
                                                                    streams=2)  # fmt: skip
        elapsed = time.monotonic() - t0
    finally:
        rx.close()
    assert str(ei.value) == f"receiver refused: {why} (code {code})"
    assert ei.value.code == code
    assert rx.data_streams <= 2, f"{rx.data_streams} data streams: the refusal was retried"
    assert elapsed < 3 and not rx.done


def test_other_errors_on_a_data_stream_still_cost_the_stream_only():
    rx = FakeReceiver(C.ERR_MALFORMED, "bad frame")
    try:
        with pytest.raises(TransferError, match="gave up after 4 stream failures") as ei:
            Sender(tx_config(max_stream_reconnects=3), PLAIN).send(b"x" * (4 * MiB), *rx.address, "vm/1",
                                                                   streams=1)  # fmt: skip
    finally:
        rx.close()
    assert ei.value.code is None
    assert rx.data_streams == 4


def test_a_cluster_send_takes_a_file_source_and_does_not_blame_the_peer_for_it(tmp_path):
    from dwcp.cluster.node import ClusterView
    from dwcp.config import from_dict
    from dwcp.transport.source import FileSource, SourceChangedError

    peers = [{"id": f"n{i}", "address": f"127.0.0.1:{7700 + i}", "region": "r1"} for i in range(3)]
    cfg = from_dict({"security": {"plaintext": True}, "cluster": {"peers": peers}})
    view = ClusterView(cfg.cluster, cfg.node, clock=lambda: 0.0)
    path = tmp_path / "f"
    path.write_bytes(b"z" * 10000)
    calls: list[tuple[object, int]] = []

    class ShrinkingSend:
        def send(self, data, host, port, key, **kw):
            calls.append((data, port))
            raise SourceChangedError(
                f"{path} shrank from 10000 to 10 bytes during the send; nothing was stored"
            )

    with FileSource.open(str(path)) as src:
        with pytest.raises(SourceChangedError, match="shrank"):
            view.send(ShrinkingSend(), src, "vm/1", "region:r1")
    assert len(calls) == 1 and calls[0][0] is src  # the source passed through, and no other replica was tried
    assert view.failovers == 0
    assert all(b.snapshot(0.0)["calls_in_window"] == 0 for b in view.breakers.values())  # nobody blamed
