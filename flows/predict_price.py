"""``predict-price``: hourly price forecasts with calibrated 80% intervals.

Steps: the deployed model of model_type for the symbol (1h; fails clearly when none) ->
the newest candles (calibration window + horizon + coverage window) -> forecast
(ml.forecast: the model's up-probability tilts the drift, the interval comes from
volatility-scaled empirical quantiles of h-hour returns before the origin, rescaled to the
recent regime) -> result with the interval's coverage measured only on hours after the
model's training window, and the recent calibration fit, labelled as such.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import SecretBytes

from blocks.loader import load_block, load_store
from blocks.model_store import ModelStoreBlock
from core.schemas.analysis import PredictPriceParams, PredictPriceResult
from core.settings import Settings
from ml.forecast import ForecastConfig
from tasks.prediction import find_deployed_model, forecast_prices_task, load_prediction_candles
from tasks.results import save_task_result


@flow(name="predict-price", validate_parameters=True, timeout_seconds=300)
def predict_price(params: PredictPriceParams) -> PredictPriceResult:
    """Forecast ``params.horizon_hours`` hours of ``params.symbol``.

    Returns:
        a :class:`PredictPriceResult`.

    Raises:
        NotFoundError: no deployed model; InsufficientDataError: too few candles.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    settings = Settings()
    config = ForecastConfig(
        interval_level=settings.prediction_interval_level,
        calibration_bars=settings.prediction_calibration_bars,
        band_pct=settings.prediction_band_pct,
    )
    store = load_store()
    record = find_deployed_model(store, params)
    model_store = load_block(ModelStoreBlock)
    bars = config.calibration_bars + params.horizon_hours + settings.prediction_coverage_bars + 1
    candles = load_prediction_candles(store, params.symbol, bars)
    result = forecast_prices_task(
        store,
        record,
        candles,
        params.horizon_hours,
        model_store.directory,
        SecretBytes(model_store.get_key()),
        config,
        settings.prediction_coverage_bars,
    )
    result = result.model_copy(
        update={"task_id": str(flow_run.get_id()), "elapsed_s": time.perf_counter() - started}
    )
    logger.info(
        "%s %s (%s): p_up %.3f, %d h, last %.2f -> %.2f [%.2f, %.2f], coverage %s",
        params.symbol,
        params.model_type,
        record.model_id,
        result.up_probability,
        params.horizon_hours,
        result.last_price,
        result.predictions[-1].predicted_price,
        result.predictions[-1].lower,
        result.predictions[-1].upper,
        f"{result.coverage_after_training.coverage:.3f} after the model's training window"
        if result.coverage_after_training
        else result.coverage_after_training_note,
    )
    return save_task_result(result, store)
