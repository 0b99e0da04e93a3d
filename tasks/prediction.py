"""Prefect tasks of the ``predict-price`` flow: find the model that serves (the deployed one, or
the version asked for), read candles, forecast."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from pydantic import SecretBytes

from core.exceptions import InsufficientDataError, NotFoundError
from core.schemas.analysis import (
    PREDICTION_TIMEFRAME,
    PredictPriceParams,
    PredictPriceResult,
    no_model_message,
)
from integrations.store import Store
from ml.forecast import ForecastConfig
from ml.metrics import selection_accuracy
from ml.prediction import predict_prices
from ml.predictor import SharedForward
from ml.records import ModelRecord
from ml.registry import ModelRegistry
from ml.registry_views import newest_servable, serving_version
from tasks.retry import retry_only_retryable


@task(
    name="find-deployed-model",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def find_deployed_model(store: Store, params: PredictPriceParams) -> ModelRecord:
    """The deployed model of ``params.model_type`` for ``params.symbol`` (1h).

    Returns:
        its registry record.

    Raises:
        NotFoundError: none deployed (the message says how to get one).
        ServiceUnavailableError (retried): MongoDB unreachable.
    """
    docs = store.deployed_model_docs(
        symbol=params.symbol, timeframe=PREDICTION_TIMEFRAME, model_type=params.model_type
    )
    if not docs:
        newest = newest_servable(store, params.model_type, params.symbol, PREDICTION_TIMEFRAME)
        raise NotFoundError(no_model_message(params.model_type, params.symbol, newest))
    best = max(docs, key=lambda d: selection_accuracy(d.get("metrics")))
    return ModelRecord.from_doc(best)


@task(
    name="find-serving-model",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def find_serving_model(store: Store, params: PredictPriceParams) -> tuple[ModelRecord, bool]:
    """The version ``params.model_version`` names (a candidate may serve), else the deployed
    model of ``params.model_type`` for ``params.symbol``.

    Returns:
        (its registry record, whether it is the deployed version of its key).

    Raises:
        NotFoundError: none deployed, or no such version (the message says what to do).
        InvalidInputError: the version is archived or of another symbol or model type.
        ServiceUnavailableError (retried): MongoDB unreachable.
    """
    if params.model_version is None:
        return find_deployed_model.fn(store, params), True
    return serving_version(
        store,
        params.model_version,
        symbols=[params.symbol],
        timeframe=PREDICTION_TIMEFRAME,
        model_type=params.model_type,
    )


@task(
    name="load-prediction-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def load_prediction_candles(store: Store, symbol: str, bars: int) -> pd.DataFrame:
    """The newest ``bars`` hourly candles of ``symbol``.

    Raises:
        InsufficientDataError: none stored. ServiceUnavailableError (retried): MongoDB down.
    """
    frame = store.load_candles(symbol, PREDICTION_TIMEFRAME, last_n=bars)
    if frame.empty:
        raise InsufficientDataError(
            f"Insufficient data: no {PREDICTION_TIMEFRAME} candles of {symbol} in the store; "
            "ingest them with the ingest-market-data flow"
        )
    return frame


@task(name="forecast-prices", cache_policy=NONE)
def forecast_prices_task(
    store: Store,
    record: ModelRecord,
    candles: pd.DataFrame,
    horizon_hours: int,
    model_dir: str,
    model_key: SecretBytes,
    config: ForecastConfig,
    coverage_bars: int = 720,
) -> PredictPriceResult:
    """Decrypt the model in memory and forecast (:func:`ml.prediction.predict_prices`).

    Returns:
        the forecast (``task_id``/``elapsed_s`` left for the flow).

    Raises:
        InsufficientDataError, DataQualityError: candles unusable; ConfigurationError:
        wrong model-store key; NotFoundError: model file missing.
    """
    registry = ModelRegistry(store, Path(model_dir), model_key.get_secret_value())
    # one compiled forward pass of the whole batch (keras' predict splits it in 512s)
    model = registry.load(record, forward=SharedForward())
    return predict_prices(model, candles, horizon_hours, config=config, coverage_bars=coverage_bars)
