"""The receiving side of the transfer session, without sockets: HELLO validation, the plan, admission
of DATA headers, how chunks are written, failure and commit -- and a stateful test of its invariants;
then both sides' states (rules 11, 12): the tables, every event in every state, and whose fault an
illegal one is."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp._backend import impl as K
from dwcp._testbase.sessionpair import SessionPair
from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.storage import MAX_CHUNKS
from dwcp.transport.session import (
    ADMIT_BUSY,
    ADMIT_CLAIMED,
    ADMIT_HELD,
    CAPS,
    RECEIVE_TRANSITIONS,
    RECV_COMMITTED,
    RECV_COMMITTING,
    RECV_FAILED,
    RECV_PLANNED,
    RECV_RECEIVING,
    SEND_COMMITTED,
    SEND_DONE_SENT,
    SEND_FAILED,
    SEND_HELLO_SENT,
    SEND_IDLE,
    SEND_TRANSFERRING,
    SEND_TRANSITIONS,
    WRITE_ALL,
    WRITE_DIRTY_PAGES,
    WRITE_NONZERO_PAGES,
    WRITE_SKIP,
    DictRef,
    Plan,
    ReceiveSession,
    SendSession,
    negotiate,
    parse_send,
    plan,
)
from dwcp.wire import consts as C

MiB = 1 << 20
DIGEST, BASE, OTHER = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
ALL_CAPS = sorted(CAPS)


def hello(**kw) -> dict:
    h = {"v": 3, "role": "control", "op": "send", "key": "vm/1", "size": 10 * MiB, "digest": DIGEST.hex(),
         "chunk_size": MiB, "caps": ALL_CAPS}  # fmt: skip
    h.update(kw)
    return h


def header(tid=7, offset=0, raw_len=MiB, codec=C.CODEC_RAW, base=b"\0" * 16):
    enc_len = raw_len if codec == C.CODEC_RAW else 16  # a raw frame carries its raw length
    raw = K.pack_header(C.FRAME_DATA, codec, 0, tid, offset, raw_len, enc_len, raw_hash=0, base_digest=base)
    return K.parse_header(raw)


def session(held=b"", *, mode="full", size=10 * MiB, zero_filled=True, seeded=False, caps=ALL_CAPS,
            welcomed=True):  # fmt: skip
    """A receiving session; ``welcomed``: its WELCOME went out, so DATA may come (RECV_RECEIVING)."""
    req = parse_send(
        7, hello(size=size, caps=caps, **({"base_digest": BASE.hex()} if mode != "full" else {}))
    )
    p = Plan(mode, None if mode == "full" else BASE, MiB, "")
    s = ReceiveSession(req, p, held=held, zero_filled=zero_filled, seeded=seeded, now=100.0)
    if welcomed:
        s.welcome("ab" * 32, "rx")
    return s


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


def test_a_replication_chain_names_its_hops_and_how_many_must_hold_it():
    req = parse_send(7, hello(forward={"to": "a:1", "then": ["[::1]:2", "c:3"], "ack": 3}))
    assert req.forward_to == ("a", 1) and req.forward_then == (("::1", 2), ("c", 3)) and req.forward_ack == 3
    plain = parse_send(7, hello(forward={"to": "a:1"}))  # a relay: no chain, no ack
    assert plain.forward_then == () and plain.forward_ack is None
    with pytest.raises(RemoteProtocolError, match=r"forward.then 'c' is not HOST:PORT"):
        parse_send(7, hello(forward={"to": "a:1", "then": ["c"]}))
    with pytest.raises(RemoteProtocolError, match="forward.ack 3 is more copies than its chain of 2") as ei:
        parse_send(7, hello(forward={"to": "a:1", "then": ["b:2"], "ack": 3}))
    assert ei.value.code == C.ERR_BAD_FIELD


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
    w = session(held=bytes([0b101]), mode="delta", welcomed=False).welcome("ab" * 32, "rx")
    assert w == {"mode": "delta", "token": "ab" * 32, "chunk_size": MiB, "node": "rx", "caps": ALL_CAPS,
                 "have": "0500", "resumed_chunks": 2, "base_digest": BASE.hex()}  # fmt: skip
    w = session(held=bytes([0b101]), caps=["zstd"], welcomed=False).welcome("ab" * 32, "rx")
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


# -- the states (rules 11, 12) ----------------------------------------------------------------------

PG = C.PAGE_SIZE
SEND_STATES = [SEND_IDLE, SEND_HELLO_SENT, SEND_TRANSFERRING, SEND_DONE_SENT, SEND_COMMITTED, SEND_FAILED]
RECV_STATES = [RECV_PLANNED, RECV_RECEIVING, RECV_COMMITTING, RECV_COMMITTED, RECV_FAILED]
SEND_STREAM_EVENTS = {"data_hello", "take", "sent", "acked", "nacked", "requeued"}
RECV_STREAM_EVENTS = {"admit", "landed", "rejected", "released"}


DICT = DictRef(0x5EED, b"\x05" * 16, 512)  # a dictionary HELLO names, WELCOME asks for (rule 13)
HELD_DICT = SimpleNamespace(id=DICT.id, digest=DICT.digest)  # what the driver verified, to the session


def dict_frame(ref: DictRef = DICT):
    return K.parse_header(
        K.pack_header(C.FRAME_DICT, C.CODEC_RAW, 0, 7, ref.id, ref.size, ref.size, raw_hash=0)
    )


def send_session_in(state: str) -> SendSession:
    """A one-page send in ``state``; past WELCOME its one chunk is acknowledged (so DONE may be built)."""
    tx = SendSession(7, "vm/1", PG, DIGEST, PG, node="tx", dictionary=DICT)
    if state != SEND_IDLE:
        tx.hello()
    if state not in (SEND_IDLE, SEND_HELLO_SENT):
        tx.on_welcome({"mode": "full", "token": "t", "chunk_size": PG, "need_dict": True})
        tx.acked([0])
    if state == SEND_FAILED:
        tx.fail("the receiver refused")
    if state in (SEND_DONE_SENT, SEND_COMMITTED):
        tx.done()
    if state == SEND_COMMITTED:
        tx.on_done({"ok": True, "digest": DIGEST.hex()})
    assert tx.state == state
    return tx


def receive_session_in(state: str) -> ReceiveSession:
    """A one-chunk receive in ``state``; the chunk is held (a resumed partial), so DONE may commit it."""
    req = parse_send(7, hello(size=MiB, dict=DICT.to_wire()))
    rx = ReceiveSession(
        req, Plan("full", None, MiB, ""), held=b"\x01", zero_filled=True, seeded=False, now=100.0
    )
    if state != RECV_PLANNED:
        rx.welcome("t", "rx")
    if state == RECV_FAILED:
        rx.fail(C.ERR_STORAGE, "disk full")
    if state in (RECV_COMMITTING, RECV_COMMITTED):
        rx.on_done()
    if state == RECV_COMMITTED:
        rx.stored()
    assert rx.state == state
    return rx


SEND_CALLS = {
    "hello": lambda tx: tx.hello(),
    "on_welcome": lambda tx: tx.on_welcome({"mode": "full", "token": "t", "chunk_size": PG}),
    "data_hello": lambda tx: tx.data_hello(0),
    "take": lambda tx: tx.take(0),
    "sent": lambda tx: tx.sent(0, PG, PG),
    "acked": lambda tx: tx.acked([0]),
    "nacked": lambda tx: tx.nacked(0, "busy"),
    "requeued": lambda tx: tx.requeued([0]),
    "done": lambda tx: tx.done(),
    "on_done": lambda tx: tx.on_done({"ok": True, "digest": DIGEST.hex()}),
    "close": lambda tx: tx.close(),
    "fail": lambda tx: tx.fail("why"),
    "dictionary_sent": lambda tx: tx.dictionary_sent(),
}
RECV_CALLS = {
    "welcome": lambda rx: rx.welcome("t", "rx"),
    "admit": lambda rx: rx.admit(header()),
    "landed": lambda rx: rx.landed(0, 101.0),
    "rejected": lambda rx: rx.rejected(0),
    "released": lambda rx: rx.released(0),
    "on_done": lambda rx: rx.on_done(),
    "stored": lambda rx: rx.stored(),
    "fail": lambda rx: rx.fail(C.ERR_BUSY, "taken over"),
    "check_dict_frame": lambda rx: rx.check_dict_frame(dict_frame()),
    "dictionary_arrived": lambda rx: rx.dictionary_arrived(HELD_DICT),
}


def _snapshot(s) -> tuple:
    if isinstance(s, SendSession):
        return s.state, s.failed, s.remaining, s.chunks_sent, s.chunks_resent, s.mode
    return s.state, s.failure, s.held_count, s.chunks_received, s.chunks_nacked, s.wire_bytes


@pytest.mark.parametrize(
    "table, states, stream_events, failed, committed",
    [(SEND_TRANSITIONS, SEND_STATES, SEND_STREAM_EVENTS, SEND_FAILED, SEND_COMMITTED),
     (RECEIVE_TRANSITIONS, RECV_STATES, RECV_STREAM_EVENTS, RECV_FAILED, RECV_COMMITTED)],
    ids=["send", "receive"],
)  # fmt: skip
def test_the_transition_tables(table, states, stream_events, failed, committed):
    assert list(table) == states  # a row per state
    for state, row in table.items():
        assert set(row.values()) <= set(states)
        # failing is always allowed: it fails, or a committed transfer stays committed
        assert row["fail"] == (state if state == committed else failed)
        for ev in stream_events & set(row):  # a stream's events change no state
            assert row[ev] == state
        if ev := next(iter(stream_events & set(row)), None):
            assert stream_events <= set(row), (state, ev)  # all of them or none
    for final in (failed, committed):  # nothing leads out of the end
        assert set(table[final].values()) == {final}
    # the one way through
    path = (
        ["hello", "on_welcome", "done", "on_done"]
        if table is SEND_TRANSITIONS
        else ["welcome", "on_done", "stored"]
    )
    state = states[0]
    for ev in path:
        state = table[state][ev]
    assert state == committed


@pytest.mark.parametrize("table", [SEND_TRANSITIONS, RECEIVE_TRANSITIONS], ids=["send", "receive"])
def test_the_docstring_draws_the_tables(table):
    """Rule 11's drawings and the tables say the same: each arrow drawn is in the table, and each transition
    of the table but the stream events' and ``fail`` is drawn."""
    import dwcp.transport.session as S

    drawn = {
        (a, ev): b for a, ev, b in re.findall(r"(\w+)\s+--(\w+)-*>\s+(\w+)", S.__doc__ or "") if a in table
    }
    for (a, ev), b in drawn.items():
        assert table[a].get(ev) == b, (a, ev, b)
    streams = SEND_STREAM_EVENTS | RECV_STREAM_EVENTS
    for a, row in table.items():
        for ev, b in row.items():
            if ev not in streams and ev != "fail":
                assert drawn.get((a, ev)) == b, f"{a} --{ev}--> {b} is not drawn"


