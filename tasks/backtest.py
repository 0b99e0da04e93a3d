"""Prefect tasks of the backtest-strategy and optimize-strategy flows.

Thin wrappers around :mod:`backtest` (pure numpy) and :mod:`integrations.store`: loading
candles (retried on :class:`core.exceptions.RetryableError` only), evaluating batches of
parameter sets (the unit of the Dask fan-out), saving results and publishing artifacts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff

from backtest.optimize import Evaluate, evaluate_params, resolve_space, valid_combinations
from backtest.samples import optimization_markdown
from backtest.service import (
    backtest_candles,
    check_range,
    range_bounds,
    render_equity_chart,
    summary_markdown,
)
from backtest.strategies import Candles, get_strategy
from core.schemas.backtest import (
    BacktestConfig,
    BacktestMetrics,
    BacktestParameters,
    BacktestResult,
    OptimizationResult,
    OptimizeParameters,
)
from core.settings import Settings
from integrations.store import Store
from tasks.retry import retry_only_retryable

#: Parameter sets per Dask task: each Prefect task on Dask costs ~150 ms, a backtest ~1-3 ms.
MIN_BATCH = 25


@task(
    name="load-backtest-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def load_backtest_candles(
    store: Store, symbol: str, timeframe: str, start_date: Any, end_date: Any
) -> pd.DataFrame:
    """Candles of ``[start_date, end_date)`` from the store.

    Returns:
        bars oldest first (columns open..volume, UTC index).

    Raises:
        InsufficientDataError: missing or short range, naming symbol, timeframe and the
            range found. ServiceUnavailableError (retried): MongoDB unreachable.
    """
    start, end = range_bounds(start_date, end_date)
    frame = store.load_candles(symbol, timeframe, start, end)
    return check_range(frame, symbol, timeframe, start, end)


@task(name="run-backtest", cache_policy=NONE)
def run_backtest_task(frame: pd.DataFrame, params: BacktestParameters) -> BacktestResult:
    """Backtest ``params.strategy_name`` on ``frame``. Returns the full result."""
    return backtest_candles(
        frame,
        params.strategy_name,
        params.parameters,
        params.config,
        symbol=params.symbol,
        timeframe=params.timeframe,
    )


@task(name="evaluate-parameter-batch", cache_policy=NONE)
def evaluate_batch(
    candles: Candles,
    strategy_name: str,
    param_sets: list[dict[str, Any]],
    config: BacktestConfig,
) -> list[BacktestMetrics]:
    """Backtest a batch of parameter sets (one Dask task). Returns metrics in order."""
    return evaluate_params(candles, strategy_name, param_sets, config)


def fan_out_evaluator(
    strategy_name: str,
    config: BacktestConfig,
    n_batches: int,
    on_evaluated: Callable[[int], None] | None = None,
) -> Evaluate:
    """An :data:`~backtest.optimize.Evaluate` that submits coarse batches to the flow's task runner.

    The parameter sets are cut into at most ``n_batches`` batches of at least
    :data:`MIN_BATCH` sets; fewer than :data:`MIN_BATCH` sets (a genetic generation, a
    local-search step) are evaluated in the flow process. Call it inside a flow run. ``on_evaluated(n)`` is called after
    each batch with the number of sets evaluated so far (all calls together).
    """
    done = 0

    def evaluate(candles: Candles, param_sets: list[dict[str, Any]]) -> list[BacktestMetrics]:
        nonlocal done
        out: list[BacktestMetrics] = []
        if len(param_sets) < MIN_BATCH:  # cheaper here than a ~150 ms Dask round trip
            chunks = [evaluate_params(candles, strategy_name, param_sets, config)]
        else:
            size = max(MIN_BATCH, -(-len(param_sets) // max(1, n_batches)))
            futures: list[PrefectFuture] = [
                evaluate_batch.submit(candles, strategy_name, param_sets[i : i + size], config)
                for i in range(0, len(param_sets), size)
            ]
            chunks = (f.result() for f in futures)
        for batch in chunks:
            out.extend(batch)
            done += len(batch)
            if on_evaluated is not None and batch:
                on_evaluated(done)
        return out

    return evaluate


def expected_evaluations(params: OptimizeParameters) -> int:
    """Roughly how many parameter sets ``params`` will evaluate (for progress only)."""
    strategy = get_strategy(params.strategy_name)
    size = len(valid_combinations(strategy, resolve_space(strategy, params.space)))
    if params.method == "grid":
        return max(1, min(size, params.parameter_variations))
    if params.method == "genetic":
        budget = max(1, int(size * params.max_evaluations_pct / 100))
        return budget + (size if params.compare_exhaustive else 0)
    return max(1, params.wf_windows * min(size, params.parameter_variations))


def _chart_path(settings: Settings, task_id: str) -> Path:
    folder = settings.state_dir / "backtests"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{task_id}.png"


@task(name="publish-backtest-artifacts", cache_policy=NONE)
def publish_backtest_artifacts(
    result: BacktestResult, task_id: str, settings: Settings, key_prefix: str = "backtest"
) -> str:
    """Markdown artifact (metrics table + equity/drawdown PNG inline) and the PNG on disk.

    Returns:
        the path of the PNG written under ``<state_dir>/backtests/``.
    """
    png = render_equity_chart(result)
    path = _chart_path(settings, task_id)
    path.write_bytes(png)
    image = base64.b64encode(png).decode("ascii")
    key = f"{key_prefix}-{result.strategy_name}-{result.symbol}-{result.timeframe}".lower()
    create_markdown_artifact(
        summary_markdown(result)
        + f"\n## Equity and drawdown\n\n![equity and drawdown](data:image/png;base64,{image})\n"
        + f"\nChart file: `{path}`\n",
        key=key,
        description=f"{result.strategy_name} backtest summary and equity/drawdown chart",
    )
    get_run_logger().info("chart written to %s (%d bytes)", path, len(png))
    return str(path)


@task(name="publish-optimization-artifact", cache_policy=NONE)
def publish_optimization_artifact(
    result: OptimizationResult, task_id: str, settings: Settings
) -> str:
    """Markdown artifact of an optimisation: the headline with its sample named, in-sample vs
    out-of-sample metrics, the top (in-sample) sets and the best set's equity chart titled
    IN-SAMPLE; the PNG also on disk.

    Returns:
        the path of the PNG written under ``<state_dir>/backtests/``.
    """
    png = render_equity_chart(result.best_result, label="IN-SAMPLE")
    path = _chart_path(settings, task_id)
    path.write_bytes(png)
    image = base64.b64encode(png).decode("ascii")
    key = f"optimize-{result.method}-{result.strategy_name}-{result.symbol}".lower()
    create_markdown_artifact(
        optimization_markdown(result)
        + "\n## Best parameters, IN-SAMPLE equity and drawdown\n\n"
        + f"![in-sample equity and drawdown](data:image/png;base64,{image})\n",
        key=key.replace("_", "-"),
        description=f"{result.method} optimisation of {result.strategy_name}: headline "
        f"{result.headline.replace('_', '-')}",
    )
    return str(path)


@task(
    name="save-backtest-result",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def save_backtest_result(store: Store, result: BacktestResult) -> None:
    """Insert the result into ``backtest_results`` (top-level keys for queries + JSON body)."""
    store.backtest_result_save(_doc(result))


@task(
    name="save-optimization-result",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def save_optimization_result(store: Store, result: OptimizationResult) -> None:
    """Insert the result into ``optimization_results``."""
    doc = _doc(result)
    doc["method"] = result.method
    doc["best_parameters"] = result.best_parameters
    store.optimization_result_save(doc)


def _doc(result: BacktestResult | OptimizationResult) -> dict[str, Any]:
    return {
        "task_id": result.task_id,
        "strategy_name": result.strategy_name,
        "symbol": result.symbol,
        "timeframe": result.timeframe,
        "created_at": datetime.now(UTC),
        "result": result.model_dump(mode="json"),
    }
