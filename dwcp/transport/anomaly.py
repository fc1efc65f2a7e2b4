"""Online anomaly detection on a path's goodput, RTT and retransmits during a transfer.

Theory of operation
-------------------
The sender samples its path about every 0.5 s: goodput (bytes/s, all streams), RTT (s, median over
streams) and the retransmitted fraction of the bytes sent in the interval.  ``PathWatch`` keeps one
detector per signal and reports an ``Anomaly`` when a signal moves the bad way -- goodput drops, RTT
rises, retransmits rise -- by enough, for long enough, to be more than the path's own noise.

Per-sample goodput is heavy-tailed (cubic's sawtooth, one slow interval, +-20-30 % noise), so no
single statistic is trusted alone.  An alarm needs three tests to agree on the same sample:

* ``cusum``: a one-sided CUSUM of the sample's robust z-score against the baseline (median and MAD
  of a rolling window), each z clipped to ``+-clip_z`` so one outlier adds at most
  ``clip_z - cusum_k`` (less than ``cusum_h``: a single slow interval cannot alarm);
* ``mad``: the median of the last ``recent`` samples is ``shift_z`` robust standard errors away
  from the baseline median (a two-sample median test: noise in a short baseline does not alarm);
* ``min change``: that shift is also large in the signal's own units -- goodput fell by
  ``goodput_min_drop``, RTT rose by ``rtt_min_rise`` *and* ``rtt_min_rise_s``, retransmits rose by
  ``retrans_min_rise`` (absolute) -- so a statistically clear but harmless move does not page anyone.

Goodput and RTT are multiplicative, so their detectors work on ``log(value)``: a 50 % drop is the
same z at 100 Mbit/s and at 1 Gbit/s.  The retransmitted fraction is mostly zero (MAD 0), so it works
on the absolute fraction with an absolute floor (``retrans_min_scale``) under its scale.

Rules
-----
1. Sans-IO and deterministic: ``observe(t, ...)`` and ``note_streams(t, n)`` in, a list of raised
   ``Anomaly`` out.  ``t`` is the caller's clock in seconds; there is no clock, no I/O and no
   randomness here, and the same inputs give the same outputs.
2. Never raises on data.  A value that is ``None``, not finite, or negative is missing: that
   signal skips the sample.  A retransmitted fraction above 1 counts as 1.  Time going backwards, or
   jumping more than ``max_gap_s``, starts over (a fresh watch: warm-up again).
3. Warm-up.  Samples less than ``warmup_s`` after the first one (TCP slow start and its overshoot)
   are ignored: they neither enter a baseline nor alarm.  A signal alarms only once its baseline
   holds ``min_baseline`` samples; while it holds fewer than 20, its MAD scale is widened by
   sqrt(20 / n) (and kept at least at the previous baseline's), as the MAD of 8 samples is often
   half the truth and a CUSUM on too small a scale runs away on plain noise.
4. Baseline.  The last ``window`` samples before the most recent ``recent`` ones (a lag, so an onset
   does not drag the baseline with it; while the baseline is still filling, samples enter it at
   once).  While a signal's episode is open its baseline is frozen.
5. Stream changes.  Goodput keeps one baseline through them: the stream controller
   (dwcp.transport.controller) keeps a count only while it pays -- a probe up that brings no more
   goodput is undone, a step down is taken only where goodput holds -- so after the warm-up the
   goodput the path delivers does not step down with the count, and a drop is the path's; samples
   within ``restore_holdoff_s`` of a change are ignored (the remaining streams take over freed
   capacity within ~1 s).  RTT and retransmits do follow the count (the queue added streams build
   at the bottleneck, their slow starts), so each of their baselines belongs to a stream count.
   ``note_streams`` with a new count puts the signal's baseline aside under the old count, drops
   its recent samples and CUSUM, and takes the new count's: the one put aside when the sender last
   ran at that count (less than ``relearn_after_s`` ago), samples within ``restore_holdoff_queue_s``
   of the change ignored (the remaining streams' windows overshoot the queue first) -- so a probe of the stream controller that is undone a second later (one
   stream more, then back) does not blind the detectors, nor make a drop right after it the new
   normal (found on the WAN testbed: a rate drop 1 s after a probe went unseen) -- or, for a count
   not seen lately, a new baseline, samples within ``holdoff_s`` ignored.  Two exceptions keep
   the current baseline: a signal with an open
   episode, and a signal stepping already before the change (its last 3 samples added at least
   half of ``cusum_h`` to the CUSUM, and their median is past the minimum change) -- a drop that
   came first is not caused by the streams, and the stream controller answering it (its
   SHIFT_DOWN) must not hide it.  A slow drift is not carried through: a stream change is as
   likely to be what ends it.  Limit: a controller that answers after only 2 low samples often
   re-baselines the drop away (on the synthetic traces: found in ~50 % of sends at 2 samples,
   ~90 % at 3).
6. Episodes.  An alarm opens an episode for its signal and is returned once, by the ``observe`` that
   raised it; ``active`` lists the open ones.  An episode closes after ``clear_after`` samples in a
   row whose recent median is back within half the minimum change of the (frozen) baseline; then
   the CUSUM restarts from zero and the baseline moves again.  An episode open for
   ``relearn_after_s`` closes too, and the signal re-baselines on its new level (a change detector
   reports changes; a path that stays slower is the path, and the next change counts from there).
7. The CUSUM is capped at ``2 * cusum_h``, so a long sub-threshold shift cannot leave it so high
   that the alarm waits only on the other tests, and it falls back within a few samples.
8. Cost: O(``window``) per signal per sample (two sorts of at most ``window`` floats), no numpy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

from dwcp.errors import ConfigError

__all__ = ["AnomalySettings", "Anomaly", "PathWatch", "replay", "SIGNALS"]

SIGNALS = ("goodput", "rtt", "retrans")
MAX_SAVED = 16  # stream counts whose baselines are kept aside (rule 5)

_MAD_TO_SD = 1.4826  # MAD x this = the standard deviation, for normal noise
_MEDIAN_SE = 1.2533  # the standard error of a median is this x sd / sqrt(n) (normal noise)
_GOODPUT_FLOOR = 1.0  # bytes/s: log(0) is not a number; a stall reads as 1 B/s (z clipped anyway)
_RTT_FLOOR_S = 1e-4  # 0.1 ms
_SCALE_PRIOR_N = 20  # a baseline of fewer samples uses at least the scale of the previous one


@dataclass(frozen=True)
class AnomalySettings:
    """Thresholds of a ``PathWatch``; the defaults assume one sample every ~0.5 s."""

    # TCP slow start and cubic's overshoot end within ~2-3 s of a send's start (dwcp.transport.controller
    # rule 3); 5 s leaves margin, and the first alarm can come at warmup_s + min_baseline samples.
    warmup_s: float = 5.0
    # A gap this long (or time going backwards) is a new send: start over (rule 2).
    max_gap_s: float = 5.0
    # Baseline window: 60 samples = 30 s, long enough for a median/MAD to ride out cubic's sawtooth
    # (periods of a few seconds), short enough to follow a path's slow drift.
    window: int = 60
    # Alarms need this many baseline samples (4 s): a median of 8 is within ~0.4 sd of the level.
    min_baseline: int = 8
    # The "recent level": median of the last 8 samples (4 s) -- needs 5 of 8 samples past the
    # threshold, so a few slow intervals do not make a level, and a real step shows in 5 samples.
    # (5 samples gave 8 false alarms/hour on the synthetic clean traces at 15-30 % noise, 8 gave 3.)
    recent: int = 8
    # CUSUM reference value, in robust sd: drifts smaller than half a sd are not accumulated.
    cusum_k: float = 0.5
    # CUSUM decision interval: with clip_z 4, two fully-bad samples (2 x 3.5) cross it, one cannot;
    # a 50 % goodput drop at 25 % noise (z ~ 2.8) crosses in 3 samples.
    cusum_h: float = 5.0
    # Each sample's z is clipped to +-4 before it enters the CUSUM (a Huber-type CUSUM): a stall or
    # a 20 % retransmit spike counts as one bad sample, not ten.
    clip_z: float = 4.0
    # The recent median must be 4 standard errors from the baseline median.  Not 3: goodput noise is
    # autocorrelated (cubic's sawtooth, a slow wander), which the i.i.d. standard error understates;
    # on the synthetic clean traces 3 gave ~3 false alarms/hour, 4 about 1.2 (with a 30 % minimum
    # drop).  A 50 % drop at 20 % noise still shows in 3-6 samples; at 30 % noise it is marginal.
    shift_z: float = 4.0
    # Floor of the log-space scale: a very steady signal (RTT +-1 %) still has z per 2 %, so the
    # CUSUM does not read every 1 % wobble as 5 sd (the min-change tests would stop it anyway).
    log_min_scale: float = 0.02
    # Goodput: an alarm needs the recent level >= 35 % below the baseline.  The "rate drop"
    # is to <= 50 %; at 20-30 % per-sample noise plus a slow wander a median of 8 still dips 30 %
    # now and then (0.30 gave 1.1-1.4 false alarms/hour on the synthetic clean traces, 0.35 gave 0.6).
    goodput_min_drop: float = 0.35
    # RTT: >= 30 % above the baseline and >= 5 ms (queueing jitter on a 20 ms path is a few ms).
    rtt_min_rise: float = 0.30
    rtt_min_rise_s: float = 0.005
    # Retransmits: the recent fraction >= 1 percentage point above the baseline (a 0.1 %-loss path
    # reads 0-0.5 % per sample with single-sample bursts; an injected 2-5 % loss reads 2-5 %).
    retrans_min_rise: float = 0.01
    # Floor of the retransmit scale (absolute fraction): the MAD of a mostly-zero series is 0.
    retrans_min_scale: float = 0.0025
    # After a stream-count change, ignore 3 s: new streams' slow start (~1.5 s) and the queue they
    # build (RTT up 20-50 % at a tbf bottleneck) settle before the new baseline is taken.
    holdoff_s: float = 3.0
    # Back at a count seen before (a probe that did not pay is undone a second or two later): its
    # baseline is restored and only 1 s is ignored (the remaining streams take the freed capacity
    # within ~1 s; the RTT the count had is known).  Restored only if saved less than relearn_after_s
    # ago; at most MAX_SAVED counts are kept.
    restore_holdoff_s: float = 1.0
    # ... but RTT and retransmits, back at a count seen before, ignore 2.5 s: the remaining streams'
    # windows grow into the freed capacity and overshoot the bottleneck's queue before they settle.
    # On the recorded 300 Mbit/s, 1 %-loss traces (perf/traces/long-a-*) retransmits ran 1-2 points
    # above the count's baseline for 1-2 s after each return from 2 streams to 1; with 1 s, one
    # such return raised a retransmit alarm on a clean link.
    restore_holdoff_queue_s: float = 2.5
    # An episode closes after 6 samples (3 s) in a row back near the baseline.
    clear_after: int = 6
    # ... or after 60 s open: a change detector reports changes, not levels; after a minute the
    # lower rate (or the longer RTT) is the path, and the next change is measured from it.
    relearn_after_s: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                problems.append(f"{f.name} must be a finite number, got {v!r}")
        if problems:
            raise ConfigError(problems[0], problems)
        for name in ("window", "min_baseline", "recent", "clear_after"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if isinstance(self.min_baseline, int) and isinstance(self.window, int):
            if self.min_baseline > self.window:
                problems.append(f"min_baseline ({self.min_baseline}) must not exceed window ({self.window})")
        for name in ("warmup_s", "holdoff_s", "restore_holdoff_s", "restore_holdoff_queue_s", "cusum_k"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in (
            "max_gap_s",
            "relearn_after_s",
            "cusum_h",
            "clip_z",
            "log_min_scale",
            "retrans_min_scale",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.shift_z < 0:
            problems.append(f"shift_z must be >= 0, got {self.shift_z!r}")
        if self.clip_z <= self.cusum_k:
            problems.append(
                f"clip_z ({self.clip_z}) must exceed cusum_k ({self.cusum_k}): no sample could count"
            )
        if not 0 < self.goodput_min_drop < 1:
            problems.append(f"goodput_min_drop must be a fraction in (0, 1), got {self.goodput_min_drop!r}")
        if self.rtt_min_rise <= 0 or self.rtt_min_rise_s < 0:
            problems.append(
                f"rtt_min_rise must be > 0 and rtt_min_rise_s >= 0, got {self.rtt_min_rise!r}"
                f" and {self.rtt_min_rise_s!r}"
            )
        if not 0 < self.retrans_min_rise < 1:
            problems.append(f"retrans_min_rise must be a fraction in (0, 1), got {self.retrans_min_rise!r}")
        if problems:
            raise ConfigError(problems[0], problems)


@dataclass(frozen=True)
class Anomaly:
    """One raised episode, with its evidence."""

    signal: str  # "goodput" | "rtt" | "retrans"
    direction: str  # "drop" | "rise"
    detector: str  # the tests that agreed: "cusum+mad" (with the minimum change: rule list above)
    at: float  # time of the sample that raised it (the caller's clock, s)
    since: float  # estimated onset: the later of the CUSUM run's start and the latest bad-side run's
    value: float  # recent level: median of the last ``recent`` samples (bytes/s, s or fraction)
    baseline: float  # the level before: median of the baseline window, same unit
    score: float  # the CUSUM when raised
    threshold: float  # cusum_h
    detail: str  # one sentence with the evidence

    def to_json(self) -> dict:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


# ---------------------------------------------------------------------------
# Small pure helpers


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    m = n // 2
    return s[m] if n % 2 else 0.5 * (s[m - 1] + s[m])


def _mad(xs: Sequence[float], med: float) -> float:
    return _median([abs(x - med) for x in xs])


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _num(v: object) -> float | None:
    """A usable sample value: a finite number >= 0, else None (rule 2)."""
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) and f >= 0 else None


def _fmt(signal: str, v: float) -> str:
    if signal == "goodput":
        return f"{v * 8 / 1e6:.4g} Mbit/s"
    if signal == "rtt":
        return f"{v * 1e3:.4g} ms"
    return f"{v * 100:.3g}%"


# ---------------------------------------------------------------------------
# One signal


class _Series:
    """The detector of one signal.  Values are transformed (log for goodput and RTT) on the way in;
    ``sign`` is +1 when a rise is bad, -1 when a drop is."""

    def __init__(self, name: str, s: AnomalySettings) -> None:
        self.name = name
        self.s = s
        self.log = name != "retrans"
        self.sign = -1.0 if name == "goodput" else 1.0
        self.direction = "drop" if name == "goodput" else "rise"
        self.min_scale = s.log_min_scale if self.log else s.retrans_min_scale
        # Invariant: len(base) <= window; frozen (no appends) while ``episode`` is not None.
        self.base: deque[float] = deque(maxlen=s.window)
        # The last ``recent`` accepted samples as [value, already-in-base, t, clipped z (0 before
        # the baseline is ready)]; every accepted sample enters here.
        self.recent: deque[list] = deque(maxlen=s.recent)
        self.cusum = 0.0  # Invariant: 0 <= cusum <= 2 * cusum_h
        self.onset: float | None = None  # t of the first sample of the current cusum > 0 run
        self.holdoff_until = -math.inf  # samples before this are ignored (rule 5)
        self.prior_scale = 0.0  # the scale of the last baseline with >= _SCALE_PRIOR_N samples
        self.episode: Anomaly | None = None
        self.back = 0  # samples in a row back near the baseline, while an episode is open
        # rule 5: stream count -> (its baseline samples, prior_scale, t put aside); at most MAX_SAVED
        self.saved: dict[int, tuple[list[float], float, float]] = {}
        self._med = math.nan
        self._scale = math.nan

    # -- transforms --
    def _to(self, x: float) -> float:
        if self.name == "goodput":
            return math.log(max(x, _GOODPUT_FLOOR))
        if self.name == "rtt":
            return math.log(max(x, _RTT_FLOOR_S))
        return min(x, 1.0)

    def _from(self, y: float) -> float:
        return math.exp(y) if self.log else y

    # -- baseline --
    def _stats(self) -> tuple[float, float]:
        med = _median(self.base)
        n = len(self.base)
        scale = max(_MAD_TO_SD * _mad(self.base, med), self.min_scale)
        if n < _SCALE_PRIOR_N:
            # The MAD of 8 samples is often half the truth: widen it while the baseline is short
            # (a CUSUM on a too-small scale runs away on plain noise), and never below the last one.
            scale = max(scale * math.sqrt(_SCALE_PRIOR_N / n), self.prior_scale)
        return med, scale

    def _moved(self, base: float, level: float, frac: float = 1.0) -> bool:
        """Whether ``level`` is past ``frac`` of the minimum change from ``base`` (transformed)."""
        s = self.s
        if self.name == "goodput":
            return level - base <= math.log(1.0 - frac * s.goodput_min_drop)
        if self.name == "rtt":
            b, v = math.exp(base), math.exp(level)
            return v >= b * (1.0 + frac * s.rtt_min_rise) and v - b >= frac * s.rtt_min_rise_s
        return level - base >= frac * s.retrans_min_rise

    def pending(self) -> bool:
        """A step already under way (rule 5): keep the baseline through a stream change."""
        s = self.s
        if len(self.base) < s.min_baseline or len(self.recent) < 3:
            return False
        last3 = list(self.recent)[-3:]
        if sum(r[3] - s.cusum_k for r in last3) < s.cusum_h / 2:
            return False  # no step in the last 3 samples: a slow drift may be what the change ends
        return self._moved(self._median_base(), _median([r[0] for r in last3]))

    def _run_start(self) -> float:
        """t of the first of the latest samples on the bad side of the baseline (z > 0) in a row:
        the onset, when the CUSUM's run began earlier on a baseline still settling."""
        start = math.inf
        for r in reversed(self.recent):
            if r[3] <= 0:
                break
            start = r[2]
        return start if math.isfinite(start) else -math.inf

    def _median_base(self) -> float:
        return _median(self.base)

    def switch(self, prev: int, new: int, t: float) -> None:
        """Rule 5: the sender went from ``prev`` to ``new`` streams at ``t``."""
        s = self.s
        # what the count gathered, even short of min_baseline (the controller probes every few
        # seconds at first: a count's baseline fills over several visits), with the samples not
        # yet in it (the recent ones are as much the count's)
        mine = list(self.base) + [r[0] for r in self.recent if not r[1]]
        if mine:
            self.saved.pop(prev, None)
            self.saved[prev] = (mine[-s.window :], self.prior_scale, t)
            while len(self.saved) > MAX_SAVED:
                del self.saved[next(iter(self.saved))]
        got = self.saved.pop(new, None)
        if got is None or t - got[2] >= s.relearn_after_s:
            self.rebaseline(t + s.holdoff_s)
            return
        self.rebaseline(t + s.restore_holdoff_queue_s)
        self.base.extend(got[0])
        self.prior_scale = got[1]

    def rebaseline(self, until: float) -> None:
        if len(self.base) >= _SCALE_PRIOR_N:
            self.prior_scale = self._stats()[1]
        self.base.clear()
        self.recent.clear()
        self.cusum = 0.0
        self.onset = None
        self.holdoff_until = until

    # -- one sample --
    def observe(self, t: float, x: float) -> Anomaly | None:
        s = self.s
        if t < self.holdoff_until:
            return None
        y = self._to(x)
        frozen = self.episode is not None
        if len(self.recent) == self.recent.maxlen:
            old, in_base = self.recent[0][0], self.recent[0][1]
            if not in_base and not frozen:
                self.base.append(old)
        direct = not frozen and len(self.base) < s.min_baseline
        if direct:
            self.base.append(y)
        rec = [y, direct, t, 0.0]
        self.recent.append(rec)
        if len(self.base) < s.min_baseline:
            return None

        med, scale = self._stats()
        self._med, self._scale = med, scale
        z = _clip(self.sign * (y - med) / scale, -s.clip_z, s.clip_z)
        rec[3] = z
        was = self.cusum
        self.cusum = min(max(0.0, was + z - s.cusum_k), 2 * s.cusum_h)
        if self.cusum == 0.0:
            self.onset = None
        elif was == 0.0 or self.onset is None:
            self.onset = t
        level = _median([r[0] for r in self.recent])

        if self.episode is not None:
            if t - self.episode.at >= s.relearn_after_s:
                self.episode = None  # the new level is the path now (rule 6)
                self.rebaseline(t)
                return None
            if self._moved(med, level, 0.5):
                self.back = 0
            else:
                self.back += 1
                if self.back >= s.clear_after:
                    self.episode = None
                    self.back = 0
                    self.cusum = 0.0
                    self.onset = None
            return None

        se = _MEDIAN_SE * scale * math.sqrt(1.0 / len(self.base) + 1.0 / len(self.recent))
        if not (
            self.cusum > s.cusum_h and self.sign * (level - med) >= s.shift_z * se and self._moved(med, level)
        ):
            return None
        since = max(self.onset if self.onset is not None else t, self._run_start())
        # the evidence: the level since the onset (the recent median mixes in samples before it)
        run = [r[0] for r in self.recent if r[2] >= since]
        base_v, level_v = self._from(med), self._from(_median(run) if run else level)
        if self.name == "retrans":
            change = f"rose {100 * (level_v - base_v):.2g} points"
        else:
            change = f"{'fell' if self.sign < 0 else 'rose'} {abs(100 * (level_v / base_v - 1)):.0f}%"
        detail = (
            f"{self.name} {change} ({_fmt(self.name, base_v)} -> {_fmt(self.name, level_v)})"
            f" over {t - since:.1f} s; CUSUM {self.cusum:.1f} > {s.cusum_h:g},"
            f" median shift {abs(level - med) / scale:.1f} sd"
        )
        self.episode = Anomaly(
            signal=self.name,
            direction=self.direction,
            detector="cusum+mad",
            at=t,
            since=since,
            value=level_v,
            baseline=base_v,
            score=self.cusum,
            threshold=s.cusum_h,
            detail=detail,
        )
        self.back = 0
        return self.episode

    def state(self) -> dict:
        ready = len(self.base) >= self.s.min_baseline
        med, scale = self._stats() if ready else (math.nan, math.nan)
        level = _median([r[0] for r in self.recent]) if self.recent else math.nan

        def out(v: float) -> float | None:
            return None if not math.isfinite(v) else v

        return {
            "baseline": out(self._from(med)) if ready else None,
            "scale": out(scale),  # log units for goodput/RTT, fraction for retrans
            "recent": out(self._from(level)) if self.recent else None,
            "samples": len(self.base),
            "cusum": self.cusum,
            "threshold": self.s.cusum_h,
            "holdoff_until": out(self.holdoff_until),
            "active": self.episode is not None,
        }


