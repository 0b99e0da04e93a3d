"""Hourly price forecasts with calibrated intervals (pure numpy, no Prefect).

Method, for a forecast origin t (the newest close) and each hour h = 1..H:

* Volatility: ``sigma_t`` = EWMA (half-life 24 bars) of squared 1-bar log returns up to
  and including t, square-rooted.
* Standardised h-bar returns: ``z_h[s] = (log c[s+h] - log c[s]) / (sigma_s * sqrt(h))``.
* Interval (split-conformal with a volatility-normalised score): the empirical
  ``(1-level)/2`` and ``(1+level)/2`` quantiles of ``z_h[s]`` minus their median, over the
  calibration window of the ``calibration_bars`` origins s whose outcome is known at t
  (``s + h <= t``); scaled by ``sigma_t * sqrt(h)`` around the point forecast. A forecast
  path takes the running envelope over hours 1..h, so widths never shrink with the horizon. Only data
  up to t is used, so the same code measures its coverage on history honestly.
* Point forecast: the model's probability p that the price is higher after its
  ``horizon_bars`` H tilts the drift. If the H-bar log return were normal with scale
  ``sigma_t * sqrt(H)``, P(up) = p means a median of ``sigma_t * sqrt(H) * Phi^-1(p)``;
  that drift is spread linearly over the model's H bars and held flat beyond (the model says
  nothing past its horizon). p = 0.5 gives the random-walk forecast (last price).
* Confidence of hour h: the probability, under a normal with the same scale
  ``sigma_t * sqrt(h)``, that the realised price lands within +-``band_pct`` of the
  predicted price: ``2 * Phi(log(1 + band) / (sigma_t * sqrt(h))) - 1``. The scale grows
  with sqrt(h), so confidence strictly decreases with the horizon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import ndtr, ndtri

from core.exceptions import DataQualityError, InsufficientDataError, InvalidInputError
from core.schemas.analysis import CoverageCheck, PredictPriceResult, PricePoint

if TYPE_CHECKING:
    from ml.predictor import LoadedModel

log = logging.getLogger(__name__)

_MIN_SIGMA = 1e-8
_P_CLIP = (0.02, 0.98)


@dataclass(frozen=True)
class ForecastConfig:
    """Choices of the forecast method (fixed a priori, never tuned on a test window).

    Attributes:
        interval_level: central probability of the interval (0.8 = 10%..90% quantiles).
        calibration_bars: forecast origins in the calibration window of each quantile.
        min_calibration_samples: fewest known outcomes a quantile may come from.
        vol_halflife_bars: half-life of the EWMA volatility.
        band_pct: half-width (percent of the predicted price) defining ``confidence``.
    """

    interval_level: float = 0.8
    calibration_bars: int = 2160
    min_calibration_samples: int = 240
    vol_halflife_bars: float = 24.0
    band_pct: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.interval_level < 1.0:
            raise InvalidInputError(
                f"interval_level must be between 0 and 1 (got {self.interval_level})"
            )
        if (
            self.min_calibration_samples < 10
            or self.calibration_bars < self.min_calibration_samples
        ):
            raise InvalidInputError(
                "calibration_bars must be >= min_calibration_samples >= 10 "
                f"(got {self.calibration_bars}, {self.min_calibration_samples})"
            )


@dataclass
class ForecastPath:
    """Forecast from one origin; arrays indexed by hour - 1.

    Attributes:
        hours: 1..horizon.
        predicted, lower, upper: prices.
        confidence: strictly decreasing probabilities (see module docstring).
        sigma: the origin's 1-bar volatility (log-return scale).
        calibration_samples: known outcomes behind each hour's quantiles.
    """

    hours: np.ndarray
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    confidence: np.ndarray
    sigma: float
    calibration_samples: np.ndarray


@dataclass
class CoverageReport:
    """Share of (origin, hour) pairs whose realised close fell inside the interval."""

    interval_level: float
    origins: int
    horizons: list[int]
    coverage: float
    coverage_by_hour: dict[int, float] = field(default_factory=dict)
    pairs: int = 0


def _log_close(close: np.ndarray | pd.Series) -> np.ndarray:
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
    return np.maximum(np.sqrt(var), _MIN_SIGMA)


def standardized_returns(log_close: np.ndarray, sigma: np.ndarray, h: int) -> np.ndarray:
    """``z_h[s] = (log c[s+h] - log c[s]) / (sigma[s] * sqrt(h))``; NaN where s+h is unknown."""
    z = np.full(len(log_close), np.nan)
    if h < len(log_close):
        z[:-h] = (log_close[h:] - log_close[:-h]) / (sigma[:-h] * np.sqrt(h))
    return z


def _window_quantiles(
    z: np.ndarray, origins: np.ndarray, h: int, config: ForecastConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred lower/upper quantiles of ``z`` over each origin's calibration window.

    The window of origin t holds z[s] for s in [t - h - W + 1, t - h] (outcome known at t).

    Returns:
        (q_lo, q_hi, samples) per origin; NaN quantiles where fewer than
        ``min_calibration_samples`` outcomes are known.
    """
    w = config.calibration_bars
    padded = np.concatenate([np.full(w, np.nan), z])
    windows = sliding_window_view(padded, w)  # windows[k] = z[k - w .. k - 1]
    rows = windows[origins - h + 1]  # z[t - h - w + 1 .. t - h]
    samples = np.isfinite(rows).sum(axis=1)
    a = (1.0 - config.interval_level) / 2.0
    lo, mid, hi = np.full((3, len(origins)), np.nan)
    ok = samples >= config.min_calibration_samples
    if ok.any():
        full = rows[ok]
        qs = [a, 0.5, 1.0 - a]
        finite = np.isfinite(full).all()
        q = np.quantile(full, qs, axis=1) if finite else np.nanquantile(full, qs, axis=1)
        lo[ok], mid[ok], hi[ok] = q
    return lo - mid, hi - mid, samples


