"""predict-price: forecasts of a deployed model with honestly labelled interval coverage.

:func:`predict_prices` forecasts with :mod:`ml.forecast` and measures the interval's coverage
twice over the last hours of the candles: at the origins after the model's training window
only (``coverage_after_training``: hours neither the model nor its selection saw), and at all
of them, labelled as the recent calibration fit (``recent_calibration_fit``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.exceptions import InsufficientDataError
from core.schemas.analysis import CoverageCheck, PredictPriceResult, PricePoint
from ml.confidence import calibrate_on_history
from ml.forecast import CoverageReport, ForecastConfig, forecast_path, interval_coverage

if TYPE_CHECKING:
    from ml.predictor import LoadedModel
    from ml.records import ModelRecord

log = logging.getLogger(__name__)


def model_data_end(record: ModelRecord) -> tuple[pd.Timestamp | None, str]:
    """Newest hour a registered model's training or model selection may have used.

    The record's ``metrics``: ``data_end`` (newest candle loaded) when present, else
    ``validation_end`` + ``horizon_bars`` hours (that window's label looks ahead), else the
    record's ``created_at`` (nothing after it can have been used).

    Returns:
        (UTC timestamp or None, which field it came from).
    """
    metrics = record.metrics or {}
    if metrics.get("data_end"):
        return pd.Timestamp(metrics["data_end"]), "metrics.data_end"
    if metrics.get("validation_end"):
        end = pd.Timestamp(metrics["validation_end"]) + pd.Timedelta(hours=record.horizon_bars)
        return end, "metrics.validation_end + horizon"
    if record.created_at is not None:
        return pd.Timestamp(record.created_at), "created_at"
    return None, "no training window in the model record"


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _check(
    rep: CoverageReport, index: pd.Index, origins: np.ndarray, horizons: list[int], text: str
) -> CoverageCheck:
    return CoverageCheck(
        interval_level=rep.interval_level,
        origins=len(origins),
        origins_from=pd.Timestamp(index[origins[0]]).to_pydatetime(),
        origins_to=pd.Timestamp(index[origins[-1]]).to_pydatetime(),
        horizons=horizons,
        pairs=rep.pairs,
        coverage=rep.coverage,
        standard_error=rep.standard_error,
        coverage_by_hour={str(h): v for h, v in rep.coverage_by_hour.items()},
        description=text,
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
    """Hourly forecasts for ``horizon_hours`` from the newest candle, with the interval's
    coverage on the last ``coverage_bars`` origins: only those after the model's training
    window (``coverage_after_training``), and all of them, labelled as the recent
    calibration fit (``recent_calibration_fit``).

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
    n = len(close)
    first = max(0, n - 1 - coverage_bars)
    tail_from = max(0, first - model.spec.lookback - 100)
    # the newest bar's P(up) and those of the coverage origins, in one forward pass
    p_up, history = model.predict_newest_and_history(candles, tail_from)
    probs = np.full(n, np.nan)
    probs[tail_from:] = history
    data_end, source = model_data_end(record)
    times = pd.DatetimeIndex(candles.index)
    unseen_from = (
        n if data_end is None else int(np.searchsorted(times, _utc(data_end), side="right"))
    )
    # the model's score mapped to a probability on its own recent record (ml.confidence)
    platt = calibrate_on_history(close, probs, record.horizon_bars, unseen_from)
    p_cal = float(platt(p_up))
    probs = platt(probs)
    path = forecast_path(
        close,
        horizon_hours,
        up_probability=p_cal,
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
    horizons = sorted({h for h in (1, 6, 24, horizon_hours) if h <= horizon_hours})
    origins = np.arange(first, n - 1, coverage_step)
    after = origins
    if data_end is not None:
        after = origins[times[origins] > _utc(data_end)]
    kwargs = {
        "up_probabilities": probs,
        "model_horizon_bars": record.horizon_bars,
        "config": config,
    }
    fit = None
    try:
        rep = interval_coverage(close, origins, horizons, **kwargs)
        fit = _check(
            rep,
            candles.index,
            origins,
            horizons,
            f"recent calibration fit: the method replayed on the last {coverage_bars} hours, "
            "which may include the model's training hours; not a forecast coverage",
        )
    except InsufficientDataError as e:
        log.info("calibration fit not measured for %s: %s", record.symbol, e)
    after_check, note = None, ""
    if data_end is None:
        note = "not measured: the model record has no training window"
    elif not len(after):
        note = (
            f"not measured: none of the last {coverage_bars} hours is after the model's "
            f"training window (data to {_utc(data_end):%Y-%m-%d %H:%M} UTC, {source})"
        )
    else:
        try:
            rep = interval_coverage(close, after, horizons, **kwargs)
            note = (
                f"{rep.pairs} (origin, hour) pairs after the model's training window (data "
                f"to {_utc(data_end):%Y-%m-%d %H:%M} UTC, {source})"
            )
            after_check = _check(rep, candles.index, after, horizons, note)
        except InsufficientDataError:
            note = (
                "not measured: no hour after the model's training window (data to "
                f"{_utc(data_end):%Y-%m-%d %H:%M} UTC) has a known outcome yet"
            )
    return PredictPriceResult(
        symbol=record.symbol,
        model_type=record.model_type,
        model_id=record.model_id,
        timeframe=record.timeframe,
        origin_time=origin_open.to_pydatetime(),
        last_price=float(close[-1]),
        up_probability=p_up,
        calibrated_up_probability=p_cal,
        confidence_calibration=(
            f"{platt.source} ({platt.samples} outcomes: a={platt.a:.3f}, b={platt.b:.3f})"
        ),
        model_horizon_bars=record.horizon_bars,
        horizon_hours=horizon_hours,
        interval_level=config.interval_level,
        calibration_bars=int(path.calibration_samples.min()),
        predictions=points,
        model_data_end=None if data_end is None else _utc(data_end).to_pydatetime(),
        coverage_after_training=after_check,
        coverage_after_training_note=note,
        recent_calibration_fit=fit,
        elapsed_s=0.0,
    )
