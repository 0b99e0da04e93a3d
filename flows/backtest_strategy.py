"""``backtest-strategy``: backtest one strategy on stored candles and publish the result.

Steps: load the candles of ``[start_date, end_date)`` from the store (clear error when the
range is missing or short) -> backtest (tasks.backtest -> backtest.service) -> markdown
summary + chart artifact (the fills on the close price above the equity and drawdown
curves; PNG also under ``<state_dir>/backtests/``) ->
save to ``backtest_results``. ``strategy_name="model"`` trades a trained model's signals
(tasks.model_backtest -> ml.model_backtest): the deployed model of ``parameters.model_type``
or the version ``parameters.model_id``, its candles loaded with the history its features
need; the result and the artifact say whether the range is in-sample for the model. A progress artifact moves in steps of 10% at stage boundaries (the whole
backtest takes well under a second, so finer steps would only add API calls).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.loader import load_block, load_store
from blocks.model_store import ModelStoreBlock
from core.schemas.backtest import BacktestParameters, BacktestResult
from core.schemas.model_backtest import MODEL_STRATEGY
from core.settings import load_settings
from tasks.backtest import (
    load_backtest_candles,
    publish_backtest_artifacts,
    run_backtest_task,
    save_backtest_result,
)
from tasks.model_backtest import run_model_backtest
from tasks.progress import ProgressReporter
from tasks.results import save_task_result


@flow(name="backtest-strategy", validate_parameters=True, timeout_seconds=1200)
def backtest_strategy(params: BacktestParameters) -> BacktestResult:
    """Backtest ``params``. Returns the :class:`BacktestResult` saved to ``backtest_results``."""
    started = time.perf_counter()
    task_id = str(flow_run.get_id())
    logger = get_run_logger()
    progress = ProgressReporter(
        f"backtest-{params.strategy_name}-{params.symbol}-{params.timeframe}".lower(),
        min_step_pct=10,
    )
    store = load_store()
    progress.update(10, "Loading candles")
    if params.strategy_name == MODEL_STRATEGY:
        model_store = load_block(ModelStoreBlock)
        progress.update(30, "Backtesting the model's signals")
        result, frame = run_model_backtest(
            store, params, model_store.directory, model_store.get_key()
        )
    else:
        frame = load_backtest_candles(
            store, params.symbol, params.timeframe, params.start_date, params.end_date
        )
        progress.update(20, f"Loaded {len(frame)} bars")
        progress.update(30, "Backtesting")
        result = run_backtest_task(frame, params)
    result.task_id = task_id
    progress.update(40, f"Backtested: {result.metrics.total_trades} trades")
    progress.update(50, "Drawing the trades, equity and drawdown chart")
    result.chart_path = publish_backtest_artifacts(
        result, task_id, load_settings(), close=frame["close"]
    )
    progress.update(60, "Artifacts published")
    progress.update(70, "Saving result")
    result.elapsed_s = time.perf_counter() - started
    save_backtest_result(store, result)
    progress.update(90, "Saved to backtest_results")
    progress.update(100, "Complete")
    m = result.metrics
    logger.info(
        "%s %s %s: return %.2f%% (buy & hold %.2f%%), Sharpe %.2f, %d trades, win rate %.1f%%",
        params.strategy_name,
        params.symbol,
        params.timeframe,
        m.total_return_pct,
        m.buy_and_hold_return_pct,
        m.sharpe_ratio,
        m.total_trades,
        m.win_rate_pct,
    )
    return save_task_result(result, store)
