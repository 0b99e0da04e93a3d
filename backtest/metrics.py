"""Performance metrics, trade list and daily curves of an :class:`~backtest.engine.EngineRun`.

Conventions (the same text is in every result, ``core.schemas.backtest.CONVENTIONS``, and
in docs/backtesting.md): Sharpe and Sortino from daily equity returns annualised with
sqrt(365); win rate over closed trades; profit factor = gross profit / gross loss of
closed trades in money after fees; max drawdown from bar-close equity.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np

from backtest.engine import EngineRun
from core.schemas.backtest import BacktestMetrics, CurvePoint, TradeRecord

DAYS_PER_YEAR = 365.0


def to_datetime(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(int(t.astype("datetime64[us]").astype(np.int64)) / 1e6, tz=UTC)


def daily_equity(run: EngineRun) -> tuple[np.ndarray, np.ndarray]:
    """Equity at each UTC calendar day's last bar, days without bars carrying the last value.

    Returns:
        ``(days, equity)``: ``datetime64[D]`` days from the first to the last bar's day
        (six months of hours -> 184 points) and the equity at their close.
    """
    days, bar = run.candles.day_ends
    return days, run.equity[bar]


def running_peak(run: EngineRun) -> np.ndarray:
    """Highest bar-close equity so far (starting from the initial capital), at each bar."""
    peak = np.maximum.accumulate(run.equity)
    return np.maximum(peak, run.config.initial_capital, out=peak)


def _ratios(daily: np.ndarray, initial: float) -> tuple[float, float]:
    returns = np.diff(np.concatenate(([initial], daily))) / np.concatenate(([initial], daily[:-1]))
    if len(returns) < 2:
        return 0.0, 0.0
    mean = float(returns.mean())
    std = float(returns.std(ddof=1))
    sharpe = mean / std * math.sqrt(DAYS_PER_YEAR) if std > 0 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
    sortino = mean / downside * math.sqrt(DAYS_PER_YEAR) if downside > 0 else 0.0
    return sharpe, sortino


def compute_metrics(run: EngineRun) -> BacktestMetrics:
    """Summary statistics of ``run`` (see the module docstring for conventions).

    Returns:
        a :class:`BacktestMetrics`; ratios are 0 when undefined (no variance), and
        ``profit_factor`` is None when there is no losing closed trade.
    """
    c = run.candles
    initial = run.config.initial_capital
    equity = run.equity
    final = float(equity[-1])
    total_return = (final / initial - 1.0) * 100.0

    n = len(c.close)
    span_s = (c.time[-1] - c.time[0]).astype("timedelta64[s]").astype(np.int64) * n / max(n - 1, 1)
    years = float(span_s) / 86400.0 / DAYS_PER_YEAR
    growth = final / initial
    cagr = (growth ** (1.0 / years) - 1.0) * 100.0 if growth > 0 and years > 0 else -100.0

    _, daily = daily_equity(run)
    sharpe, sortino = _ratios(daily, initial)

    peak = running_peak(run)
    max_dd = (float(np.divide(equity, peak, out=peak).min()) - 1.0) * 100.0

    closed = ~run.trade_open
    pnl = run.trade_pnl[closed]
    wins = pnl[pnl > 0].sum()
    losses = -pnl[pnl < 0].sum()
    n_closed = int(closed.sum())
    return BacktestMetrics(
        total_return_pct=total_return,
        cagr_pct=cagr,
        sharpe_ratio=sharpe,
        sortino_ratio=sortino,
        max_drawdown_pct=min(max_dd, 0.0),
        win_rate_pct=float((pnl > 0).sum()) / n_closed * 100.0 if n_closed else 0.0,
        profit_factor=float(wins / losses) if losses > 0 else None,
        total_trades=len(run.trade_pnl),
        closed_trades=n_closed,
        avg_trade_pct=float(run.trade_return_pct[closed].mean()) if n_closed else 0.0,
        exposure_pct=float(np.count_nonzero(run.held)) / len(run.held) * 100.0,
        final_equity=final,
        buy_and_hold_return_pct=(float(c.close[-1] / c.open[0]) - 1.0) * 100.0,
    )


def trade_list(run: EngineRun) -> list[TradeRecord]:
    """Every trade of ``run``, oldest first."""
    n = len(run.candles)
    out = []
    for i in range(len(run.trade_pnl)):
        entry, exit_ = int(run.trade_entry[i]), int(run.trade_exit[i])
        is_open = exit_ >= n
        out.append(
            TradeRecord(
                side="long" if run.trade_side[i] > 0 else "short",
                entry_time=to_datetime(run.candles.time[entry]),
                exit_time=None if is_open else to_datetime(run.candles.time[exit_]),
                entry_price=float(run.entry_price[i]),
                exit_price=float(run.exit_price[i]),
                bars_held=min(exit_, n) - entry,
                return_pct=float(run.trade_return_pct[i]),
                pnl=float(run.trade_pnl[i]),
                is_open=is_open,
            )
        )
    return out


def equity_curve(run: EngineRun) -> list[CurvePoint]:
    """Daily equity and drawdown (percent below the running peak of bar-close equity)."""
    days, bar = run.candles.day_ends
    daily = run.equity[bar]
    peak = running_peak(run)[bar]
    drawdown = (daily / peak - 1.0) * 100.0
    return [
        CurvePoint(day=d.item(), equity=float(e), drawdown_pct=float(min(dd, 0.0)))
        for d, e, dd in zip(days, daily, drawdown, strict=True)
    ]
