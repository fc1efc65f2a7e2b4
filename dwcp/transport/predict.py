"""Forecasting a path from its own history: small models, chosen per series by backtest.

A path's trace (``dwcp.transport.trace``: one record per finished send) gives short,
irregular, noisy series.  Each candidate model forecasts the next value from the values before it:

* ``last``: the last value (the naive forecast every other model must beat);
* ``ewma``: an exponentially weighted mean (alpha 0.3);
* ``holt``: Holt's linear trend (alpha 0.5, beta 0.3), for a path that drifts;
* ``ar2``: an AR(2) model with a mean, fitted by least squares on the history (ridge-regularised,
  so a short history does not fit noise), for a path that oscillates;
* ``seasonal``: additive Holt-Winters (alpha 0.5, beta 0.1, gamma 0.3) at the period where the
  history's autocorrelation peaks above 0.5 (2 to a third of the history long), for a path whose
  load repeats (a nightly backup window over sends made every hour); Holt where no period shows.

``choose`` backtests every model on the series -- one-step-ahead, rolling: the forecast of each
value from the values before it, after ``warmup`` values -- and picks the one with the lowest mean
absolute error; its MAE, MAPE and the naive model's are reported with the forecast, so a model
earns its place against "same as last time" on the data, every time.

Pure numpy, no I/O; every function takes and returns plain floats and sequences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MODELS", "Forecast", "forecast", "backtest", "choose", "season_of"]


def _last(h: np.ndarray) -> float:
    return float(h[-1])


def _ewma(h: np.ndarray, alpha: float = 0.3) -> float:
    s = float(h[0])
    for x in h[1:]:
        s = alpha * float(x) + (1 - alpha) * s
    return s


def _holt(h: np.ndarray, alpha: float = 0.5, beta: float = 0.3) -> float:
    if len(h) < 2:
        return float(h[-1])
    level, trend = float(h[0]), float(h[1] - h[0])
    for x in h[1:]:
        prev = level
        level = alpha * float(x) + (1 - alpha) * (level + trend)
        trend = beta * (level - prev) + (1 - beta) * trend
    return level + trend


def _ar2(h: np.ndarray, ridge: float = 1.0) -> float:
    if len(h) < 6:
        return _ewma(h)
    mu = float(h.mean())
    x = h - mu
    a = np.stack([x[1:-1], x[:-2]], axis=1)  # predict x[t] from x[t-1], x[t-2]
    y = x[2:]
    coef = np.linalg.solve(a.T @ a + ridge * np.var(x) * np.eye(2) + 1e-12 * np.eye(2), a.T @ y)
    coef = np.clip(coef, -1.0, 1.0)  # a stationary-ish fit: no explosive forecast from a short series
    return float(mu + coef[0] * x[-1] + coef[1] * x[-2])


def season_of(h: np.ndarray, min_acf: float = 0.5) -> int | None:
    """The period (in samples) at which ``h``'s autocorrelation peaks above ``min_acf``, or None."""
    n = h.size
    if n < 8:
        return None
    x = h - h.mean()
    var = float(x @ x)
    if var <= 0:
        return None
    acf = {p: float(x[p:] @ x[:-p]) / var * n / (n - p) for p in range(2, n // 3 + 1)}  # unbiased
    top = max(acf.values(), default=0.0)
    if top <= min_acf:
        return None
    # the fundamental: the shortest lag nearly as strong as the strongest (its multiples peak too)
    return min(p for p, a in acf.items() if a >= 0.9 * top)


def _seasonal(h: np.ndarray, alpha: float = 0.5, beta: float = 0.1, gamma: float = 0.3) -> float:
    p = season_of(h)
    if p is None:
        return _holt(h)
    first = h[:p]
    level, trend = (
        float(first.mean()),
        float((h[p : 2 * p].mean() - first.mean()) / p) if h.size >= 2 * p else 0.0,
    )
    season = list(first - first.mean())
    for t in range(p, h.size):
        x, s = float(h[t]), season[t % p]
        prev = level
        level = alpha * (x - s) + (1 - alpha) * (level + trend)
        trend = beta * (level - prev) + (1 - beta) * trend
        season[t % p] = gamma * (x - level) + (1 - gamma) * s
    return level + trend + season[h.size % p]


MODELS: dict[str, Callable[[np.ndarray], float]] = {
    "last": _last,
    "ewma": _ewma,
    "holt": _holt,
    "ar2": _ar2,
    "seasonal": _seasonal,
}


def forecast(history: Sequence[float] | np.ndarray, model: str) -> float:
    """``model``'s forecast of the value after ``history`` (non-empty)."""
    h = np.asarray(history, dtype=np.float64)
    if h.size == 0:
        raise ValueError("no history to forecast from")
    v = MODELS[model](h)
    return v if math.isfinite(v) else float(h[-1])


def backtest(series: Sequence[float] | np.ndarray, model: str, warmup: int = 3) -> tuple[float, float]:
    """(MAE, MAPE) of ``model``'s one-step forecasts of ``series[warmup:]``, each from the values
    before it; (nan, nan) when the series is too short."""
    s = np.asarray(series, dtype=np.float64)
    if s.size <= warmup:
        return math.nan, math.nan
    errs, pcts = [], []
    for t in range(warmup, s.size):
        e = abs(forecast(s[:t], model) - s[t])
        errs.append(e)
        if abs(s[t]) > 1e-9:  # MAPE leaves out zeros (and values too small to divide by)
            pcts.append(e / abs(s[t]))
    return float(np.mean(errs)), float(np.mean(pcts)) if pcts else math.nan


@dataclass(frozen=True)
class Forecast:
    """The chosen model's forecast of a series' next value, with the backtest that chose it."""

    value: float
    model: str
    mae: float  # the chosen model's backtest mean absolute error (nan: too short to backtest)
    mape: float
    naive_mae: float  # the last-value model's, on the same series

    def to_json(self) -> dict:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def choose(series: Sequence[float], warmup: int = 3) -> Forecast:
    """The model with the lowest backtest MAE on ``series`` (ties and too-short series: ``last``)
    and its forecast of the next value."""
    scores = {m: backtest(series, m, warmup) for m in MODELS}
    naive = scores["last"][0]
    best = "last"
    if math.isfinite(naive):
        for m, (mae, _) in scores.items():
            if math.isfinite(mae) and mae < scores[best][0] - 1e-12:
                best = m
    mae, mape = scores[best]
    return Forecast(float(forecast(series, best)), best, mae, mape, naive)
