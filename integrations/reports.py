"""Pure computations of the daily reports: portfolio summary, LLM cost, trading performance.

Every number is computed from its inputs (engine answers, the ``llm_costs`` ledger, closed
trades); nothing here does I/O.

Formulas:

* win rate % = winning trades / total trades x 100 (32 of 47 -> 68.09).
* total return % = (balance - initial balance) / initial balance x 100 when the engine gives no
  ``total_return_percent``.
* monthly projection = month-to-date cost / days elapsed (the report day included) x days in the
  month: $28.05 by the 15th of a 30-day month -> $56.10.
* Sharpe (of the analysis window) = mean(r) / std(r, ddof=1) x sqrt(n), r = per-trade profit %,
  n = trades in the window: the Sharpe ratio of the window's summed return, trades taken as
  independent, risk-free rate 0. None with fewer than 2 trades or zero spread.
* profit factor = sum of winning profit % / |sum of losing profit %| (None without losses).
* max drawdown % = largest fall from a peak of the compounded equity curve prod(1 + r/100),
  trades in closing order.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import numpy as np

from core.schemas.monitoring import (
    CostReport,
    PerformanceMetrics,
    PortfolioReport,
    StrategyBreakdown,
)


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------ portfolio
def portfolio_report(
    portfolio: Mapping[str, Any], trades_today: list[Mapping[str, Any]], report_date: date
) -> PortfolioReport:
    """Build the daily portfolio summary from the engine's portfolio and today's closed trades.

    Returns:
        the report; ``no_trades`` is True (and the summary says so) when no trade closed on
        ``report_date``.

    Raises:
        ValueError: the portfolio lacks a numeric ``balance`` (names the field).
    """
    balance = _num(portfolio.get("balance"))
    if balance is None:
        raise ValueError("engine portfolio has no numeric 'balance'")
    initial = _num(portfolio.get("initial_balance"))
    total_return = _num(portfolio.get("total_return_percent", portfolio.get("total_return_pct")))
    if total_return is None and initial:
        total_return = round((balance - initial) / initial * 100, 2)
    total = int(portfolio.get("total_trades") or 0)
    wins = int(portfolio.get("winning_trades") or 0)
    losses = int(portfolio.get("losing_trades") or max(total - wins, 0))
    win_rate = round(wins / total * 100, 2) if total else None
    avg = _num(portfolio.get("average_profit_per_trade"))
    if avg is None and total and _num(portfolio.get("total_pnl")) is not None:
        avg = round(float(portfolio["total_pnl"]) / total, 2)
    strategies: dict[str, StrategyBreakdown] = {}
    for name, s in (portfolio.get("strategy_breakdown") or {}).items():
        n = int(s.get("trades") or 0)
        w = s.get("wins", s.get("winning_trades"))
        wr = _num(s.get("win_rate"))
        if wr is None and w is not None and n:
            wr = round(int(w) / n * 100, 2)
        strategies[name] = StrategyBreakdown(
            trades=n,
            wins=int(w) if w is not None else None,
            losses=int(s["losses"]) if s.get("losses") is not None else None,
            win_rate=wr,
            pnl_usd=_num(s.get("pnl_usd", s.get("pnl"))),
        )
    day = report_date.isoformat()
    n_today = len(trades_today)
    pnl_today = sum(_num(t.get("pnl_usd", t.get("pnl"))) or 0.0 for t in trades_today)
    lines = [f"Portfolio report {day}", f"Balance: ${balance:,.2f}"]
    if total_return is not None:
        lines.append(f"Total return: {total_return:+.2f}%")
    if total:
        lines.append(f"Trades: {total} ({wins} wins, {losses} losses), win rate {win_rate:.2f}%")
    if avg is not None:
        lines.append(f"Average profit per trade: ${avg:,.2f}")
    if n_today:
        lines.append(f"Closed today: {n_today} trades, P&L ${pnl_today:,.2f}")
    else:
        lines.append(f"No trades closed on {day} (market quiet or weekend): nothing to report.")
    for name, s in strategies.items():
        wr_text = f"{s.win_rate:.2f}%" if s.win_rate is not None else "n/a"
        lines.append(f"  {name}: {s.trades} trades, win rate {wr_text}")
    return PortfolioReport(
        report_date=day,
        balance=balance,
        initial_balance=initial,
        total_return_pct=total_return,
        total_trades=total,
        winning_trades=wins,
        losing_trades=losses,
        win_rate=win_rate,
        avg_profit_per_trade=avg,
        strategies=strategies,
        trades_today=n_today,
        pnl_today_usd=round(pnl_today, 2),
        no_trades=n_today == 0,
        summary="\n".join(lines),
    )


# ------------------------------------------------------------ LLM cost
def monthly_projection(month_to_date_usd: float, day: date) -> tuple[float, int, int]:
    """Project the month's cost. Returns (projection USD, days elapsed, days in month)."""
    days_in_month = calendar.monthrange(day.year, day.month)[1]
    elapsed = day.day
    return round(month_to_date_usd / elapsed * days_in_month, 2), elapsed, days_in_month


