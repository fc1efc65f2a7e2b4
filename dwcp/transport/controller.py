"""How many TCP streams: the initial count from the bandwidth-delay product,
then an online controller that probes on measured goodput.

Theory of operation
-------------------
One TCP stream moves at most ``window / RTT``, and on a lossy path much
less; N streams share the path's capacity.  ``initial_streams`` guesses N
from the BDP.  ``StreamController`` then corrects the guess online: the
driver calls ``observe(now, goodput)`` about every ``interval_s`` and applies
the returned ``Decision.target_streams``.

The controller only ever *compares* goodput at two stream counts.  The
larger count is worth it when it gives at least ``1 + gain_threshold``
times the goodput of the smaller one; the same test decides a probe up
(keep the extra streams?) and a probe down (could we do with fewer?), so
the two cannot disagree and walk the count back and forth on a steady link.

Rules
-----
1. Sans-IO and deterministic: ``observe(now, goodput_bytes_per_s,
   retransmit_rate)`` in, a ``Decision`` out.  No clock, no randomness, no
   sockets; the same inputs give the same decisions.
2. Measurement.  Observations are averaged, weighted by the time since the
   previous one, until at least 3/4 of ``interval_s`` has passed; then the
   average is *one sample* (the first observation counts as a whole
   interval).  The sample taken in the interval a change took
   effect is a settling sample (``settle_intervals`` of them): it is
   recorded, never judged (so, with the default one, changes are at least
   two intervals apart).  A zero sample (nothing acknowledged: a stall, or
   the tail of the object) says nothing about the count: it is not judged.
3. States and transitions (``_TRANSITIONS``; an event a state does not list
   is a bug)::

       START      --MEASURED---------->  PROBE_UP    first sample: reference taken, try more
       START      --MEASURED_AT_MAX--->  PROBE_DOWN  already at max: try fewer
       START      --PINNED------------>  HOLD        min == max: nothing to decide
       START      --FORECAST---------->  HOLD        the initial count is the path's forecast (its
                                                     earlier sends ended there): hold it, and probe
                                                     on the hold's timer like any count held
       PROBE_UP   --GAIN-------------->  PROBE_UP    keep them; next step doubles (at most x2 streams)
       PROBE_UP   --GAIN_AT_MAX------->  HOLD        keep them; no room above
       PROBE_UP   --GAIN_SATURATED---->  HOLD        keep them; a loss-limited path's bottleneck
                                                     filled (rule 6): no point going further
       PROBE_UP   --GAIN_PAST_KNEE---->  PROBE_DOWN  paid far less than in proportion: overshot,
                                                     jump down to the estimated knee
       PROBE_UP   --NO_GAIN----------->  HOLD        back to the count before the probe
       PROBE_UP   --LOOK_AGAIN-------->  PROBE_UP    a loss-limited path read lower: one more
                                                     sample before judging (rule 6)
       PROBE_UP   --NO_GAIN_AT_START-->  PROBE_DOWN  the initial guess gained nothing from more
                                                     streams: it may be too high, try fewer now
                                                     (not under a loss-based congestion control:
                                                     until its slow start's overshoot ends, 2-3 s,
                                                     fewer streams read as good as more)
       PROBE_DOWN --KEPT-------------->  PROBE_DOWN  fewer did as well: shed one more
       PROBE_DOWN --KEPT_AT_MIN------->  HOLD        fewer did as well; at min
       PROBE_DOWN --LOST-------------->  HOLD        back to the last count that did as well
       HOLD       --WAIT-------------->  HOLD
       HOLD       --TIMER_UP---------->  PROBE_UP    held long enough: probes alternate down and
       HOLD       --TIMER_DOWN-------->  PROBE_DOWN  up, so the count follows the link both ways
       HOLD       --SHIFT_UP---------->  PROBE_UP    two samples in a row >2x threshold above the
       HOLD       --SHIFT_DOWN-------->  PROBE_DOWN  hold average (or below): the link changed

4. Hysteresis.  HOLD lasts ``hold_intervals`` samples; after a probe that
   changed nothing it doubles, up to ``max_hold_intervals``, and it resets
   when a probe moves the count or the link shifts.  A probe down is judged
   against the *peak* of its run (the reference or any better sample since),
   so neither small accepted losses nor a transient dip that started the run
   can compound into shedding streams that matter.
5. A probe up is refused, whatever it gained, when the retransmit rate rose
   above ``max_retransmit_rate`` and to more than twice its level before the
   probe: those streams only fight each other for the bottleneck queue.
6. Loss-limited paths.  With a loss-based congestion control (``loss_based``:
   cubic, reno -- not bbr) each stream's rate is bounded near
   MSS / (RTT x sqrt(p)) (Mathis et al.), so until the bottleneck fills the
   goodput grows in proportion to the count, and a sample's noise (one loss
   burst halves a stream's window) is larger than one added stream's share.
   While the retransmitted fraction is above ``lossy_retransmit_rate`` (the
   mean of the last 4 samples, settling ones included: one sample of a
   1%-loss path reads 0.3-2%):

   * a probe up doubles the count (not ~10% more; the first probe of a
     loss-based transfer doubles whatever the loss: slow start has seen too
     few segments to tell it, 0-0.4% on a 1%-loss path), and the streams it adds
     settle one more interval (a new stream's slow start overshoots for
     ~1.5 s; the initial streams' overshoot inflates the first reference
     instead, which the next point absorbs -- waiting it out cost every
     transfer half a second);
   * it is kept unless the goodput fell by more than twice
     ``gain_threshold`` (doubling the streams of a path that is not full
     cannot lower it: a lower reading is the reference's overshoot or
     noise, ~10% per sample; one that low is judged again on the mean of
     it and one more sample), with no knee estimate (it would rest on the
     noisiest sample), and the next probe doubles again;
   * a full bottleneck announces itself: the retransmitted fraction jumps
     from the path's random loss to several times it (queue overflow), in
     two samples running (single samples spike to 20%).  Rule 5 then
     becomes: kept and held there (GAIN_SATURATED) when it gained at least
     ``gain_threshold``, refused otherwise (the extra streams only overflow
     the queue);
   * fewer streams cannot help: a refused probe holds and the next timer
     probes up again (never "the initial count may be too many"), a drop
     while holding is answered with a probe up, and the hold never probes
     down (at ``max_streams`` it just holds).  A path whose goodput does
     not grow with the count (not network-bound) and never overflows ends
     at ``max_streams``.

   Measured on the emulated 1 Gbit/s, 50 ms, 1% loss link under cubic: the
   fixed counts 1, 2, 4, 8, 16 gave 0.11, 0.23, 0.43, 0.81, 0.85 of the cap;
   +1-stream probes judged on 1 s samples read -7% and walked the count
   down, and rule 5 alone refused 8 -> 16 although it gained 20%.  With
   these rules auto reaches 16 streams in 3.4 s.
7. The count never leaves [min_streams, max_streams].
8. Errors are sticky: invalid input (goodput not a finite number >= 0, time
   going backwards) raises ``InternalError`` and puts the controller in
   ``ERROR``, where every later ``observe`` raises too.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from dwcp.errors import ConfigError, InternalError

__all__ = [
    "initial_streams",
    "StreamController",
    "Decision",
    "HistoryEntry",
    "START",
    "PROBE_UP",
    "HOLD",
    "PROBE_DOWN",
    "ERROR",
]


class _Sentinel(str):
    """A state or event name; a str so it prints and serialises as itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


