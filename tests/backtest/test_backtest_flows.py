"""The backtest-strategy and optimize-strategy flows on the session Prefect server.

Six months of real BTCUSD hours are stored in the test database; the flows read them
through the "mongodb" block, publish artifacts and save their results.
"""

from __future__ import annotations

import base64
from datetime import date
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from core.exceptions import InsufficientDataError
from core.schemas.backtest import BacktestParameters, OptimizeParameters
from flows.backtest_strategy import backtest_strategy
from flows.optimize_strategy import optimize_strategy
from integrations.store import Store

SIX_MONTHS = (date(2019, 3, 22), date(2019, 9, 22))  # as in conftest.py: 184 days


def _optimize(params: OptimizeParameters, dask_address: str):
    """Run optimize-strategy on the session's Dask cluster (same as setting DASK_ADDRESS)."""
    from prefect_dask import DaskTaskRunner

    flow = optimize_strategy.with_options(task_runner=DaskTaskRunner(address=dask_address))
    return flow(params)


def _artifacts(flow_run_id: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-069", "TC-ASYNC-074")
@pytest.mark.parametrize("strategy", ["rsi", "bollinger"])  # all four: test_engine.py
def test_backtest_flow_saves_result_artifacts_and_chart(btc_store: Store, strategy: str) -> None:
    params = BacktestParameters(
        strategy_name=strategy,
        symbol="BTCUSD",
        timeframe="1h",
        start_date=SIX_MONTHS[0],
        end_date=SIX_MONTHS[1],
        parameters={"rsi_period": 14, "overbought": 70, "oversold": 30}
        if strategy == "rsi"
        else {},
    )
    result = backtest_strategy(params)
    m = result.metrics
    assert result.bars == 4416
    assert len(result.equity_curve) == 184  # one point per day
    assert m.total_trades == len(result.trades) > 0
    assert result.equity_curve[-1].equity == pytest.approx(m.final_equity)
    assert min(p.drawdown_pct for p in result.equity_curve) >= m.max_drawdown_pct - 1e-9
    assert "sqrt(365)" in result.conventions["sharpe_ratio"]

    saved = btc_store.jobs.backtest_result_get(result.task_id)
    assert saved is not None and saved["strategy_name"] == strategy
    assert saved["result"]["metrics"]["sharpe_ratio"] == pytest.approx(m.sharpe_ratio)

    png = Path(result.chart_path).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    arts = _artifacts(result.task_id)
    kinds = {a.type for a in arts}
    assert {"progress", "markdown"} <= kinds
    progress = next(a for a in arts if a.type == "progress")
    assert progress.data == 100
    md = next(a for a in arts if a.type == "markdown").data
    assert "| sharpe_ratio |" in md
    embedded = md.split("data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(embedded) == png


@pytest.mark.tc("TC-ASYNC-083")
def test_flow_rejects_bad_parameters_before_writing(btc_store: Store) -> None:
    bad = {
        "strategy_name": "rsi",
        "symbol": "BTCUSD",
        "timeframe": "1h",
        "start_date": "2019-04-01",
        "end_date": "2019-05-01",
        "parameters": {"oversold": 80, "overbought": 70},
    }
    with pytest.raises(Exception, match=r"oversold \(80.0\) must be below overbought \(70.0\)"):
        backtest_strategy(params=bad)
    with pytest.raises(Exception, match="end_date .* must be after start_date"):
        backtest_strategy(params={**bad, "parameters": {}, "end_date": "2019-03-01"})
    assert btc_store.col("backtest_results").count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-066")
def test_backtest_flow_names_missing_range(btc_store: Store) -> None:
    params = BacktestParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        timeframe="1h",
        start_date="2019-09-01",
        end_date="2019-12-01",
    )
    with pytest.raises(
        InsufficientDataError,
        match=r"BTCUSD 1h from 2019-09-01 to 2019-12-01.*found 504 bars from 2019-09-01 00:00 to 2019-09-21 23:00",
    ):
        backtest_strategy(params)
    assert btc_store.col("backtest_results").count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-067")
def test_optimize_grid_flow_ranks_50_variations_on_dask(
    btc_store: Store, dask_address: str
) -> None:
    params = OptimizeParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        timeframe="1h",
        start_date=SIX_MONTHS[0],
        end_date=SIX_MONTHS[1],
        method="grid",
        parameter_variations=50,
    )
    result = _optimize(params, dask_address)
    assert len(result.all_results) == 50
    sharpes = [r.sharpe_ratio for r in result.all_results]
    assert sharpes == sorted(sharpes, reverse=True)
    assert len({tuple(sorted(r.parameters.items())) for r in result.all_results}) == 50
    assert result.best_parameters == result.all_results[0].parameters
    assert result.best_result.metrics.sharpe_ratio == pytest.approx(sharpes[0])
    assert {"rsi_period", "oversold", "overbought"} <= set(result.best_parameters)
    # no holdout: every figure is in-sample, and labelled so
    assert result.headline == "in_sample" and result.out_of_sample is None
    assert result.headline_note.startswith("In-sample: the best of 50 parameter sets")
    assert result.in_sample.metrics == result.best_result.metrics == result.headline_metrics
    assert {r.sample for r in result.all_results} == {"in_sample"}
    (art,) = [a for a in _artifacts(result.task_id) if a.type == "markdown"]
    assert "**Headline (IN-SAMPLE)**" in art.data and "OUT-OF-SAMPLE" not in art.data
    assert "Top parameter sets (IN-SAMPLE" in art.data
    saved = btc_store.jobs.optimization_result_get(result.task_id)
    assert saved is not None and saved["method"] == "grid"
    assert len(saved["result"]["all_results"]) == 50
    assert saved["result"]["headline"] == "in_sample"


@pytest.mark.tc("TC-ASYNC-073")
def test_optimize_walk_forward_flow_headline_is_out_of_sample(
    btc_store: Store, dask_address: str
) -> None:
    params = OptimizeParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        timeframe="1h",
        start_date=SIX_MONTHS[0],
        end_date=SIX_MONTHS[1],
        method="walk_forward",
        parameter_variations=20,
        wf_windows=3,
        wf_train_ratio=2.0,
    )
    result = _optimize(params, dask_address)
    walk = result.walk_forward
    assert result.headline == "out_of_sample"
    assert result.headline_metrics == walk.overall_out_of_sample == result.out_of_sample.metrics
    assert result.out_of_sample.start == walk.windows[0].test_start
    assert result.in_sample.sample == "in_sample"
    assert result.in_sample.metrics == result.best_result.metrics
    (art,) = [a for a in _artifacts(result.task_id) if a.type == "markdown"]
    assert "**Headline (OUT-OF-SAMPLE)**" in art.data and "| metric | IN-SAMPLE (" in art.data


@pytest.mark.tc("TC-ASYNC-075")
def test_optimize_genetic_flow_reports_comparison_with_exhaustive_grid(
    btc_store: Store, dask_address: str
) -> None:
    params = OptimizeParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        timeframe="1h",
        start_date=SIX_MONTHS[0],
        end_date=SIX_MONTHS[1],
        method="genetic",
        seed=42,
    )
    result = _optimize(params, dask_address)
    g = result.genetic
    assert g is not None and g.space_size >= 500
    assert g.evaluations == len(result.all_results) <= 0.3 * g.space_size
    assert g.ratio_to_exhaustive_pct is not None and g.ratio_to_exhaustive_pct >= 95.0
    assert g.best_sharpe == pytest.approx(result.all_results[0].sharpe_ratio)
    assert btc_store.jobs.optimization_result_get(result.task_id)["result"]["genetic"]["seed"] == 42
