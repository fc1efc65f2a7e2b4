"""A SendSession and a ReceiveSession joined in memory: the transfer protocol without sockets.

``SessionPair`` plays what ``Sender`` and ``DataServer`` do around the two sans-IO sessions
(HELLO -> parse_send/plan -> ReceiveSession -> WELCOME -> on_welcome -> DATA admitted, landed or
rejected -> ACK/NACK -> DONE), one step at a time, so a test can tamper with any message between
them.  The chunks carry no bytes: a chunk "verifies" or not as the test says.
"""

from __future__ import annotations

from dwcp._backend import impl as _k
from dwcp.transport.session import (
    ADMIT_BUSY,
    ADMIT_CLAIMED,
    ADMIT_HELD,
    ReceiveSession,
    SendSession,
    parse_send,
    plan,
)
from dwcp.wire import consts as C

__all__ = ["SessionPair", "data_header"]

DIGEST = b"\x11" * 16


def data_header(transfer_id: int, offset: int, raw_len: int, *, codec: int = C.CODEC_RAW,
                base_digest: bytes | None = None):  # fmt: skip
    """A parsed DATA header as a data stream reads it."""
    enc_len = raw_len if codec == C.CODEC_RAW else 16
    raw = _k.pack_header(C.FRAME_DATA, codec, 0, transfer_id, offset, raw_len, enc_len, raw_hash=0,
                         base_digest=base_digest or b"\0" * 16)  # fmt: skip
    return _k.parse_header(raw)


class SessionPair:
    """Both ends of one transfer attempt.

    ``held``: the receiver's partial of an earlier attempt (bitmap, in ``resume_chunk_size`` chunks);
    ``receiver_has_base``: it holds the baseline the sender offers (``offered_base``);
    ``latest``: (digest, size) of the receiver's newest version of the key (pages mode).
    """

    def __init__(self, size: int, chunk_size: int = C.PAGE_SIZE, *, transfer_id: int = 7, digest: bytes = DIGEST,
                 offered_base: bytes | None = None, full_refresh: bool = False, receiver_has_base: bool = True,
                 latest: tuple[bytes, int] | None = None, held: bytes = b"", resume_chunk_size: int | None = None,
                 now: float = 0.0) -> None:  # fmt: skip
        self.tx = SendSession(transfer_id, "vm/1", size, digest, chunk_size, node="tx", base_digest=offered_base,
                              full_refresh=full_refresh)  # fmt: skip
        self.hello = self.tx.hello()
        req = parse_send(transfer_id, self.hello)
        p = plan(req, holds_proposed=receiver_has_base and offered_base is not None, latest=latest,
                 resume_chunk_size=resume_chunk_size)  # fmt: skip
        self.rx = ReceiveSession(req, p, held=held, zero_filled=p.base_digest is None,
                                 seeded=p.base_digest is not None, now=now)  # fmt: skip
        self.welcome = self.rx.welcome("token", "rx")
        self.todo: list[int] | None = None

    def handshake(self, welcome: dict | None = None) -> list[int]:
        """The sender reads WELCOME (the receiver's, or the one given); returns the chunks to send."""
        self.todo = self.tx.on_welcome(self.welcome if welcome is None else welcome)
        return self.todo

    # -- one chunk ---------------------------------------------------------------------------------
    def header(self, idx: int, *, transfer_id: int | None = None, codec: int = C.CODEC_RAW,
               base_digest: bytes | None = None):  # fmt: skip
        off, ln = self.tx.spans[idx]
        if base_digest is None and codec in C.DELTA_CODECS:
            base_digest = self.tx.base_digest
        tid = self.tx.transfer_id if transfer_id is None else transfer_id
        return data_header(tid, off, ln, codec=codec, base_digest=base_digest)

    def arrive(self, idx: int, *, codec: int = C.CODEC_RAW) -> tuple[str, int]:
        """The sender sends chunk ``idx`` and the receiver admits its header: (ADMIT_*, idx)."""
        off, ln = self.tx.spans[idx]
        self.tx.sent(idx, ln, ln)
        return self.rx.admit(self.header(idx, codec=codec))

    def verify(self, idx: int, ok: bool, now: float = 0.0) -> tuple:
        """The claimed chunk ``idx`` landed (``ok``) or failed its hash: the receiver's answer."""
        if ok:
            self.rx.landed(idx, now)
            return ("ack", [idx])
        self.rx.rejected(idx)
        return ("nack", idx, "checksum mismatch")

    @staticmethod
    def answer_of(admitted: tuple[str, int]) -> tuple | None:
        """The answer to an admission that needs no verification (None for a claim)."""
        what, idx = admitted
        if what == ADMIT_HELD:
            return ("ack", [idx])
        if what == ADMIT_BUSY:
            return ("nack", idx, "busy")
        assert what == ADMIT_CLAIMED
        return None

    def deliver(self, answer: tuple):
        """The sender reads an ACK (returns the chunks it acknowledged first) or a NACK (returns NACK_*)."""
        if answer[0] == "ack":
            return self.tx.acked(answer[1])
        return self.tx.nacked(answer[1], answer[2])

    def send_chunk(self, idx: int, *, ok: bool = True, codec: int = C.CODEC_RAW):
        """One chunk there and its answer back; returns what the sender made of the answer."""
        admitted = self.arrive(idx, codec=codec)
        answer = self.answer_of(admitted)
        if answer is None:
            answer = self.verify(idx, ok)
        return self.deliver(answer)

    # -- the transfer ------------------------------------------------------------------------------
    def done_reply(self) -> dict:
        """The receiver's DONE, after its commit check (raises RemoteProtocolError if it may not commit) and
        the commit (which always succeeds here)."""
        self.rx.on_done()
        self.rx.stored()
        h = self.rx.hello
        return {"ok": True, "digest": h.digest.hex(), "size": h.size, "chunks": self.rx.nchunks}

    def finish(self) -> dict:
        """DONE from the sender, the receiver's commit check and DONE back, judged by the sender."""
        self.tx.done()
        reply = self.done_reply()
        self.tx.on_done(reply)
        return reply

    def run(self) -> dict:
        """The whole transfer with every chunk verifying at once."""
        for i in self.handshake() if self.todo is None else self.todo:
            self.send_chunk(i)
        return self.finish()

    def held(self) -> bytes:
        """The receiver's bitmap of held chunks (what a partial would keep for the next attempt)."""
        n = self.rx.nchunks
        return bytes(sum(1 << b for b in range(8) if 8 * i + b < n and self.rx.is_held(8 * i + b))
                     for i in range((n + 7) // 8))  # fmt: skip
