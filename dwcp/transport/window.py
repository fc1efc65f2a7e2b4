"""How many chunks one stream keeps unacknowledged (sans-IO).

A stream sends a chunk only while fewer than ``window`` are unacknowledged.
The configured ``window_chunks`` is the floor: on loopback or a LAN two
chunks keep the pipe full, and a killed stream resends at most that much.
On a long path the bandwidth-delay product can be several chunks, and a
stream stuck at the floor delivers only ``window x chunk / RTT`` whatever
the link.  So the window grows by one chunk whenever the stream's own
goodput x RTT (the bytes the path held during the last interval) exceeds
``window - 1`` chunks -- the signature of a window-limited stream -- up to
``max_chunks``; it never shrinks during a stream (TCP's congestion control
paces below it; a bigger window costs only resends after a failure).

That test alone misses the commonest case: a chunk is acknowledged only once
it has arrived whole and been verified, so a window-limited stream's
goodput x RTT stays *below* ``window - 1`` chunks whenever the chunk's own
transmission time and the verification are a large part of the ACK's delay
(measured: one stream on a 50 ms, 1 Gbit/s path held 0.61 of the link at a
window of 2 x 4 MiB, 3.8 MB per RTT, and never grew).  So the time the
stream spent waiting for an ACK with its window full (``on_stalled``) counts
too: more than a quarter of the interval stalled and at least half of
``window - 1`` chunks on the path per RTT grows the window.  On loopback or a
LAN the path holds almost nothing per RTT, so a slow receiver (which also
stalls the sender) does not grow it.
"""

from __future__ import annotations

__all__ = ["StreamWindow"]

STALLED_FRACTION = 0.25  # of an interval spent waiting for an ACK with the window full


class StreamWindow:
    def __init__(
        self, floor: int, chunk_bytes: int, *, max_chunks: int = 64, interval_s: float = 0.25
    ) -> None:
        if floor < 1 or chunk_bytes < 1 or max_chunks < floor or interval_s <= 0:
            raise ValueError("need 1 <= floor <= max_chunks, chunk_bytes >= 1, interval_s > 0")
        self.floor = floor
        self.chunk_bytes = chunk_bytes
        self.max_chunks = max_chunks
        self.interval_s = interval_s
        self.window = floor
        self.grown = 0  # times grown (reported)
        self._acked = 0
        self._stalled = 0.0
        self._t0: float | None = None

    def on_stalled(self, seconds: float) -> None:
        """The stream waited ``seconds`` for an ACK with its window full."""
        self._stalled += max(0.0, seconds)

    def on_acked(self, nbytes: int, now: float) -> None:
        if self._t0 is None:
            self._t0 = now
        self._acked += nbytes

    def due(self, now: float) -> bool:
        """Whether an interval has passed (the caller then reads the RTT and calls ``update``)."""
        return self._t0 is not None and now - self._t0 >= self.interval_s

    def update(self, now: float, rtt_s: float | None) -> int:
        """Close the interval; grow when window-limited.  Returns the window."""
        if self._t0 is None:
            return self.window
        dt = now - self._t0
        if dt > 0 and rtt_s:
            held = self._acked / dt * rtt_s  # bytes the path carried per RTT at this stream's goodput
            need = (self.window - 1) * self.chunk_bytes
            stalled = self._stalled / dt > STALLED_FRACTION and held > need / 2
            if (held > need or stalled) and self.window < self.max_chunks:
                self.window += 1
                self.grown += 1
        self._acked = 0
        self._stalled = 0.0
        self._t0 = now
        return self.window
