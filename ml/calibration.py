"""The calibration behind the forecast intervals (see :mod:`ml.forecast` for the method):
EWMA volatility, volatility-standardised h-bar returns, the quantiles of the outcomes known at
each origin and the regime scale. Every function uses only data up to each origin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from core.exceptions import DataQualityError, InvalidInputError

if TYPE_CHECKING:
    from ml.forecast import ForecastConfig

#: Floor of the volatility (a flat series would divide by zero).
MIN_SIGMA = 1e-8


def log_close_of(close: np.ndarray | pd.Series) -> np.ndarray:
    """Log of ``close`` (1-D).

    Raises:
        InvalidInputError: not 1-D.
        DataQualityError: a price that is not finite and positive.
    """
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise InvalidInputError(f"close must be 1-D (got shape {c.shape})")
    if not np.isfinite(c).all() or (c <= 0).any():
        raise DataQualityError("close prices must be finite and positive")
    return np.log(c)


def ewma_volatility(log_close: np.ndarray, halflife_bars: float) -> np.ndarray:
    """EWMA standard deviation of 1-bar log returns, using returns up to each bar.

    Returns:
        array of ``len(log_close)``; NaN at bar 0 (no return yet).
    """
    r = np.diff(log_close, prepend=np.nan)
    var = pd.Series(r * r).ewm(halflife=halflife_bars, min_periods=1).mean().to_numpy()
    return np.maximum(np.sqrt(var), MIN_SIGMA)


def standardized_returns(log_close: np.ndarray, sigma: np.ndarray, h: int) -> np.ndarray:
    """``z_h[s] = (log c[s+h] - log c[s]) / (sigma[s] * sqrt(h))``; NaN where s+h is unknown."""
    z = np.full(len(log_close), np.nan)
    if h < len(log_close):
        z[:-h] = (log_close[h:] - log_close[:-h]) / (sigma[:-h] * np.sqrt(h))
    return z


def known_quantiles(
    z: np.ndarray, origins: np.ndarray, h: int, w: int, level: float, min_samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower, middle, upper quantiles of ``z`` over the ``w`` outcomes known at each origin,
    i.e. z[s] for s in [t - h - w + 1, t - h].

    Returns:
        (lo, median, hi, samples) per origin; NaN where fewer than ``min_samples`` are known.
    """
    padded = np.concatenate([np.full(w, np.nan), z])
    windows = sliding_window_view(padded, w)  # windows[k] = z[k - w .. k - 1]
    rows = windows[origins - h + 1]  # z[t - h - w + 1 .. t - h]
    samples = np.isfinite(rows).sum(axis=1)
    a = (1.0 - level) / 2.0
    lo, mid, hi = np.full((3, len(origins)), np.nan)
    ok = samples >= min_samples
    if ok.any():
        full = rows[ok]
        qs = [a, 0.5, 1.0 - a]
        finite = np.isfinite(full).all()
        q = np.quantile(full, qs, axis=1) if finite else np.nanquantile(full, qs, axis=1)
        lo[ok], mid[ok], hi[ok] = q
    return lo, mid, hi, samples


def window_quantiles(
    z: np.ndarray, origins: np.ndarray, h: int, config: ForecastConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred lower/upper quantiles of ``z`` over each origin's calibration window.

    The window of origin t holds z[s] for s in [t - h - W + 1, t - h] (outcome known at t).

    Returns:
        (q_lo, q_hi, samples) per origin; NaN quantiles where fewer than
        ``min_calibration_samples`` outcomes are known.
    """
    lo, mid, hi, samples = known_quantiles(
        z,
        origins,
        h,
        config.calibration_bars,
        config.interval_level,
        config.min_calibration_samples,
    )
    return lo - mid, hi - mid, samples


def regime_scale(
    z1: np.ndarray,
    origins: np.ndarray,
    config: ForecastConfig,
    calibrated_at: int | None = None,
) -> np.ndarray:
    """``k_t`` of the module docstring from the 1-bar standardised moves ``z1``: their
    interquantile range over the last ``regime_bars`` known outcomes divided by that over
    the calibration window (of each origin, or of ``calibrated_at`` when frozen there).

    One factor per origin for every hour: 1-bar moves give ``regime_bars`` nearly
    independent outcomes, where a window of overlapping h-bar moves would not.

    Returns:
        one factor per origin; 1 where the regime scale is off or too few outcomes are known.
    """
    k = np.ones(len(origins))
    if config.regime_bars <= 0:
        return k
    level, min_n = config.interval_level, config.min_calibration_samples
    r_lo, _, r_hi, _ = known_quantiles(
        z1, origins, 1, config.regime_bars, level, config.regime_bars // 2
    )
    at = origins if calibrated_at is None else np.array([calibrated_at])
    c_lo, _, c_hi, _ = known_quantiles(z1, at, 1, config.calibration_bars, level, min_n)
    cal = np.broadcast_to(c_hi - c_lo, (len(origins),))
    ok = np.isfinite(r_lo) & np.isfinite(cal) & (cal > 0)
    k[ok] = (r_hi[ok] - r_lo[ok]) / cal[ok]
    return k
