"""What an adversary and a careless user found, each kept as a test on loopback:
an interrupted delta resumes, a silent partition does not lock a key, a full disk
is reported once and cleaned up, a HELLO costs little whatever it announces,
per-key authorization, and relays only to cluster members."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from dwcp._testbase.transfer import server_config
from dwcp.cli.demo import same_dwcp_env
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import object_digest
from dwcp.transport.fetch import fetch
from dwcp.transport.sender import Sender, TransferError
from dwcp.transport.server import DataServer
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

MiB = 1 << 20
PLAIN = SecurityConfig(plaintext=True)


def _state_done(path: str, nchunks: int) -> int:
    """Chunks a partial's .state marks done (64-byte header, then 16-byte records: u64 hash, u8 done)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return 0
    return sum(1 for i in range(nchunks) if 64 + 16 * i + 8 < len(raw) and raw[64 + 16 * i + 8] == 1)


# -- 1. an interrupted delta send resumes ------------------------------------------------------


def test_a_delta_send_killed_mid_way_resumes(tmp_path):
    """v2 = v1 with every other chunk zeroed and the others rewritten: the receiver seeds its partial with
    v1's bytes; kill -9 the sender part-way; the resend resumes over the seeded partial and commits."""
    n = 16
    rng = np.random.default_rng(11)
    v1 = rng.integers(0, 256, n * MiB, dtype=np.uint8)
    v2 = v1.copy()
    for i in range(n):
        if i % 2 == 0:
            v2[i * MiB : (i + 1) * MiB] = 0
        else:
            v2[i * MiB : (i + 1) * MiB] = rng.integers(0, 256, MiB, dtype=np.uint8)
    f1, f2 = tmp_path / "v1", tmp_path / "v2"
    v1.tofile(f1)
    v2.tofile(f2)
    with DataServer(server_config(tmp_path / "rx")) as srv:
        host, port = srv.address

        def send(path, *extra):
            return [sys.executable, "-m", "dwcp", "send", str(path), "--to", f"{host}:{port}", "--key", "vm/d",
                    "--plaintext", "--json", "--streams", "1", "--chunk-size", "1M", "--state-dir",
                    str(tmp_path / "state"), *extra]  # fmt: skip

        r = subprocess.run(
            send(f1), capture_output=True, text=True, timeout=60, cwd=tmp_path, env=same_dwcp_env()
        )
        assert r.returncode == 0, r.stderr
        d2 = object_digest(v2.tobytes()).hex()
        state = os.path.join(srv.store.data_dir, "partial", f"vm%2Fd.{d2}.state")
        tx = subprocess.Popen(send(f2, "--rate", "2M"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=same_dwcp_env())  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while _state_done(state, n) < n // 4 and time.monotonic() < deadline and tx.poll() is None:
                time.sleep(0.02)
            done_at_kill = _state_done(state, n)
        finally:
            tx.kill()  # SIGKILL: no cleanup on the sending side
            tx.wait()
        assert n // 4 <= done_at_kill < n, done_at_kill
        r = subprocess.run(
            send(f2), capture_output=True, text=True, timeout=60, cwd=tmp_path, env=same_dwcp_env()
        )
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["mode"] == "delta" and res["resumed_chunks"] > 0 and res["digest"] == d2, res
        info = srv.store.latest("vm/d")
        assert info is not None and info.digest.hex() == d2
        assert bytes(srv.store.open_version(info)) == v2.tobytes()


# -- 2. a silent partition does not lock the key -------------------------------------------------


class _FreezingProxy:
    """A loopback TCP relay to ``target`` that, once frozen, forwards nothing more and closes nothing:
    a partition that neither FINs nor RSTs."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self.stop = threading.Event()
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.address = self.lsock.getsockname()
        self.socks: list[socket.socket] = [self.lsock]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        self.lsock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except OSError:
                continue
            u = socket.create_connection(self.target)
            self.socks += [c, u]
            for a, b in ((c, u), (u, c)):
                th = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                self.threads.append(th)
                th.start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(0.2)
        while not self.stop.is_set():
            if self.frozen.is_set():
                time.sleep(0.05)
                continue
            try:
                data = a.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                self.frozen.wait()  # an end of stream is not forwarded either: the partition swallows it
                continue
            if self.frozen.is_set():
                continue  # lost in the partition
            try:
                b.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.frozen.set()
        for th in self.threads:
            th.join(2)
        for s in self.socks:
            s.close()


def test_a_silent_partition_does_not_lock_the_key(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, 24 * MiB, dtype=np.uint8)
    other = np.random.default_rng(4).integers(0, 256, 24 * MiB, dtype=np.uint8)
    # the receiver waits 120 s for a silent transfer: the retry below must not wait for that
    with DataServer(server_config(tmp_path / "rx", idle_timeout_s=120.0)) as srv:
        proxy = _FreezingProxy(srv.address)
        try:
            tp = TransportConfig(chunk_size_bytes=MiB, stall_timeout_s=1.5, max_stream_reconnects=1)

            def freeze_part_way(done: int, total: int) -> None:
                if done >= total // 4:
                    proxy.frozen.set()

            with pytest.raises(TransferError):
                Sender(tp, PLAIN).send(data, *proxy.address, "vm/p", streams=2, rate_limit_bytes_per_s=16e6,
                                       progress=freeze_part_way)  # fmt: skip
            assert proxy.frozen.is_set()
            # someone else's version: told who holds the key and for how long, at once
            t0 = time.monotonic()
            with pytest.raises(TransferError, match=r"busy: .* given up in \d+ s") as ei:
                Sender(tp, PLAIN).send(other, *srv.address, "vm/p", streams=2)
            assert ei.value.code == C.ERR_BUSY and time.monotonic() - t0 < 5
            # the same send again: it takes over the stale attempt and resumes what it received
            t0 = time.monotonic()
            r = Sender(tp, PLAIN).send(data, *srv.address, "vm/p", streams=2)
            assert time.monotonic() - t0 < 10
            assert r.verified and r.resumed_chunks > 0
            assert srv.store.latest("vm/p").digest == object_digest(data)
        finally:
            proxy.close()


# -- 7. a full disk: the reason reaches the sender once, nothing is left behind ---------------


@pytest.fixture
def small_fs(small_tmpfs):
    return small_tmpfs("12m")


def test_a_disk_that_fills_mid_transfer_is_one_clear_error(small_fs, caplog):
    data = np.random.default_rng(1).integers(0, 256, 8 * MiB, dtype=np.uint8)
    filled = []

    def fill(done: int, total: int) -> None:
        if done and not filled:  # the transfer is under way: something else takes the rest of the disk
            with open(small_fs / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\xff" * MiB)
                except OSError:
                    pass
            filled.append(time.monotonic())

    with DataServer(server_config(small_fs / "rx")) as srv:
        tp = TransportConfig(chunk_size_bytes=MiB, stall_timeout_s=3.0)
        with caplog.at_level(logging.INFO, logger="dwcp.server"):
            with pytest.raises(TransferError, match="No space left") as ei:
                Sender(tp, PLAIN).send(data, *srv.address, "vm/full", streams=2, rate_limit_bytes_per_s=16e6,
                                       progress=fill)  # fmt: skip
        assert filled and ei.value.code == C.ERR_STORAGE
        assert time.monotonic() - filled[0] < 3, "the refusal ends the transfer at once"
        msg = str(ei.value)
        assert msg.startswith("receiver refused: cannot write 'vm/full': No space left on device")
        assert msg.endswith(f"(code {C.ERR_STORAGE})")
        said = [r for r in caplog.records if "No space left" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.ERROR, [r.getMessage() for r in said]
        assert not [r for r in caplog.records if r.exc_info], "no tracebacks for a full disk"
        assert srv.store.latest("vm/full") is None
        assert not os.path.exists(os.path.join(srv.store.data_dir, "objects", "vm%2Ffull"))
        os.unlink(small_fs / "filler")  # space again: the resend completes, resuming what landed
        r = Sender(tp, PLAIN).send(data, *srv.address, "vm/full", streams=2)
        assert r.verified and srv.store.latest("vm/full").digest == object_digest(data)


# -- 9. a HELLO costs little, whatever it announces ------------------------------------------------


def _hello(port: int, size: int, chunk_size: int, key: str = "vm/huge") -> dict:
    """Send one HELLO for ``size`` bytes and return the answer (WELCOME or ERROR) as a dict."""
    from dwcp.transport.framesock import FrameSocket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        fs = FrameSocket(s, timeout_s=10)
        fs.send(encode_control(C.FRAME_HELLO, 77, {"v": 3, "role": "control", "op": "send", "key": key,
                                                  "size": size, "digest": "ab" * 16, "chunk_size": 4096}))  # fmt: skip
        h, msg = fs.recv_control(C.FRAME_WELCOME)
        return {"type": h.frame_type, **msg}


def test_a_hello_costs_a_few_mib_whatever_it_announces(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with DataServer(server_config(tmp_path / "rx")) as srv:
        tracemalloc.start()
        try:
            # more than the disk holds, in 4 KiB chunks: refused before anything per chunk exists
            got = _hello(srv.address[1], free + (512 << 30), 4096)
            assert got["type"] == C.FRAME_ERROR and got["code"] == C.ERR_STORAGE, got
            assert "No space left" in got["message"] and "vm/huge" in got["message"]
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 4 * MiB, peak
            # what fits (sparse), in 4 KiB chunks: the receiver answers with chunks of at most 2**20 per object
            tracemalloc.reset_peak()
            size = min(free // 2, 64 << 30)
            got = _hello(srv.address[1], size, 4096, key="vm/big")
            assert got["type"] == C.FRAME_WELCOME, got
            assert -(-size // got["chunk_size"]) <= 1 << 20 and got["chunk_size"] % 4096 == 0
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 4 * MiB, peak
        finally:
            tracemalloc.stop()
        part = [n for n in os.listdir(os.path.join(srv.store.data_dir, "partial")) if n.endswith(".state")]
        assert all(
            os.stat(os.path.join(srv.store.data_dir, "partial", n)).st_blocks * 512 < MiB for n in part
        )


def test_an_oversized_hello_is_refused_unread(tmp_path):
    from dwcp.transport.framesock import FrameSocket

    with (
        DataServer(server_config(tmp_path / "rx")) as srv,
        socket.create_connection(srv.address, timeout=10) as s,
    ):
        fs = FrameSocket(s, timeout_s=10)
        from dwcp._backend import impl as K

        # the header of a 100 kB control message (the payload it announces is never sent, nor waited for)
        fs.send(K.pack_header(C.FRAME_HELLO, C.CODEC_RAW, 0, 5, 0, 100_000, 100_000, raw_hash=0))
        h, msg = fs.recv_control()
        assert (
            h.frame_type == C.FRAME_ERROR
            and msg["code"] == C.ERR_BAD_LENGTH
            and "control message" in msg["message"]
        )


def test_a_fetch_answer_announcing_too_many_chunks_is_refused(tmp_path):
    from dwcp.errors import RemoteProtocolError
    from dwcp.transport.framesock import FrameSocket

    lsock = socket.create_server(("127.0.0.1", 0))

    def serve():
        c, _ = lsock.accept()
        with c:
            fs = FrameSocket(c, timeout_s=5)
            fs.recv_control(C.FRAME_HELLO)
            fs.send(encode_control(C.FRAME_WELCOME, 1, {"mode": "fetch", "size": 1 << 40, "digest": "ab" * 16,
                                                        "chunk_size": 4096}))  # fmt: skip
            fs.recv_header()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        tracemalloc.start()
        with pytest.raises(RemoteProtocolError, match="more than 1048576 chunks"):
            fetch("k", *lsock.getsockname(), str(tmp_path / "out"), TransportConfig(), PLAIN)
        assert tracemalloc.get_traced_memory()[1] < 4 * MiB
    finally:
        tracemalloc.stop()
        lsock.close()
        th.join(5)
    assert not os.path.exists(tmp_path / "out")


def test_max_object_bytes_refuses_before_storing(tmp_path):
    with DataServer(
        server_config(tmp_path / "rx", sections={"storage": {"max_object_bytes": 8 * MiB}})
    ) as srv:
        got = _hello(srv.address[1], 8 * MiB + 4096, 4096)
        assert (
            got["type"] == C.FRAME_ERROR
            and got["code"] == C.ERR_TOO_LARGE
            and "max_object_bytes" in got["message"]
        )
        assert os.listdir(os.path.join(srv.store.data_dir, "partial")) == []
        assert (
            Sender(TransportConfig(chunk_size_bytes=MiB), PLAIN)
            .send(b"x" * 8 * MiB, *srv.address, "ok")
            .verified
        )


# -- 10. per-key authorization --------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    from dwcp.security.certs import init_ca, issue_node

    root = tmp_path_factory.mktemp("people")
    init_ca(root / "ca", cluster_name="acl")
    return {n: issue_node(root / "ca", n) for n in ("rx", "alice", "bob", "relay")}


def _tls(c) -> SecurityConfig:
    return SecurityConfig(ca_cert=c.ca_cert, cert=c.cert, key=c.key)


ACL = {"security": {"acl": [
    {"identity": "alice", "prefix": "alice/", "allow": ["read", "write"]},
    {"identity": "*", "prefix": "shared/", "allow": ["read", "write"]},
    {"identity": "bob", "prefix": "alice/pub", "allow": ["read"]},
]}}  # fmt: skip


def test_per_key_authorization(tmp_path, people):
    tp = TransportConfig(chunk_size_bytes=MiB)
    with DataServer(server_config(tmp_path / "rx", plaintext=False, certs=people["rx"], sections=ACL)) as srv:
        alice, bob = Sender(tp, _tls(people["alice"])), Sender(tp, _tls(people["bob"]))
        secret = os.urandom(MiB + 5)
        assert alice.send(secret, *srv.address, "alice/private").verified
        assert alice.send(b"hello", *srv.address, "alice/pub/readme").verified
        with pytest.raises(TransferError, match="bob is not allowed to write 'alice/private'") as ei:
            bob.send(os.urandom(100), *srv.address, "alice/private")
        assert ei.value.code == C.ERR_FORBIDDEN
        assert bytes(srv.store.open_version(srv.store.latest("alice/private"))) == secret  # untouched
        assert bob.send(b"mine", *srv.address, "shared/bob").verified
        with pytest.raises(TransferError, match="bob is not allowed to read 'alice/private'") as ei:
            fetch(
                "alice/private",
                *srv.address,
                str(tmp_path / "stolen"),
                tp,
                _tls(people["bob"]),
                node_id="bob",
            )
        assert ei.value.code == C.ERR_FORBIDDEN and not os.path.exists(tmp_path / "stolen")
        r = fetch(
            "alice/pub/readme", *srv.address, str(tmp_path / "readme"), tp, _tls(people["bob"]), node_id="bob"
        )
        assert r["size"] == 5 and (tmp_path / "readme").read_bytes() == b"hello"
        # relaying is a write on every hop: bob cannot route a write to alice's keys through a relay
        with pytest.raises(TransferError, match="bob is not allowed to write"):
            bob.send(b"x", *srv.address, "alice/x", forward_to="127.0.0.1:1")
        assert srv.stats_snapshot()["refused_acl_total"] == 3
        assert srv.store.latest("alice/x") is None


def test_acl_rules_are_validated():
    from dwcp.config import from_dict
    from dwcp.errors import ConfigError

    with pytest.raises(ConfigError) as ei:
        from_dict({"security": {"plaintext": True, "acl": [
            {"identity": "a", "prefix": "x/", "allow": ["rw"]},
            {"identity": "", "prefix": "x/", "allow": ["read"]},
            {"identity": "a", "prefix": "x/"},
        ]}})  # fmt: skip
    assert [p.split(":")[0] for p in ei.value.problems] == [
        "security.acl[0].allow ['rw']",
        "security.acl[1].identity",
        "security.acl[2]",
    ]


# -- 11. relays only to cluster members ---------------------------------------------------------


def test_a_relay_forwards_only_to_cluster_members(tmp_path):
    with DataServer(server_config(tmp_path / "dest", node="dest")) as dest:
        to = "{}:{}".format(*dest.address)
        with DataServer(server_config(tmp_path / "relay", node="relay")) as relay:
            with pytest.raises(TransferError, match=f"will not relay to {to}") as ei:
                Sender(TransportConfig(chunk_size_bytes=MiB), PLAIN).send(b"x" * 1000, *relay.address, "k",
                                                                          forward_to=to)  # fmt: skip
            assert ei.value.code == C.ERR_FORBIDDEN and relay.stats_snapshot()["refused_relay_total"] == 1
            assert (
                relay.store.latest("k") is None
                and os.listdir(os.path.join(relay.store.data_dir, "partial")) == []
            )
        assert dest.store.latest("k") is None
        peers = {"cluster": {"peers": [{"id": "dest", "address": to}]}}
        with DataServer(server_config(tmp_path / "relay2", node="relay", sections=peers)) as relay:
            r = Sender(TransportConfig(chunk_size_bytes=MiB), PLAIN).send(b"x" * 1000, *relay.address, "k",
                                                                          forward_to=to)  # fmt: skip
            assert r.relayed["to"] == to and dest.store.latest("k") is not None


def test_a_fetch_to_a_full_disk_is_a_clear_error_not_sigbus(tmp_path, small_tmpfs):
    from dwcp.errors import StorageError

    out_dir = small_tmpfs("4m")
    data = os.urandom(8 * MiB)
    with DataServer(server_config(tmp_path / "rx")) as srv:
        Sender(TransportConfig(chunk_size_bytes=MiB), PLAIN).send(data, *srv.address, "vm/big")
        with pytest.raises(StorageError, match=f"cannot write {out_dir}/got: No space left on device"):
            fetch("vm/big", *srv.address, str(out_dir / "got"), TransportConfig(), PLAIN)
    assert os.listdir(out_dir) == []  # the temporary file went too
