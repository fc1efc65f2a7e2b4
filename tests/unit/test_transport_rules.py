"""dwcp/transport by the rules its modules document, where the other unit tests leave gaps.

Sans-IO parts (controller, chunking, tcpinfo) without sockets; framesock over a
socketpair or loopback TCP; ``fetch`` against a scripted loopback server thread, every
wait bounded.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from dwcp.codec import ChunkEncoder, CodecConfig
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import chunk_hash, object_digest
from dwcp.errors import (
    BrokenResourceError,
    ConfigError,
    IntegrityError,
    InternalError,
    RemoteProtocolError,
    SourceError,
)
from dwcp.transport import controller as ctl
from dwcp.transport import sockopts, tcpinfo
from dwcp.transport.controller import ERROR, HOLD, PROBE_UP, StreamController, initial_streams
from dwcp.transport.fetch import fetch
from dwcp.transport.framesock import FrameSocket
from dwcp.transport.sender import TransferError
from dwcp.transport.source import FileSource
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

PLAIN = SecurityConfig(plaintext=True)
WAIT_S = 5.0  # the bound on every blocking wait in this file

# -- controller ----------------------------------------------------------------------------------


def test_states_print_and_serialise_as_their_names():
    assert repr(PROBE_UP) == "PROBE_UP" and f"{HOLD}" == "HOLD"
    c = StreamController(2, 1, 8)
    assert repr(c) == "<StreamController START n=2 in [1, 8]>"
    c.observe(0.0, 10e6)
    assert repr(c) == f"<StreamController {c.state} n={c.n} in [1, 8]>"
    assert json.loads(json.dumps(c.history_as_dicts()))[0]["state"] == str(c.state)


@pytest.mark.parametrize(
    "args",
    [
        (1e9, True, 1 << 20, 1, 8),  # a bool is not a number of seconds
        (True, 0.05, 1 << 20, 1, 8),  # nor of bytes per second
        (1e9, 0.05, False, 1, 8),
    ],
)
def test_booleans_are_not_numbers(args):
    with pytest.raises(ConfigError):
        initial_streams(*args)


def test_a_negative_lossy_retransmit_rate_is_a_config_error():
    with pytest.raises(ConfigError, match="lossy_retransmit_rate"):
        StreamController(2, 1, 8, lossy_retransmit_rate=-0.1)


def test_an_event_the_state_does_not_list_is_a_sticky_internal_error(monkeypatch):
    """Rule 3: an event a state does not list is a bug; rule 8: errors are sticky."""
    c = StreamController(2, 1, 8, settle_intervals=0)
    monkeypatch.setattr(c, "_on_start", lambda g, rr: (ctl.EV_KEPT, 3, "made up"))
    with pytest.raises(InternalError, match="no transition from START on KEPT"):
        c.observe(0.0, 10e6)
    assert c.state is ERROR and c.n == 2  # the bogus target was not applied
    with pytest.raises(InternalError, match="ERROR"):
        c.observe(1.0, 10e6)


def _curve(points: dict[int, float]) -> Callable[[int], float]:
    pts = sorted(points.items())

    def g(n: int) -> float:
        if n >= pts[-1][0]:
            return pts[-1][1]
        for (a, ga), (b, gb) in zip(pts, pts[1:]):
            if a <= n <= b:
                return ga + (gb - ga) * (n - a) / (b - a)
        raise AssertionError(n)

    return g


def test_a_loss_limited_probe_that_fills_the_bottleneck_and_gains_is_kept_and_held():
    """Rule 6: retransmits jump in two samples running (a full bottleneck) -- the probe gained, so it is
    kept and held there (GAIN_SATURATED), not doubled again towards max_streams."""
    goodput = _curve({1: 12e6, 2: 25e6, 4: 50e6, 8: 95e6, 16: 118e6, 32: 120e6})

    def retrans(n: int) -> float:
        return 0.012 if n <= 8 else 0.10  # past 8 streams the bottleneck's queue overflows

    c = StreamController(4, 1, 32, loss_based=True)
    counts = []
    for k in range(12):
        counts.append(c.observe(k * 0.5, goodput(c.n), retrans(c.n)).target_streams)
    # doubling (4 -> 8 -> 16), each new count settling two intervals (rules 2 and 6)
    assert counts == [4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16], counts
    saturated = [e for e in c.history if "the bottleneck is full" in e.reason]
    assert len(saturated) == 1 and saturated[0].streams == 16 and saturated[0].state == HOLD
    assert c.state == HOLD and c.n == 16  # not on to 32
    # the LOOK_AGAIN sample came first: one spike is not enough
    i = list(c.history).index(saturated[0])
    assert "one more sample" in c.history[i - 1].reason


# -- tcpinfo: "None when it is not a Linux TCP socket" -------------------------------------------


def test_tcp_info_is_none_off_linux(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as ls, socket.create_connection(ls.getsockname()) as c:
        assert tcpinfo.read_tcp_info(c) is not None
        monkeypatch.setattr(tcpinfo.sys, "platform", "darwin")
        assert tcpinfo.read_tcp_info(c) is None


# -- source ----------------------------------------------------------------------------------------


def test_a_closed_file_source_fails_check_as_a_source_error_and_closes_once(tmp_path):
    p = tmp_path / "obj"
    p.write_bytes(b"x" * 10000)
    with FileSource.open(str(p)) as src:
        assert bytes(src.read(9990, 10)) == b"x" * 10
        src.check()
    src.close()  # a second close is a no-op
    with pytest.raises(SourceError, match=f"cannot stat {p}"):
        src.check()


# -- sockopts --------------------------------------------------------------------------------------


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A /proc/sys/net of our own: sockopts reads its kernel facts there."""
    monkeypatch.setattr(sockopts, "_PROC", str(tmp_path))
    for d in ("core", "ipv4"):
        (tmp_path / d).mkdir()

    def write(name: str, text: str) -> None:
        (tmp_path / name).write_text(text)

    return write


