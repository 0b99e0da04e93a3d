"""Every backtest metric against a figure worked out by hand (backtest/metrics.py).

The runs are small :class:`EngineRun` outcomes written out bar by bar, so each metric's
expected value below is plain arithmetic on the listed numbers (the engine itself is checked
against backtesting.py and a bar-by-bar loop in test_engine.py). The edge cases pin the
conventions: open trades leave win rate and profit factor alone, a flat or rising curve has
ratios of 0, a wiped-out account has a CAGR of -100 %. The mutation bench
(bench/bench_mutation.py) runs these against every small change of the module.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, date, datetime

import numpy as np
import pytest

from backtest.engine import EngineRun, run_backtest
from backtest.metrics import (
    compute_metrics,
    daily_equity,
    equity_curve,
    running_peak,
    to_datetime,
    trade_list,
)
from backtest.strategies import Candles
from core.schemas.backtest import BacktestConfig

#: Bar open times: two bars a day on Jan 1, 2 and 4 (no bar on Jan 3), UTC.
TIMES = [
    "2024-01-01T00:00",
    "2024-01-01T12:00",
    "2024-01-02T00:00",
    "2024-01-02T12:00",
    "2024-01-04T00:00",
    "2024-01-04T12:00",
]
OPEN = [100.0, 104.0, 108.0, 103.0, 101.0, 110.0]
CLOSE = [105.0, 107.0, 102.0, 100.0, 111.0, 130.0]
EQUITY = [950.0, 1100.0, 1050.0, 990.0, 1020.0, 1200.0]


def _candles(times: list[str], open_: list[float], close: list[float]) -> Candles:
    o, c = np.array(open_), np.array(close)
    return Candles(
        time=np.array(times, dtype="datetime64[ns]"),
        open=o,
        high=np.maximum(o, c) + 1.0,
        low=np.minimum(o, c) - 1.0,
        close=c,
        volume=np.ones(len(c)),
    )


def _run(
    equity: list[float],
    trades: list[tuple[int, int, int, float, float, float, float]],
    *,
    held: list[int] | None = None,
    times: list[str] = TIMES,
    open_: list[float] = OPEN,
    close: list[float] = CLOSE,
) -> EngineRun:
    """An outcome with ``trades`` = (entry, exit, side, entry price, exit price, pnl, return %)."""
    cols = list(zip(*trades, strict=True)) if trades else [[]] * 7
    return EngineRun(
        candles=_candles(times, open_, close),
        config=BacktestConfig(initial_capital=1000.0),
        held=np.array(held if held is not None else [1] * len(equity)),
        equity=np.array(equity),
        trade_entry=np.array(cols[0], dtype=np.int64),
        trade_exit=np.array(cols[1], dtype=np.int64),
        trade_side=np.array(cols[2], dtype=np.int64),
        entry_price=np.array(cols[3], dtype=float),
        exit_price=np.array(cols[4], dtype=float),
        trade_pnl=np.array(cols[5], dtype=float),
        trade_return_pct=np.array(cols[6], dtype=float),
    )


#: A winner, a losing short, a closed trade at break-even, and a big winner still open.
TRADES = [
    (0, 2, 1, 100.0, 108.0, 50.0, 5.0),
    (2, 3, -1, 108.0, 103.0, -20.0, -2.0),
    (3, 4, 1, 103.0, 101.0, 0.0, 0.0),
    (4, 6, 1, 101.0, 130.0, 180.0, 18.0),
]


def _sharpe_sortino(returns: list[float]) -> tuple[float, float]:
    mean = sum(returns) / len(returns)
    std = statistics.stdev(returns)
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    sortino = mean / downside * math.sqrt(365) if downside else math.nan
    return mean / std * math.sqrt(365), sortino


@pytest.mark.tc("TC-ASYNC-066")
def test_every_metric_of_a_hand_written_run() -> None:
    run = _run(EQUITY, TRADES, held=[1, 1, -1, 0, 1, 1])
    m = compute_metrics(run)
    assert m.final_equity == 1200.0
    assert m.total_return_pct == pytest.approx(20.0)
    # 6 bars over 3.5 days: the span counts the last bar too, 3.5 * 6/5 = 4.2 days
    assert m.cagr_pct == pytest.approx((1.2 ** (365 / 4.2) - 1) * 100)
    # daily closes (Jan 3 carries Jan 2's): 1100, 990, 990, 1200 after 1000 at the start
    sharpe, sortino = _sharpe_sortino([0.1, -0.1, 0.0, 1200 / 990 - 1])
    assert m.sharpe_ratio == pytest.approx(sharpe)
    assert m.sortino_ratio == pytest.approx(sortino)
    assert m.max_drawdown_pct == pytest.approx(-10.0)  # 990 against the 1100 peak
    assert m.total_trades == 4
    assert m.closed_trades == 3
    assert m.win_rate_pct == pytest.approx(100 / 3)  # break-even is not a win
    assert m.profit_factor == pytest.approx(50.0 / 20.0)  # the open winner is left out
    assert m.avg_trade_pct == pytest.approx((5.0 - 2.0 + 0.0) / 3)
    assert m.exposure_pct == pytest.approx(100 * 5 / 6)  # a short is exposure, flat is not
    assert m.buy_and_hold_return_pct == pytest.approx(30.0)  # first open 100 -> last close 130


@pytest.mark.tc("TC-ASYNC-066")
def test_a_run_below_its_start_draws_down_from_the_initial_capital() -> None:
    run = _run([990.0, 980.0, 985.0, 985.0, 985.0, 985.0], [])
    assert running_peak(run).tolist() == [1000.0] * 6
    m = compute_metrics(run)
    assert m.max_drawdown_pct == pytest.approx(-2.0)
    assert [p.drawdown_pct for p in equity_curve(run)] == pytest.approx([-2.0, -1.5, -1.5, -1.5])


@pytest.mark.tc("TC-ASYNC-066")
def test_without_closed_trades_or_losses_the_ratios_are_defined() -> None:
    flat = compute_metrics(_run([1000.0] * 6, [(5, 6, 1, 130.0, 130.0, 0.0, 0.0)], held=[0] * 6))
    assert (flat.sharpe_ratio, flat.sortino_ratio) == (0.0, 0.0)  # no variance
    assert (flat.win_rate_pct, flat.avg_trade_pct, flat.profit_factor) == (0.0, 0.0, None)
    assert (flat.total_trades, flat.closed_trades, flat.exposure_pct) == (1, 0, 0.0)
    assert flat.max_drawdown_pct == 0.0
    # only winners: no loss, so no profit factor; never below zero, so no Sortino
    rising = [1000.0, 1010.0, 1020.0, 1040.0, 1080.0, 1160.0]
    up = compute_metrics(_run(rising, [(0, 2, 1, 100.0, 108.0, 80.0, 8.0), TRADES[2]]))
    assert (up.win_rate_pct, up.profit_factor, up.sortino_ratio) == (50.0, None, 0.0)
    daily_returns = [0.01, 1040 / 1010 - 1, 0.0, 1160 / 1040 - 1]  # 1010, 1040, 1040, 1160
    assert up.sharpe_ratio == pytest.approx(_sharpe_sortino(daily_returns)[0])


@pytest.mark.tc("TC-ASYNC-066")
def test_two_days_are_enough_for_the_ratios_one_is_not() -> None:
    times = ["2024-01-01T00:00", "2024-01-01T12:00", "2024-01-02T00:00", "2024-01-02T12:00"]
    two = _run([1000.0, 1100.0, 1050.0, 1050.0], [], times=times, open_=OPEN[:4], close=CLOSE[:4])
    sharpe, sortino = _sharpe_sortino([0.1, 1050 / 1100 - 1])
    m = compute_metrics(two)
    assert (m.sharpe_ratio, m.sortino_ratio) == (pytest.approx(sharpe), pytest.approx(sortino))
    one = _run([1000.0, 1100.0], [], times=times[:2], open_=OPEN[:2], close=CLOSE[:2])
    assert (compute_metrics(one).sharpe_ratio, compute_metrics(one).sortino_ratio) == (0.0, 0.0)


@pytest.mark.tc("TC-ASYNC-066")
def test_a_wiped_out_account_has_a_cagr_of_minus_100() -> None:
    m = compute_metrics(_run([900.0, 500.0, 200.0, 50.0, 10.0, 0.0], []))
    assert m.cagr_pct == -100.0
    assert m.total_return_pct == pytest.approx(-100.0)
    assert m.max_drawdown_pct == pytest.approx(-100.0)


@pytest.mark.tc("TC-ASYNC-066")
def test_trade_list_reports_each_trade_as_filled() -> None:
    trades = trade_list(_run(EQUITY, TRADES))
    assert [(t.side, t.is_open, t.bars_held) for t in trades] == [
        ("long", False, 2),
        ("short", False, 1),
        ("long", False, 1),
        ("long", True, 2),  # open: counted to the end of the data
    ]
    first, last = trades[0], trades[-1]
    assert first.entry_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert first.exit_time == datetime(2024, 1, 2, tzinfo=UTC)
    assert trades[1].exit_time == datetime(2024, 1, 2, 12, tzinfo=UTC)
    assert (first.entry_price, first.exit_price, first.pnl, first.return_pct) == (
        100.0,
        108.0,
        50.0,
        5.0,
    )
    assert last.entry_time == datetime(2024, 1, 4, tzinfo=UTC)
    assert last.exit_time is None
    assert (last.exit_price, last.pnl, last.return_pct) == (130.0, 180.0, 18.0)
    assert to_datetime(np.datetime64("2024-01-04T12:00:00.000001")) == datetime(
        2024, 1, 4, 12, 0, 0, 1, tzinfo=UTC
    )


@pytest.mark.tc("TC-ASYNC-074")
def test_equity_curve_is_daily_with_gaps_carried() -> None:
    run = _run(EQUITY, TRADES)
    days, daily = daily_equity(run)
    assert days.astype(str).tolist() == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    assert daily.tolist() == [1100.0, 990.0, 990.0, 1200.0]
    curve = equity_curve(run)
    assert [p.day for p in curve] == [date(2024, 1, d) for d in (1, 2, 3, 4)]
    assert [p.equity for p in curve] == [1100.0, 990.0, 990.0, 1200.0]
    assert [p.drawdown_pct for p in curve] == pytest.approx([0.0, -10.0, -10.0, 0.0])


@pytest.mark.tc("TC-ASYNC-066")
def test_metrics_of_a_real_engine_run_are_consistent() -> None:
    """The engine's own outcome (a long, closed with a fee) gives the same figures as by hand."""
    c = _candles(TIMES, OPEN, CLOSE)
    entries = np.array([True, False, False, False, False, False])
    exits = np.array([False, False, True, False, False, False])
    run = run_backtest(c, entries, exits, BacktestConfig(initial_capital=1000.0, fee_bps=10))
    m = compute_metrics(run)
    (trade,) = trade_list(run)
    assert (trade.entry_time, trade.exit_time) == (
        datetime(2024, 1, 1, 12, tzinfo=UTC),  # filled at the next bar's open
        datetime(2024, 1, 2, 12, tzinfo=UTC),
    )
    assert (trade.entry_price, trade.exit_price) == (104.0, 103.0)
    assert m.closed_trades == 1 and m.win_rate_pct == 0.0
    assert m.final_equity == pytest.approx(1000.0 + trade.pnl)
    assert m.total_return_pct == pytest.approx(trade.pnl / 10.0)