# States
START = _Sentinel("START")
PROBE_UP = _Sentinel("PROBE_UP")
HOLD = _Sentinel("HOLD")
PROBE_DOWN = _Sentinel("PROBE_DOWN")
ERROR = _Sentinel("ERROR")

# Events (what a judged sample says, given the limits)
EV_MEASURED = _Sentinel("MEASURED")
EV_MEASURED_AT_MAX = _Sentinel("MEASURED_AT_MAX")
EV_PINNED = _Sentinel("PINNED")
EV_FORECAST = _Sentinel("FORECAST")
EV_GAIN = _Sentinel("GAIN")
EV_GAIN_AT_MAX = _Sentinel("GAIN_AT_MAX")
EV_GAIN_SATURATED = _Sentinel("GAIN_SATURATED")
EV_GAIN_PAST_KNEE = _Sentinel("GAIN_PAST_KNEE")
EV_NO_GAIN = _Sentinel("NO_GAIN")
EV_LOOK_AGAIN = _Sentinel("LOOK_AGAIN")
EV_NO_GAIN_AT_START = _Sentinel("NO_GAIN_AT_START")
EV_KEPT = _Sentinel("KEPT")
EV_KEPT_AT_MIN = _Sentinel("KEPT_AT_MIN")
EV_LOST = _Sentinel("LOST")
EV_WAIT = _Sentinel("WAIT")
EV_TIMER_UP = _Sentinel("TIMER_UP")
EV_TIMER_DOWN = _Sentinel("TIMER_DOWN")
EV_SHIFT_UP = _Sentinel("SHIFT_UP")
EV_SHIFT_DOWN = _Sentinel("SHIFT_DOWN")

