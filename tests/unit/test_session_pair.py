"""Both sides of the transfer session against each other, without sockets (STYLE rule 18): the
sending side's rules (HELLO, WELCOME, ACK/NACK, DONE), every error path a socket test used to need,
and a stateful test of the protocol's invariants over data, ACK, NACK, busy, stream failures,
reconnects, resume and failures on either side."""

from __future__ import annotations

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dwcp._testbase.sessionpair import DIGEST, SessionPair
from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.transport.session import (
    ADMIT_BUSY,
    ADMIT_CLAIMED,
    ADMIT_HELD,
    CAPS,
    MAX_NACKS,
    NACK_FAILED,
    NACK_IGNORE,
    NACK_RESEND,
    SendSession,
)
from dwcp.wire import consts as C

PG = C.PAGE_SIZE
BASE, OTHER = b"\x22" * 16, b"\x33" * 16


# -- HELLO ------------------------------------------------------------------------------------


def test_hello_offers_every_capability_and_the_baseline():
    tx = SendSession(9, "vm/1", 10 * PG, DIGEST, PG, node="a", base_digest=BASE, forward_to="h:1", streams=3,
                     sealed=True)  # fmt: skip
    h = tx.hello()
    assert h == {"v": 3, "role": "control", "op": "send", "key": "vm/1", "size": 10 * PG, "digest": DIGEST.hex(),
                 "chunk_size": PG, "page_size": PG, "caps": sorted(CAPS), "node": "a", "base_digest": BASE.hex(),
                 "forward": {"to": "h:1"}, "streams": 3}  # fmt: skip


def test_a_full_refresh_offers_neither_delta_nor_pages_and_the_receiver_goes_full():
    pair = SessionPair(4 * PG, full_refresh=True, latest=(OTHER, 4 * PG))
    assert "xbzrle" not in pair.hello["caps"] and "pages" not in pair.hello["caps"]
    assert "base_digest" not in pair.hello
    assert pair.welcome["mode"] == "full"
    pair.run()
    assert pair.tx.committed