def test_kernel_facts_are_read_when_asked_and_unreadable_ones_are_none(fake_proc):
    """Rule 2: nothing is cached; a fact that is missing, empty or not numbers reads as None."""
    assert sockopts.kernel_limits() == {
        "rmem_max": None,
        "wmem_max": None,
        "tcp_rmem": None,
        "tcp_wmem": None,
    }
    assert sockopts.available_congestion_controls() == []
    fake_proc("core/rmem_max", "212992\n")
    fake_proc("core/wmem_max", "")  # empty
    fake_proc("ipv4/tcp_rmem", "4096\t131072\t6291456\n")
    fake_proc("ipv4/tcp_wmem", "4096 16384\n")  # not a triple
    fake_proc("ipv4/tcp_available_congestion_control", "reno cubic\n")
    assert sockopts.kernel_limits() == {
        "rmem_max": 212992,
        "wmem_max": None,
        "tcp_rmem": [4096, 131072, 6291456],
        "tcp_wmem": None,
    }
    assert sockopts.available_congestion_controls() == ["reno", "cubic"]
    fake_proc("core/rmem_max", "lots\n")  # a sysctl change is seen by the next read
    fake_proc("ipv4/tcp_wmem", "4096 16384 4194304\n")
    lim = sockopts.kernel_limits()
    assert lim["rmem_max"] is None and lim["tcp_wmem"] == [4096, 16384, 4194304]


def test_a_bdp_above_the_autotuning_ceiling_sets_explicit_buffers(fake_proc):
    fake_proc("ipv4/tcp_rmem", "4096 131072 1048576")
    fake_proc("ipv4/tcp_wmem", "4096 16384 1048576")
    with socket.socket() as s:
        got = sockopts.tune_socket(s, bdp_bytes=4 << 20, congestion=None)
        assert got["requested_buf_bytes"] == 8 << 20 and got["buffers"] == "explicit"
    with socket.socket() as s:  # a ceiling that suffices: autotuning stays on
        fake_proc("ipv4/tcp_rmem", "4096 131072 67108864")
        fake_proc("ipv4/tcp_wmem", "4096 16384 67108864")
        assert sockopts.tune_socket(s, bdp_bytes=4 << 20, congestion=None)["buffers"] == "autotuned"


@pytest.mark.parametrize(
    "kw, requested",
    [({"buffer_bytes": 1 << 20}, 1 << 20), ({"bdp_bytes": 64 << 20}, sockopts.MAX_BUF_BYTES), ({}, None)],
)
def test_tune_socket_is_never_fatal_and_reports_what_took(kw, requested):
    """Rule 1: a socket that takes no option at all (here: closed) gets a report of defaults, not an error."""
    s = socket.socket()
    s.close()
    got = sockopts.tune_socket(s, **kw)
    assert got["nodelay"] is False and got["buffers"] == "autotuned"
    assert got["sndbuf_bytes"] is None and got["rcvbuf_bytes"] is None
    assert got["congestion"] is None and got["congestion_requested"] == "bbr"
    assert got["notsent_lowat_bytes"] is None
    assert got["requested_buf_bytes"] == requested
    assert sockopts.set_buffer_bytes(s, 1 << 20) is False


