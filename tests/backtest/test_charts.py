"""The pictures of a backtest and an optimisation: what they plot, checked against the data.

The trades chart's markers are read back from the figure (the marker series' x and y data)
and compared with the fills of trades placed at known bars; the heatmap's cells with
Sharpe ratios computed independently (the optimiser's ranking, ``backtest.samples.traded_on``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from backtest.charts import backtest_figure, render_backtest_chart, trade_fills
from backtest.engine import run_backtest
from backtest.heatmap import (
    heatmap_axes,
    heatmap_figure,
    optimization_heatmap,
    render_heatmap,
    sample_ranges,
    sharpe_grid,
)
from backtest.metrics import compute_metrics, equity_curve, to_datetime, trade_list
from backtest.optimize import genetic_search, grid_search, local_evaluator, walk_forward
from backtest.samples import holdout_start, label_samples, traded_on
from backtest.service import backtest_candles
from backtest.strategies import Candles
from core.exceptions import InvalidInputError
from core.schemas.backtest import (
    BacktestConfig,
    BacktestResult,
    OptimizationResult,
    OptimizeParameters,
)
from tests.backtest.conftest import SIX_MONTHS

PNG = b"\x89PNG"


def _frame(n: int = 240) -> pd.DataFrame:
    """``n`` hourly bars of a deterministic wave (no randomness: known prices at every bar)."""
    idx = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    close = 100.0 + 10.0 * np.sin(np.arange(n) / 12.0)
    return pd.DataFrame(
        {
            "open": np.concatenate(([100.0], close[:-1])),
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 10.0),
        },
        index=idx,
    )


def _result(
    frame: pd.DataFrame, entry_bars: list[int], exit_bars: list[int], **config
) -> BacktestResult:
    """A backtest of signals at the given bars (filled at the next bar's open)."""
    candles = Candles.from_frame(frame)
    entries = np.zeros(len(frame), dtype=bool)
    exits = np.zeros(len(frame), dtype=bool)
    entries[entry_bars] = True
    exits[exit_bars] = True
    cfg = BacktestConfig(**config)
    run = run_backtest(candles, entries, exits, cfg)
    return BacktestResult(
        strategy_name="rsi",
        symbol="BTCUSDT",
        timeframe="1h",
        start=frame.index[0].to_pydatetime(),
        end=frame.index[-1].to_pydatetime(),
        bars=len(frame),
        parameters={},
        config=cfg,
        metrics=compute_metrics(run),
        trades=trade_list(run),
        equity_curve=equity_curve(run),
    )


def _series(fig, gid: str) -> tuple[list[datetime], list[float]]:
    """The x (as UTC datetimes) and y data of the marker series ``gid`` of the price panel."""
    from matplotlib.dates import num2date

    (line,) = [ln for ln in fig.axes[0].lines if ln.get_gid() == gid]
    xs = line.get_xdata(orig=False)
    return [num2date(x).astimezone(UTC) for x in np.atleast_1d(xs)], list(line.get_ydata())


@pytest.mark.tc("TC-ASYNC-074")
def test_long_only_fills_are_marked_at_the_bars_after_their_signals() -> None:
    frame = _frame()
    # signals at bars 10/30 and 60/100; the last entry (200) is still open at the end
    result = _result(frame, [10, 60, 200], [30, 100])
    fig = backtest_figure(result, frame["close"])
    buy_x, buy_y = _series(fig, "buys")
    sell_x, sell_y = _series(fig, "sells")
    opens = frame["open"].to_numpy()
    assert buy_x == [frame.index[b].to_pydatetime() for b in (11, 61, 201)]
    assert buy_y == pytest.approx(opens[[11, 61, 201]])
    assert sell_x == [frame.index[b].to_pydatetime() for b in (31, 101)]  # no exit: open trade
    assert sell_y == pytest.approx(opens[[31, 101]])
    # the close line is every bar's close; the legend counts the fills
    close_line = fig.axes[0].lines[0]
    assert list(close_line.get_ydata()) == pytest.approx(frame["close"].to_numpy())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["close", "buy (3)", "sell (2)"]
    # the equity panel plots the daily curve of the result
    assert list(fig.axes[1].lines[0].get_ydata()) == [p.equity for p in result.equity_curve]
    assert render_backtest_chart(result, frame["close"]).startswith(PNG)


@pytest.mark.tc("TC-ASYNC-074")
def test_with_shorts_a_sell_opens_and_a_buy_closes_a_short() -> None:
    frame = _frame()
    result = _result(frame, [10, 80], [40, 120], allow_short=True, fee_bps=0.0)
    sides = [(t.side, t.is_open) for t in result.trades]
    assert sides == [("long", False), ("short", False), ("long", False), ("short", True)]
    fills = trade_fills(result)
    idx = frame.index
    # a reversal is one fill with two roles: at 41 the long's exit and the short's entry
    # are both sells, at 81 the short's exit and the long's entry both buys
    assert fills.buy_times == [idx[11], idx[81], idx[81]]
    assert fills.sell_times == [idx[41], idx[41], idx[121], idx[121]]
    fig = backtest_figure(result, frame["close"])
    assert _series(fig, "sells")[0] == fills.sell_times


@pytest.mark.tc("TC-ASYNC-074")
def test_the_close_must_be_the_backtests_own_bars() -> None:
    frame = _frame()
    result = _result(frame, [10], [30])
    with pytest.raises(InvalidInputError, match="close must hold the backtest's 240 bars"):
        backtest_figure(result, frame["close"].iloc[:-5])
    # without the close: the equity and drawdown panels alone
    assert len(backtest_figure(result).axes) == 2


@pytest.fixture(scope="module")
def candles(btc_six_months: pd.DataFrame) -> Candles:
    return Candles.from_frame(btc_six_months)


def _optimisation(
    frame: pd.DataFrame, candles: Candles, method: str, holdout_pct: float
) -> tuple[OptimizationResult, int]:
    """An optimisation of RSI as the flow assembles it (without Prefect). Returns it and its split."""
    params = OptimizeParameters(
        strategy_name="rsi",
        symbol="BTCUSD",
        start_date=SIX_MONTHS[0],
        end_date=SIX_MONTHS[1],
        method=method,
        holdout_pct=holdout_pct,
        parameter_variations=40,
        wf_windows=3,
    )
    n = len(candles)
    split = n if method == "walk_forward" else holdout_start(n, holdout_pct)
    search = candles.slice(0, split)
    evaluate = local_evaluator("rsi")
    walk = genetic = None
    if method == "grid":
        entries, size = grid_search(search, "rsi", 40, evaluate)
    elif method == "genetic":
        entries, genetic = genetic_search(search, "rsi", evaluate, max_evaluations_pct=10)
        size = genetic.space_size
    else:
        walk, entries = walk_forward(search, "rsi", evaluate, n_windows=3, n_variations=40)
        size = len(entries)
    best = backtest_candles(
        frame.iloc[:split], "rsi", entries[0].parameters, symbol="BTCUSD", timeframe="1h"
    )
    ins, oos, headline, note = label_samples(candles, split, best, walk, len(entries), params)
    result = OptimizationResult(
        method=method,
        strategy_name="rsi",
        symbol="BTCUSD",
        timeframe="1h",
        start=to_datetime(candles.time[0]),
        end=to_datetime(candles.time[-1]),
        space_size=size,
        evaluations=len(entries),
        headline=headline,
        headline_metrics=(oos or ins).metrics,
        headline_note=note,
        in_sample=ins,
        out_of_sample=oos,
        all_results=entries,
        best_parameters=entries[0].parameters,
        best_result=best,
        genetic=genetic,
        walk_forward=walk,
    )
    return result, split


@pytest.mark.tc("TC-ASYNC-067")
def test_grid_heatmap_cells_are_the_in_sample_best_and_its_out_of_sample_sharpe(
    btc_six_months: pd.DataFrame, candles: Candles
) -> None:
    result, split = _optimisation(btc_six_months, candles, "grid", holdout_pct=25)
    hm = optimization_heatmap(result, candles, split)
    entries = result.all_results
    # across: the parameter with the most distinct evaluated values; down: the next one
    distinct = {n: len({e.parameters[n] for e in entries}) for n in entries[0].parameters}
    assert distinct[hm.x_name] == max(distinct.values()) and hm.x_name == "rsi_period"
    assert distinct[hm.y_name] == max(v for n, v in distinct.items() if n != hm.x_name)
    (other,) = hm.other_parameters
    assert distinct[other] <= distinct[hm.y_name]
    assert hm.x_values == sorted({e.parameters["rsi_period"] for e in entries})
    filled = 0
    for r, y in enumerate(hm.y_values):
        for c, x in enumerate(hm.x_values):
            cell = [
                e for e in entries if e.parameters[hm.x_name] == x and e.parameters[hm.y_name] == y
            ]
            if not cell:
                assert np.isnan(hm.in_sample[r, c]) and np.isnan(hm.out_of_sample[r, c])
                continue
            filled += 1
            top = max(cell, key=lambda e: e.sharpe_ratio)
            assert hm.in_sample[r, c] == top.sharpe_ratio
            assert hm.cell_parameters[r][c] == top.parameters
            # out-of-sample: that set on the held-out bars, computed the samples' way
            oos = traded_on(candles, "rsi", top.parameters, split, len(candles))
            assert hm.out_of_sample[r, c] == pytest.approx(oos.sharpe_ratio, rel=1e-12)
    assert filled == len({(e.parameters[hm.x_name], e.parameters[hm.y_name]) for e in entries})
    # the chosen set's cell: its out-of-sample Sharpe is the result's out-of-sample figure
    r, c = hm.best
    assert hm.cell_parameters[r][c] == result.best_parameters
    assert hm.out_of_sample[r, c] == pytest.approx(result.out_of_sample.metrics.sharpe_ratio)
    # the figure draws these very arrays, one colour scale for both panels
    fig = heatmap_figure(hm, "t")
    left, right = fig.axes[0].images[0], fig.axes[1].images[0]
    np.testing.assert_array_equal(np.ma.filled(left.get_array(), np.nan), hm.in_sample)
    np.testing.assert_array_equal(np.ma.filled(right.get_array(), np.nan), hm.out_of_sample)
    assert left.norm.vmin == right.norm.vmin and left.norm.vcenter == 0.0
    assert fig.axes[0].get_title().startswith("IN-SAMPLE: search bars")
    assert fig.axes[1].get_title().startswith("OUT-OF-SAMPLE: held-out bars")
    assert render_heatmap(hm, "t").startswith(PNG)


@pytest.mark.tc("TC-ASYNC-067")
def test_grid_heatmap_without_holdout_says_no_bars_were_held_out(
    btc_six_months: pd.DataFrame, candles: Candles
) -> None:
    result, split = _optimisation(btc_six_months, candles, "grid", holdout_pct=0)
    hm = optimization_heatmap(result, candles, split)
    assert hm.out_of_sample is None
    assert "no bars were held out" in hm.out_of_sample_label
    fig = heatmap_figure(hm, "t")
    assert not fig.axes[1].images  # an empty panel with the reason, no colours
    assert "no bars held out" in [t.get_text() for t in fig.axes[1].texts]


@pytest.mark.tc("TC-ASYNC-073")
def test_walk_forward_heatmap_is_the_last_train_window_against_the_last_test_window(
    btc_six_months: pd.DataFrame, candles: Candles
) -> None:
    result, split = _optimisation(btc_six_months, candles, "walk_forward", holdout_pct=0)
    last = result.walk_forward.windows[-1]
    in_label, (start, end), oos_label = sample_ranges(result, candles, split)
    assert to_datetime(candles.time[start]) == last.test_start
    assert to_datetime(candles.time[end - 1]) == last.test_end and end == len(candles)
    assert "last train window" in in_label and "last test window" in oos_label
    hm = optimization_heatmap(result, candles, split)
    r, c = hm.best
    # the chosen set is the last window's choice; its in-sample cell is its train Sharpe
    assert hm.cell_parameters[r][c] == last.best_parameters
    assert hm.in_sample[r, c] == pytest.approx(last.train_sharpe)
    oos = traded_on(candles, "rsi", last.best_parameters, start, end)
    assert hm.out_of_sample[r, c] == pytest.approx(oos.sharpe_ratio)


@pytest.mark.tc("TC-ASYNC-075")
def test_genetic_heatmap_leaves_unvisited_cells_blank(
    btc_six_months: pd.DataFrame, candles: Candles
) -> None:
    result, split = _optimisation(btc_six_months, candles, "genetic", holdout_pct=20)
    hm = optimization_heatmap(result, candles, split)
    visited = {(e.parameters[hm.x_name], e.parameters[hm.y_name]) for e in result.all_results}
    blank = int(np.isnan(hm.in_sample).sum())
    assert blank == hm.in_sample.size - len(visited) > 0
    assert np.array_equal(np.isnan(hm.in_sample), np.isnan(hm.out_of_sample))


@pytest.mark.tc("TC-ASYNC-067")
def test_heatmap_axes_need_evaluated_sets() -> None:
    with pytest.raises(InvalidInputError, match="entries must hold at least one"):
        heatmap_axes([])


@pytest.mark.tc("TC-ASYNC-067")
def test_a_one_parameter_search_gets_a_one_row_heatmap(candles: Candles) -> None:
    entries, _ = grid_search(
        candles, "rsi", 10, local_evaluator("rsi"), {"rsi_period": [10, 14, 20]}
    )
    x_name, y_name = heatmap_axes(entries)
    assert (x_name, y_name) == ("rsi_period", None)
    xs, ys, sharpe, params = sharpe_grid(entries, x_name, y_name)
    assert (xs, ys, sharpe.shape) == ([10, 14, 20], [None], (1, 3))
    by_period = {e.parameters["rsi_period"]: e.sharpe_ratio for e in entries}
    assert list(sharpe[0]) == [by_period[p] for p in xs]
