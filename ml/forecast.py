"""Hourly price forecasts with calibrated intervals (pure numpy, no Prefect).

Method, for a forecast origin t (the newest close) and each hour h = 1..H:

* Volatility: ``sigma_t`` = EWMA (half-life 24 bars) of squared 1-bar log returns up to
  and including t, square-rooted.
* Standardised h-bar returns: ``z_h[s] = (log c[s+h] - log c[s]) / (sigma_s * sqrt(h))``.
* Interval (split-conformal with a volatility-normalised score): the empirical
  ``(1-level)/2`` and ``(1+level)/2`` quantiles of ``z_h[s]`` minus their median, over the
  calibration window of the ``calibration_bars`` origins s whose outcome is known at t
  (``s + h <= t``); scaled by ``sigma_t * sqrt(h)`` around the point forecast. A forecast
  path takes the running envelope over hours 1..h, so widths never shrink with the
  horizon. Only data up to t is used, so the same code measures its coverage on history
  honestly.
* Regime scale (``regime_bars``, default 720): the interval is further multiplied by
  ``k_t`` = the same interquantile range of the 1-bar ``z_1`` over the last ``regime_bars``
  known outcomes / that over the calibration window, so a calibration that is weeks old
  widens (or narrows) when the recent standardised moves grew (or shrank) relative to it.
  With the quantiles frozen before 2019-04-01, the 80 % interval covered 0.737 +- 0.012 of
  hours 1-24 after it without the scale and 0.772 +- 0.012 with it; frozen at the start of
  each half of 2018 it changed 0.801 -> 0.788 and 0.808 -> 0.803 (within one standard
  error). See docs/ml.md for every variant measured.
* Point forecast: the model's probability p that the price is higher after its
  ``horizon_bars`` H tilts the drift. If the H-bar log return were normal with scale
  ``sigma_t * sqrt(H)``, P(up) = p means a median of ``sigma_t * sqrt(H) * Phi^-1(p)``;
  that drift is spread linearly over the model's H bars and held flat beyond (the model says
  nothing past its horizon). p = 0.5 gives the random-walk forecast (last price).
* Confidence of hour h: P(direction), the probability that the close at hour h lies on the
  side of the last close that the predicted price is on. The model states p = P(up) for its
  horizon H; under the drift above and the normal scale ``sigma_t * sqrt(h)`` the implied
  P(up at h) is ``Phi(Phi^-1(p) * min(h, H) / sqrt(H * h))`` (p itself at h = H, toward 0.5
  before and after), and confidence is ``max(P, 1 - P)``: 0.5 for a model that says nothing
  (p = 0.5), never above max(p, 1 - p). It is calibrated when the model's P(up) is; the
  ledger's scoring measures both on unseen hours (mean confidence against hit rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from core.exceptions import InsufficientDataError, InvalidInputError
from ml.calibration import (
    ewma_volatility,
    known_quantiles,
    log_close_of,
    regime_scale,
    standardized_returns,
    window_quantiles,
)

_P_CLIP = (0.02, 0.98)


@dataclass(frozen=True)
class ForecastConfig:
    """Choices of the forecast method (fixed a priori, never tuned on a test window).

    Attributes:
        interval_level: central probability of the interval (0.8 = 10%..90% quantiles).
        calibration_bars: forecast origins in the calibration window of each quantile.
        min_calibration_samples: fewest known outcomes a quantile may come from.
        vol_halflife_bars: half-life of the EWMA volatility.
        band_pct: unused by the forecast (``confidence`` is P(direction)); kept so that
            configurations written before stay valid.
        regime_bars: recent known outcomes whose interquantile range, relative to the
            calibration window's, rescales the interval (0: no regime scale).
    """

    interval_level: float = 0.8
    calibration_bars: int = 2160
    min_calibration_samples: int = 240
    vol_halflife_bars: float = 24.0
    band_pct: float = 2.0
    regime_bars: int = 720

    def __post_init__(self) -> None:
        if not 0.0 < self.interval_level < 1.0:
            raise InvalidInputError(
                f"interval_level must be between 0 and 1 (got {self.interval_level})"
            )
        if self.regime_bars != 0 and self.regime_bars < 24:
            raise InvalidInputError(
                f"regime_bars must be 0 (off) or at least 24 (got {self.regime_bars})"
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
        confidence: P(direction) of each hour, 0.5-1 (see module docstring).
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
    standard_error: float | None = None
    blocks: int = 0


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


def direction_confidence(
    up_probability: float | None, model_horizon_bars: int, hours: np.ndarray
) -> np.ndarray:
    """P(direction) of each hour in ``hours``: ``max(P, 1 - P)`` with P(up at h) =
    ``Phi(Phi^-1(p) * min(h, H) / sqrt(H * h))`` (see the module docstring).

    Returns:
        probabilities in [0.5, max(p, 1 - p)]; 0.5 everywhere when p is None.
    """
    h = np.asarray(hours, dtype=np.float64)
    if up_probability is None or not np.isfinite(up_probability):
        return np.full_like(h, 0.5)
    z = float(ndtri(np.clip(up_probability, *_P_CLIP)))
    big_h = float(max(1, int(model_horizon_bars)))
    p_up = ndtr(z * np.minimum(h, big_h) / np.sqrt(big_h * h))
    return np.maximum(p_up, 1.0 - p_up)


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
    lc = log_close_of(close)
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
    k = regime_scale(standardized_returns(lc, sigma, 1), np.array([t]), config)[0]
    for i, h in enumerate(hours):
        z = standardized_returns(lc, sigma, int(h))
        lo, hi, n = window_quantiles(z, np.array([t]), int(h), config)
        q_lo[i], q_hi[i], samples[i] = lo[0] * k, hi[0] * k, n[0]
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
        confidence=direction_confidence(up_probability, model_horizon_bars, hours),
        sigma=s_t,
        calibration_samples=samples,
    )


@dataclass
class CoveragePairs:
    """Every scored (origin, hour) pair of :func:`coverage_pairs`, one row each.

    Attributes:
        origins: index of each pair's forecast origin into the closes.
        hours: its hour ahead.
        inside: whether the realised close fell inside the interval.
    """

    origins: np.ndarray
    hours: np.ndarray
    inside: np.ndarray


def coverage_pairs(
    close: np.ndarray | pd.Series,
    origins: np.ndarray,
    horizons: list[int],
    *,
    up_probabilities: np.ndarray | None = None,
    model_horizon_bars: int = 1,
    config: ForecastConfig | None = None,
    calibration_frozen_at: int | None = None,
) -> CoveragePairs:
    """Whether the interval built at each origin contains the realised close, pair by pair
    (the rows :func:`interval_coverage` summarises; the caller may cluster them its own way).

    Every origin's interval uses only data up to that origin (as :func:`forecast_path`,
    without the envelope over hours); pairs whose outcome lies beyond the data, or whose
    calibration window is too short, are skipped.

    Args:
        origins: indices of forecast origins into ``close``.
        up_probabilities: per-bar model probabilities aligned with ``close`` (NaN: no tilt).
        calibration_frozen_at: None: each origin calibrates on its own window (as the
            product does at every request). An index f: the quantiles are computed once,
            from the window known at f, and used for every origin >= f (origins before f
            are skipped); the regime scale still follows each origin's recent outcomes.

    Returns:
        the :class:`CoveragePairs`, hour by hour in the order of ``horizons`` (empty when
        no pair could be scored).
    """
    config = config or ForecastConfig()
    lc = log_close_of(close)
    sigma = ewma_volatility(lc, config.vol_halflife_bars)
    origins = np.asarray(origins, dtype=np.int64)
    origins = origins[(origins >= 0) & (origins < len(lc))]  # beyond the data: no outcome
    if calibration_frozen_at is not None:
        origins = origins[origins >= calibration_frozen_at]
    k_all = np.ones(len(lc))
    if len(origins):
        k_all[origins] = regime_scale(
            standardized_returns(lc, sigma, 1), origins, config, calibration_frozen_at
        )
    parts: list[tuple[np.ndarray, int, np.ndarray]] = []
    for h in horizons:
        ok_t = origins[(origins + h < len(lc)) & (origins - h + 1 >= 0)]
        if not len(ok_t):
            continue
        z = standardized_returns(lc, sigma, h)
        k = k_all[ok_t]
        if calibration_frozen_at is None:
            lo, hi, _ = window_quantiles(z, ok_t, h, config)
            lo, hi = lo * k, hi * k
        else:
            f_lo, f_mid, f_hi, _ = known_quantiles(
                z,
                np.array([calibration_frozen_at]),
                h,
                config.calibration_bars,
                config.interval_level,
                config.min_calibration_samples,
            )
            lo, hi = (f_lo[0] - f_mid[0]) * k, (f_hi[0] - f_mid[0]) * k
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
        parts.append((t, h, inside))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return CoveragePairs(empty, empty.copy(), np.zeros(0, dtype=bool))
    return CoveragePairs(
        origins=np.concatenate([t for t, _, _ in parts]),
        hours=np.concatenate([np.full(len(t), h, dtype=np.int64) for t, h, _ in parts]),
        inside=np.concatenate([i for _, _, i in parts]),
    )


def interval_coverage(
    close: np.ndarray | pd.Series,
    origins: np.ndarray,
    horizons: list[int],
    *,
    up_probabilities: np.ndarray | None = None,
    model_horizon_bars: int = 1,
    config: ForecastConfig | None = None,
    calibration_frozen_at: int | None = None,
    block_bars: int = 168,
) -> CoverageReport:
    """Measure how often the interval built at each origin contains the realised close
    (:func:`coverage_pairs`, summarised).

    Args:
        origins, up_probabilities, calibration_frozen_at: as :func:`coverage_pairs`.
        block_bars: origins are grouped in blocks of this many bars for the standard error
            (pairs of nearby origins overlap, so they are not independent).

    Returns:
        a :class:`CoverageReport` (``standard_error``: of the coverage, from the spread of
        the per-block coverages).

    Raises:
        InsufficientDataError: no (origin, hour) pair could be scored.
    """
    config = config or ForecastConfig()
    pairs = coverage_pairs(
        close,
        origins,
        horizons,
        up_probabilities=up_probabilities,
        model_horizon_bars=model_horizon_bars,
        config=config,
        calibration_frozen_at=calibration_frozen_at,
    )
    if not len(pairs.inside):
        raise InsufficientDataError(
            "Insufficient data: no forecast origin has both a calibration window and a known outcome"
        )
    hits = pairs.inside.astype(np.float64)
    by_hour = {
        int(h): float(hits[pairs.hours == h].mean()) for h in horizons if (pairs.hours == h).any()
    }
    blocks = pairs.origins // max(1, block_bars)
    block_means = pd.Series(hits).groupby(blocks).mean()
    se = (
        float(block_means.std(ddof=1) / np.sqrt(len(block_means))) if len(block_means) > 1 else None
    )
    n_origins = np.asarray(origins)
    if calibration_frozen_at is not None:
        n_origins = n_origins[n_origins >= calibration_frozen_at]
    return CoverageReport(
        interval_level=config.interval_level,
        origins=len(n_origins),
        horizons=list(horizons),
        coverage=float(hits.mean()),
        coverage_by_hour=by_hour,
        pairs=len(hits),
        standard_error=se,
        blocks=len(block_means),
    )
