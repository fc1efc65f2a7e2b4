"""dwcp.transport.predict: each model's forecast, the rolling backtest, and the choice by it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.transport.predict import MODELS, backtest, choose, forecast


def test_each_model_on_the_series_it_is_for():
    assert forecast([1, 2, 7], "last") == 7
    assert forecast([10, 10, 10, 10], "ewma") == pytest.approx(10)
    assert forecast([1, 2, 3, 4, 5, 6], "holt") == pytest.approx(7, abs=0.3)  # a trend: continued
    wave = [10 + 5 * (-1) ** i for i in range(30)]  # an alternation: AR(2) follows it
    assert abs(forecast(wave, "ar2") - 15) < abs(forecast(wave, "last") - 15)
    with pytest.raises(ValueError):
        forecast([], "last")


def test_the_backtest_is_one_step_ahead_and_rolling():
    mae, mape = backtest([1.0, 2.0, 3.0, 4.0, 6.0], "last", warmup=2)
    assert mae == pytest.approx((1 + 1 + 2) / 3) and mape == pytest.approx((1 / 3 + 1 / 4 + 2 / 6) / 3)
    assert all(math.isnan(x) for x in backtest([1.0, 2.0], "ewma", warmup=3))


def test_the_choice_beats_the_naive_model_or_is_it():
    trend = [100.0 + 10 * i for i in range(20)]
    f = choose(trend)
    assert f.model == "holt" and f.mae < f.naive_mae and f.value == pytest.approx(300, rel=0.02)
    rng = np.random.default_rng(3)
    noisy = list(500 + rng.normal(0, 50, 60))  # noise about a level: smoothing beats "same as last time"
    f = choose(noisy)
    assert f.model in ("ewma", "ar2") and f.mae < f.naive_mae
    short = choose([5.0, 6.0])
    assert (short.model, short.value) == ("last", 6.0) and short.to_json()["mae"] is None


@given(st.lists(st.floats(min_value=0, max_value=1e12, allow_nan=False), min_size=1, max_size=60))
def test_every_forecast_is_finite_and_the_choice_never_loses_to_naive(series):
    for m in MODELS:
        assert math.isfinite(forecast(series, m))
    f = choose(series)
    assert math.isfinite(f.value)
    if math.isfinite(f.naive_mae):
        assert f.mae <= f.naive_mae + 1e-9


def test_a_seasonal_path_is_forecast_by_its_season():
    rng = np.random.default_rng(5)
    day = np.array([100.0, 100, 40, 40, 100, 100])  # a backup window every 6th send takes 60% of the path
    series = list(np.tile(day, 8) + rng.normal(0, 3, 48))
    from dwcp.transport.predict import season_of

    assert season_of(np.asarray(series)) == 6
    f = choose(series)
    assert (
        f.model == "seasonal" and f.mae < 0.6 * f.naive_mae
    )  # (the first 18 sends are too few for a period)
    assert f.value == pytest.approx(100, abs=10)  # the 49th send: the start of a new cycle
