"""Grid, genetic and walk-forward optimisation on six months of real BTC hours (no Prefect)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from backtest.optimize import (
    genetic_search,
    grid_search,
    local_evaluator,
    parameter_stability,
    walk_forward,
)
from backtest.samples import holdout_start, label_samples
from backtest.service import backtest_candles
from backtest.strategies import Candles, get_strategy
from core.exceptions import InvalidInputError
from core.schemas.backtest import OptimizeParameters


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


@pytest.mark.tc("TC-ASYNC-067", "TC-ASYNC-073")
def test_holdout_labels_in_and_out_of_sample(
    btc_six_months: pd.DataFrame, candles: Candles
) -> None:
    """Grid with 25 % held out: the search never sees the held-out bars, the headline is
    the best set traded on them, and the in-sample figure is labelled as such. On these real
    hours the best of 546 RSI sets has an in-sample Sharpe far above its out-of-sample one."""
    n = len(candles)
    split = holdout_start(n, 25)
    assert split == n - round(n * 0.25)
    entries, _ = grid_search(candles.slice(0, split), "rsi", 10**6, local_evaluator("rsi"))
    best = backtest_candles(
        btc_six_months.iloc[:split], "rsi", entries[0].parameters, symbol="BTCUSD", timeframe="1h"
    )
    params = OptimizeParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        start_date=date(2019, 3, 22),
        end_date=date(2019, 9, 22),
        holdout_pct=25,
    )
    ins, oos, headline, note = label_samples(candles, split, best, None, len(entries), params)
    assert (ins.sample, oos.sample, headline) == ("in_sample", "out_of_sample", "out_of_sample")
    assert ins.bars == split and ins.metrics == best.metrics
    assert oos.bars == n - split and oos.start == btc_six_months.index[split].to_pydatetime()
    assert "best of 546 parameter sets" in ins.description and note.startswith("Out-of-sample")
    # the out-of-sample baseline is buy-and-hold over the held-out bars alone
    assert oos.metrics.buy_and_hold_return_pct == pytest.approx(
        (btc_six_months["close"].iloc[-1] / btc_six_months["open"].iloc[split] - 1) * 100
    )
    assert ins.metrics.sharpe_ratio > 5 and oos.metrics.sharpe_ratio < 0  # selection bias
    # no holdout: the headline is the in-sample figure and says so
    whole = backtest_candles(
        btc_six_months, "rsi", entries[0].parameters, symbol="BTCUSD", timeframe="1h"
    )
    ins0, oos0, head0, note0 = label_samples(candles, n, whole, None, 546, params)
    assert oos0 is None and head0 == "in_sample" and note0.startswith("In-sample")
    assert "no bars were held out" in note0
    with pytest.raises(InvalidInputError, match="holdout_pct 50 of 150 bars"):
        holdout_start(150, 50)


@pytest.mark.tc("TC-ASYNC-073")
def test_walk_forward_headline_is_the_stitched_out_of_sample(
    btc_six_months: pd.DataFrame, candles: Candles
) -> None:
    report, last = walk_forward(
        candles, "rsi", local_evaluator("rsi"), n_windows=3, train_ratio=2.0, n_variations=20
    )
    whole = backtest_candles(
        btc_six_months, "rsi", last[0].parameters, symbol="BTCUSD", timeframe="1h"
    )
    params = OptimizeParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        start_date=date(2019, 3, 22),
        end_date=date(2019, 9, 22),
        method="walk_forward",
        wf_windows=3,
        wf_train_ratio=2.0,
    )
    ins, oos, headline, _ = label_samples(candles, len(candles), whole, report, 60, params)
    assert headline == "out_of_sample" and oos.metrics == report.overall_out_of_sample
    assert oos.start == report.windows[0].test_start and oos.end == report.windows[-1].test_end
    assert oos.bars == len(candles) - 2 * (len(candles) // 5)
    assert ins.sample == "in_sample" and "train windows' bars included" in ins.description