class _Refusing(socket.socket):
    """A socket whose SO_BINDTODEVICE the kernel refuses with ``errno``."""

    def __init__(self, err: int) -> None:
        super().__init__()
        self.err = err

    def setsockopt(self, level, opt, value, *rest):  # type: ignore[override]
        if opt == sockopts.SO_BINDTODEVICE:
            raise OSError(self.err, os.strerror(self.err))
        return super().setsockopt(level, opt, value, *rest)


@pytest.mark.parametrize(
    "err, why",
    [
        (errno.EPERM, "not permitted (needs CAP_NET_RAW)"),
        (errno.ENODEV, "no such interface"),
        (errno.EINVAL, os.strerror(errno.EINVAL)),
    ],
)
def test_bind_source_names_why_the_kernel_refused_the_interface(err, why):
    with _Refusing(err) as s, pytest.raises(ConfigError) as ei:
        sockopts.bind_source(s, interface="eth0")
    assert str(ei.value) == f"cannot bind to interface 'eth0': {why}"


def test_bind_source_names_why_the_kernel_refused_the_address():
    with socket.create_server(("127.0.0.1", 0)) as ls, socket.create_connection(ls.getsockname()) as s:
        with pytest.raises(ConfigError, match="cannot bind to source address '127.0.0.1': Invalid argument"):
            sockopts.bind_source(s, source_address="127.0.0.1")  # connected already: EINVAL


# -- framesock -------------------------------------------------------------------------------------


@contextmanager
def frame_pair(**kw) -> Iterator[tuple[FrameSocket, socket.socket]]:
    """A FrameSocket and the raw peer socket, over a socketpair."""
    a, b = socket.socketpair()
    fs = FrameSocket(a, timeout_s=WAIT_S, **kw)
    try:
        yield fs, b
    finally:
        fs.close()
        b.close()


def _data_frame(raw: bytes, offset: int = 0) -> tuple[bytes, bytes]:
    f = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=1e11)).encode(raw, offset=offset, transfer_id=7)
    return f.header, bytes(f.payload)


def test_a_header_that_arrives_in_pieces_within_header_timeout_is_read_whole():
    """Rule 5: the rest of a started header may follow within header_timeout_s."""
    header, payload = _data_frame(b"\x01" * 4096)
    with frame_pair(header_timeout_s=WAIT_S) as (fs, peer):
        peer.sendall(header[:10])
        timer = threading.Timer(0.05, peer.sendall, (header[10:] + payload,))
        timer.start()
        try:
            h = fs.recv_header()
        finally:
            timer.join(WAIT_S)
        assert (h.raw_len, h.transfer_id) == (4096, 7)
        assert bytes(fs.recv_payload(h)) == payload
        assert fs.bytes_received == C.HEADER_SIZE + 4096


def test_a_peer_that_closes_mid_payload_is_a_broken_resource():
    """Rule 4: mid-frame is an error (between frames is a clean end: None)."""
    header, payload = _data_frame(b"\x02" * 4096)
    with frame_pair() as (fs, peer):
        peer.sendall(header + payload[:1000])
        peer.shutdown(socket.SHUT_WR)
        h = fs.recv_header()
        with pytest.raises(BrokenResourceError, match="mid-frame \\(1000 of 4096 bytes\\)"):
            fs.recv_payload(h)
    with frame_pair() as (fs, peer):
        peer.sendall(header + payload)
        peer.shutdown(socket.SHUT_WR)
        fs.skip_payload(fs.recv_header())
        assert fs.recv_header() is None


def test_an_empty_payload_reads_nothing_from_the_stream():
    zero_h, zero_p = _data_frame(bytes(4096))
    next_h, next_p = _data_frame(b"\x03" * 4096, offset=4096)
    assert zero_p == b""
    with frame_pair() as (fs, peer):
        peer.sendall(zero_h + next_h + next_p)
        h = fs.recv_header()
        assert h.codec == C.CODEC_ZERO and fs.recv_payload(h) == bytearray()
        h2 = fs.recv_header()  # still in step
        assert h2.offset == 4096 and bytes(fs.recv_payload(h2)) == next_p


