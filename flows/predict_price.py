"""``predict-price``: hourly price forecasts with calibrated 80% intervals.

Steps: the version asked for (``model_version``, a candidate may serve), else the deployed
model of model_type for the symbol (1h; fails clearly when none, naming how to promote one) ->
the newest candles (calibration window + horizon + coverage window) -> forecast
(ml.forecast: the model's up-probability tilts the drift, the interval comes from
volatility-scaled empirical quantiles of h-hour returns before the origin, rescaled to the
recent regime) -> result with the interval's coverage measured only on hours after the
model's training window, and the recent calibration fit, labelled as such -> every
forecast hour recorded in the prediction ledger (scored later by ``score-predictions``) ->
a fan chart artifact (recent closes, predicted path, 80 % band).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import SecretBytes

from blocks.loader import load_block, load_store
from blocks.model_store import ModelStoreBlock
from core.schemas.analysis import PredictPriceParams, PredictPriceResult
from core.schemas.registry import version_label
from core.settings import load_settings
from ml.forecast import ForecastConfig
from ml.ledger import price_entries
from tasks.prediction import find_serving_model, forecast_prices_task, load_prediction_candles
from tasks.results import save_task_result
from tasks.scoring import publish_fan_chart, record_predictions


@flow(name="predict-price", validate_parameters=True, timeout_seconds=300)
def predict_price(params: PredictPriceParams) -> PredictPriceResult:
    """Forecast ``params.horizon_hours`` hours of ``params.symbol``.

    Returns:
        a :class:`PredictPriceResult`.

    Raises:
        NotFoundError: no deployed model, or no such version; InvalidInputError: the version
        is archived or of another symbol/model type; InsufficientDataError: too few candles.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    settings = load_settings()
    config = ForecastConfig(
        interval_level=settings.prediction_interval_level,
        calibration_bars=settings.prediction_calibration_bars,
        band_pct=settings.prediction_band_pct,
    )
    store = load_store()
    record, deployed = find_serving_model(store, params)
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
        update={
            "task_id": str(flow_run.get_id()),
            "elapsed_s": time.perf_counter() - started,
            "served_model_version": version_label(
                record.model_type, record.symbol, record.timeframe, record.version
            ),
            "served_model_deployed": deployed,
        }
    )
    logger.info(
        "%s %s (%s%s): p_up %.3f, %d h, last %.2f -> %.2f [%.2f, %.2f], coverage %s",
        params.symbol,
        params.model_type,
        result.served_model_version,
        "" if deployed else ", not deployed",
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
    # in the ledger before the result is acknowledged (see tasks.scoring)
    made_at = datetime.now(UTC)
    record_predictions(store, price_entries(result, model_version=record.version, made_at=made_at))
    publish_fan_chart(result, candles)
    return save_task_result(result, store)