_TRANSITIONS: dict[tuple[str, str], str] = {
    (START, EV_MEASURED): PROBE_UP,
    (START, EV_MEASURED_AT_MAX): PROBE_DOWN,
    (START, EV_PINNED): HOLD,
    (START, EV_FORECAST): HOLD,
    (PROBE_UP, EV_GAIN): PROBE_UP,
    (PROBE_UP, EV_GAIN_AT_MAX): HOLD,
    (PROBE_UP, EV_GAIN_SATURATED): HOLD,
    (PROBE_UP, EV_GAIN_PAST_KNEE): PROBE_DOWN,
    (PROBE_UP, EV_NO_GAIN): HOLD,
    (PROBE_UP, EV_LOOK_AGAIN): PROBE_UP,
    (PROBE_UP, EV_NO_GAIN_AT_START): PROBE_DOWN,
    (PROBE_DOWN, EV_KEPT): PROBE_DOWN,
    (PROBE_DOWN, EV_KEPT_AT_MIN): HOLD,
    (PROBE_DOWN, EV_LOST): HOLD,
    (HOLD, EV_WAIT): HOLD,
    (HOLD, EV_TIMER_UP): PROBE_UP,
    (HOLD, EV_TIMER_DOWN): PROBE_DOWN,
    (HOLD, EV_SHIFT_UP): PROBE_UP,
    (HOLD, EV_SHIFT_DOWN): PROBE_DOWN,
}


# ---------------------------------------------------------------------------
# Initial count


def _si(n: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.3g} {prefix}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _iec(n: float) -> str:
    for prefix in ("", "Ki", "Mi", "Gi"):
        if abs(n) < 1024 or prefix == "Gi":
            return f"{n:.3g} {prefix}B"
        n /= 1024
    raise AssertionError("unreachable")