@pytest.mark.parametrize("state", SEND_STATES)
@pytest.mark.parametrize("event", sorted(SEND_CALLS))
def test_a_send_event_is_allowed_only_where_the_table_says(state, event):
    assert set(SEND_CALLS) == {ev for row in SEND_TRANSITIONS.values() for ev in row}
    tx = send_session_in(state)
    to = SEND_TRANSITIONS[state].get(event)
    if to is None:
        before = _snapshot(tx)
        with pytest.raises(LocalProtocolError, match=f"in state {state}$"):
            SEND_CALLS[event](tx)
        assert _snapshot(tx) == before  # refused, and nothing changed
    else:
        SEND_CALLS[event](tx)
        assert tx.state == to


@pytest.mark.parametrize("state", RECV_STATES)
@pytest.mark.parametrize("event", sorted(RECV_CALLS))
def test_a_receive_event_is_allowed_only_where_the_table_says(state, event):
    assert set(RECV_CALLS) == {ev for row in RECEIVE_TRANSITIONS.values() for ev in row}
    rx = receive_session_in(state)
    to = RECEIVE_TRANSITIONS[state].get(event)
    if to is None:
        before = _snapshot(rx)
        with pytest.raises(LocalProtocolError, match=f"in state {state}$"):
            RECV_CALLS[event](rx)
        assert _snapshot(rx) == before
    elif (state, event) == (RECV_FAILED, "on_done"):  # the sender's DONE crossed our failure: it hears it
        with pytest.raises(RemoteProtocolError, match="failed transfer: disk full") as ei:
            rx.on_done()
        assert ei.value.code == C.ERR_STORAGE and rx.state == RECV_FAILED
    else:
        RECV_CALLS[event](rx)
        assert rx.state == to


