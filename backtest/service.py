"""One-call backtests on candle frames: range checks, full report and the equity chart."""

from __future__ import annotations

import io
import logging
from datetime import UTC, date, datetime, time
from typing import Any

import numpy as np
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


def render_equity_chart(result: BacktestResult, label: str = "") -> bytes:
    """Draw the daily equity (with buy-and-hold) and drawdown curves; ``label`` (e.g.
    "IN-SAMPLE") starts the title.

    Returns:
        PNG bytes (matplotlib, Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    days = [p.day for p in result.equity_curve]
    equity = np.array([p.equity for p in result.equity_curve])
    drawdown = np.array([p.drawdown_pct for p in result.equity_curve])
    fig = Figure(figsize=(10, 6), dpi=100)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    m = result.metrics
    ax1.plot(days, equity, color="tab:blue", label="strategy equity")
    ax1.axhline(result.config.initial_capital, color="grey", lw=0.8, ls="--")
    ax1.set_ylabel("equity")
    ax1.set_title(
        f"{label + ': ' if label else ''}{result.strategy_name} on {result.symbol} {result.timeframe}: "
        f"return {m.total_return_pct:.1f}% (buy & hold {m.buy_and_hold_return_pct:.1f}%), "
        f"Sharpe {m.sharpe_ratio:.2f}, {m.total_trades} trades"
    )
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.fill_between(days, drawdown, 0, color="tab:red", alpha=0.4)
    ax2.set_ylabel("drawdown %")
    ax2.grid(alpha=0.3)
    # concise date labels fit unrotated; fixed margins instead of tight_layout (which lays
    # the figure out twice): together a third of the drawing time of a 30-day chart
    locator = AutoDateLocator()
    ax2.xaxis.set_major_locator(locator)
    ax2.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.08, hspace=0.06)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def summary_markdown(result: BacktestResult) -> str:
    """A markdown table of the metrics and the conventions behind them."""
    m = result.metrics.model_dump()
    rows = "\n".join(
        f"| {k} | {'n/a' if v is None else (f'{v:.4g}' if isinstance(v, float) else v)} |"
        for k, v in m.items()
    )
    params = ", ".join(f"{k}={v}" for k, v in result.parameters.items())
    conv = "\n".join(f"- **{k}**: {v}" for k, v in result.conventions.items())
    return (
        f"# Backtest {result.strategy_name} {result.symbol} {result.timeframe}\n\n"
        f"{result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC, {result.bars} bars; "
        f"parameters: {params}; fee {result.config.fee_bps} bps, slippage "
        f"{result.config.slippage_bps} bps, size {result.config.position_size:g}, "
        f"{'long/short' if result.config.allow_short else 'long-only'}\n\n"
        f"| metric | value |\n| --- | --- |\n{rows}\n\n## Conventions\n{conv}\n"
    )