def _real(x: object) -> float | None:
    """``x`` as a finite float, or None."""
    if isinstance(x, bool):
        return None
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _check_bounds(min_streams: int, max_streams: int) -> None:
    for name, v in (("min_streams", min_streams), ("max_streams", max_streams)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be a whole number, got {v!r}")
    if not 1 <= min_streams <= max_streams:
        raise ConfigError(f"need 1 <= min_streams <= max_streams, got {min_streams} and {max_streams}")


def initial_streams(
    link_bytes_per_s: float | None,
    rtt_s: float,
    per_stream_window_bytes: int,
    min_streams: int,
    max_streams: int,
    *,
    unknown_start: int | None = None,
) -> tuple[int, str]:
    """ceil(BDP / per-stream window), clamped to [min, max], and the reason in words.

    An unknown (None or 0) link speed starts at ``unknown_start`` (clamped),
    or at ``min_streams`` without one: the controller probes from there.
    """
    _check_bounds(min_streams, max_streams)
    rtt = _real(rtt_s)
    if rtt is None or rtt < 0:
        raise ConfigError(f"rtt must be a finite number of seconds >= 0, got {rtt_s!r}")
    window = _real(per_stream_window_bytes)
    if window is None or window <= 0:
        raise ConfigError(
            f"per-stream window must be a positive number of bytes, got {per_stream_window_bytes!r}"
        )
    link = None if link_bytes_per_s is None else _real(link_bytes_per_s)
    if link_bytes_per_s is not None and (link is None or link < 0):
        raise ConfigError(f"link speed must be a finite number >= 0 bytes/s, got {link_bytes_per_s!r}")
    if not link:
        if unknown_start is None:
            return min_streams, f"link speed unknown: start at min_streams={min_streams} and probe"
        n = max(min_streams, min(max_streams, unknown_start))
        return n, f"link speed unknown: start at {n} streams and probe"
    bdp = link * rtt
    n = max(1, math.ceil(bdp / window - 1e-9))
    clamped = max(min_streams, min(max_streams, n))
    why = (
        f"BDP {_si(bdp, 'B')} = {_si(link * 8, 'bit/s')} x {rtt * 1000:.3g} ms over "
        f"{_iec(window)} windows -> {n} stream{'s' if n != 1 else ''}"
    )
    if clamped != n:
        why += f", clamped to {'min' if clamped > n else 'max'}_streams={clamped}"
    return clamped, why


# ---------------------------------------------------------------------------
# Online controller


@dataclass(frozen=True)
class Decision:
    target_streams: int
    reason: str


class HistoryEntry(NamedTuple):
    now: float
    streams: int  # the target after this observation
    goodput_bytes_per_s: float
    reason: str
    state: str
    retransmit_rate: float | None = None  # as fed with this observation


class StreamController:
    """The online stream-count controller; see the module's rules.

    ``n`` is the current target; ``state`` one of START, PROBE_UP, HOLD,
    PROBE_DOWN, ERROR; ``history`` the last ``history_len`` observations.
    """

    def __init__(
        self,
        initial: int,
        min_streams: int,
        max_streams: int,
        *,
        interval_s: float = 0.5,
        gain_threshold: float = 0.05,
        hold_intervals: int = 8,
        max_hold_intervals: int = 16,
        settle_intervals: int = 1,
        knee_efficiency: float = 0.5,
        max_retransmit_rate: float = 0.02,
        loss_based: bool = False,
        lossy_retransmit_rate: float = 0.005,
        history_len: int = 4096,
        forecast: bool = False,
    ) -> None:
        _check_bounds(min_streams, max_streams)
        if isinstance(initial, bool) or not isinstance(initial, int):
            raise ConfigError(f"initial stream count must be a whole number, got {initial!r}")
        if not (_real(interval_s) or 0) > 0:
            raise ConfigError(f"interval_s must be > 0, got {interval_s!r}")
        if not 0 < gain_threshold < 1:
            raise ConfigError(f"gain_threshold must be in (0, 1), got {gain_threshold!r}")
        if not 1 <= hold_intervals <= max_hold_intervals:
            raise ConfigError("need 1 <= hold_intervals <= max_hold_intervals")
        if settle_intervals < 0:
            raise ConfigError(f"settle_intervals must be >= 0, got {settle_intervals!r}")
        if not 0 <= knee_efficiency <= 1:
            raise ConfigError(f"knee_efficiency must be in [0, 1], got {knee_efficiency!r}")
        if not max_retransmit_rate >= 0:
            raise ConfigError(f"max_retransmit_rate must be >= 0, got {max_retransmit_rate!r}")
        if not lossy_retransmit_rate >= 0:
            raise ConfigError(f"lossy_retransmit_rate must be >= 0, got {lossy_retransmit_rate!r}")
        if history_len < 1:
            raise ConfigError(f"history_len must be >= 1, got {history_len!r}")
        self.min_streams = min_streams
        self.max_streams = max_streams
        self.interval_s = float(interval_s)
        self.gain_threshold = float(gain_threshold)
        self.hold_intervals = hold_intervals
        self.max_hold_intervals = max_hold_intervals
        self.settle_intervals = settle_intervals
        self.knee_efficiency = float(knee_efficiency)
        self.max_retransmit_rate = float(max_retransmit_rate)
        self.loss_based = bool(loss_based)
        self.lossy_retransmit_rate = float(lossy_retransmit_rate)
        self._recent_rr: deque[float] = deque(maxlen=4)  # the last samples' retransmit rates, settling or not
        self.history: deque[HistoryEntry] = deque(maxlen=history_len)
        self.forecast = bool(forecast)  # ``initial`` is the path's forecast: START holds it

        self.n = self._clamp(initial)
        self.state: str = START
        self._error: str | None = None
        # measurement (rule 2)
        self._last_now: float | None = None
        self._acc_dt = 0.0
        self._acc_g = 0.0
        self._acc_rr_dt = 0.0
        self._acc_rr = 0.0
        self._settle = settle_intervals
        # probe bookkeeping
        self._base = self.n  # the count a failed probe returns to
        self._ref = 0.0  # goodput at _base (probe up) / peak of the run (probe down)
        self._ref_rr: float | None = None
        self._step = 1
        self._from_start = False
        self._first_look: tuple[float, float | None] | None = None  # rule 6: a probe's first, bad, sample
        self._probe_origin = self.n  # the count held before this probe run
        self._next_up = False  # HOLD's next timer probe goes up?
        # HOLD bookkeeping
        self._hold_len = hold_intervals
        self._held = 0
        self._hold_sum = 0.0
        self._hold_cnt = 0
        self._hold_rr_sum = 0.0
        self._hold_rr_cnt = 0
        self._pending: tuple[float, float | None, int] | None = None  # (goodput, rr, sign) of an outlier

    def __repr__(self) -> str:
        return f"<StreamController {self.state} n={self.n} in [{self.min_streams}, {self.max_streams}]>"

    # -- public -------------------------------------------------------------

    def observe(
        self, now: float, goodput_bytes_per_s: float, retransmit_rate: float | None = None
    ) -> Decision:
        """Feed the goodput measured over the interval ending at ``now``; get the target."""
        if self.state is ERROR:
            raise InternalError(f"stream controller is in ERROR ({self._error}); it refuses input")
        try:
            d = self._observe(now, goodput_bytes_per_s, retransmit_rate)
        except Exception as exc:
            self.state = ERROR
            self._error = str(exc)
            raise
        self.history.append(
            HistoryEntry(
                now,
                d.target_streams,
                float(goodput_bytes_per_s),
                d.reason,
                self.state,
                None if retransmit_rate is None else float(retransmit_rate),
            )  # fmt: skip
        )
        return d

    def history_as_dicts(self) -> list[dict]:
        """``history`` for ``--json`` output."""
        return [e._asdict() for e in self.history]

    # -- measurement --------------------------------------------------------

    def _observe(self, now: float, g: float, rr: float | None) -> Decision:
        g_ = _real(g)
        if g_ is None or g_ < 0:
            raise InternalError(f"goodput must be a finite number >= 0 bytes/s, got {g!r}")
        rr_ = None if rr is None else _real(rr)
        if rr is not None and (rr_ is None or rr_ < 0):
            raise InternalError(f"retransmit rate must be a finite number >= 0 or None, got {rr!r}")
        now_ = _real(now)
        if now_ is None:
            raise InternalError(f"now must be a finite number of seconds, got {now!r}")
        g, rr, now = g_, rr_, now_
        if self._last_now is not None and now < self._last_now:
            raise InternalError(f"time went backwards: {now} after {self._last_now}")
        dt = self.interval_s if self._last_now is None else now - self._last_now
        self._last_now = now
        self._acc_dt += dt
        self._acc_g += g * dt
        if rr is not None:
            self._acc_rr_dt += dt
            self._acc_rr += rr * dt
        if self._acc_dt < 0.75 * self.interval_s:
            return Decision(self.n, f"{self.state}: measuring at {self.n} streams")
        sample = self._acc_g / self._acc_dt
        sample_rr = self._acc_rr / self._acc_rr_dt if self._acc_rr_dt > 0 else None
        self._acc_dt = self._acc_g = self._acc_rr_dt = self._acc_rr = 0.0
        if sample_rr is not None:
            self._recent_rr.append(sample_rr)
        if self._settle > 0:
            self._settle -= 1
            return Decision(self.n, f"{self.state}: settling at {self.n} streams")
        if sample == 0:
            return Decision(self.n, f"{self.state}: nothing acknowledged this interval, not judged")
        return self._step_machine(sample, sample_rr)

    def _step_machine(self, g: float, rr: float | None) -> Decision:
        handlers: dict[str, Callable[[float, float | None], tuple[str, int, str]]] = {
            START: self._on_start, PROBE_UP: self._on_probe_up, PROBE_DOWN: self._on_probe_down, HOLD: self._on_hold,
        }  # fmt: skip
        handler = handlers[self.state]
        event, target, reason = handler(g, rr)
        try:
            new_state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InternalError(f"no transition from {self.state} on {event}") from None
        if new_state is HOLD and self.state is not HOLD:
            self._enter_hold(target)
        self.state = new_state
        self._move(target)
        return Decision(self.n, reason)

    # -- helpers ------------------------------------------------------------

    def _clamp(self, n: int) -> int:
        return max(self.min_streams, min(self.max_streams, n))

    def _move(self, target: int) -> None:
        target = self._clamp(target)
        if target != self.n:
            # rule 6: streams added to a loss-limited path overshoot in slow start for ~1.5 s
            self._settle = self.settle_intervals + (1 if target > self.n and self._loss_limited() else 0)
            self.n = target

    def _worth_it(self, fewer: float, more: float) -> bool:
        """Rule: the larger count pays when it gives >= (1 + threshold) x the smaller's goodput."""
        return more >= fewer * (1 + self.gain_threshold) and more > 0

    def _retransmits_rose(self, rr: float | None) -> bool:
        """Rule 5: above ``max_retransmit_rate`` and more than twice the level before the probe."""
        return rr is not None and rr > self.max_retransmit_rate and rr > 2 * (self._ref_rr or 0.0)

    def _recent_retransmit_rate(self) -> float | None:
        return sum(self._recent_rr) / len(self._recent_rr) if self._recent_rr else None

    def _loss_limited(self) -> bool:
        """Rule 6: a loss-based congestion control losing more than ``lossy_retransmit_rate``
        (the mean of the last 4 samples, settling ones too: one sample of a 1%-loss path reads 0.3-2%)."""
        r = self._recent_retransmit_rate()
        return self.loss_based and r is not None and r > self.lossy_retransmit_rate

    def _fresh_up_step(self, n: int, from_start: bool = False) -> int:
        if self._loss_limited() or (from_start and self.loss_based):
            # rule 6: double -- the gain, if the path is still linear, dwarfs a sample's noise (and at the
            # start a loss-based path's loss is not known yet: slow start has seen too few segments)
            return n
        # big enough that a stream count still in its linear region shows a gain of 2x the threshold
        return max(1, math.ceil(n * 2 * self.gain_threshold - 1e-9))

    def _enter_hold(self, target: int) -> None:
        moved = self._clamp(target) != self._probe_origin or self.state is START
        self._hold_len = self.hold_intervals if moved else min(2 * self._hold_len, self.max_hold_intervals)
        self._reset_hold_stats()

    def _reset_hold_stats(self) -> None:
        self._held = 0
        self._hold_sum = self._hold_rr_sum = 0.0
        self._hold_cnt = self._hold_rr_cnt = 0
        self._pending = None

    def _add_hold_sample(self, g: float, rr: float | None) -> None:
        self._hold_sum += g
        self._hold_cnt += 1
        if rr is not None:
            self._hold_rr_sum += rr
            self._hold_rr_cnt += 1

    def _start_up(self, ref: float, ref_rr: float | None, *, from_start: bool = False) -> int:
        self._probe_origin = self._base = self.n
        self._ref, self._ref_rr = ref, ref_rr
        self._step = min(self._fresh_up_step(self.n, from_start), self.max_streams - self.n)
        self._from_start = from_start
        self._first_look = None
        self._next_up = False
        return self.n + self._step

    def _start_down(self, base: int, peak: float, target: int, *, origin: int | None = None) -> int:
        self._probe_origin = self.n if origin is None else origin
        self._base = base
        self._ref = peak
        self._next_up = True
        return target

    # -- states -------------------------------------------------------------

    def _on_start(self, g: float, rr: float | None) -> tuple[str, int, str]:
        if self.min_streams == self.max_streams:
            self._probe_origin = self.n
            return EV_PINNED, self.n, f"fixed at {self.n} streams (min == max)"
        if self.forecast:
            # the first sample is slow start's: not the hold's reference (it would read as a shift up)
            self._probe_origin = self.n
            self._next_up = True  # a probe up costs a bottleneck nothing; a probe down may dip
            return EV_FORECAST, self.n, f"{_si(g, 'B/s')} at {self.n} streams, the path's forecast: hold"
        if self.n >= self.max_streams:
            t = self._start_down(self.n, g, self.n - 1)
            return EV_MEASURED_AT_MAX, t, f"{_si(g, 'B/s')} at max {self.n} streams: probe down to {t}"
        t = self._start_up(g, rr, from_start=True)
        return EV_MEASURED, t, f"{_si(g, 'B/s')} at {self.n} streams: probe up to {t}"

    def _on_probe_up(self, g: float, rr: float | None) -> tuple[str, int, str]:
        base, n, ref = self._base, self.n, self._ref
        gain = g / ref - 1 if ref > 0 else (math.inf if g > 0 else 0.0)
        what = f"probe up {base} -> {n}: {gain:+.0%}" if math.isfinite(gain) else f"probe up {base} -> {n}"
        if self._loss_limited():
            return self._on_probe_up_loss_limited(g, rr, gain, what)
        rr_rose = self._retransmits_rose(rr)
        if rr_rose or not self._worth_it(ref, g):
            why = f"retransmits rose to {rr:.1%}" if rr_rose else f"below {self.gain_threshold:.0%}"
            # (under a loss-based congestion control not at once: the initial streams' slow start overshoots
            # for 2-3 s, and fewer streams read as good as more until it ends -- the hold timer probes down)
            if self._from_start and base > self.min_streams and not self.loss_based:
                t = self._start_down(base, ref, base - 1, origin=base)
                why += f": the initial {base} may be too many, probe down to {t}"
                return EV_NO_GAIN_AT_START, t, f"{what}, {why}"
            return EV_NO_GAIN, base, f"{what}, {why}: hold at {base}"
        # the added streams paid; did they pay in proportion?
        added = n - base
        efficiency = gain / (added / base) if math.isfinite(gain) else 1.0
        if efficiency < self.knee_efficiency:
            knee = max(base + 1, math.ceil(base * g / ref - 1e-9))
            if knee < n:
                t = self._start_down(n, g, knee, origin=base)
                why = f"past the knee, probe down to {t}"
                return EV_GAIN_PAST_KNEE, t, f"{what} for {added / base:+.0%} streams: {why}"
        if n >= self.max_streams:
            return EV_GAIN_AT_MAX, n, f"{what}: keep {n}, the maximum"
        self._base, self._ref, self._ref_rr = n, g, rr
        self._step = min(2 * self._step, n)  # at most double the count per probe
        t = min(self.max_streams, n + self._step)
        return EV_GAIN, t, f"{what}: keep {n}, probe up to {t}"

    def _on_probe_up_loss_limited(
        self, g: float, rr: float | None, gain: float, what: str
    ) -> tuple[str, int, str]:
        """Rule 6's probe up: linear until the bottleneck fills; a full one is told by the retransmits."""
        base, n = self._base, self.n
        before = self._ref_rr or 0.0
        self._next_up = True  # whatever happens, fewer streams cannot help this path
        full = self._retransmits_rose(rr)  # rule 5's signal: here, the bottleneck filled
        first, self._first_look = self._first_look, None
        if first is not None:
            # the second sample of a probe that read badly: the goodput's mean; a full bottleneck stays full
            g = (g + first[0]) / 2
            full = full and self._retransmits_rose(first[1])
            gain = g / self._ref - 1 if self._ref > 0 else 0.0
            what = f"probe up {base} -> {n}: {gain:+.0%} over two samples"
        lower = g < self._ref * (1 - 2 * self.gain_threshold)
        if first is None and (lower or full):  # one sample spikes (retransmits up to 20%, goodput +-10%)
            self._first_look = (g, rr)
            return (
                EV_LOOK_AGAIN,
                n,
                f"{what}: {'lower' if lower else 'retransmits up'}, one more sample at {n}",
            )
        if full:
            assert rr is not None
            if self._worth_it(self._ref, g):
                why = f"retransmits {before:.1%} -> {rr:.1%}: the bottleneck is full"
                return EV_GAIN_SATURATED, n, f"{what}, {why}: hold at {n}"
            why = f"retransmits {before:.1%} -> {rr:.1%}: the extra streams only overflow the bottleneck"
            return EV_NO_GAIN, base, f"{what}, {why}: hold at {base}"
        if lower:
            why = f"lost on a loss-limited path: hold at {base}, probe up again later"
            return EV_NO_GAIN, base, f"{what}, {why}"
        if n >= self.max_streams:
            return EV_GAIN_AT_MAX, n, f"{what}: keep {n}, the maximum"
        self._base, self._ref, self._ref_rr = n, g, rr
        t = min(self.max_streams, 2 * n)
        self._step = t - n
        return EV_GAIN, t, f"{what} on a loss-limited path: keep {n}, probe up to {t}"

    def _on_probe_down(self, g: float, rr: float | None) -> tuple[str, int, str]:
        n, base, peak = self.n, self._base, self._ref
        if self._worth_it(g, peak):
            what = f"probe down {base} -> {n}: {_si(g, 'B/s')} vs peak {_si(peak, 'B/s')}"
            return EV_LOST, base, f"{what}, lost >= {self.gain_threshold:.0%}: back to {base}"
        self._ref = max(peak, g)
        self._base = n
        if n <= self.min_streams:
            return EV_KEPT_AT_MIN, n, f"probe down to {n} kept the goodput: hold at the minimum"
        return EV_KEPT, n - 1, f"probe down to {n} kept the goodput: probe down to {n - 1}"

    def _on_hold(self, g: float, rr: float | None) -> tuple[str, int, str]:
        n = self.n
        self._held += 1
        mean = self._hold_sum / self._hold_cnt if self._hold_cnt else None
        shift = 0
        if mean and self._hold_cnt >= 2 and abs(g / mean - 1) > 2 * self.gain_threshold:
            sign = 1 if g > mean else -1
            if self._pending is not None and self._pending[2] == sign:
                shift = sign
            else:
                if self._pending is not None:
                    self._add_hold_sample(self._pending[0], self._pending[1])
                self._pending = (g, rr, sign)
        else:
            if self._pending is not None:
                self._add_hold_sample(self._pending[0], self._pending[1])
                self._pending = None
            self._add_hold_sample(g, rr)
        if shift:
            assert self._pending is not None and mean is not None
            level = (self._pending[0] + g) / 2
            moved = f"goodput moved {level / mean - 1:+.0%} while holding at {n}"
            self._hold_len = self.hold_intervals
            if shift > 0 and n < self.max_streams:
                t = self._start_up(level, rr)
                return EV_SHIFT_UP, t, f"{moved}: probe up to {t}"
            if shift < 0 and self._loss_limited() and n < self.max_streams:
                t = self._start_up(level, rr)  # rule 6: fewer streams cannot help a loss-limited path
                r = self._recent_retransmit_rate() or 0.0
                return (
                    EV_SHIFT_UP,
                    t,
                    f"{moved} on a loss-limited path ({r:.1%} retransmitted): probe up to {t}",
                )
            if shift < 0 and n > self.min_streams and not self._loss_limited():
                t = self._start_down(n, level, n - 1)
                return EV_SHIFT_DOWN, t, f"{moved}: probe down to {t}"
            # no room that way: the new level is the hold's reference from now on
            pending = self._pending
            self._reset_hold_stats()
            self._add_hold_sample(pending[0], pending[1])
            self._add_hold_sample(g, rr)
            return EV_WAIT, n, f"{moved}: no room to follow, hold"
        if self._held < self._hold_len:
            return EV_WAIT, n, f"hold at {n} ({self._held}/{self._hold_len})"
        ref = self._hold_sum / self._hold_cnt if self._hold_cnt else g
        ref_rr = self._hold_rr_sum / self._hold_rr_cnt if self._hold_rr_cnt else None
        can_up, can_down = n < self.max_streams, n > self.min_streams
        if can_up and (self._next_up or not can_down):
            t = self._start_up(ref, ref_rr)
            return EV_TIMER_UP, t, f"held {self._held} intervals at {n}: probe up to {t}"
        if can_down and not self._loss_limited():
            t = self._start_down(n, ref, n - 1)
            return EV_TIMER_DOWN, t, f"held {self._held} intervals at {n}: probe down to {t}"
        self._reset_hold_stats()
        if can_down:  # rule 6: at max_streams; a lost sample of a lossy path is noise, not a sign of too many
            return EV_WAIT, n, f"hold at {n}: loss-limited, fewer streams cannot help"
        return EV_WAIT, n, f"hold at {n}"
