"""Indicators equal TA-Lib to 1e-6 after the warm-up, on the real BTC hours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib

from backtest import indicators as ind


def _same(ours: np.ndarray, theirs: np.ndarray, warmup: int) -> None:
    assert ours.shape == theirs.shape
    assert np.isnan(ours[:warmup]).all(), "warm-up bars must be NaN"
    np.testing.assert_allclose(ours[warmup:], theirs[warmup:], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ohlcv(btc_hours: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: btc_hours[c].to_numpy(float) for c in ("open", "high", "low", "close", "volume")}


@pytest.mark.tc("TC-ASYNC-068", "TC-ASYNC-069")
@pytest.mark.parametrize("n", [5, 20, 50])
def test_sma_ema_match_talib(ohlcv: dict[str, np.ndarray], n: int) -> None:
    close = ohlcv["close"]
    _same(ind.sma(close, n), talib.SMA(close, n), n - 1)
    _same(ind.ema(close, n), talib.EMA(close, n), n - 1)


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-068")
@pytest.mark.parametrize("alpha", [1 / 14, 2 / 27, 2 / 2001, 0.5, 1.0])
def test_block_filter_equals_the_plain_recursion(alpha: float) -> None:
    """The matrix-product filter behind EMA/Wilder equals the loop, at every block edge,
    also when it writes over its own input (as rsi does)."""
    rng = np.random.default_rng(11)
    for m in (0, 1, 31, 32, 33, 64, 65, 2_000):
        x = rng.normal(100.0, 5.0, m)
        expected, y = np.empty(m), 3.0
        for i in range(m):
            y = alpha * x[i] + (1 - alpha) * y
            expected[i] = y
        np.testing.assert_allclose(ind._smooth(x, 3.0, alpha), expected, rtol=1e-12)
        np.testing.assert_allclose(ind._smooth(x, 3.0, alpha, out=x), expected, rtol=1e-12)


@pytest.mark.tc("TC-ASYNC-066")
@pytest.mark.parametrize("period", [7, 14, 21])
def test_rsi_matches_talib_with_n_leading_nans(ohlcv: dict[str, np.ndarray], period: int) -> None:
    close = ohlcv["close"]
    ours = ind.rsi(close, period)
    _same(ours, talib.RSI(close, period), period)
    assert np.nanmin(ours) >= 0 and np.nanmax(ours) <= 100


@pytest.mark.tc("TC-ASYNC-068")
def test_macd_matches_talib_and_starts_at_33(ohlcv: dict[str, np.ndarray]) -> None:
    close = ohlcv["close"]
    ours = ind.macd(close, 12, 26, 9)
    theirs = talib.MACD(close, 12, 26, 9)
    for a, b in zip(ours, theirs, strict=True):
        _same(a, b, 33)
    assert not np.isnan(ours[0][33])


@pytest.mark.tc("TC-ASYNC-069")
def test_bollinger_matches_talib_population_std(ohlcv: dict[str, np.ndarray]) -> None:
    close = ohlcv["close"]
    ours = ind.bollinger(close, 20, 2.0)
    theirs = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    for a, b in zip(ours, theirs, strict=True):
        _same(a, b, 19)


@pytest.mark.tc("TC-ASYNC-070")
def test_obv_matches_talib(ohlcv: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(
        ind.obv(ohlcv["close"], ohlcv["volume"]),
        talib.OBV(ohlcv["close"], ohlcv["volume"]),
        rtol=1e-12,
        atol=1e-6,
    )


@pytest.mark.tc("TC-ASYNC-070")
def test_volume_spike_and_vwap(ohlcv: dict[str, np.ndarray]) -> None:
    vol = ohlcv["volume"]
    spike = ind.volume_spike(vol, 20)
    _same(spike, vol / talib.SMA(vol, 20), 19)
    h, lo, c = ohlcv["high"], ohlcv["low"], ohlcv["close"]
    typical = (h + lo + c) / 3
    rolling = ind.vwap(h, lo, c, vol, period=24)
    expected = talib.SUM(typical * vol, 24) / talib.SUM(vol, 24)
    _same(rolling, expected, 23)
    cumulative = ind.vwap(h, lo, c, vol)
    np.testing.assert_allclose(cumulative, np.cumsum(typical * vol) / np.cumsum(vol), rtol=1e-12)
    # a VWAP lies between the lowest low and the highest high seen in its window
    assert np.nanmin(rolling[23:] - talib.MIN(lo, 24)[23:]) >= -1e-9


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-068")
def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="period must be an integer >= 2"):
        ind.rsi(np.arange(50.0), 1)
    with pytest.raises(ValueError, match="1-D"):
        ind.sma(np.ones((3, 3)), 2)
    with pytest.raises(ValueError, match="fast must be smaller than slow"):
        ind.macd(np.arange(100.0), 26, 12)
    short = ind.rsi(np.arange(5.0), 14)
    assert short.shape == (5,) and np.isnan(short).all()
