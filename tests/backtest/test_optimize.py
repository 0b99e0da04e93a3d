"""Grid, genetic and walk-forward optimisation on six months of real BTC hours (no Prefect)."""

from __future__ import annotations

import pandas as pd
import pytest

from backtest.optimize import (
    genetic_search,
    grid_search,
    local_evaluator,
    parameter_stability,
    walk_forward,
)
from backtest.strategies import Candles, get_strategy
from core.exceptions import InvalidInputError


@pytest.fixture(scope="module")
def candles(btc_six_months: pd.DataFrame) -> Candles:
    return Candles.from_frame(btc_six_months)


@pytest.mark.tc("TC-ASYNC-075")
def test_genetic_reaches_95pct_of_exhaustive_grid_with_30pct_of_evaluations(
    candles: Candles,
) -> None:
    evaluate = local_evaluator("rsi")
    exhaustive, space_size = grid_search(candles, "rsi", 10**6, evaluate)
    assert space_size >= 500 and len(exhaustive) == space_size
    best_grid = exhaustive[0].sharpe_ratio
    assert best_grid > 0
    entries, report = genetic_search(candles, "rsi", evaluate, seed=42)
    assert report.evaluations == len(entries) <= 0.30 * space_size
    assert report.best_sharpe >= 0.95 * best_grid, (report.best_sharpe, best_grid)
    # same seed, same answer; another seed searches differently
    again, report_again = genetic_search(candles, "rsi", evaluate, seed=42)
    assert [e.parameters for e in again] == [e.parameters for e in entries]
    other, _ = genetic_search(candles, "rsi", evaluate, seed=7)
    assert [e.parameters for e in other] != [e.parameters for e in entries]


@pytest.mark.tc("TC-ASYNC-067")
def test_grid_draws_evenly_and_ranks_by_sharpe(candles: Candles) -> None:
    entries, size = grid_search(candles, "rsi", 50, local_evaluator("rsi"))
    assert len(entries) == 50
    sharpes = [e.sharpe_ratio for e in entries]
    assert sharpes == sorted(sharpes, reverse=True)
    periods = {e.parameters["rsi_period"] for e in entries}
    assert periods == set(get_strategy("rsi").space["rsi_period"])  # spread over the space
    with pytest.raises(InvalidInputError, match="unknown parameters \\['foo'\\]"):
        grid_search(candles, "rsi", 5, local_evaluator("rsi"), {"foo": [1]})


@pytest.mark.tc("TC-ASYNC-073")
def test_walk_forward_reports_out_of_sample_windows_and_stability(candles: Candles) -> None:
    report, last = walk_forward(
        candles, "macd", local_evaluator("macd"), n_windows=3, train_ratio=2.0, n_variations=20
    )
    assert len(report.windows) == 3 and len(last) == 20
    for prev, w in zip(report.windows, report.windows[1:], strict=False):
        assert w.test_start > prev.test_start
    for w in report.windows:
        assert w.train_end < w.test_start  # never trained on its own test bars
        assert w.train_sharpe == pytest.approx(
            grid_search(
                candles.slice(
                    int(
                        (
                            candles.time
                            < pd.Timestamp(w.train_start).tz_localize(None).to_datetime64()
                        ).sum()
                    ),
                    int(
                        (
                            candles.time
                            <= pd.Timestamp(w.train_end).tz_localize(None).to_datetime64()
                        ).sum()
                    ),
                ),
                "macd",
                20,
                local_evaluator("macd"),
            )[0][0].sharpe_ratio
        )
    assert set(report.parameter_stability) == {"fast", "slow", "signal"}
    total_test_bars = sum(
        (w.test_end - w.test_start).total_seconds() / 3600 + 1 for w in report.windows
    )
    assert report.overall_out_of_sample.exposure_pct >= 0
    assert total_test_bars == pytest.approx(len(candles) - 2 * (len(candles) // 5))
    stability = parameter_stability([{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}])
    assert stability["a"]["mode"] == 1 and stability["a"]["mode_share_pct"] == pytest.approx(
        200 / 3
    )
    assert stability["b"]["distinct"] == 2 and "relative_std_pct" not in stability["b"]