def drift_log_return(
    up_probability: float | None, sigma: float, model_horizon_bars: int, h: np.ndarray
) -> np.ndarray:
    """Median log return implied by the model's up-probability at each hour in ``h``.

    Returns:
        ``sigma * sqrt(H) * Phi^-1(p) * min(h, H) / H``; zeros when p is None.
    """
    h = np.asarray(h, dtype=np.float64)
    if up_probability is None or not np.isfinite(up_probability):
        return np.zeros_like(h)
    p = float(np.clip(up_probability, *_P_CLIP))
    big_h = max(1, int(model_horizon_bars))
    total = sigma * np.sqrt(big_h) * float(ndtri(p))
    return total * np.minimum(h, big_h) / big_h


def band_confidence(sigma: float, hours: np.ndarray, band_pct: float) -> np.ndarray:
    """P(|log(realised / predicted)| <= log(1 + band)) under N(0, sigma * sqrt(h)).

    Returns:
        strictly decreasing probabilities for increasing ``hours`` (sigma > 0).
    """
    scale = max(sigma, _MIN_SIGMA) * np.sqrt(np.asarray(hours, dtype=np.float64))
    return 2.0 * ndtr(np.log1p(band_pct / 100.0) / scale) - 1.0


def forecast_path(
    close: np.ndarray | pd.Series,
    horizon: int,
    *,
    up_probability: float | None = None,
    model_horizon_bars: int = 1,
    config: ForecastConfig | None = None,
) -> ForecastPath:
    """Forecast ``horizon`` bars ahead of the last close.

    Args:
        close: closes oldest first; the last one is the forecast origin.
        up_probability: the deployed model's P(rise over ``model_horizon_bars``); None: no tilt.

    Returns:
        a :class:`ForecastPath`.

    Raises:
        InvalidInputError: horizon < 1.
        DataQualityError: non-finite or non-positive closes.
        InsufficientDataError: too little history to calibrate the longest hour.
    """
    config = config or ForecastConfig()
    if horizon < 1:
        raise InvalidInputError(f"horizon must be >= 1 (got {horizon})")
    lc = _log_close(close)
    need = config.min_calibration_samples + horizon + 1
    if len(lc) < need:
        raise InsufficientDataError(
            f"Insufficient data: a {horizon}-hour forecast needs at least {need} candles "
            f"to calibrate its interval, got {len(lc)}"
        )
    sigma = ewma_volatility(lc, config.vol_halflife_bars)
    t = len(lc) - 1
    hours = np.arange(1, horizon + 1)
    q_lo, q_hi, samples = np.empty(horizon), np.empty(horizon), np.empty(horizon, dtype=int)
    for i, h in enumerate(hours):
        z = standardized_returns(lc, sigma, int(h))
        lo, hi, n = _window_quantiles(z, np.array([t]), int(h), config)
        q_lo[i], q_hi[i], samples[i] = lo[0], hi[0], n[0]
    if not np.isfinite(q_lo).all():
        raise InsufficientDataError(
            f"Insufficient data: fewer than {config.min_calibration_samples} known outcomes "
            f"to calibrate the {horizon}-hour interval ({len(lc)} candles)"
        )
    s_t = float(sigma[t])
    center = lc[t] + drift_log_return(up_probability, s_t, model_horizon_bars, hours)
    scale = s_t * np.sqrt(hours)
    # uncertainty never shrinks with the horizon: the envelope of the per-hour quantiles
    # (it can only widen an interval, so the measured per-hour coverage is a lower bound)
    lo_offset = np.minimum.accumulate(scale * q_lo)
    hi_offset = np.maximum.accumulate(scale * q_hi)
    return ForecastPath(
        hours=hours,
        predicted=np.exp(center),
        lower=np.exp(center + lo_offset),
        upper=np.exp(center + hi_offset),
        confidence=band_confidence(s_t, hours, config.band_pct),
        sigma=s_t,
        calibration_samples=samples,
    )


