"""Synthetic candles for demos: a seeded regime-switching random walk.

Regimes follow a Markov chain: ``trend_up`` and ``trend_down`` (drift, moderate volatility),
``mean_revert`` (pulled back to the price where the regime began, low volatility) and ``volatile``
(no drift, high volatility). The same (symbol, seed, start, bars) always gives the same
candles. Stored with ``source="synthetic"`` so every report can say so.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from core.market import bar_length

SOURCE = "synthetic"
#: Every synthetic series starts here (unless asked for earlier), so overlapping requests
#: made at different times produce identical bars and re-runs are idempotent.
SYNTHETIC_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

#: Per-regime (drift per day, volatility per sqrt(day), pull to anchor per bar).
REGIMES: dict[str, tuple[float, float, float]] = {
    "trend_up": (0.012, 0.025, 0.0),
    "trend_down": (-0.010, 0.025, 0.0),
    "mean_revert": (0.0, 0.015, 0.08),
    "volatile": (0.0, 0.060, 0.0),
}
#: Mean regime length in days.
MEAN_REGIME_DAYS = 6.0

#: Starting prices of well-known symbols (others start at 100).
START_PRICES = {"BTC": 30_000.0, "ETH": 2_000.0, "BNB": 300.0, "SOL": 100.0, "XRP": 0.5}


def _start_price(symbol: str) -> float:
    for base, price in START_PRICES.items():
        if symbol.startswith(base):
            return price
    return 100.0


_CHUNK = 4096


def _draws(seed: int, key: int, bars: int, *, n_regimes: int) -> dict[str, np.ndarray]:
    """Per-bar random numbers that depend only on (seed, symbol, bar number): drawn in
    fixed-size chunks, each from its own generator, so a longer series extends a shorter
    one instead of reshuffling it."""
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("switch", "choice", "shock", "wick_hi", "wick_lo", "volume", "trades")
    }
    for chunk in range((bars + _CHUNK - 1) // _CHUNK):
        rng = np.random.default_rng([seed, key, chunk + 1])
        parts["switch"].append(rng.random(_CHUNK))
        parts["choice"].append(rng.integers(0, n_regimes - 1, _CHUNK))
        parts["shock"].append(rng.standard_normal(_CHUNK))
        parts["wick_hi"].append(rng.standard_normal(_CHUNK))
        parts["wick_lo"].append(rng.standard_normal(_CHUNK))
        parts["volume"].append(rng.lognormal(0.0, 0.4, _CHUNK))
        parts["trades"].append(rng.lognormal(0.0, 0.2, _CHUNK))
    return {k: np.concatenate(v)[:bars] for k, v in parts.items()}


def generate_candles(
    symbol: str, timeframe: str, start: datetime, bars: int, *, seed: int = 42
) -> pd.DataFrame:
    """Generate ``bars`` candles of ``timeframe`` from ``start`` (floored to the bar grid).

    Args:
        seed: random seed; combined with the symbol so symbols differ under one seed.

    Returns:
        columns ``open, high, low, close, volume, quote_volume, trades_count, regime``,
        UTC ``DatetimeIndex`` named ``open_time``; OHLC consistent, prices > 0.

    Raises:
        InvalidInputError: unknown timeframe.
        ValueError: ``bars`` < 1.
    """
    if bars < 1:
        raise ValueError("bars must be >= 1")
    step = bar_length(timeframe)
    key = zlib.crc32(symbol.encode())
    draws = _draws(seed, key, bars, n_regimes=len(REGIMES))
    dt_days = step.total_seconds() / 86_400
    names = list(REGIMES)
    stay = float(np.exp(-dt_days / MEAN_REGIME_DAYS))

    regime_idx = np.empty(bars, dtype=np.int64)
    switches = draws["switch"] > stay
    choices = draws["choice"]
    current = int(np.random.default_rng([seed, key]).integers(0, len(names)))
    for i in range(bars):
        if switches[i]:
            current = (current + 1 + int(choices[i])) % len(names)  # a different regime
        regime_idx[i] = current

    params = np.array([REGIMES[n] for n in names])
    drift = params[regime_idx, 0] * dt_days
    vol = params[regime_idx, 1] * np.sqrt(dt_days)
    pull = params[regime_idx, 2]
    shocks = draws["shock"]

    log_price = np.empty(bars)
    p0 = np.log(_start_price(symbol))
    p = anchor = p0
    for i in range(bars):
        if pull[i] == 0.0:
            anchor = p
        p = p + drift[i] + vol[i] * shocks[i] - pull[i] * (p - anchor)
        log_price[i] = p
    close = np.exp(log_price)
    open_ = np.concatenate([[np.exp(p0)], close[:-1]])
    high = np.maximum(open_, close) * np.exp(np.abs(draws["wick_hi"]) * vol * 0.5)
    low = np.minimum(open_, close) * np.exp(-np.abs(draws["wick_lo"]) * vol * 0.5)
    base_volume = 1_000_000.0 / _start_price(symbol) * dt_days
    volume = base_volume * (vol / params[:, 1].mean() / np.sqrt(dt_days)) * draws["volume"]
    trades = np.maximum(1, volume / base_volume * 500 * draws["trades"]).astype(np.int64)

    first = (
        pd.Timestamp(start).tz_convert("UTC")
        if pd.Timestamp(start).tzinfo
        else (pd.Timestamp(start).tz_localize("UTC"))
    )
    first = first.floor(step)
    index = pd.date_range(first, periods=bars, freq=step, name="open_time")
    return pd.DataFrame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "quote_volume": volume * close,
            "trades_count": trades,
            "regime": np.array(names, dtype=object)[regime_idx],
        },
        index=index,
    )


def synthetic_range(
    symbol: str, timeframe: str, start: datetime, end: datetime, *, seed: int = 42
) -> pd.DataFrame:
    """Synthetic candles opening in [start, end), cut from one series that begins at
    :data:`SYNTHETIC_EPOCH` (or ``start`` when earlier), so the same bar time always has the
    same values whatever range is asked for.

    Returns:
        as :func:`generate_candles`; empty when the range holds no whole bar.
    """
    step = bar_length(timeframe)
    origin = min(pd.Timestamp(SYNTHETIC_EPOCH), pd.Timestamp(start).floor(step))
    bars = int((pd.Timestamp(end) - origin) / step)
    if bars < 1:
        return generate_candles(symbol, timeframe, origin.to_pydatetime(), 1, seed=seed).iloc[:0]
    frame = generate_candles(symbol, timeframe, origin.to_pydatetime(), bars, seed=seed)
    return frame[(frame.index >= pd.Timestamp(start)) & (frame.index < pd.Timestamp(end))]
