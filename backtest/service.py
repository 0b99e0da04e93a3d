"""One-call backtests on candle frames: range checks, full report and its markdown summary
(the chart: backtest/charts.py)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from typing import Any

import pandas as pd

from backtest.engine import check_candles, run_backtest
from backtest.metrics import compute_metrics, equity_curve, trade_list
from backtest.strategies import Candles, get_strategy
from core.exceptions import InsufficientDataError
from core.market import bar_length
from core.schemas.backtest import BacktestConfig, BacktestResult

log = logging.getLogger(__name__)

#: Fewest bars a backtest or optimisation accepts.
MIN_BARS = 100


def range_bounds(start_date: date, end_date: date) -> tuple[datetime, datetime]:
    """UTC bounds of ``[start_date 00:00, end_date 00:00)`` (end exclusive)."""
    return (
        datetime.combine(start_date, time(0), tzinfo=UTC),
        datetime.combine(end_date, time(0), tzinfo=UTC),
    )


def check_range(
    frame: pd.DataFrame,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    min_coverage: float = 0.9,
) -> pd.DataFrame:
    """Keep bars with open time in ``[start, end)`` and check the range is (nearly) covered.

    Returns:
        the bars in range, oldest first.

    Raises:
        InsufficientDataError: naming the symbol, timeframe, range asked and range found,
            when fewer than ``MIN_BARS`` bars or under ``min_coverage`` of the expected bars.
    """
    if len(frame):
        frame = frame[(frame.index >= start) & (frame.index < end)]
    expected = int((end - start) / bar_length(timeframe))
    found = (
        f"{len(frame)} bars from {frame.index[0]:%Y-%m-%d %H:%M} to {frame.index[-1]:%Y-%m-%d %H:%M}"
        if len(frame)
        else "no bars"
    )
    if len(frame) < max(MIN_BARS, min_coverage * expected):
        raise InsufficientDataError(
            f"Insufficient data for {symbol} {timeframe} from {start:%Y-%m-%d} to {end:%Y-%m-%d}: "
            f"expected {expected} bars, found {found}. Import the missing candles or choose "
            "a range inside the stored one"
        )
    return frame


def backtest_candles(
    frame: pd.DataFrame,
    strategy_name: str,
    parameters: dict[str, Any] | None,
    config: BacktestConfig | None = None,
    *,
    symbol: str,
    timeframe: str,
) -> BacktestResult:
    """Backtest one strategy on ``frame`` (columns open..volume, UTC DatetimeIndex).

    Returns:
        the full :class:`BacktestResult` (metrics, trades, daily equity curve).

    Raises:
        InvalidInputError: unknown strategy or bad parameters; DataQualityError: bad candles.
    """
    strategy = get_strategy(strategy_name)
    params = strategy.params(parameters)
    config = config or BacktestConfig()
    candles = Candles.from_frame(frame)
    check_candles(candles)
    entries, exits = strategy.signals(candles, params)
    run = run_backtest(candles, entries, exits, config, checked=True)
    return BacktestResult(
        strategy_name=strategy_name,
        symbol=symbol,
        timeframe=timeframe,
        start=frame.index[0].to_pydatetime(),
        end=frame.index[-1].to_pydatetime(),
        bars=len(candles),
        parameters=params.model_dump(),
        config=config,
        metrics=compute_metrics(run),
        trades=trade_list(run),
        equity_curve=equity_curve(run),
    )


def summary_markdown(result: BacktestResult) -> str:
    """A markdown table of the metrics and the conventions behind them."""
    m = result.metrics.model_dump()
    rows = "\n".join(
        f"| {k} | {'n/a' if v is None else (f'{v:.4g}' if isinstance(v, float) else v)} |"
        for k, v in m.items()
    )
    params = ", ".join(f"{k}={v}" for k, v in result.parameters.items())
    conv = "\n".join(f"- **{k}**: {v}" for k, v in result.conventions.items())
    sample = ""
    if result.model is not None:
        sample = (
            f"**{'IN-SAMPLE' if result.in_sample else 'Out-of-sample'}**: {result.model.note}\n\n"
        )
    return (
        f"# Backtest {result.strategy_name} {result.symbol} {result.timeframe}\n\n"
        f"{sample}"
        f"{result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC, {result.bars} bars; "
        f"parameters: {params}; fee {result.config.fee_bps} bps, slippage "
        f"{result.config.slippage_bps} bps, size {result.config.position_size:g}, "
        f"{'long/short' if result.config.allow_short else 'long-only'}\n\n"
        f"| metric | value |\n| --- | --- |\n{rows}\n\n## Conventions\n{conv}\n"
    )
