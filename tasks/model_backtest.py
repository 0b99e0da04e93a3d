"""Prefect tasks of ``backtest-strategy`` with ``strategy_name="model"``: a trained model's
signals over the range (``ml.model_backtest``), its candles loaded with the history its
features need. Only :class:`core.exceptions.RetryableError` is retried."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from backtest.service import check_range, range_bounds
from core.market import bar_length
from core.schemas.backtest import BacktestParameters, BacktestResult
from core.schemas.model_backtest import ModelSignalParams, validate_model_params
from integrations.store import Store
from tasks.retry import retry_only_retryable

if TYPE_CHECKING:
    from ml.records import ModelRecord
    from ml.registry import ModelRegistry


@task(
    name="load-model-backtest-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def load_candles_with_history(
    store: Store, params: BacktestParameters, history_bars: int
) -> pd.DataFrame:
    """The range's candles preceded by up to ``history_bars`` bars (feature warm-up).

    Returns:
        bars oldest first.

    Raises:
        InsufficientDataError: the range itself is missing or short (see ``check_range``).
    """
    start, end = range_bounds(params.start_date, params.end_date)
    frame = store.load_candles(
        params.symbol, params.timeframe, start - bar_length(params.timeframe) * history_bars, end
    )
    frame = frame[frame.index < end]  # end_date is exclusive
    check_range(frame, params.symbol, params.timeframe, start, end)
    return frame


def run_model_backtest(
    store: Store, params: BacktestParameters, model_dir: str | Path, model_key: bytes
) -> tuple[BacktestResult, pd.DataFrame]:
    """Resolve the model, load the candles (with history) and trade its signals.

    Returns:
        (the result, labelled in- or out-of-sample; the range's bars).

    Raises:
        InvalidInputError: no such model (the message names the parameter and the fix).
        InsufficientDataError: the range is short, or no bar of it has a feature window.
    """
    from ml.model_backtest import resolve_model, warmup_bars
    from ml.registry import ModelRegistry

    model_params = validate_model_params(params.parameters)
    registry = ModelRegistry(store, Path(model_dir), model_key)
    record = resolve_model(registry, model_params, params.symbol, params.timeframe)
    candles = load_candles_with_history(store, params, warmup_bars(record))
    result = trade_model_signals(registry, record, candles, params, model_params)
    return result, candles[candles.index >= result.start]


@task(name="run-model-backtest", cache_policy=NONE)
def trade_model_signals(
    registry: ModelRegistry,
    record: ModelRecord,
    candles: pd.DataFrame,
    params: BacktestParameters,
    model_params: ModelSignalParams,
) -> BacktestResult:
    """Load the model and backtest its signals (``ml.model_backtest.backtest_model``).

    Returns:
        the result.
    """
    from ml.model_backtest import backtest_model

    start, _ = range_bounds(params.start_date, params.end_date)
    result = backtest_model(
        registry.load(record),
        candles,
        start,
        model_params,
        params.config,
        symbol=params.symbol,
        timeframe=params.timeframe,
    )
    assert result.model is not None
    get_run_logger().info("model %s v%d: %s", record.model_id, record.version, result.model.note)
    return result
