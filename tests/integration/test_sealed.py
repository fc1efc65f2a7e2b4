"""Sealed data records end to end (dwcp.security.aead): a real DataServer and Sender over loopback with
mutual TLS.  Which records a send used and why (report.socket["records"]), that both ends of every data
stream really sealed, what the data port says to a data HELLO whose secret does not match its transfer,
and that a stream killed or tampered with mid-transfer costs that stream only."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time

import numpy as np
import pytest

from dwcp._backend import impl as K
from dwcp._testbase.fuzzer import FaultProxy
from dwcp._testbase.images import vm_image
from dwcp._testbase.transfer import server_config, stored, tx_config
from dwcp.config import SecurityConfig
from dwcp.digest import object_digest
from dwcp.errors import RemoteProtocolError
from dwcp.security import aead
from dwcp.security.tls import TLSConfig, client_context
from dwcp.transport.events import TransferEvents
from dwcp.transport.framesock import FrameSocket
from dwcp.transport.sender import Sender
from dwcp.transport.server import DataServer
from dwcp.transport.session import SendSession
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not aead.available()[0], reason=f"no AES-GCM here: {aead.available()[1]}")


def security(node, **kw) -> SecurityConfig:
    return SecurityConfig(ca_cert=node.ca_cert, cert=node.cert, key=node.key, **kw)


class Recorded(TransferEvents):
    """The protocol errors a DataServer saw, by wire code."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def protocol_error(self, peer: str, code: int) -> None:
        self.codes.append(code)


def wait_for_codes(srv: DataServer, n: int) -> list[int]:
    """The server's protocol error codes once it counted ``n`` (on its own thread, after it answered)."""
    deadline = time.monotonic() + 5
    while len(srv.events.codes) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return srv.events.codes


@pytest.fixture
def receiver(tmp_path, pki):
    """``receiver(**security)``: a mutual-TLS DataServer (closed after the test)."""
    made: list[DataServer] = []

    def make(**sec) -> DataServer:
        srv = DataServer(server_config(tmp_path / f"rx{len(made)}", plaintext=False, certs=pki["rx"],
                                       sections={"security": sec} if sec else None), events=Recorded())  # fmt: skip
        srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.close()


@pytest.fixture
def seals(monkeypatch):
    """Every FrameSocket.seal and every stream secret drawn in this process (both ends run here)."""
    calls: list[tuple[bool, bytes]] = []
    drawn: list[bytes] = []
    real_seal, real_secret = FrameSocket.seal, aead.new_secret

    def seal(self, secret, transfer_id, *, sender):
        calls.append((sender, bytes(secret)))
        return real_seal(self, secret, transfer_id, sender=sender)

    def new_secret():
        drawn.append(real_secret())
        return drawn[-1]

    monkeypatch.setattr(FrameSocket, "seal", seal)
    monkeypatch.setattr(aead, "new_secret", new_secret)
    return calls, drawn


def mixed_object(seed: int, mib: int = 6) -> np.ndarray:
    """Raw (incompressible) chunks for the socket -> slot -> file path, and a VM image's zero pages and
    compressible runs for the decoding paths."""
    half = mib // 2
    raw = np.random.default_rng(seed).integers(0, 256, half * MiB, dtype=np.uint8)
    return np.concatenate([raw, vm_image((mib - half) * MiB, seed=seed)])


def test_sealed_by_default(receiver, pki, seals):
    srv = receiver()
    data = mixed_object(1)
    r = Sender(tx_config(), security(pki["tx"])).send(data, *srv.address, "sealed/default", streams=3)
    assert r.tls and r.verified and r.digest == object_digest(data.tobytes()).hex()
    assert r.socket["records"] == "sealed"
    assert "AES-256-GCM" in r.socket["records_reason"]
    assert stored(srv, "sealed/default") == data.tobytes()
    info = srv.store.latest("sealed/default")
    assert info is not None and info.digest.hex() == r.digest
    # both ends of every data stream sealed, with the secret the sender drew for that stream
    calls, drawn = seals
    tx = [s for sender, s in calls if sender]
    rx = [s for sender, s in calls if not sender]
    assert drawn and sorted(tx) == sorted(rx) == sorted(drawn)
    assert len(set(drawn)) == len(drawn)  # one fresh secret per stream


