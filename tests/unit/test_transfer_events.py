"""The data plane reports what it does: every chunk, retransmit, stream and outcome."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from dwcp._testbase.transfer import server_config
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.transport.events import OUTCOMES, TransferEvents
from dwcp.transport.sender import Sender, TransferError
from dwcp.transport.server import DataServer
from dwcp.wire import consts as C


def wait_for(pred, timeout_s: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)


class Recorder(TransferEvents):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple] = []

    def _rec(self, *a) -> None:
        with self.lock:
            self.calls.append(a)

    def chunk(self, direction, peer, codec, raw_bytes, wire_bytes):
        self._rec("chunk", direction, peer, codec, raw_bytes, wire_bytes)

    def chunk_retransmit(self, direction, peer, n=1):
        self._rec("retransmit", direction, peer, n)

    def checksum_failure(self, peer):
        self._rec("checksum", peer)

    def protocol_error(self, peer, code):
        self._rec("protocol", peer, code)

    def stream_opened(self, peer):
        self._rec("open", peer)

    def stream_closed(self, peer, failed):
        self._rec("close", peer, failed)

    def tcp_info(self, peer, rtt_s, retransmits):
        self._rec("tcp", peer, rtt_s, retransmits)

    def transfer_finished(self, direction, peer, outcome, seconds, raw_bytes, wire_bytes):
        assert outcome in OUTCOMES and seconds >= 0
        self._rec("done", direction, peer, outcome, raw_bytes, wire_bytes)

    def of(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


def test_a_send_reports_the_same_bytes_on_both_sides(tmp_path):
    rx_ev, tx_ev = Recorder(), Recorder()
    data = np.random.default_rng(3).integers(0, 256, 5 << 20, dtype=np.uint8)
    data[: 1 << 20] = 0  # one zero chunk: a different codec
    with DataServer(server_config(str(tmp_path / "rx"), chunk_size_bytes=1 << 20), events=rx_ev) as srv:
        snd = Sender(TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True), events=tx_ev)
        r = snd.send(data, *srv.address, "ev/a", streams=2)
        host, port = srv.address
    peer = f"{host}:{port}"
    tx, rx = tx_ev.of("chunk"), rx_ev.of("chunk")
    assert len(tx) == len(rx) == 5
    assert sum(c[4] for c in tx) == sum(c[4] for c in rx) == data.nbytes
    assert sum(c[5] for c in tx) == sum(c[5] for c in rx) == r.wire_bytes
    assert Counter(c[3] for c in tx) == Counter(c[3] for c in rx) and C.CODEC_ZERO in {c[3] for c in tx}
    assert {c[2] for c in tx} == {peer} and {c[2] for c in rx} == {f"plaintext:{host}"}
    assert tx_ev.of("done") == [("done", "tx", peer, "ok", data.nbytes, r.wire_bytes)]
    wait_for(lambda: rx_ev.of("done"))  # the server reports once it has answered
    assert rx_ev.of("done") == [("done", "rx", f"plaintext:{host}", "ok", data.nbytes, r.wire_bytes)]
    assert len(tx_ev.of("open")) == len(tx_ev.of("close")) == 2 and not any(c[2] for c in tx_ev.of("close"))
    assert len(tx_ev.of("tcp")) == 2 and all(c[2] > 0 for c in tx_ev.of("tcp"))
    assert not tx_ev.of("retransmit") and not rx_ev.of("checksum")
    lat = r.chunk_latency_ms  # send -> ACK of every chunk
    assert lat["n"] == 5 and 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 10_000


def test_refusals_and_protocol_errors_are_reported(tmp_path):
    rx_ev, tx_ev = Recorder(), Recorder()
    with DataServer(server_config(str(tmp_path / "rx")), events=rx_ev) as srv:
        srv.drain(0.1)
        with pytest.raises(TransferError) as ei:
            Sender(TransportConfig(), SecurityConfig(plaintext=True), events=tx_ev).send(
                b"x" * 100, *srv.address, "k"
            )
        assert ei.value.code == C.ERR_UNAVAILABLE
        import socket

        with socket.create_connection(srv.address) as s:  # garbage on the data port
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(64))
            s.recv(4096)
    wait_for(lambda: rx_ev.of("done"))  # the server reports once it has answered
    assert [c[3] for c in tx_ev.of("done")] == ["refused"] and [c[3] for c in rx_ev.of("done")] == ["refused"]
    assert [c[2] for c in rx_ev.of("protocol")] == [C.ERR_BAD_MAGIC]