def cost_report(
    day_entries: Iterable[Mapping[str, Any]],
    month_entries: Iterable[Mapping[str, Any]],
    report_date: date,
    *,
    daily_warning_usd: float,
    daily_critical_usd: float,
    monthly_critical_usd: float,
) -> CostReport:
    """Sum the ledger and apply the thresholds.

    Args:
        day_entries: ``llm_costs`` documents of the report day.
        month_entries: documents from the 1st of the month to the end of the report day.

    Returns:
        the report with ``alerts`` (texts), ``level`` ok|warning|critical. Entries with no
        valid ``cost_usd`` (e.g. a failed call logged without a cost) are counted in
        ``invalid_entries`` and add nothing.
    """
    day_entries = list(day_entries)
    invalid = 0
    daily = 0.0
    by_model: dict[str, float] = {}
    prompt = completion = 0
    for e in day_entries:
        c = _num(e.get("cost_usd"))
        if c is None or c < 0:
            invalid += 1
            continue
        daily += c
        by_model[str(e.get("model"))] = round(by_model.get(str(e.get("model")), 0.0) + c, 6)
        prompt += int(e.get("prompt_tokens") or 0)
        completion += int(e.get("completion_tokens") or 0)
    mtd = sum(c for e in month_entries if (c := _num(e.get("cost_usd"))) is not None and c >= 0)
    daily, mtd = round(daily, 2), round(mtd, 2)
    projection, elapsed, dim = monthly_projection(mtd, report_date)
    alerts: list[str] = []
    level = "ok"
    if daily > daily_critical_usd:
        alerts.append(
            f"🚨 CRITICAL: Daily cost ${daily:.2f} exceeds ${daily_critical_usd:.2f} limit"
            " - LLM switched off"
        )
        level = "critical"
    elif daily > daily_warning_usd:
        alerts.append(
            f"⚠️ WARNING: Daily cost ${daily:.2f} exceeds ${daily_warning_usd:.2f} warning"
        )
        level = "warning"
    if projection > monthly_critical_usd:
        alerts.append(
            f"🚨 CRITICAL: Monthly projection ${projection:.2f} exceeds"
            f" ${monthly_critical_usd:.2f} budget"
        )
        level = "critical"
    return CostReport(
        report_date=report_date.isoformat(),
        daily_cost_usd=daily,
        month_to_date_usd=mtd,
        days_elapsed=elapsed,
        days_in_month=dim,
        monthly_projection_usd=projection,
        calls=len(day_entries) - invalid,
        invalid_entries=invalid,
        prompt_tokens=prompt,
        completion_tokens=completion,
        by_model=by_model,
        session={"total_cost_usd": daily, "calls": float(len(day_entries) - invalid)},
        alerts=alerts,
        level=level,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------ performance
def trade_profit_pct(trade: Mapping[str, Any]) -> float | None:
    """The trade's profit in % (``profit_pct``, ``pnl_percentage`` or ``profit_percent``)."""
    for key in ("profit_pct", "pnl_percentage", "profit_percent"):
        if key in trade:
            return _num(trade[key])
    return None


def performance_metrics(profits_pct: list[float]) -> PerformanceMetrics:
    """Metrics of per-trade profits in % (closing order); see the module docstring."""
    r = np.asarray(profits_pct, dtype=float)
    n = int(r.size)
    if n == 0:
        return PerformanceMetrics(
            trades=0,
            wins=0,
            losses=0,
            win_rate=None,
            avg_profit_pct=None,
            sharpe_ratio=None,
            profit_factor=None,
            max_drawdown_pct=None,
            total_profit_pct=None,
        )
    wins = int((r > 0).sum())
    losses = n - wins
    sharpe = None
    if n >= 2:
        sd = float(r.std(ddof=1))
        if sd > 0:
            sharpe = round(float(r.mean()) / sd * math.sqrt(n), 3)
    gross_loss = float(-r[r < 0].sum())
    pf = round(float(r[r > 0].sum()) / gross_loss, 3) if gross_loss > 0 else None
    equity = np.cumprod(1 + r / 100)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    mdd = float(((peak - equity) / peak).max() * 100)
    return PerformanceMetrics(
        trades=n,
        wins=wins,
        losses=losses,
        win_rate=round(wins / n * 100, 2),
        avg_profit_pct=round(float(r.mean()), 3),
        sharpe_ratio=sharpe,
        profit_factor=pf,
        max_drawdown_pct=round(mdd, 3),
        total_profit_pct=round(float(r.sum()), 3),
    )


def performance_status(
    m: PerformanceMetrics,
    *,
    min_trades: int,
    critical_win_rate_pct: float,
    warning_win_rate_pct: float,
    critical_sharpe: float,
    warning_sharpe: float,
) -> tuple[str, list[str]]:
    """GOOD | WARNING | CRITICAL | INSUFFICIENT_DATA with the reasons (texts)."""
    if m.trades < min_trades:
        return "INSUFFICIENT_DATA", [
            f"insufficient data: {m.trades} closed trades, at least {min_trades} needed"
        ]
    crit, warn = [], []
    wr, sh = m.win_rate or 0.0, m.sharpe_ratio
    if wr < critical_win_rate_pct:
        crit.append(f"win rate {wr:.2f}% below {critical_win_rate_pct:g}%")
    elif wr < warning_win_rate_pct:
        warn.append(f"win rate {wr:.2f}% below {warning_win_rate_pct:g}%")
    if sh is not None:
        if sh < critical_sharpe:
            crit.append(f"Sharpe {sh:.2f} below {critical_sharpe:g}")
        elif sh < warning_sharpe:
            warn.append(f"Sharpe {sh:.2f} below {warning_sharpe:g}")
    if crit:
        return "CRITICAL", crit + warn
    if warn:
        return "WARNING", warn
    return "GOOD", []


def split_by_strategy(trades: list[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-trade profit % grouped by ``strategy`` (trades without a profit are skipped)."""
    out: dict[str, list[float]] = {}
    for t in trades:
        p = trade_profit_pct(t)
        if p is not None:
            out.setdefault(str(t.get("strategy") or "unknown"), []).append(p)
    return out