# -- a whole transfer ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, PG, 5 * PG + 3])
def test_a_full_transfer_ends_in_a_commit(size):
    pair = SessionPair(size)
    todo = pair.handshake()
    assert todo == list(range(-(-size // PG))) and pair.tx.mode == "full"
    assert pair.run()["digest"] == DIGEST.hex()
    assert pair.tx.remaining == 0 and pair.rx.missing() == 0 and pair.tx.acked_raw == size


def test_a_delta_transfer_against_the_offered_baseline():
    pair = SessionPair(3 * PG, offered_base=BASE)
    pair.handshake()
    assert pair.tx.mode == "delta" and pair.tx.base_digest == BASE
    for i in pair.todo or ():
        assert pair.send_chunk(i, codec=C.CODEC_XBZRLE) == [i]
    pair.finish()


def test_pages_mode_names_the_receivers_version():
    pair = SessionPair(3 * PG, latest=(OTHER, 3 * PG))
    pair.handshake()
    assert pair.tx.mode == "pages" and pair.tx.base_digest == OTHER
    for i in pair.todo or ():
        pair.send_chunk(i, codec=C.CODEC_PAGES)
    pair.finish()


def test_the_receivers_chunk_size_wins_and_the_spans_follow_it():
    pair = SessionPair(10 * PG, PG, held=b"\x03", resume_chunk_size=4 * PG)
    assert pair.welcome["chunk_size"] == 4 * PG
    assert pair.handshake() == [2]
    assert pair.tx.chunk_size == 4 * PG and pair.tx.spans == [(0, 4 * PG), (4 * PG, 4 * PG), (8 * PG, 2 * PG)]
    assert pair.tx.resumed == 2
    pair.run()


def test_resume_from_a_partial_bitmap_sends_only_the_missing_chunks():
    first = SessionPair(12 * PG)
    first.handshake()
    for i in (0, 3, 4, 9):
        first.send_chunk(i)
    held = first.held()
    with pytest.raises(RemoteProtocolError, match="8 chunks still missing"):
        first.rx.check_commit()
    second = SessionPair(12 * PG, held=held)
    assert second.handshake() == [1, 2, 5, 6, 7, 8, 10, 11]
    assert second.tx.resumed == 4 and second.tx.remaining == 8
    second.run()


# -- WELCOME that HELLO did not make possible ------------------------------------------------------


def _welcome(pair: SessionPair, **kw) -> dict:
    w = dict(pair.welcome)
    w.update(kw)
    return {k: v for k, v in w.items() if v is not None}


def _refused(pair: SessionPair, welcome: dict, match: str, code: int) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as ei:
        pair.handshake(welcome)
    assert ei.value.code == code
    assert pair.tx.failed is not None and match.split()[0] in pair.tx.failed  # sticky
    with pytest.raises(LocalProtocolError):
        pair.tx.done()


def test_delta_against_a_baseline_not_offered_is_refused():
    pair = SessionPair(4 * PG)
    _refused(pair, _welcome(pair, mode="delta", base_digest=BASE.hex()), "did not offer", C.ERR_BAD_FIELD)


def test_delta_against_another_baseline_than_the_offered_one_is_refused():
    pair = SessionPair(4 * PG, offered_base=BASE)
    _refused(pair, _welcome(pair, base_digest=OTHER.hex()), "did not offer", C.ERR_BAD_FIELD)


def test_pages_without_a_base_is_refused():
    pair = SessionPair(4 * PG)
    _refused(pair, _welcome(pair, mode="pages"), "without a base_digest", C.ERR_MALFORMED)


def test_pages_after_a_full_refresh_is_refused():
    pair = SessionPair(4 * PG, full_refresh=True)
    _refused(pair, _welcome(pair, mode="pages", base_digest=OTHER.hex()), "did not offer", C.ERR_BAD_FIELD)


def test_an_unknown_mode_is_refused():
    pair = SessionPair(4 * PG)
    _refused(pair, _welcome(pair, mode="fetch"), "unexpected mode", C.ERR_MALFORMED)


@pytest.mark.parametrize(("have", "match"), [("000000", "3 bytes for 10 chunks"),
                                             ("00fc", "beyond the object"), ("zz", "not hex")])  # fmt: skip
def test_a_bad_have_bitmap_is_refused(have, match):
    pair = SessionPair(10 * PG)
    code = C.ERR_MALFORMED if match == "not hex" else C.ERR_BAD_FIELD
    _refused(pair, _welcome(pair, have=have), match, code)


def test_the_last_bits_of_a_full_bitmap_are_chunks():
    pair = SessionPair(10 * PG)
    assert pair.handshake(_welcome(pair, have="ff03")) == []
    assert pair.tx.remaining == 0 and pair.tx.resumed == 10


def test_a_short_bitmap_leaves_the_rest_to_send():
    pair = SessionPair(10 * PG)
    assert pair.handshake(_welcome(pair, have="ff")) == [8, 9]


@pytest.mark.parametrize("cs", [PG + 1, 0, C.MAX_RAW_LEN + PG, "big"])
def test_a_bad_chunk_size_is_refused(cs):
    pair = SessionPair(10 * PG)
    _refused(pair, _welcome(pair, chunk_size=cs), "chunk size", C.ERR_BAD_FIELD)


def test_welcome_is_judged_once():
    pair = SessionPair(PG)
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.handshake()


# -- ACK and NACK ---------------------------------------------------------------------------------


@pytest.mark.parametrize("idx", [4, -1, "0", True])
def test_an_ack_of_a_chunk_the_object_lacks_is_a_protocol_error(idx):
    pair = SessionPair(4 * PG)
    pair.handshake()
    with pytest.raises(RemoteProtocolError, match="ACK of chunk") as ei:
        pair.tx.acked([0, idx])
    assert ei.value.code == C.ERR_BAD_FIELD
    assert pair.tx.remaining == 4  # nothing of that ACK counted


def test_a_nack_of_a_chunk_the_object_lacks_is_a_protocol_error():
    pair = SessionPair(4 * PG)
    pair.handshake()
    with pytest.raises(RemoteProtocolError, match="NACK of chunk"):
        pair.tx.nacked(4, "checksum mismatch")


def test_a_chunk_acknowledged_again_counts_once():
    pair = SessionPair(4 * PG)
    pair.handshake()
    assert pair.send_chunk(1) == [1]
    assert pair.arrive(1) == (ADMIT_HELD, 1)
    assert pair.deliver(("ack", [1])) == []
    assert pair.tx.remaining == 3 and pair.tx.nacked(1, "checksum mismatch") == NACK_IGNORE


def test_a_chunk_of_another_transfer_is_refused_and_changes_nothing():
    pair = SessionPair(4 * PG)
    pair.handshake()
    with pytest.raises(RemoteProtocolError, match="chunk of transfer") as ei:
        pair.rx.admit(pair.header(0, transfer_id=8))
    assert ei.value.code == C.ERR_BAD_FIELD
    assert pair.rx.admit(pair.header(0)) == (ADMIT_CLAIMED, 0)  # not claimed by the stray one


def test_a_delta_against_another_base_is_refused():
    pair = SessionPair(4 * PG, offered_base=BASE)
    pair.handshake()
    with pytest.raises(RemoteProtocolError) as ei:
        pair.rx.admit(pair.header(0, codec=C.CODEC_XBZRLE, base_digest=OTHER))
    assert ei.value.code == C.ERR_UNKNOWN_BASELINE


def test_busy_sends_again_uncounted():
    pair = SessionPair(4 * PG)
    pair.handshake()
    assert pair.arrive(2) == (ADMIT_CLAIMED, 2)
    busy = pair.arrive(2)  # the same chunk on another stream, requeued when the first one stalled
    assert busy == (ADMIT_BUSY, 2)
    assert pair.deliver(SessionPair.answer_of(busy)) == NACK_RESEND
    assert pair.tx.nacks_of(2) == 0 and not pair.tx.goes_full(2) and pair.tx.chunks_resent == 0
    assert pair.deliver(pair.verify(2, True)) == [2]


def test_a_delta_nacked_twice_goes_full():
    pair = SessionPair(4 * PG, offered_base=BASE)
    pair.handshake()
    assert pair.send_chunk(0, ok=False, codec=C.CODEC_XBZRLE) == NACK_RESEND
    assert not pair.tx.goes_full(0)
    assert pair.send_chunk(0, ok=False, codec=C.CODEC_XBZRLE) == NACK_RESEND
    assert pair.tx.goes_full(0) and pair.tx.chunks_resent == 2
    assert pair.send_chunk(0, codec=C.CODEC_ZSTD) == [
        0
    ]  # the receiver takes a full chunk in a delta transfer


def test_a_nack_storm_ends_the_transfer_with_the_receivers_reason():
    pair = SessionPair(4 * PG)
    pair.handshake()
    for _ in range(MAX_NACKS):
        assert pair.send_chunk(3, ok=False) == NACK_RESEND
    assert pair.tx.failed is None
    assert pair.send_chunk(3, ok=False) == NACK_FAILED
    assert pair.tx.failed == "chunk 3 failed verification at the receiver 6 times: checksum mismatch"
    assert pair.tx.finished
    # sticky: nothing counts any more, the first reason stays, and no DONE
    assert not pair.tx.fail("later")
    assert pair.tx.acked([0, 1, 2]) == [] and pair.tx.nacked(0, "checksum mismatch") == NACK_IGNORE
    assert not pair.tx.take(0)
    with pytest.raises(LocalProtocolError, match="failed transfer"):
        pair.tx.done()
    assert pair.tx.failed.startswith("chunk 3")


def test_requeued_chunks_are_the_unacknowledged_ones():
    pair = SessionPair(4 * PG)
    pair.handshake()
    pair.send_chunk(0)
    assert pair.tx.requeued([0, 1, 2]) == [1, 2]
    assert pair.tx.chunks_resent == 2


def test_a_chunk_acknowledged_meanwhile_is_not_taken():
    pair = SessionPair(4 * PG)
    pair.handshake()
    pair.send_chunk(0)
    assert not pair.tx.take(0) and pair.tx.take(1)


# -- DONE -----------------------------------------------------------------------------------------


def test_no_done_while_a_chunk_is_unacknowledged():
    pair = SessionPair(4 * PG)
    with pytest.raises(LocalProtocolError, match="before WELCOME"):
        pair.tx.done()
    pair.handshake()
    for i in range(3):
        pair.send_chunk(i)
    with pytest.raises(LocalProtocolError, match="1 chunks unacknowledged"):
        pair.tx.done()
    with pytest.raises(RemoteProtocolError, match="1 chunks still missing"):
        pair.rx.check_commit()


@pytest.mark.parametrize("reply", [{"ok": False, "digest": DIGEST.hex()}, {"ok": True, "digest": BASE.hex()},
                                   {"ok": True}])  # fmt: skip
def test_a_done_that_does_not_confirm_what_we_sent_fails(reply):
    pair = SessionPair(PG)
    pair.handshake()
    pair.send_chunk(0)
    pair.tx.done()
    with pytest.raises(RemoteProtocolError, match="receiver did not confirm vm/1"):
        pair.tx.on_done(reply)
    assert not pair.tx.committed and pair.tx.failed


def test_a_receiver_failure_is_sticky_and_refuses_the_commit():
    pair = SessionPair(4 * PG)
    pair.handshake()
    pair.send_chunk(0)
    assert pair.rx.fail(C.ERR_STORAGE, "disk full")
    assert not pair.rx.fail(C.ERR_BAD_FIELD, "later")
    assert pair.rx.admit(pair.header(1)) == (ADMIT_BUSY, 1)  # nothing admitted any more
    for i in range(1, 4):  # even if every chunk were held, a failed transfer does not commit
        pair.rx.landed(i, 0.0)
    with pytest.raises(RemoteProtocolError, match="disk full") as ei:
        pair.rx.check_commit()
    assert ei.value.code == C.ERR_STORAGE


def test_data_streams_say_the_token_of_welcome():
    pair = SessionPair(PG)
    pair.handshake()
    assert pair.tx.data_hello(2) == {"v": 3, "role": "data", "transfer_id": 7, "token": "token", "stream": 2}


# -- the invariants, under any interleaving -----------------------------------------------------------


class Transfer(RuleBasedStateMachine):
    """One object sent over streams that carry chunks, break and come back, across attempts.

    Model: ``queue`` is the sender's work queue; each live stream has the chunks in flight to the
    receiver (``wire``), the chunk the receiver is verifying (``receiving``) and its answers on their
    way back (``back``).  A stream that breaks loses what it carried; the receiver notices later
    (its claim stays until ``reap``), so the requeued chunk can meet a busy receiver.
    """

    @initialize(n=st.integers(1, 10), tail=st.integers(0, PG - 1))
    def start(self, n, tail):
        self.size = n * PG - tail if n * PG - tail > 0 else PG
        self.verified: set[int] = set()  # chunks the receiver landed verified, over all attempts
        self.attempts = 0
        self.reconnects = 0
        self.ended = False  # committed, or failed
        self._new_attempt(b"")

    def _new_attempt(self, held: bytes) -> None:
        self.attempts += 1
        self.pair = SessionPair(self.size, held=held)
        self.queue = list(self.pair.handshake())
        self.streams: dict[int, dict] = {}
        self.zombies: list[int] = []  # claims of broken streams the receiver has not noticed yet
        self.next_sid = 0
        self.checksum_nacks: dict[int, int] = {}
        self.justified: dict[int, int] = {}  # chunk -> sends a NACK, a busy or a requeue asked for
        for _ in range(2):
            self._open_stream()
        if self.pair.tx.remaining == 0 and held:
            assert self.pair.todo == []

    def _open_stream(self) -> None:
        self.streams[self.next_sid] = {"wire": [], "receiving": None, "back": [], "inflight": set()}
        self.next_sid += 1

    def _live(self) -> bool:
        return not self.ended and self.pair.tx.failed is None and self.pair.rx.failure is None

    def _sid(self, data) -> int:
        return data.draw(st.sampled_from(sorted(self.streams)))

    @precondition(lambda self: self._live() and self.queue and self.streams)
    @rule(data=st.data())
    def send(self, data):
        s = self.streams[self._sid(data)]
        i = self.queue.pop(0)
        if not self.pair.tx.take(i):
            return
        ln = self.pair.tx.spans[i][1]
        self.pair.tx.sent(i, ln, ln)
        s["wire"].append(i)
        s["inflight"].add(i)

    @precondition(lambda self: self._live() and any(s["wire"] and s["receiving"] is None
                                                     for s in self.streams.values()))  # fmt: skip
    @rule(data=st.data())
    def arrive(self, data):
        sid = data.draw(st.sampled_from([k for k, s in sorted(self.streams.items())
                                         if s["wire"] and s["receiving"] is None]))  # fmt: skip
        s = self.streams[sid]
        i = s["wire"].pop(0)
        admitted = self.pair.rx.admit(self.pair.header(i))
        answer = SessionPair.answer_of(admitted)
        if answer is None:
            s["receiving"] = i
        else:
            if admitted[0] == ADMIT_HELD:
                assert i in self.verified
            event(f"admitted {admitted[0]}")
            s["back"].append(answer)

    @precondition(
        lambda self: self._live() and any(s["receiving"] is not None for s in self.streams.values())
    )
    @rule(data=st.data(), ok=st.booleans())
    def verify(self, data, ok):
        sid = data.draw(
            st.sampled_from([k for k, s in sorted(self.streams.items()) if s["receiving"] is not None])
        )
        s = self.streams[sid]
        i, s["receiving"] = s["receiving"], None
        if ok:
            self.verified.add(i)
        s["back"].append(self.pair.verify(i, ok))

    @precondition(lambda self: self._live() and any(s["back"] for s in self.streams.values()))
    @rule(data=st.data())
    def answer(self, data):
        sid = data.draw(st.sampled_from([k for k, s in sorted(self.streams.items()) if s["back"]]))
        s = self.streams[sid]
        ans = s["back"].pop(0)
        tx = self.pair.tx
        if ans[0] == "ack":
            for i in tx.acked(ans[1]):
                assert i in self.verified  # the sender counts only what the receiver verified
            s["inflight"].difference_update(ans[1])
            return
        _, i, reason = ans
        s["inflight"].discard(i)
        if reason != "busy" and not tx.is_done(i):
            self.checksum_nacks[i] = self.checksum_nacks.get(i, 0) + 1
        what = tx.nacked(i, reason)
        if what == NACK_RESEND:
            self.justified[i] = self.justified.get(i, 0) + 1
            self.queue.append(i)
        elif what == NACK_FAILED:
            event("a NACK storm failed the transfer")
            assert self.checksum_nacks[i] == MAX_NACKS + 1
            assert (
                tx.failed == f"chunk {i} failed verification at the receiver {MAX_NACKS + 1} times: {reason}"
            )

    @precondition(lambda self: self._live() and self.streams)
    @rule(data=st.data(), roll=st.integers(0, 3))
    def break_stream(self, data, roll):
        if roll != 3:
            return
        sid = self._sid(data)
        s = self.streams.pop(sid)
        for i in self.pair.tx.requeued(sorted(s["inflight"])):
            self.justified[i] = self.justified.get(i, 0) + 1
            self.queue.append(i)
        if s["receiving"] is not None:
            self.zombies.append(s["receiving"])

    @precondition(lambda self: self._live() and self.zombies)
    @rule()
    def reap(self):
        self.pair.rx.released(self.zombies.pop(0))

    @precondition(lambda self: self._live() and len(self.streams) < 4 and self.reconnects < 6)
    @rule()
    def reconnect(self):
        self.reconnects += 1
        self._open_stream()

    # Ending an attempt is one roll in ten (hypothesis picks rules evenly): the others let it get somewhere.
    @precondition(lambda self: not self.ended and self.attempts < 3)
    @rule(roll=st.integers(0, 9))
    def resume(self, roll):
        """The sender goes away (or failed); a new attempt starts from what the receiver holds."""
        if roll != 9 and self._live():
            return
        held = self.pair.held()
        before = self.pair.rx.held_count
        self._new_attempt(held)
        assert self.pair.tx.resumed == before == self.pair.rx.held_count
        event(f"resumed with {'some' if before else 'no'} chunks held")
        assert sorted(self.queue) == [i for i in range(self.pair.tx.nchunks) if i not in self.verified]

    @precondition(lambda self: self._live())
    @rule(code=st.sampled_from([C.ERR_STORAGE, C.ERR_CHECKSUM]), roll=st.integers(0, 9))
    def receiver_fails(self, code, roll):
        if roll != 9:
            return
        assert self.pair.rx.fail(code, "the receiver gave up")
        self.pair.tx.fail(
            f"receiver refused: the receiver gave up (code {code})"
        )  # heard on the control stream
        with pytest.raises(RemoteProtocolError, match="gave up"):
            self.pair.rx.check_commit()
        with pytest.raises(LocalProtocolError):
            self.pair.tx.done()

    @precondition(lambda self: self._live())
    @rule(other=st.integers(0, 2**63 - 1))
    def stray_chunk(self, other):
        if other == self.pair.tx.transfer_id:
            return
        held = self.pair.rx.held_count
        with pytest.raises(RemoteProtocolError, match="chunk of transfer"):
            self.pair.rx.admit(self.pair.header(0, transfer_id=other))
        assert self.pair.rx.held_count == held

    @precondition(lambda self: self._live())
    @rule()
    def done(self):
        tx = self.pair.tx
        if tx.remaining:
            with pytest.raises(LocalProtocolError, match="unacknowledged"):
                tx.done()
            return
        tx.done()
        self.pair.tx.on_done(self.pair.done_reply())
        assert self.verified == set(range(tx.nchunks))
        self.ended = True
        event(f"committed on attempt {self.attempts}")

    @rule()
    def failures_stay(self):
        """A failed side refuses anything new (always applicable: the machine can always step)."""
        tx, rx = self.pair.tx, self.pair.rx
        if tx.failed is not None:
            why = tx.failed
            assert tx.finished and not tx.take(0) and not tx.fail("again") and tx.failed == why
        if rx.failure is not None:
            assert rx.admit(self.pair.header(0))[0] in (ADMIT_BUSY, ADMIT_HELD)

    @invariant()
    def receiver_commits_only_what_it_verified(self):
        rx = self.pair.rx
        try:
            rx.check_commit()
        except RemoteProtocolError:
            return
        assert rx.failure is None and self.verified == set(range(rx.nchunks))

    @invariant()
    def sender_counts_only_what_the_receiver_holds(self):
        tx, rx = self.pair.tx, self.pair.rx
        done = [i for i in range(tx.nchunks) if tx.is_done(i)]
        assert tx.remaining == tx.nchunks - len(done)
        assert all(rx.is_held(i) for i in done)

    @invariant()
    def resends_are_bounded(self):
        tx = self.pair.tx
        for i in range(tx.nchunks):
            assert tx.nacks_of(i) <= MAX_NACKS + 1
            assert tx.sends_of(i) <= 1 + self.justified.get(i, 0)
            if tx.nacks_of(i) > MAX_NACKS:
                assert tx.failed is not None


TestTransfer = Transfer.TestCase
TestTransfer.settings = settings(max_examples=200, stateful_step_count=150, deadline=None)
