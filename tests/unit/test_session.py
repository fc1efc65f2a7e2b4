"""The receiving side of the transfer session, without sockets: HELLO validation, the plan, admission
of DATA headers, how chunks are written, failure and commit -- and a stateful test of its invariants."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp._backend import impl as K
from dwcp.errors import RemoteProtocolError
from dwcp.storage import MAX_CHUNKS
from dwcp.transport.session import (
    ADMIT_BUSY,
    ADMIT_CLAIMED,
    ADMIT_HELD,
    CAPS,
    WRITE_ALL,
    WRITE_DIRTY_PAGES,
    WRITE_NONZERO_PAGES,
    WRITE_SKIP,
    Plan,
    ReceiveSession,
    negotiate,
    parse_send,
    plan,
)
from dwcp.wire import consts as C

MiB = 1 << 20
DIGEST, BASE, OTHER = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
ALL_CAPS = sorted(CAPS)


def hello(**kw) -> dict:
    h = {"v": 1, "role": "control", "op": "send", "key": "vm/1", "size": 10 * MiB, "digest": DIGEST.hex(),
         "chunk_size": MiB, "caps": ALL_CAPS}  # fmt: skip
    h.update(kw)
    return h


def header(tid=7, offset=0, raw_len=MiB, codec=C.CODEC_RAW, base=b"\0" * 16):
    enc_len = raw_len if codec == C.CODEC_RAW else 16  # a raw frame carries its raw length
    raw = K.pack_header(C.FRAME_DATA, codec, 0, tid, offset, raw_len, enc_len, raw_hash=0, base_digest=base)
    return K.parse_header(raw)


def session(held=b"", *, mode="full", size=10 * MiB, zero_filled=True, seeded=False, caps=ALL_CAPS):
    req = parse_send(
        7, hello(size=size, caps=caps, **({"base_digest": BASE.hex()} if mode != "full" else {}))
    )
    p = Plan(mode, None if mode == "full" else BASE, MiB, "")
    return ReceiveSession(req, p, held=held, zero_filled=zero_filled, seeded=seeded, now=100.0)


# -- HELLO and plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["key", "size", "digest", "chunk_size"])
def test_a_send_hello_lacking_a_field_is_malformed(drop):
    h = hello()
    del h[drop]
    with pytest.raises(RemoteProtocolError, match=f"lacks '{drop}'") as ei:
        parse_send(7, h)
    assert ei.value.code == C.ERR_MALFORMED


@pytest.mark.parametrize("key", ["vm/1\n", "../x", "", "a b"])
def test_a_bad_key_is_a_bad_field(key):
    with pytest.raises(RemoteProtocolError, match="invalid key") as ei:
        parse_send(7, hello(key=key))
    assert ei.value.code == C.ERR_BAD_FIELD


def test_forward_targets_are_host_port():
    assert parse_send(7, hello(forward={"to": "[::1]:7700"})).forward_to == ("::1", 7700)
    for bad in ("nowhere", "h:0", "h:99999", ":7700", "h:x"):
        with pytest.raises(RemoteProtocolError, match="not HOST:PORT"):
            parse_send(7, hello(forward={"to": bad}))


def test_capabilities_are_what_both_sides_have():
    assert negotiate(None) == frozenset() and negotiate(["zstd", "quantum"]) == {"zstd"}
    assert parse_send(7, hello(caps=[*ALL_CAPS, "future"])).caps == CAPS


def test_the_plan_picks_delta_then_pages_then_full():
    req = parse_send(7, hello(base_digest=BASE.hex()))
    assert plan(req, holds_proposed=True, latest=None, resume_chunk_size=None) == Plan("delta", BASE, MiB, "")
    got = plan(req, holds_proposed=False, latest=(OTHER, 10 * MiB), resume_chunk_size=None)
    assert (got.mode, got.base_digest) == ("pages", OTHER)
    assert plan(req, holds_proposed=False, latest=(OTHER, 5 * MiB), resume_chunk_size=None).mode == "full"
    assert plan(req, holds_proposed=False, latest=(DIGEST, 10 * MiB), resume_chunk_size=None).mode == "full"
    # a sender without the delta or pages capability gets full sends
    plain = parse_send(7, hello(base_digest=BASE.hex(), caps=["zstd"]))
    assert plan(plain, holds_proposed=True, latest=(OTHER, 10 * MiB), resume_chunk_size=None).mode == "full"


def test_the_plan_keeps_an_interrupted_attempts_chunks_and_bounds_the_chunk_count():
    req = parse_send(7, hello())
    p = plan(req, holds_proposed=False, latest=None, resume_chunk_size=2 * MiB)
    assert p.chunk_size == 2 * MiB and "interrupted attempt" in p.why_chunk_size
    no_resume = parse_send(7, hello(caps=["zstd"]))
    assert plan(no_resume, holds_proposed=False, latest=None, resume_chunk_size=2 * MiB).chunk_size == MiB
    huge = parse_send(7, hello(size=1 << 40, chunk_size=4096))
    p = plan(huge, holds_proposed=False, latest=None, resume_chunk_size=4096)  # too small to keep
    assert -(-(1 << 40) // p.chunk_size) <= MAX_CHUNKS and "at most" in p.why_chunk_size


# -- admission ---------------------------------------------------------------------------------


def test_admission_refuses_what_does_not_fit_this_transfer():
    s = session(mode="delta", seeded=True, zero_filled=False)
    cases = [
        (header(tid=8), C.ERR_BAD_FIELD, "of transfer 8"),
        (header(offset=MiB + 4096), C.ERR_BAD_LENGTH, "does not fit"),
        (header(offset=10 * MiB), C.ERR_BAD_LENGTH, "does not fit"),
        (header(raw_len=MiB - 4096), C.ERR_BAD_LENGTH, "does not fit"),
        (header(codec=C.CODEC_XBZRLE, base=OTHER), C.ERR_UNKNOWN_BASELINE, "baseline is " + BASE.hex()),
    ]
    for h, code, what in cases:
        with pytest.raises(RemoteProtocolError, match=what) as ei:
            s.admit(h)
        assert ei.value.code == code
    assert s.admit(header(codec=C.CODEC_XBZRLE, base=BASE)) == (ADMIT_CLAIMED, 0)
    with pytest.raises(RemoteProtocolError, match="baseline is none"):
        session().admit(header(codec=C.CODEC_XBZRLE, base=BASE))


def test_a_chunk_is_received_by_one_stream_at_a_time():
    s = session(held=bytes([0b10]))
    assert s.admit(header(offset=MiB)) == (ADMIT_HELD, 1)  # resumed: acknowledged again
    assert s.admit(header()) == (ADMIT_CLAIMED, 0)
    assert s.admit(header()) == (ADMIT_BUSY, 0)  # another stream has it
    s.rejected(0)  # failed its hash: claimable again
    assert s.admit(header()) == (ADMIT_CLAIMED, 0)
    s.landed(0, now=101.0)
    assert s.admit(header()) == (ADMIT_HELD, 0) and s.idle_for(102.0) == 1.0
    assert s.chunks_received == 1 and s.chunks_nacked == 1 and s.missing() == 8


def test_the_last_chunk_is_short():
    s = session(size=3 * MiB + 4096)
    assert s.nchunks == 4 and s.span(3) == (3 * MiB, 4096)
    assert s.admit(header(offset=3 * MiB, raw_len=4096)) == (ADMIT_CLAIMED, 3)


@pytest.mark.parametrize(
    "zero_filled, seeded, expect",
    [
        (True, False, {C.CODEC_ZERO: WRITE_SKIP, C.CODEC_SPARSE: WRITE_NONZERO_PAGES, C.CODEC_XBZRLE: WRITE_ALL,
                       C.CODEC_RAW: WRITE_ALL}),
        (False, True, {C.CODEC_ZERO: WRITE_ALL, C.CODEC_SPARSE: WRITE_ALL, C.CODEC_XBZRLE: WRITE_DIRTY_PAGES,
                       C.CODEC_RAW: WRITE_ALL}),
        # a partial seeded from another version than this transfer's base: every byte is written
        (False, False, {C.CODEC_ZERO: WRITE_ALL, C.CODEC_SPARSE: WRITE_ALL, C.CODEC_XBZRLE: WRITE_ALL,
                        C.CODEC_RAW: WRITE_ALL}),
    ],
)  # fmt: skip
def test_how_a_chunk_is_written_follows_what_the_partial_holds(zero_filled, seeded, expect):
    s = session(mode="delta", zero_filled=zero_filled, seeded=seeded)
    assert {codec: s.write_mode(codec) for codec in expect} == expect


def test_a_full_transfer_is_never_seeded():
    assert not session(mode="full", seeded=True).seeded


# -- failure, commit, WELCOME ---------------------------------------------------------------------


def test_failure_is_sticky_and_the_first_one_wins():
    s = session()
    assert s.fail(C.ERR_STORAGE, "disk full") and not s.fail(C.ERR_BUSY, "taken over")
    assert s.failure == (C.ERR_STORAGE, "disk full")
    assert s.admit(header()) == (ADMIT_BUSY, 0)  # nothing more is received
    with pytest.raises(RemoteProtocolError, match="failed transfer: disk full"):
        s.check_commit()


def test_commit_needs_every_chunk():
    s = session(size=2 * MiB)
    with pytest.raises(RemoteProtocolError, match="2 chunks still missing") as ei:
        s.check_commit()
    assert ei.value.code == C.ERR_TRUNCATED
    for i in range(2):
        assert s.admit(header(offset=i * MiB))[0] == ADMIT_CLAIMED
        s.landed(i, now=100.0)
    s.check_commit()


def test_welcome_says_the_plan_and_what_is_held():
    w = session(held=bytes([0b101]), mode="delta").welcome("ab" * 32, "rx")
    assert w == {"mode": "delta", "token": "ab" * 32, "chunk_size": MiB, "node": "rx", "caps": ALL_CAPS,
                 "have": "0500", "resumed_chunks": 2, "base_digest": BASE.hex()}  # fmt: skip
    w = session(held=bytes([0b101]), caps=["zstd"]).welcome("ab" * 32, "rx")
    assert "have" not in w and "base_digest" not in w and w["caps"] == ["zstd"]


# -- the invariants, over any interleaving ----------------------------------------------------------


class ReceiveMachine(RuleBasedStateMachine):
    """Streams claim, land, fail and resend chunks of one transfer, and frames of other transfers and
    misfit frames arrive; the session never holds a chunk that did not land, never gives one chunk to
    two streams, never admits another transfer's frame, and allows commit exactly when all landed."""

    N = 6

    def __init__(self) -> None:
        super().__init__()
        self.s = session(size=self.N * MiB - 4096)
        self.landed: set[int] = set()
        self.claimed: set[int] = set()

    @rule(i=st.integers(0, N - 1))
    def data_frame(self, i):
        verdict, idx = self.s.admit(header(offset=i * MiB, raw_len=self.s.span(i)[1]))
        assert idx == i
        if i in self.landed:
            assert verdict == ADMIT_HELD
        elif i in self.claimed or self.s.failure is not None:
            assert verdict == ADMIT_BUSY
        else:
            assert verdict == ADMIT_CLAIMED
            self.claimed.add(i)

    @precondition(lambda self: self.claimed)
    @rule(data=st.data(), outcome=st.sampled_from(["landed", "rejected", "released"]))
    def chunk_ends(self, data, outcome):
        i = data.draw(st.sampled_from(sorted(self.claimed)))
        self.claimed.discard(i)
        if outcome == "landed":
            self.s.landed(i, now=200.0)
            self.landed.add(i)
        else:
            getattr(self.s, outcome)(i)

    @rule(tid=st.integers(1, 2**63 - 1).filter(lambda t: t != 7), i=st.integers(0, N - 1))
    def frame_of_another_transfer(self, tid, i):
        with pytest.raises(RemoteProtocolError):
            self.s.admit(header(tid=tid, offset=i * MiB))

    @rule(off=st.integers(0, 2 * N * MiB))
    def misfit_offset(self, off):
        if off % MiB == 0 and off < self.N * MiB:
            return
        with pytest.raises(RemoteProtocolError):
            self.s.admit(header(offset=off))

    @rule()
    def disk_fails(self):
        self.s.fail(C.ERR_STORAGE, "disk")

    @invariant()
    def held_is_what_landed(self):
        assert {i for i in range(self.N) if self.s.is_held(i)} == self.landed
        assert self.s.missing() == self.N - len(self.landed)

    @invariant()
    def commit_only_when_complete_and_healthy(self):
        ok = len(self.landed) == self.N and self.s.failure is None
        try:
            self.s.check_commit()
            assert ok
        except RemoteProtocolError:
            assert not ok


TestReceiveMachine = ReceiveMachine.TestCase
