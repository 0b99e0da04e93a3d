"""``optimize-strategy``: search a strategy's parameters (grid, genetic or walk-forward).

Steps: load candles (as backtest-strategy) -> hold out the newest ``holdout_pct`` % of the
bars (grid/genetic) -> search (backtest.optimize) on the rest, every batch of parameter sets
fanned out as one Prefect task on the Dask task runner -> backtest the best parameters on the
search bars (in-sample) and, when bars were held out, on them (out-of-sample; walk-forward:
its stitched test windows) -> markdown artifact labelling each figure's sample, with the
Sharpe heatmap of two parameters in-sample and out-of-sample (backtest.heatmap) and the
best set's trades -> save to ``optimization_results``.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from backtest.metrics import to_datetime
from backtest.optimize import genetic_search, grid_search, walk_forward
from backtest.samples import holdout_start, label_samples
from backtest.strategies import Candles
from blocks.loader import load_store
from core.schemas.backtest import BacktestParameters, OptimizationResult, OptimizeParameters
from core.settings import load_settings
from tasks.backtest import (
    expected_evaluations,
    fan_out_evaluator,
    load_backtest_candles,
    publish_optimization_artifact,
    run_backtest_task,
    save_optimization_result,
)
from tasks.progress import ProgressReporter
from tasks.results import save_task_result
from tasks.runners import dask_task_runner

N_WORKERS = 2


@flow(
    name="optimize-strategy",
    validate_parameters=True,
    timeout_seconds=7200,
    task_runner=dask_task_runner(load_settings(), n_workers=N_WORKERS),
)
def optimize_strategy(params: OptimizeParameters) -> OptimizationResult:
    """Optimise ``params.strategy_name``. Returns the ranked :class:`OptimizationResult`."""
    started = time.perf_counter()
    task_id = str(flow_run.get_id())
    logger = get_run_logger()
    progress = ProgressReporter(
        f"optimize-{params.method}-{params.strategy_name}-{params.symbol}".lower().replace(
            "_", "-"
        ),
        min_step_pct=10,
    )
    store = load_store()
    progress.update(10, "Loading candles")
    frame = load_backtest_candles(
        store, params.symbol, params.timeframe, params.start_date, params.end_date
    )
    all_candles = Candles.from_frame(frame)
    n = len(all_candles)
    split = n if params.method == "walk_forward" else holdout_start(n, params.holdout_pct)
    candles = all_candles.slice(0, split) if split < n else all_candles
    expected = expected_evaluations(params)

    def on_evaluated(done: int) -> None:  # 20% -> 80% as the search evaluates
        progress.update(20 + 60 * min(1.0, done / expected), f"Evaluated {done} parameter sets")

    evaluate = fan_out_evaluator(params.strategy_name, params.config, 2 * N_WORKERS, on_evaluated)
    genetic = walk = None
    progress.update(20, f"Searching ({params.method})")
    if params.method == "grid":
        entries, space_size = grid_search(
            candles, params.strategy_name, params.parameter_variations, evaluate, params.space
        )
        evaluations = len(entries)
    elif params.method == "genetic":
        entries, genetic = genetic_search(
            candles,
            params.strategy_name,
            evaluate,
            population=params.population,
            generations=params.generations,
            seed=params.seed,
            max_evaluations_pct=params.max_evaluations_pct,
            space=params.space,
        )
        space_size, evaluations = genetic.space_size, genetic.evaluations
        if params.compare_exhaustive:
            exhaustive, _ = grid_search(
                candles, params.strategy_name, space_size, evaluate, params.space
            )
            genetic.exhaustive_best_sharpe = exhaustive[0].sharpe_ratio
            if exhaustive[0].sharpe_ratio > 0:
                genetic.ratio_to_exhaustive_pct = (
                    genetic.best_sharpe / exhaustive[0].sharpe_ratio * 100.0
                )
    else:
        walk, entries = walk_forward(
            candles,
            params.strategy_name,
            evaluate,
            n_windows=params.wf_windows,
            train_ratio=params.wf_train_ratio,
            n_variations=params.parameter_variations,
            config=params.config,
            space=params.space,
        )
        evaluations = params.wf_windows * len(entries)
        space_size = len(entries)
    progress.update(80, "Backtesting the best parameters")
    best_parameters = entries[0].parameters
    best = run_backtest_task(
        frame.iloc[:split],
        BacktestParameters(
            strategy_name=params.strategy_name,
            symbol=params.symbol,
            timeframe=params.timeframe,
            start_date=params.start_date,
            end_date=params.end_date,
            parameters=best_parameters,
            config=params.config,
        ),
    )
    in_sample, out_of_sample, headline, headline_note = label_samples(
        all_candles, split, best, walk, evaluations, params
    )
    result = OptimizationResult(
        method=params.method,
        strategy_name=params.strategy_name,
        symbol=params.symbol,
        timeframe=params.timeframe,
        start=to_datetime(all_candles.time[0]),
        end=to_datetime(all_candles.time[-1]),
        space_size=space_size,
        evaluations=evaluations,
        headline=headline,
        headline_metrics=(out_of_sample or in_sample).metrics,
        headline_note=headline_note,
        in_sample=in_sample,
        out_of_sample=out_of_sample,
        all_results=entries,
        best_parameters=best_parameters,
        best_result=best,
        genetic=genetic,
        walk_forward=walk,
        task_id=task_id,
        elapsed_s=time.perf_counter() - started,
    )
    progress.update(90, "Saving result")
    publish_optimization_artifact(
        result, task_id, load_settings(), all_candles, split, frame["close"].iloc[:split]
    )
    save_optimization_result(store, result)
    progress.update(100, "Complete")
    logger.info(
        "%s %s: %d evaluations, best %s; %s Sharpe %.2f, return %.2f%% (in-sample Sharpe %.2f)",
        params.method,
        params.strategy_name,
        evaluations,
        best_parameters,
        headline.replace("_", "-"),
        result.headline_metrics.sharpe_ratio,
        result.headline_metrics.total_return_pct,
        in_sample.metrics.sharpe_ratio,
    )
    return save_task_result(result, store)
