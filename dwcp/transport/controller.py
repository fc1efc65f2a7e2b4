"""How many TCP streams: the initial count from the bandwidth-delay product,
then an online controller that probes on measured goodput.

Rules
-----
1. Sans-IO and deterministic: ``observe(now, goodput)`` in, a Decision out;
   no clock, no randomness, no sockets.
2. States and transitions::

       PROBE_UP   --gain >= threshold-->  PROBE_UP (step doubles, capped)
       PROBE_UP   --gain <  threshold-->  HOLD     (back to the best count seen)
       HOLD       --hold_intervals----->  PROBE_DOWN (one stream fewer), or
                                          PROBE_UP (one more), alternately
       PROBE_DOWN --loss <  threshold-->  HOLD     (keep the smaller count)
       PROBE_DOWN --loss >= threshold-->  HOLD     (back up) ; then PROBE_UP after hold

   A probe down is judged against the *peak* goodput seen (not the last
   interval), so a run of small accepted losses cannot compound.

   A change is judged on the goodput of the interval *after* it took effect
   (the first interval after a change is a settling interval and ignored).
3. The count never leaves [min_streams, max_streams].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dwcp.errors import ConfigError

__all__ = ["initial_streams", "StreamController", "Decision", "PROBE_UP", "HOLD", "PROBE_DOWN"]

PROBE_UP = "PROBE_UP"
HOLD = "HOLD"
PROBE_DOWN = "PROBE_DOWN"


def _h(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def initial_streams(link_bytes_per_s: float | None, rtt_s: float, per_stream_window_bytes: int,
                    min_streams: int, max_streams: int) -> tuple[int, str]:  # fmt: skip
    if not 1 <= min_streams <= max_streams:
        raise ConfigError("need 1 <= min_streams <= max_streams")
    if not link_bytes_per_s:
        return min_streams, f"link speed unknown: start at min_streams={min_streams} and probe"
    bdp = link_bytes_per_s * max(rtt_s, 0.0)
    n = max(1, math.ceil(bdp / max(1, per_stream_window_bytes)))
    clamped = max(min_streams, min(max_streams, n))
    return clamped, (
        f"BDP {_h(bdp)} = {link_bytes_per_s * 8 / 1e9:.2f} Gbit/s x {rtt_s * 1000:.2f} ms over "
        f"{_h(per_stream_window_bytes)} windows -> {n} streams"
        + (f", clamped to {clamped}" if clamped != n else "")
    )


@dataclass(frozen=True)
class Decision:
    target_streams: int
    reason: str


@dataclass
class StreamController:
    initial: int
    min_streams: int
    max_streams: int
    gain_threshold: float = 0.05
    hold_intervals: int = 8
    max_step: int = 8
    state: str = PROBE_UP
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.min_streams <= self.max_streams:
            raise ConfigError("need 1 <= min_streams <= max_streams")
        if not 0 < self.gain_threshold < 1:
            raise ConfigError("gain_threshold must be in (0, 1)")
        self.n = max(self.min_streams, min(self.max_streams, self.initial))
        self._step = 1
        self._settling = True
        self._prev_n = self.n
        self._prev_goodput: float | None = None
        self._best = (self.n, 0.0)
        self._held = 0
        self._peak = 0.0
        self._down_next = True
        if self.n >= self.max_streams:
            self.state = HOLD

    def _go(self, n: int, reason: str) -> Decision:
        n = max(self.min_streams, min(self.max_streams, n))
        if n != self.n:
            self._prev_n = self.n
            self.n = n
            self._settling = True
        return Decision(self.n, reason)

    def observe(self, now: float, goodput_bytes_per_s: float, retransmit_rate: float | None = None) -> Decision:
        g = max(0.0, goodput_bytes_per_s)
        d = self._observe(g)
        self.history.append((now, self.n, g, self.state, d.reason))
        return d

    def _observe(self, g: float) -> Decision:
        if self._settling:  # the interval a change took effect in: measure, do not judge
            self._settling = False
            return Decision(self.n, f"{self.state}: settling at {self.n} streams")
        if g > self._best[1] * (1 + self.gain_threshold) or self._best[0] == self.n:
            if g >= self._best[1] or self._best[0] == self.n:
                self._best = (self.n, max(g, self._best[1] if self._best[0] == self.n else g))
        prev = self._prev_goodput
        self._prev_goodput = g
        self._peak = max(self._peak, g)
        if self.state == PROBE_UP:
            if prev is None or self.n == self._prev_n:
                if self.n >= self.max_streams:
                    self.state = HOLD
                    return Decision(self.n, f"at max_streams={self.max_streams}")
                return self._go(self.n + self._step, f"probe up: {self.n} -> {self.n + self._step}")
            if g >= prev * (1 + self.gain_threshold):
                if self.n >= self.max_streams:
                    self.state = HOLD
                    return Decision(self.n, f"gained {g / max(prev, 1) - 1:.0%}; at max_streams")
                self._step = min(self.max_step, self._step * 2)
                return self._go(self.n + self._step, f"gained {g / max(prev, 1) - 1:.0%}: probe up by {self._step}")
            self.state = HOLD
            self._held = 0
            self._step = 1
            back = self._prev_n
            return self._go(back, f"gain {g / max(prev, 1) - 1:+.0%} below {self.gain_threshold:.0%}: hold at {back}")
        if self.state == HOLD:
            self._held += 1
            if self._held < self.hold_intervals:
                return Decision(self.n, f"hold at {self.n}")
            # alternate probes so the count can move both ways as the link changes
            self._held = 0
            self._prev_goodput = g
            if (self._down_next or self.n >= self.max_streams) and self.n > self.min_streams:
                self._down_next = False
                self.state = PROBE_DOWN
                return self._go(self.n - 1, f"probe down: {self.n} -> {self.n - 1}")
            self._down_next = True
            if self.n < self.max_streams:
                self.state = PROBE_UP
                self._peak = g  # the link may have changed: judge from what it gives now
                return self._go(self.n + 1, f"probe up after holding: {self.n} -> {self.n + 1}")
            return Decision(self.n, f"hold at {self.n}")
        # PROBE_DOWN
        self.state = HOLD
        self._held = 0
        ref = max(prev or 0.0, self._peak)
        if g <= ref * (1 - self.gain_threshold):
            return self._go(self._prev_n, f"lost {1 - g / max(ref, 1):.0%} with fewer streams: back to {self._prev_n}")
        self._best = (self.n, g)
        return Decision(self.n, f"kept {self.n}: fewer streams lost < {self.gain_threshold:.0%}")