# ---------------------------------------------------------------------------
# One path


class PathWatch:
    """One path's detectors (goodput drop, RTT rise, retransmit rise), fed one sample at a time."""

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings if settings is not None else AnomalySettings()
        self._reset()

    def _reset(self) -> None:
        self._series = {name: _Series(name, self.settings) for name in SIGNALS}
        self._start: float | None = None  # t of the first sample since the last (re)start
        self._last: float | None = None  # t of the last sample or stream change
        self._streams: int | None = None

    def _clock(self, t: float) -> bool:
        """Advance to ``t``; start over when it goes back or jumps (rule 2).  False: ``t`` unusable."""
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            return False
        if self._last is not None and (t < self._last or t - self._last > self.settings.max_gap_s):
            self._reset()
        if self._start is None:
            self._start = t
        self._last = t
        return True

    def observe(
        self, t: float, *, goodput: float | None, rtt_s: float | None, retrans: float | None
    ) -> list[Anomaly]:
        """Feed one sample; returns the anomalies *raised* by it (an episode raises once, and clears
        after the signal is back for ``clear_after`` samples)."""
        if not self._clock(t):
            return []
        assert self._start is not None
        if t - self._start < self.settings.warmup_s:
            return []
        raised = []
        for name, v in (("goodput", goodput), ("rtt", rtt_s), ("retrans", retrans)):
            x = _num(v)
            if x is None:
                continue
            a = self._series[name].observe(t, x)
            if a is not None:
                raised.append(a)
        return raised

    def note_streams(self, t: float, streams: int) -> None:
        """The sender changed its stream count: re-baseline every signal after a hold-off, except
        one with an open episode or a move already under way (rule 5)."""
        if not self._clock(t):
            return
        prev, self._streams = self._streams, streams
        if prev is None or prev == streams:
            return
        for name, series in self._series.items():
            if name == "goodput":  # one baseline through every count; a moment for the others to take over
                series.holdoff_until = max(series.holdoff_until, t + self.settings.restore_holdoff_s)
            elif series.episode is None and not series.pending():
                series.switch(prev, streams, t)

    @property
    def active(self) -> dict[str, Anomaly]:
        """Signal -> its open episode."""
        return {n: s.episode for n, s in self._series.items() if s.episode is not None}

    def state(self) -> dict:
        """Baselines per signal, for status and metrics (JSON-ready)."""
        return {
            "streams": self._streams,
            "warm": self._start is not None
            and self._last is not None
            and self._last - self._start >= self.settings.warmup_s,
            "signals": {n: s.state() for n, s in self._series.items()},
        }


