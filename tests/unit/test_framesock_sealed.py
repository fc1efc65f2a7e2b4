"""FrameSocket rule 7 on real mutual-TLS connections over loopback TCP: a data HELLO inside TLS, then
``seal`` on both ends, then every kind of frame as sealed records -- and what a forged, replayed or
reflected record does.

Each test builds its own connection (a TLS handshake: a few ms); some run through a recording relay
that sees the bytes on the wire and can inject, corrupt or dribble them.  Every socket has a timeout
and every thread join is bounded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
import threading
import time

import pytest

from dwcp._backend import impl as K
from dwcp.digest import chunk_hash
from dwcp.errors import BrokenResourceError, ForgedRecordError
from dwcp.security import aead
from dwcp.security.certs import init_ca, issue_node
from dwcp.security.tls import TLSConfig, client_context, server_context
from dwcp.transport import framesock
from dwcp.transport.framesock import FrameSocket
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

TIMEOUT_S = 5.0
TID = 0x0123456789ABCDEF
TOKEN = "ab" * 32

pytestmark = pytest.mark.skipif(not aead.available()[0], reason=f"no AES-GCM here: {aead.available()[1]}")


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca", cluster_name="test")
    rx, tx = issue_node(root / "ca", "rx"), issue_node(root / "ca", "tx")
    return (
        server_context(TLSConfig(rx.ca_cert, rx.cert, rx.key)),
        client_context(TLSConfig(tx.ca_cert, tx.cert, tx.key)),
    )


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(TIMEOUT_S)
        c = socket.create_connection(ls.getsockname(), timeout=TIMEOUT_S)
        s, _ = ls.accept()
    s.settimeout(TIMEOUT_S)
    return c, s


class Relay:
    """Relays two TCP connections both ways, recording each direction (Pair.sealed_c2s/sealed_s2c: where
    the sealed records begin).  ``corrupt_c2s`` flips a bit of the client->server byte at that offset; ``drip`` forwards each client->server read in two halves
    50 ms apart; ``inject_c2s`` writes bytes to the server as if the client had sent them."""

    def __init__(self, client_side: socket.socket, server_side: socket.socket) -> None:
        self.cs, self.ss = client_side, server_side
        self.c2s, self.s2c = bytearray(), bytearray()
        self.corrupt_c2s: int | None = None
        self.drip = False
        self._c2s_lock = threading.Lock()  # the relay and inject_c2s both write to the server
        self.threads = [
            threading.Thread(target=self._pipe, args=(self.cs, self.ss, self.c2s, True), daemon=True),
            threading.Thread(target=self._pipe, args=(self.ss, self.cs, self.s2c, False), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _pipe(self, src, dst, log: bytearray, c2s: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                buf = bytearray(data)
                if c2s and self.corrupt_c2s is not None and 0 <= self.corrupt_c2s - len(log) < len(buf):
                    buf[self.corrupt_c2s - len(log)] ^= 0x20
                    self.corrupt_c2s = None
                log += data  # what the sender put on the wire
                with self._c2s_lock if c2s else contextlib.nullcontext():
                    if c2s and self.drip:
                        half = max(1, len(buf) // 2)
                        dst.sendall(buf[:half])
                        time.sleep(0.05)
                        dst.sendall(buf[half:])
                    else:
                        dst.sendall(buf)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def inject_c2s(self, data: bytes) -> None:
        with self._c2s_lock:
            self.ss.sendall(data)

    def close(self) -> None:
        for s in (self.cs, self.ss):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(TIMEOUT_S)
        self.cs.close()
        self.ss.close()


def in_thread(fn, *args):
    """Run ``fn`` on a thread; the returned ``join()`` gives its result or raises its exception."""
    out: dict = {}

    def run():
        try:
            out["r"] = fn(*args)
        except BaseException as exc:  # re-raised by join
            out["e"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(2 * TIMEOUT_S)
        assert not t.is_alive(), f"{fn} hung"
        if "e" in out:
            raise out["e"]
        return out.get("r")

    return join


class Pair:
    """A sealed data stream: ``tx`` (the sender's FrameSocket) and ``rx`` (the receiver's), maybe relayed."""

    def __init__(self, contexts, *, relay: bool = False, header_timeout_s: float | None = None) -> None:
        sctx, cctx = contexts
        self.relay: Relay | None = None
        if relay:
            c, r1 = tcp_pair()
            r2, s = tcp_pair()
            self.relay = Relay(r1, r2)
        else:
            c, s = tcp_pair()
        ss = sctx.wrap_socket(s, server_side=True, do_handshake_on_connect=False)
        handshake = in_thread(ss.do_handshake)
        cs = cctx.wrap_socket(c)
        handshake()
        assert isinstance(cs, ssl.SSLSocket) and cs.version() == "TLSv1.3"
        self.tx = FrameSocket(cs, timeout_s=TIMEOUT_S)
        self.rx = FrameSocket(ss, timeout_s=TIMEOUT_S, header_timeout_s=header_timeout_s)
        assert self.tx.tls and self.rx.tls and not self.tx.sealed and not self.rx.sealed
        # the data HELLO, inside TLS, carries the stream's secret (aead rule 3: then both unwrap)
        self.secret = aead.new_secret()
        hello = {
            "v": 3,
            "role": "data",
            "transfer_id": TID,
            "token": TOKEN,
            "stream": 1,
            "seal": self.secret.hex(),
        }
        self.tx.send(encode_control(C.FRAME_HELLO, TID, hello))
        h, got = self.rx.recv_control(C.FRAME_HELLO)
        assert h.frame_type == C.FRAME_HELLO and got == hello
        sealing = in_thread(lambda: self.rx.seal(bytes.fromhex(got["seal"]), h.transfer_id, sender=False))
        self.tx.seal(self.secret, TID, sender=True)
        sealing()
        if self.relay is not None:
            self.sealed_c2s, self.sealed_s2c = len(self.relay.c2s), len(self.relay.s2c)

    def close(self) -> None:
        self.tx.close()
        self.rx.close()
        if self.relay is not None:
            self.relay.close()


@pytest.fixture
def pair(contexts):
    made: list[Pair] = []

    def make(**kw) -> Pair:
        p = Pair(contexts, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def data_frame(payload: bytes, offset: int = 0) -> bytes:
    n = len(payload)
    return K.pack_header(C.FRAME_DATA, C.CODEC_RAW, 0, TID, offset, n, n, raw_hash=chunk_hash(payload)[0])


def test_sealing_swaps_tls_for_plain_sockets(pair):
    p = pair()
    for fs in (p.tx, p.rx):
        assert fs.sealed and not fs.tls and fs.can_recv_direct
        assert type(fs.sock) is socket.socket  # the same descriptor, out of its SSLSocket
        assert fs.sock.gettimeout() == TIMEOUT_S  # the progress timeout survives (framesock rule 3)


def test_control_frames_both_ways(pair):
    p = pair(relay=True)
    p.tx.send(encode_control(C.FRAME_ACK, TID, {"chunks": [1, 2, 3]}))
    h, msg = p.rx.recv_control(C.FRAME_ACK)
    assert (h.frame_type, h.transfer_id, msg) == (C.FRAME_ACK, TID, {"chunks": [1, 2, 3]})
    # two frames concatenated in one send: each goes as its own header and payload records
    two = encode_control(C.FRAME_NACK, TID, {"chunk": 7, "reason": "busy"}) + encode_control(
        C.FRAME_DONE, TID, {"ok": True, "chunks": 9}
    )
    p.rx.send(two)
    assert p.tx.recv_control(C.FRAME_NACK, C.FRAME_DONE)[1] == {"chunk": 7, "reason": "busy"}
    assert p.tx.recv_control(C.FRAME_NACK, C.FRAME_DONE)[1] == {"ok": True, "chunks": 9}
    # the wire carried records (a 16-byte tag per header and per payload), and no plaintext
    assert p.relay is not None
    wire = bytes(p.relay.s2c[p.sealed_s2c :])
    assert len(wire) == len(two) + 4 * 16
    assert b"busy" not in wire and b"DWCF" not in wire
    assert b"chunks" not in p.relay.c2s[p.sealed_c2s :]
    # what both ends count is frame bytes (the tags are not counted)
    assert p.tx.bytes_sent == p.rx.bytes_received and p.rx.bytes_sent == p.tx.bytes_received == len(two)


@pytest.mark.parametrize("n", [1, 1000, framesock.SEAL_INLINE - 1, framesock.SEAL_INLINE, 300_000])
def test_a_data_frame_into_a_buffer(pair, n):
    """recv_into_exact: below SEAL_INLINE the sender seals in Python, from it in the engine (send_sealed)."""
    p = pair()
    payload = os.urandom(n)
    sending = in_thread(p.tx.send, data_frame(payload, offset=n), payload)
    h = p.rx.recv_header()
    assert (h.frame_type, h.enc_len, h.raw_len, h.offset) == (C.FRAME_DATA, n, n, n)
    buf = bytearray(n)
    p.rx.recv_into_exact(memoryview(buf))
    sending()
    assert buf == payload and h.raw_hash == chunk_hash(buf)[0]
    p.rx.send(encode_control(C.FRAME_ACK, TID, {"chunks": [0]}))  # and the other direction still in step
    assert p.tx.recv_control(C.FRAME_ACK)[1] == {"chunks": [0]}


def test_a_large_data_frame_into_a_file(pair):
    p = pair()
    n = (3 << 20) + 12345
    payload = os.urandom(n)
    sending = in_thread(
        lambda: (
            p.tx.send(data_frame(payload), payload),
            p.tx.send(encode_control(C.FRAME_CLOSE, TID, {"reason": "bye"})),
        )
    )
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        h = p.rx.recv_header()
        assert h.frame_type == C.FRAME_DATA and h.enc_len == n
        blocks, chash = p.rx.recv_blocks_into(fd, 4096, n, bytearray(1 << 20))
        assert os.pread(fd, n + 1, 4096) == payload
    finally:
        os.close(fd)
    assert (chash, blocks) == chunk_hash(payload) and chash == h.raw_hash
    assert p.rx.recv_control()[1] == {"reason": "bye"}  # the record after the big one opens
    sending()
    assert p.rx.bytes_received == p.tx.bytes_sent


def test_skip_payload_keeps_later_frames_readable(pair):
    p = pair()
    before = p.tx.bytes_sent  # the HELLO
    small, large = os.urandom(5000), os.urandom(3 * (1 << 20) + 7)  # large: more than one slot
    sending = in_thread(
        lambda: (
            p.tx.send(data_frame(small), small),
            p.tx.send(data_frame(large), large),
            p.tx.send(encode_control(C.FRAME_ACK, TID, {"chunks": [4]})),
        )
    )
    for want in (small, large):
        h = p.rx.recv_header()
        assert h.enc_len == len(want)
        p.rx.skip_payload(h)
    assert p.rx.recv_control(C.FRAME_ACK)[1] == {"chunks": [4]}
    sending()
    assert (
        p.rx.bytes_received
        == p.tx.bytes_sent
        == before + 3 * 64 + len(small) + len(large) + len('{"chunks":[4]}')
    )


def test_a_header_that_arrives_in_pieces(pair):
    """A receiver with header_timeout_s (as the server's) reads a sealed header record that trickles in."""
    p = pair(relay=True, header_timeout_s=TIMEOUT_S)
    assert p.relay is not None
    p.relay.drip = True
    p.tx.send(encode_control(C.FRAME_ACK, TID, {"chunks": [5]}))
    assert p.rx.recv_control(C.FRAME_ACK)[1] == {"chunks": [5]}


def test_a_clean_end_and_a_cut_record(pair):
    p = pair()
    p.tx.sock.shutdown(socket.SHUT_WR)
    assert p.rx.recv_header() is None  # framesock rule 4: a close between frames
    q = pair()
    q.tx.sock.sendall(b"\x00" * 50)  # a header record cut short
    q.tx.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(BrokenResourceError):
        q.rx.recv_header()


# -- forgeries ------------------------------------------------------------------------------------


def _assert_forged(exc_info) -> None:
    assert exc_info.value.code == C.ERR_FORGED == 19


def test_random_bytes_on_a_sealed_stream_are_forged(pair):
    p = pair()
    p.tx.sock.sendall(os.urandom(80))  # a header record's worth, written under the sealed layer
    with pytest.raises(ForgedRecordError) as e:
        p.rx.recv_header()
    _assert_forged(e)


def test_a_valid_plaintext_header_on_a_sealed_stream_is_forged(pair):
    p = pair()
    p.tx.sock.sendall(encode_control(C.FRAME_ACK, TID, {"chunks": [1]}) + bytes(16))
    with pytest.raises(ForgedRecordError) as e:
        p.rx.recv_header()
    _assert_forged(e)


def test_a_replayed_header_record_is_forged(pair):
    p = pair(relay=True)
    assert p.relay is not None
    p.tx.send(encode_control(C.FRAME_CLOSE, TID, {}))  # a header record and no payload: 80 bytes
    assert p.rx.recv_control(C.FRAME_CLOSE)[1] == {}
    rec = bytes(p.relay.c2s[p.sealed_c2s : p.sealed_c2s + 80])
    p.relay.inject_c2s(rec)  # the same record again
    with pytest.raises(ForgedRecordError) as e:
        p.rx.recv_header()
    _assert_forged(e)


def test_a_reflected_record_is_forged(pair):
    """The receiver's own record sent back to it: the other direction has its own key."""
    p = pair(relay=True)
    assert p.relay is not None
    p.rx.send(encode_control(C.FRAME_CLOSE, TID, {}))
    assert p.tx.recv_control(C.FRAME_CLOSE)[1] == {}
    p.relay.inject_c2s(bytes(p.relay.s2c[p.sealed_s2c : p.sealed_s2c + 80]))
    with pytest.raises(ForgedRecordError) as e:
        p.rx.recv_header()
    _assert_forged(e)


@pytest.mark.parametrize("how", ["recv_into_exact", "recv_blocks_into"])
@pytest.mark.parametrize("where", [100, 300_000, 300_000 + 5])  # in the ciphertext; in the tag
def test_a_payload_altered_in_transit_is_forged(pair, how, where):
    p = pair(relay=True)
    assert p.relay is not None
    n = 300_000
    payload = os.urandom(n)
    p.relay.corrupt_c2s = p.sealed_c2s + 80 + where  # after the header's record
    sending = in_thread(p.tx.send, data_frame(payload), payload)
    h = p.rx.recv_header()  # the header's record is intact
    assert h.enc_len == n
    with pytest.raises(ForgedRecordError) as e:
        if how == "recv_into_exact":
            p.rx.recv_into_exact(memoryview(bytearray(n)))
        else:
            fd, path = tempfile.mkstemp()
            os.unlink(path)
            try:
                p.rx.recv_blocks_into(fd, 0, n, bytearray(1 << 20))
            finally:
                os.close(fd)
    _assert_forged(e)
    sending()


# -- misuse -------------------------------------------------------------------------------------------


def test_seal_needs_a_tls_stream():
    a, b = socket.socketpair()
    try:
        fs = FrameSocket(a, timeout_s=1.0)
        with pytest.raises(ValueError, match="only a TLS stream is sealed"):
            fs.seal(bytes(32), TID, sender=True)
        assert not fs.sealed and fs.sock is a  # untouched
    finally:
        a.close()
        b.close()


def test_no_zerocopy_on_a_sealed_stream(pair):
    p = pair()
    for fs in (p.tx, p.rx):
        with pytest.raises(ValueError, match="MSG_ZEROCOPY needs a plaintext stream"):
            fs.enable_zerocopy()
        assert fs.zerocopy is None