#: Two bars half a year apart: with the last bar's own length the run spans exactly 365 days.
YEAR = ["2023-01-01T00:00", "2023-07-02T12:00"]


@pytest.mark.tc("TC-ASYNC-066")
def test_cagr_over_exactly_one_year_is_the_total_return() -> None:
    gain = compute_metrics(_run([1000.0, 1100.0], [], times=YEAR, open_=[1, 1], close=[1, 1]))
    assert gain.cagr_pct == pytest.approx(10.0)
    loss = compute_metrics(_run([1000.0, 900.0], [], times=YEAR, open_=[1, 1], close=[1, 1]))
    assert loss.cagr_pct == pytest.approx(-10.0)


@pytest.mark.tc("TC-ASYNC-066")
def test_an_account_below_zero_has_a_cagr_of_minus_100() -> None:
    """A short that lost more than the account: no fractional power of a negative number."""
    m = compute_metrics(_run([1000.0, -50.0], [], times=YEAR, open_=[1, 1], close=[1, 3]))
    assert m.cagr_pct == -100.0
    assert m.total_return_pct == pytest.approx(-105.0)


@pytest.mark.tc("TC-ASYNC-066")
def test_small_wins_and_losses_count_by_their_sign() -> None:
    trades = [(0, 1, 1, 100.0, 100.5, 0.5, 0.05), (1, 2, 1, 100.0, 99.75, -0.25, -0.025)]
    m = compute_metrics(_run([1000.0, 1000.5, 1000.25, 1000.25, 1000.25, 1000.25], trades))
    assert m.win_rate_pct == 50.0
    assert m.profit_factor == pytest.approx(2.0)