def _row(row: Sequence[object]) -> tuple[object, ...]:
    r = tuple(row)[:6]
    return r + (None,) * (6 - len(r))


def replay(samples: Iterable[Sequence[object]], settings: AnomalySettings | None = None) -> list[Anomaly]:
    """Run a PathWatch over rows ``[t, goodput, rtt_s, retrans, streams, chunk_size]`` (None allowed
    for every field but t; a row without a usable t is skipped); a row whose t goes backwards or
    jumps more than ``max_gap_s`` starts a new segment (a new send: a fresh PathWatch).  The chunk
    size is not used: the caller stops feeding at a transfer's tail."""
    s = settings if settings is not None else AnomalySettings()
    out: list[Anomaly] = []
    watch = PathWatch(s)
    last: float | None = None
    for row in samples:
        t, goodput, rtt_s, retrans, streams, _chunk = _row(row)
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            continue
        if last is not None and (t < last or t - last > s.max_gap_s):
            watch, last = PathWatch(s), None
        if isinstance(streams, int | float) and not isinstance(streams, bool) and math.isfinite(streams):
            # a row holds the count its interval ran at; the sender decides a change right after a
            # sample, so a count that differs from the previous row's was set at that row's time
            watch.note_streams(float(t) if last is None else last, int(streams))
        last = float(t)
        out.extend(watch.observe(float(t), goodput=_num(goodput), rtt_s=_num(rtt_s), retrans=_num(retrans)))
    return out