def test_data_before_welcome_is_the_drivers_mistake():
    s = session(welcomed=False)
    assert s.state == RECV_PLANNED
    with pytest.raises(LocalProtocolError, match="a DATA frame in state RECV_PLANNED"):
        s.admit(header())
    with pytest.raises(LocalProtocolError, match="landed in state RECV_PLANNED"):
        s.landed(0, 100.0)
    s.welcome("ab" * 32, "rx")
    with pytest.raises(LocalProtocolError, match="WELCOME in state RECV_RECEIVING"):
        s.welcome("ab" * 32, "rx")  # one WELCOME per transfer
    assert s.admit(header()) == (ADMIT_CLAIMED, 0)


def test_a_premature_done_fails_the_transfer_for_good():
    s = session(size=2 * MiB)
    s.admit(header())
    s.landed(0, 100.0)
    with pytest.raises(RemoteProtocolError, match="1 chunks still missing") as ei:
        s.on_done()
    assert ei.value.code == C.ERR_TRUNCATED
    assert s.state == RECV_FAILED and s.failure == (C.ERR_TRUNCATED, "DONE with 1 chunks still missing")
    s.admit(header(offset=MiB))  # a chunk still on its way: busy, never claimed
    assert s.admit(header(offset=MiB))[0] == ADMIT_BUSY
    with pytest.raises(RemoteProtocolError, match="failed transfer"):
        s.on_done()
    with pytest.raises(LocalProtocolError, match="stored in state RECV_FAILED"):
        s.stored()


