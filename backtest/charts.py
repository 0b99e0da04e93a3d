"""The backtest chart: trades on the close price above the equity and drawdown curves.

Pure (matplotlib on the Agg backend, no Prefect). Speed: one :class:`~matplotlib.figure.Figure`
drawn straight to PNG (no pyplot state), concise unrotated date labels and fixed margins
instead of ``tight_layout`` (which lays the figure out twice); the close is drawn as one line
(Agg simplifies long paths), the fills as two marker series.

The markers come from the result's own trade list (:func:`trade_fills`): every fill at its
time and fill price (the next bar's open after the signal, slippage included), a buy as a
green up-triangle and a sell as a red down-triangle: a long's entry and a short's exit are
buys, a long's exit and a short's entry are sells. A trade still open at the end has no
exit marker.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from core.exceptions import InvalidInputError
from core.schemas.backtest import BacktestResult
from core.schemas.economics import EquityCurve

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

BUY_COLOUR = "tab:green"
SELL_COLOUR = "tab:red"


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on the Agg canvas (no pyplot: nothing global, nothing to close).

    Returns:
        a :class:`matplotlib.figure.Figure` at 100 dpi.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100)


def to_png(fig: Figure) -> bytes:
    """Returns ``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def date_axis(ax: object) -> None:
    """Concise, unrotated date labels on ``ax``'s x axis."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)  # type: ignore[attr-defined]
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TradeFills:
    """Every fill of a backtest, split into buys and sells (times UTC, fill prices)."""

    buy_times: list[datetime]
    buy_prices: list[float]
    sell_times: list[datetime]
    sell_prices: list[float]


def trade_fills(result: BacktestResult) -> TradeFills:
    """The fills of ``result.trades``: a long's entry and a short's exit are buys, a long's
    exit and a short's entry sells; a trade still open at the end contributes its entry only.

    Returns:
        a :class:`TradeFills`, each list in trade order.
    """
    buys: list[tuple[datetime, float]] = []
    sells: list[tuple[datetime, float]] = []
    for t in result.trades:
        opening, closing = (buys, sells) if t.side == "long" else (sells, buys)
        opening.append((t.entry_time, t.entry_price))
        if not t.is_open and t.exit_time is not None:
            closing.append((t.exit_time, t.exit_price))
    return TradeFills(
        buy_times=[t for t, _ in buys],
        buy_prices=[p for _, p in buys],
        sell_times=[t for t, _ in sells],
        sell_prices=[p for _, p in sells],
    )


def _check_close(result: BacktestResult, close: pd.Series) -> None:
    if len(close) != result.bars:
        raise InvalidInputError(
            f"close must hold the backtest's {result.bars} bars (got {len(close)}): pass the "
            "close column of the candles the backtest ran on"
        )


def backtest_figure(
    result: BacktestResult, close: pd.Series | None = None, label: str = ""
) -> Figure:
    """The backtest chart of ``result``: with ``close`` (the close column of the candles the
    backtest ran on, UTC index) a top panel of the close with every fill marked
    (:func:`trade_fills`), then the daily equity (with the initial capital) and drawdown
    curves, all on one time axis. ``label`` (e.g. "IN-SAMPLE") starts the title.

    Returns:
        the figure (render it with :func:`to_png`).

    Raises:
        InvalidInputError: ``close`` does not hold ``result.bars`` bars.
    """
    days = [p.day for p in result.equity_curve]
    equity = np.array([p.equity for p in result.equity_curve])
    drawdown = np.array([p.drawdown_pct for p in result.equity_curve])
    m = result.metrics
    title = (
        f"{label + ': ' if label else ''}{result.strategy_name} on {result.symbol} "
        f"{result.timeframe}: return {m.total_return_pct:.1f}% (buy & hold "
        f"{m.buy_and_hold_return_pct:.1f}%), Sharpe {m.sharpe_ratio:.2f}, {m.total_trades} trades"
    )
    if close is None:
        fig = new_figure(10, 6)
        ax_eq, ax_dd = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax_eq.set_title(title)
        fig.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.08, hspace=0.06)
    else:
        _check_close(result, close)
        fig = new_figure(10, 9)
        ax_px, ax_eq, ax_dd = fig.subplots(
            3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2.2, 1]}
        )
        ax_px.set_title(title)
        times = close.index.to_numpy(dtype="datetime64[ns]")
        ax_px.plot(times, close.to_numpy(), color="0.35", lw=0.7, label="close")
        fills = trade_fills(result)
        ax_px.plot(
            fills.buy_times, fills.buy_prices, ls="none", marker="^", ms=6, color=BUY_COLOUR,
            markeredgecolor="black", markeredgewidth=0.4,
            label=f"buy ({len(fills.buy_times)})", gid="buys",
        )  # fmt: skip
        ax_px.plot(
            fills.sell_times, fills.sell_prices, ls="none", marker="v", ms=6, color=SELL_COLOUR,
            markeredgecolor="black", markeredgewidth=0.4,
            label=f"sell ({len(fills.sell_times)})", gid="sells",
        )  # fmt: skip
        side = "long/short" if result.config.allow_short else "long-only"
        ax_px.set_ylabel(f"{result.symbol} close")
        ax_px.legend(loc="upper left", title=f"fills, {side}", fontsize=8, title_fontsize=8)
        ax_px.grid(alpha=0.3)
        fig.subplots_adjust(left=0.09, right=0.98, top=0.96, bottom=0.06, hspace=0.08)
    ax_eq.plot(days, equity, color="tab:blue", label="strategy equity")
    ax_eq.axhline(result.config.initial_capital, color="grey", lw=0.8, ls="--")
    ax_eq.set_ylabel("equity")
    ax_eq.legend(loc="upper left")
    ax_eq.grid(alpha=0.3)
    ax_dd.fill_between(days, drawdown, 0, color="tab:red", alpha=0.4)
    ax_dd.set_ylabel("drawdown %")
    ax_dd.grid(alpha=0.3)
    date_axis(ax_dd)
    return fig


def render_backtest_chart(
    result: BacktestResult, close: pd.Series | None = None, label: str = ""
) -> bytes:
    """:func:`backtest_figure` as PNG bytes.

    Raises:
        InvalidInputError: ``close`` does not hold ``result.bars`` bars.
    """
    return to_png(backtest_figure(result, close, label))


def render_equity_chart(result: BacktestResult, label: str = "") -> bytes:
    """The daily equity (with the initial capital) and drawdown curves alone, as PNG bytes."""
    return to_png(backtest_figure(result, None, label))


def render_equity_comparison(
    curves: list[EquityCurve], title: str, initial_capital: float
) -> bytes:
    """Daily equity curves of several strategies on one axis (e.g. a model against
    buy-and-hold and logistic regression), with the initial capital dashed, as PNG bytes."""
    fig = new_figure(10, 5)
    ax = fig.subplots()
    colours = {"model": "tab:blue", "buy_and_hold": "0.4", "logistic_regression": "tab:orange"}
    for curve in curves:
        ax.plot(
            curve.days,
            curve.equity,
            color=colours.get(curve.name),
            lw=1.6 if curve.name == "model" else 1.0,
            label=curve.name.replace("_", " "),
            gid=curve.name,
        )
    ax.axhline(initial_capital, color="grey", lw=0.8, ls="--")
    ax.set_title(title)
    ax.set_ylabel("equity after fees")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    date_axis(ax)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.1)
    return to_png(fig)