def interval_coverage(
    close: np.ndarray | pd.Series,
    origins: np.ndarray,
    horizons: list[int],
    *,
    up_probabilities: np.ndarray | None = None,
    model_horizon_bars: int = 1,
    config: ForecastConfig | None = None,
) -> CoverageReport:
    """Measure how often the interval built at each origin contains the realised close.

    Every origin's interval uses only data up to that origin (as :func:`forecast_path`);
    pairs whose outcome lies beyond the data, or whose calibration window is too short,
    are skipped.

    Args:
        origins: indices of forecast origins into ``close``.
        up_probabilities: per-bar model probabilities aligned with ``close`` (NaN: no tilt).

    Returns:
        a :class:`CoverageReport`.

    Raises:
        InsufficientDataError: no (origin, hour) pair could be scored.
    """
    config = config or ForecastConfig()
    lc = _log_close(close)
    sigma = ewma_volatility(lc, config.vol_halflife_bars)
    origins = np.asarray(origins, dtype=np.int64)
    hits_all = 0
    pairs_all = 0
    by_hour: dict[int, float] = {}
    for h in horizons:
        ok_t = origins[(origins + h < len(lc)) & (origins - h + 1 >= 0)]
        if not len(ok_t):
            continue
        z = standardized_returns(lc, sigma, h)
        lo, hi, _ = _window_quantiles(z, ok_t, h, config)
        keep = np.isfinite(lo)
        t = ok_t[keep]
        if not len(t):
            continue
        if up_probabilities is None:
            tilt = np.zeros(len(t))
        else:
            tilt = np.array(
                [
                    drift_log_return(float(p), float(s), model_horizon_bars, np.array([h]))[0]
                    for p, s in zip(up_probabilities[t], sigma[t], strict=True)
                ]
            )
        center = lc[t] + tilt
        scale = sigma[t] * np.sqrt(h)
        realised = lc[t + h]
        inside = (realised >= center + scale * lo[keep]) & (realised <= center + scale * hi[keep])
        by_hour[h] = float(inside.mean())
        hits_all += int(inside.sum())
        pairs_all += len(t)
    if pairs_all == 0:
        raise InsufficientDataError(
            "Insufficient data: no forecast origin has both a calibration window and a known outcome"
        )
    return CoverageReport(
        interval_level=config.interval_level,
        origins=len(origins),
        horizons=list(horizons),
        coverage=hits_all / pairs_all,
        coverage_by_hour=by_hour,
        pairs=pairs_all,
    )