def test_a_commit_that_fails_verification_fails_the_session():
    s = session(size=MiB)
    s.admit(header())
    s.landed(0, 100.0)
    s.on_done()
    assert s.state == RECV_COMMITTING
    with pytest.raises(LocalProtocolError, match="DONE in state RECV_COMMITTING"):
        s.on_done()  # one DONE per transfer
    assert s.fail(C.ERR_CHECKSUM, "vm/1: digest mismatch")
    assert s.state == RECV_FAILED
    with pytest.raises(LocalProtocolError):
        s.stored()


def test_a_committed_transfer_stays_committed():
    rx, tx = receive_session_in(RECV_COMMITTED), send_session_in(SEND_COMMITTED)
    assert not rx.fail(C.ERR_STORAGE, "late") and rx.failure is None and rx.state == RECV_COMMITTED
    assert not tx.fail("late") and tx.failed is None and tx.committed
    assert rx.admit(header()) == (ADMIT_HELD, 0)  # a straggling duplicate is acknowledged again
    assert tx.acked([0]) == [] and not tx.take(0)


def test_the_sender_speaks_in_turn():
    tx = SendSession(7, "vm/1", 2 * PG, DIGEST, PG, node="tx")
    for call, what in ((lambda: tx.on_welcome({"mode": "full"}), "WELCOME in state SEND_IDLE"),
                       (tx.done, "DONE before WELCOME in state SEND_IDLE"),
                       (lambda: tx.acked([0]), "an ACK in state SEND_IDLE"),
                       (lambda: tx.data_hello(0), "a data stream's HELLO in state SEND_IDLE")):  # fmt: skip
        with pytest.raises(LocalProtocolError, match=what):
            call()
    tx.hello()
    with pytest.raises(LocalProtocolError, match="HELLO in state SEND_HELLO_SENT"):
        tx.hello()
    assert tx.on_welcome({"mode": "full", "token": "t", "chunk_size": PG}) == [0, 1]
    with pytest.raises(LocalProtocolError, match="the receiver's DONE in state SEND_TRANSFERRING"):
        tx.on_done({"ok": True, "digest": DIGEST.hex()})
    with pytest.raises(LocalProtocolError, match="CLOSE in state SEND_TRANSFERRING"):
        tx.close()
    assert tx.state == SEND_TRANSFERRING and not tx.committed


def test_a_welcome_against_rule_6_fails_the_sender():
    tx = SendSession(7, "vm/1", PG, DIGEST, PG, node="tx")
    tx.hello()
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        tx.on_welcome({"mode": "delta", "base_digest": BASE.hex()})
    assert tx.state == SEND_FAILED and tx.failed and tx.finished
    with pytest.raises(LocalProtocolError, match="WELCOME in state SEND_FAILED"):
        tx.on_welcome({"mode": "full"})


def test_a_whole_transfer_walks_both_tables():
    pair = SessionPair(3 * PG)
    assert (pair.tx.state, pair.rx.state) == (SEND_HELLO_SENT, RECV_RECEIVING)
    pair.handshake()
    assert pair.tx.state == SEND_TRANSFERRING
    for i in range(3):
        pair.send_chunk(i)
    pair.tx.done()
    assert pair.tx.state == SEND_DONE_SENT
    pair.tx.on_done(pair.done_reply())
    assert (pair.tx.state, pair.rx.state) == (SEND_COMMITTED, RECV_COMMITTED)
    assert pair.tx.close() == {"reason": "done"}