def test_a_sender_that_keeps_tls(receiver, pki, seals):
    srv = receiver()
    data = mixed_object(2, 4)
    r = Sender(tx_config(), security(pki["tx"], data_records="tls")).send(
        data, *srv.address, "tls/tx", streams=2
    )
    assert r.tls and r.verified
    assert r.socket["records"] == "tls"
    assert r.socket["records_reason"] == 'security.data_records = "tls" here'
    assert stored(srv, "tls/tx") == data.tobytes()
    assert seals == ([], [])  # no stream sealed, no secret drawn


def test_a_receiver_that_keeps_tls(receiver, pki, seals):
    srv = receiver(data_records="tls")
    data = mixed_object(3, 4)
    r = Sender(tx_config(), security(pki["tx"])).send(data, *srv.address, "tls/rx", streams=2)
    assert r.tls and r.verified
    assert r.socket["records"] == "tls"
    assert "the receiver keeps TLS records" in r.socket["records_reason"]
    assert stored(srv, "tls/rx") == data.tobytes()
    assert seals == ([], [])


# -- the data HELLO's secret must match its transfer ------------------------------------------------


def raw_control(frame_type: int, transfer_id: int, msg: dict) -> bytes:
    """A control frame as encode_control makes it, minus its schema check (which refuses a bad "seal")."""
    body = json.dumps(msg, separators=(",", ":")).encode()
    return (
        K.pack_header(
            frame_type, C.CODEC_RAW, 0, transfer_id, 0, len(body), len(body), raw_hash=K.xxh3_64(body)
        )
        + body
    )


class HandSender:
    """A control stream driven by hand: HELLO (offering "sealed" or not), WELCOME; then data streams
    with whatever HELLO the test writes."""

    def __init__(self, address, tx, *, sealed: bool, agreed: bool = True) -> None:
        self.address = address
        self.ctx = client_context(TLSConfig(tx.ca_cert, tx.cert, tx.key))
        self.data = os.urandom(MiB)
        self.tid = secrets.randbits(63)
        self.sess = SendSession(self.tid, f"hand/{self.tid:x}", MiB, object_digest(self.data), MiB, node="tx",
                                streams=1, sealed=sealed)  # fmt: skip
        self.ctrl = self.dial()
        self.ctrl.send(encode_control(C.FRAME_HELLO, self.tid, self.sess.hello()))
        got = self.ctrl.recv_control(C.FRAME_WELCOME)
        assert got is not None and got[0].frame_type == C.FRAME_WELCOME, got
        self.sess.on_welcome(got[1])
        assert self.sess.sealed == (sealed and agreed)  # what WELCOME's caps said

    def dial(self) -> FrameSocket:
        raw = socket.create_connection(self.address, timeout=5)
        return FrameSocket(self.ctx.wrap_socket(raw), timeout_s=5)

    def data_hello(self, **change) -> dict:
        """A correct data HELLO of stream 1 for this transfer, with ``change`` applied (None: drop)."""
        secret = aead.new_secret() if self.sess.sealed else None
        hello = self.sess.data_hello(1, secret)
        for k, v in change.items():
            if v is None:
                hello.pop(k, None)
            else:
                hello[k] = v
        return hello

    def refused(self, hello: dict) -> dict:
        """Send ``hello`` on a new data stream; the receiver's ERROR (in TLS: nothing was sealed)."""
        fs = self.dial()
        try:
            fs.send(raw_control(C.FRAME_HELLO, self.tid, hello))
            got = fs.recv_control()
            assert got is not None, "closed without a word"
            h, msg = got
            assert h.frame_type == C.FRAME_ERROR, (h, msg)
            assert fs.recv_header() is None  # and then the receiver closed the stream
            return msg
        finally:
            fs.close()

    def close(self) -> None:
        self.ctrl.close()