def predict_prices(
    model: LoadedModel,
    candles: pd.DataFrame,
    horizon_hours: int,
    *,
    config: ForecastConfig | None = None,
    coverage_bars: int = 720,
    coverage_step: int = 6,
) -> PredictPriceResult:
    """Hourly forecasts for ``horizon_hours`` from the newest candle, with the interval
    method's coverage measured on the last ``coverage_bars`` origins of the same candles.

    Args:
        model: the deployed model (its up-probability tilts the drift).
        candles: hourly candles, oldest first (calibration needs at least
            ``config.min_calibration_samples + horizon_hours + 1``; the default calibration
            window uses up to 2,160 + horizon).

    Returns:
        a :class:`PredictPriceResult` (``task_id`` unset, ``elapsed_s`` 0).

    Raises:
        InsufficientDataError: too few candles for the model or the interval.
        DataQualityError: non-finite or non-positive prices.
    """
    config = config or ForecastConfig()
    record = model.record
    close = candles["close"].to_numpy(np.float64)
    p_up = model.predict_up_probability(candles)
    path = forecast_path(
        close,
        horizon_hours,
        up_probability=p_up,
        model_horizon_bars=record.horizon_bars,
        config=config,
    )
    origin_open = pd.Timestamp(candles.index[-1])
    step = pd.Timedelta(hours=1)
    points = [
        PricePoint(
            hour=int(h),
            timestamp=(origin_open + step * (int(h) + 1)).to_pydatetime(),
            predicted_price=float(path.predicted[i]),
            lower=float(path.lower[i]),
            upper=float(path.upper[i]),
            confidence=float(path.confidence[i]),
        )
        for i, h in enumerate(path.hours)
    ]
    coverage = None
    horizons = sorted({h for h in (1, 6, 24, horizon_hours) if h <= horizon_hours})
    n = len(close)
    first = max(0, n - 1 - coverage_bars)
    origins = np.arange(first, n - 1, coverage_step)
    tail_from = max(0, first - model.spec.lookback - 100)
    probs = np.full(n, np.nan)
    probs[tail_from:] = model.predict_up_probabilities(candles.iloc[tail_from:])
    try:
        rep = interval_coverage(
            close,
            origins,
            horizons,
            up_probabilities=probs,
            model_horizon_bars=record.horizon_bars,
            config=config,
        )
        coverage = CoverageCheck(
            interval_level=rep.interval_level,
            origins=len(origins),
            horizons=horizons,
            coverage=rep.coverage,
            coverage_by_hour={str(h): v for h, v in rep.coverage_by_hour.items()},
        )
    except InsufficientDataError as e:
        log.info("coverage not measured for %s: %s", record.symbol, e)
    return PredictPriceResult(
        symbol=record.symbol,
        model_type=record.model_type,
        model_id=record.model_id,
        timeframe=record.timeframe,
        origin_time=origin_open.to_pydatetime(),
        last_price=float(close[-1]),
        up_probability=p_up,
        model_horizon_bars=record.horizon_bars,
        horizon_hours=horizon_hours,
        interval_level=config.interval_level,
        calibration_bars=int(path.calibration_samples.min()),
        predictions=points,
        coverage=coverage,
        elapsed_s=0.0,
    )