def test_recv_control_takes_the_expected_control_frames_and_the_peers_error():
    with frame_pair() as (fs, peer):
        peer.sendall(encode_control(C.FRAME_ERROR, 1, {"code": C.ERR_STORAGE, "message": "disk full"}))
        h, msg = fs.recv_control(C.FRAME_WELCOME)  # an ERROR comes back whatever was expected
        assert h.frame_type == C.FRAME_ERROR and msg == {"code": C.ERR_STORAGE, "message": "disk full"}
        peer.sendall(encode_control(C.FRAME_DONE, 1, {"ok": True}))
        with pytest.raises(RemoteProtocolError, match="unexpected frame type") as ei:
            fs.recv_control(C.FRAME_WELCOME)
        assert ei.value.code == C.ERR_BAD_FRAME_TYPE
    with frame_pair() as (fs, peer):
        header, payload = _data_frame(b"\x04" * 4096)
        peer.sendall(header + payload)
        with pytest.raises(RemoteProtocolError, match="data frame where a control frame") as ei:
            fs.recv_control()
        assert ei.value.code == C.ERR_BAD_FRAME_TYPE


def test_a_plain_payload_lands_in_the_file_through_the_slot_hashed_by_block(tmp_path):
    payload = os.urandom(3 * (1 << 20) + 5)
    header, _ = _data_frame(payload)
    with socket.create_server(("127.0.0.1", 0)) as ls, socket.create_connection(ls.getsockname()) as peer:
        conn, _ = ls.accept()
        fs = FrameSocket(conn, timeout_s=WAIT_S)
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert fs.can_recv_direct
            t = threading.Thread(target=peer.sendall, args=(header + payload,))
            t.start()
            h = fs.recv_header()
            blocks, chash = fs.recv_blocks_into(fd, 100, h.enc_len, bytearray(1 << 20))
            t.join()
            assert os.pread(fd, len(payload), 100) == payload and os.fstat(fd).st_size == 100 + len(payload)
            assert (chash, blocks) == chunk_hash(payload) and chash == h.raw_hash
            assert fs.bytes_received == C.HEADER_SIZE + len(payload)
            peer.sendall(b"x" * 10)
            peer.close()
            with pytest.raises(BrokenResourceError, match="mid-frame \\(10 of 20 bytes\\)"):
                fs.recv_blocks_into(fd, 0, 20, bytearray(1 << 20))
        finally:
            os.close(fd)
            fs.close()
        fs.close()  # twice is harmless


# -- fetch: "an interrupted fetch never leaves a partial file at the destination" ---------------

OBJ = bytes(range(256)) * 40 + b"tail" * 300  # 11440 bytes: chunks of 4096, 4096, 3248
CHUNK = 4096
SPANS = [(0, 4096), (4096, 4096), (8192, OBJ.__len__() - 8192)]


def _chunk(i: int) -> bytes:
    off, ln = SPANS[i]
    f = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=1e11)).encode(
        OBJ[off : off + ln], offset=off, transfer_id=1
    )
    return f.tobytes()


def _welcome(**over) -> bytes:
    msg = {"mode": "fetch", "size": len(OBJ), "digest": object_digest(OBJ).hex(), "chunk_size": CHUNK}
    msg.update(over)
    return encode_control(C.FRAME_WELCOME, 1, {k: v for k, v in msg.items() if v is not None})


def _done(digest: str | None = None) -> bytes:
    return encode_control(C.FRAME_DONE, 1, {"digest": digest or object_digest(OBJ).hex(), "size": len(OBJ)})


@contextmanager
def fetch_server(script: list[bytes]) -> Iterator[tuple[str, int, dict]]:
    """A loopback server for one fetch: reads the HELLO, sends ``script``, then reads until the client closes."""
    ls = socket.create_server(("127.0.0.1", 0))
    seen: dict = {}

    def serve() -> None:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            fs = FrameSocket(c, timeout_s=WAIT_S)
            seen["hello"] = fs.recv_control(C.FRAME_HELLO)[1]
            try:  # the client hangs up as soon as it sees something it refuses: the rest may not go
                for blob in script:
                    c.sendall(blob)
                c.shutdown(socket.SHUT_WR)  # the script is all the client gets
                got = fs.recv_control()
                seen["after"] = got[1] if got else None
            except (OSError, RemoteProtocolError):
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield "127.0.0.1", ls.getsockname()[1], seen
    finally:
        ls.close()
        th.join(WAIT_S)
        assert not th.is_alive()


def _fetch(tmp_path, host: str, port: int) -> dict:
    tp = TransportConfig(stall_timeout_s=WAIT_S, connect_timeout_s=WAIT_S)
    return fetch("vm/a", host, port, str(tmp_path / "out"), tp, PLAIN, node_id="n1")