def test_a_data_hello_without_the_secret_of_a_sealed_transfer_is_refused(receiver, pki):
    srv = receiver()
    hs = HandSender(srv.address, pki["tx"], sealed=True)
    try:
        msg = hs.refused(hs.data_hello(seal=None))
        assert msg["code"] == C.ERR_BAD_FIELD
        assert "is sealed" in msg["message"] and "lacks a secret" in msg["message"]
        msg = hs.refused(hs.data_hello(seal="zz" * 32))  # not a secret at all: the schema's refusal
        assert msg["code"] == C.ERR_MALFORMED and "seal" in msg["message"]
        msg = hs.refused(hs.data_hello(seal="ab" * 16))  # 16 bytes: too short
        assert msg["code"] == C.ERR_MALFORMED
        assert wait_for_codes(srv, 3) == [C.ERR_BAD_FIELD, C.ERR_MALFORMED, C.ERR_MALFORMED]
    finally:
        hs.close()
    assert srv.store.latest(hs.sess.key) is None


def test_a_data_hello_with_a_secret_for_an_unsealed_transfer_is_refused(receiver, pki):
    srv = receiver(data_records="tls")  # WELCOME takes "sealed" out of the caps
    hs = HandSender(srv.address, pki["tx"], sealed=True, agreed=False)
    try:
        msg = hs.refused(hs.data_hello(seal=aead.new_secret().hex()))
        assert msg["code"] == C.ERR_BAD_FIELD
        assert "is not sealed" in msg["message"] and "has a secret" in msg["message"]
        assert wait_for_codes(srv, 1) == [C.ERR_BAD_FIELD]
    finally:
        hs.close()


def test_a_sealed_stream_refused_at_hello_tells_the_sender_why(receiver, pki):
    """What the Sender's stream thread does: HELLO, then seal() at once.  A refused HELLO should surface
    as the receiver's ERROR (its code and words), as it does on an unsealed stream's first read."""
    srv = receiver()
    hs = HandSender(srv.address, pki["tx"], sealed=True)
    fs = hs.dial()
    try:
        hello = hs.data_hello(token="cd" * 32)  # not this transfer's token
        fs.send(encode_control(C.FRAME_HELLO, hs.tid, hello))
        with pytest.raises(RemoteProtocolError, match="unknown transfer"):
            fs.seal(bytes.fromhex(hello["seal"]), hs.tid, sender=True)
    finally:
        fs.close()
        hs.close()


# -- a stream lost or tampered with mid-transfer ------------------------------------------------------


def test_a_killed_sealed_stream_is_replaced_with_a_new_secret(receiver, pki, seals):
    srv = receiver()
    data = np.random.default_rng(4).integers(0, 256, 8 * MiB, dtype=np.uint8)
    proxy = FaultProxy(srv.address)
    try:
        proxy.cut_after(3 * MiB, conn=2)  # connection 1 is the control stream, 2 the only data stream
        r = Sender(tx_config(window_chunks=2), security(pki["tx"])).send(
            data, *proxy.address, "sealed/cut", streams=1
        )
        assert proxy.faults_fired == 1
    finally:
        proxy.close()
    assert r.socket["records"] == "sealed" and r.verified and r.stream_errors
    assert stored(srv, "sealed/cut") == data.tobytes()
    _, drawn = seals
    assert len(drawn) >= 2 and len(set(drawn)) == len(drawn)  # the stream and its replacement, each its own


def test_a_bit_flipped_on_a_sealed_stream_drops_the_stream(receiver, pki):
    """A forged record is not a checksum failure: the receiver drops the stream (ERR_FORGED), never
    NACKs the chunk and reads on; the sender resends its chunks on a replacement."""
    srv = receiver()
    data = np.random.default_rng(5).integers(0, 256, 6 * MiB, dtype=np.uint8)
    proxy = FaultProxy(srv.address)
    try:
        proxy.corrupt_after(MiB + MiB // 2, conn=2)  # past the TLS handshake and HELLO: a sealed payload
        r = Sender(tx_config(), security(pki["tx"])).send(data, *proxy.address, "sealed/flip", streams=1)
        assert proxy.faults_fired == 1
    finally:
        proxy.close()
    assert r.socket["records"] == "sealed" and r.verified
    assert r.stream_errors
    assert stored(srv, "sealed/flip") == data.tobytes()
    assert wait_for_codes(srv, 1) == [C.ERR_FORGED]
    assert srv.stats["chunks_nacked_total"] == 0
