"""Prefect tasks of the backtest-strategy and optimize-strategy flows.

Thin wrappers around :mod:`backtest` (pure numpy) and :mod:`integrations.store`: loading
candles (retried on :class:`core.exceptions.RetryableError` only), evaluating batches of
parameter sets (the unit of the Dask fan-out), saving results and publishing artifacts.
"""

from __future__ import annotations

import base64
import time
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

from backtest.charts import render_backtest_chart
from backtest.heatmap import optimization_heatmap, render_heatmap
from backtest.optimize import Evaluate, evaluate_params, resolve_space, valid_combinations
from backtest.samples import optimization_markdown
from backtest.service import backtest_candles, check_range, range_bounds, summary_markdown
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


def _chart_path(settings: Settings, task_id: str, suffix: str = "") -> Path:
    folder = settings.state_dir / "backtests"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{task_id}{suffix}.png"


def _png_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


@task(name="publish-backtest-artifacts", cache_policy=NONE)
def publish_backtest_artifacts(
    result: BacktestResult,
    task_id: str,
    settings: Settings,
    key_prefix: str = "backtest",
    close: pd.Series | None = None,
) -> str:
    """Markdown artifact (metrics table + the chart PNG inline) and the PNG on disk.

    The chart (backtest.charts): with ``close`` (the close column of the backtest's candles)
    every fill marked on the close price above the equity and drawdown curves; without it the
    equity and drawdown curves alone.

    Returns:
        the path of the PNG written under ``<state_dir>/backtests/``.
    """
    started = time.perf_counter()
    png = render_backtest_chart(result, close, label="IN-SAMPLE" if result.in_sample else "")
    drawn_s = time.perf_counter() - started
    path = _chart_path(settings, task_id)
    path.write_bytes(png)
    key = f"{key_prefix}-{result.strategy_name}-{result.symbol}-{result.timeframe}".lower()
    heading = "Trades, equity and drawdown" if close is not None else "Equity and drawdown"
    create_markdown_artifact(
        summary_markdown(result)
        + f"\n## {heading}\n\n{_png_markdown(png, heading.lower())}\n"
        + (
            "\nGreen up-triangles: buys (a long's entry, a short's exit); red "
            "down-triangles: sells; at their fill price (the open after the signal).\n"
            if close is not None
            else ""
        )
        + f"\nChart file: `{path}`\n",
        key=key,
        description=f"{result.strategy_name} backtest summary and {heading.lower()} chart",
    )
    get_run_logger().info(
        "chart written to %s (%d bytes, drawn in %.2f s)", path, len(png), drawn_s
    )
    return str(path)


@task(name="publish-optimization-artifact", cache_policy=NONE)
def publish_optimization_artifact(
    result: OptimizationResult,
    task_id: str,
    settings: Settings,
    candles: Candles | None = None,
    split: int | None = None,
    close: pd.Series | None = None,
) -> str:
    """Markdown artifact of an optimisation: the headline with its sample named, in-sample vs
    out-of-sample metrics, the top (in-sample) sets, the Sharpe heatmap of two parameters
    (in-sample and out-of-sample side by side; needs ``candles``, every bar of the range, and
    ``split``, the first held-out bar) and the best set's chart titled IN-SAMPLE (its fills
    marked when ``close``, the close of its bars, is given); the PNGs also on disk.

    Returns:
        the path of the best set's chart PNG written under ``<state_dir>/backtests/``.
    """
    log = get_run_logger()
    started = time.perf_counter()
    png = render_backtest_chart(result.best_result, close, label="IN-SAMPLE")
    log.info("best set's chart drawn in %.2f s", time.perf_counter() - started)
    path = _chart_path(settings, task_id)
    path.write_bytes(png)
    heatmap = ""
    if candles is not None:
        started = time.perf_counter()
        data = optimization_heatmap(result, candles, len(candles) if split is None else split)
        computed = time.perf_counter()
        heat_png = render_heatmap(
            data, f"Sharpe of {result.method} {result.strategy_name} {result.symbol} "
            f"{result.timeframe} by {data.axes_text}",
        )  # fmt: skip
        log.info(
            "heatmap: out-of-sample Sharpe of %d cells in %.2f s, drawn in %.2f s",
            sum(p is not None for row in data.cell_parameters for p in row),
            computed - started,
            time.perf_counter() - computed,
        )
        _chart_path(settings, task_id, "-heatmap").write_bytes(heat_png)
        samples = (
            "IN-SAMPLE and OUT-OF-SAMPLE side by side"
            if data.out_of_sample is not None
            else "IN-SAMPLE only (no bars were held out)"
        )
        heatmap = (
            f"\n## Sharpe by {data.axes_text}, {samples}\n\n"
            + _png_markdown(heat_png, f"Sharpe heatmap, {samples}")
            + "\n"
        )
    key = f"optimize-{result.method}-{result.strategy_name}-{result.symbol}".lower()
    create_markdown_artifact(
        optimization_markdown(result)
        + heatmap
        + "\n## Best parameters, IN-SAMPLE "
        + ("trades, " if close is not None else "")
        + "equity and drawdown\n\n"
        + _png_markdown(png, "in-sample equity and drawdown")
        + "\n",
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