def test_a_fetch_in_any_chunk_order_is_verified_and_published(tmp_path):
    with fetch_server([_welcome(), _chunk(2), _chunk(0), _chunk(1), _done()]) as (host, port, seen):
        t0 = time.monotonic()
        r = _fetch(tmp_path, host, port)
        assert time.monotonic() - t0 < WAIT_S
    assert (tmp_path / "out").read_bytes() == OBJ
    assert os.listdir(tmp_path) == ["out"]  # no temporary file left beside it
    assert r["verified"] and r["size"] == len(OBJ) and r["digest"] == object_digest(OBJ).hex()
    assert r["wire_bytes"] == sum(len(_chunk(i)) for i in range(3))
    assert seen["hello"]["op"] == "fetch" and seen["hello"]["key"] == "vm/a" and seen["hello"]["node"] == "n1"
    assert seen["after"] == {"reason": "done"}


@pytest.mark.parametrize(
    "script, exc, match",
    [
        ([_welcome(mode="full")], RemoteProtocolError, "malformed fetch answer"),
        ([_welcome(digest=None)], RemoteProtocolError, "malformed fetch answer"),
        ([_welcome(chunk_size=None)], RemoteProtocolError, "malformed fetch answer"),
        (
            [
                _welcome(),
                _chunk(0),
                encode_control(C.FRAME_ERROR, 1, {"code": C.ERR_STORAGE, "message": "gone"}),
            ],
            TransferError,
            "receiver refused: gone",
        ),
        ([_welcome(), _chunk(0), _chunk(0)], RemoteProtocolError, "does not fit the object"),
        (
            [_welcome(chunk_size=8192), _chunk(1)],
            RemoteProtocolError,
            "does not fit the object",
        ),  # misaligned
        (
            [_welcome(), _chunk(0), _chunk(1), _chunk(2), _done("00" * 16)],
            IntegrityError,
            "fails its digest check",
        ),
        (
            [_welcome(digest="11" * 16), _chunk(0), _chunk(1), _chunk(2), _done("11" * 16)],
            IntegrityError,
            "fails its digest check",
        ),
        (
            [_welcome(), encode_control(C.FRAME_ACK, 1, {"chunks": [0]})],
            RemoteProtocolError,
            "unexpected frame",
        ),
    ],
    ids=[
        "wrong-mode",
        "no-digest",
        "no-chunk-size",
        "error-frame",
        "duplicate-chunk",
        "misaligned-chunk",
        "done-digest-differs",
        "object-digest-differs",
        "control-frame-mid-object",
    ],
)
def test_a_fetch_that_fails_leaves_nothing_behind(tmp_path, script, exc, match):
    with fetch_server(script) as (host, port, _):
        with pytest.raises(exc, match=match):
            _fetch(tmp_path, host, port)
    assert os.listdir(tmp_path) == []


def test_a_fetch_cut_off_mid_object_keeps_what_arrived_for_a_resume(tmp_path):
    import json

    from dwcp.transport.fetch import PART_SUFFIX

    with fetch_server([_welcome(), _chunk(0)]) as (host, port, _):
        with pytest.raises(BrokenResourceError, match="mid-object"):
            _fetch(tmp_path, host, port)
    assert sorted(os.listdir(tmp_path)) == ["out" + PART_SUFFIX, "out" + PART_SUFFIX + ".json"]
    st = json.loads((tmp_path / ("out" + PART_SUFFIX + ".json")).read_text())
    assert list(st["hashes"]) == ["0"] and st["key"] == "vm/a" and st["size"] == len(OBJ)


def test_a_fetch_refuses_a_delta_chunk_it_has_no_baseline_for(tmp_path):
    base = b"\xff" + OBJ[1:4096]  # the version the server (wrongly) assumes the client holds
    f = ChunkEncoder().encode(OBJ[:4096], base=base, base_digest=bytes(range(1, 17)), transfer_id=1)
    assert f.codec in C.DELTA_CODECS
    with fetch_server([_welcome(), f.tobytes()]) as (host, port, _):
        with pytest.raises(RemoteProtocolError, match="unexpected frame") as ei:
            _fetch(tmp_path, host, port)
    assert ei.value.code == C.ERR_BAD_FRAME_TYPE
    assert os.listdir(tmp_path) == []


def test_a_refused_fetch_carries_the_servers_code(tmp_path):
    refusal = encode_control(C.FRAME_ERROR, 1, {"code": C.ERR_FORBIDDEN, "message": "n1 may not read vm/a"})
    with fetch_server([refusal]) as (host, port, _):
        with pytest.raises(TransferError, match="may not read") as ei:
            _fetch(tmp_path, host, port)
    assert ei.value.code == C.ERR_FORBIDDEN and os.listdir(tmp_path) == []
