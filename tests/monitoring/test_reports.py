"""Pure report arithmetic: win rate, cost projection and thresholds, performance metrics."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest

from core.settings import load_settings
from integrations.reports import (
    cost_report,
    monthly_projection,
    performance_metrics,
    performance_status,
    portfolio_report,
)

S = load_settings()
THRESHOLDS = dict(
    daily_warning_usd=S.cost_daily_warning_usd,
    daily_critical_usd=S.cost_daily_critical_usd,
    monthly_critical_usd=S.cost_monthly_critical_usd,
)
PERF = dict(
    min_trades=10,
    critical_win_rate_pct=55,
    warning_win_rate_pct=70,
    critical_sharpe=1.0,
    warning_sharpe=2.0,
)


@pytest.mark.tc("TC-ASYNC-036", "TC-ASYNC-046")
def test_portfolio_win_rate_and_return() -> None:
    r = portfolio_report(
        {
            "balance": 10542.75,
            "initial_balance": 10000,
            "total_trades": 47,
            "winning_trades": 32,
            "losing_trades": 15,
            "average_profit_per_trade": 1.87,
            "strategy_breakdown": {
                "rsi": {"trades": 20, "wins": 14},
                "macd": {"trades": 15, "win_rate": 66.7},
            },
        },
        [{"pnl_usd": 12.5}, {"pnl_usd": -2.5}],
        date(2026, 11, 27),
    )
    assert r.win_rate == 68.09
    assert r.total_return_pct == pytest.approx(5.43, abs=0.005)  # (10542.75-10000)/10000
    assert r.strategies["rsi"].win_rate == 70.0 and r.strategies["macd"].win_rate == 66.7
    assert r.trades_today == 2 and r.pnl_today_usd == 10.0 and not r.no_trades
    empty = portfolio_report({"balance": 100.0, "total_trades": 0}, [], date(2026, 11, 28))
    assert (
        empty.no_trades
        and empty.win_rate is None
        and "No trades closed on 2026-11-28" in empty.summary
    )


def _ledger(per_day: float, days: int, month: int = 11) -> list[dict]:
    return [
        {
            "cost_usd": per_day,
            "model": "gpt-4o-mini",
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "created_day": d,
        }
        for d in range(1, days + 1)
    ]


@pytest.mark.tc("TC-ASYNC-049")
def test_monthly_projection_arithmetic() -> None:
    # $1.87 every day to the 15th of a 30-day month: 28.05 / 15 * 30 = 56.10
    assert monthly_projection(28.05, date(2026, 11, 15)) == (56.10, 15, 30)
    # 31-day month, $10 by the 10th: 10 / 10 * 31
    assert monthly_projection(10.0, date(2026, 12, 10)) == (31.0, 10, 31)
    # February of a leap year
    assert monthly_projection(5.8, date(2028, 2, 29))[0] == 5.8


@pytest.mark.tc("TC-ASYNC-037", "TC-ASYNC-038", "TC-ASYNC-039", "TC-ASYNC-048")
def test_cost_thresholds_and_texts() -> None:
    ok = cost_report(_ledger(1.87, 1), _ledger(1.87, 15), date(2026, 11, 15), **THRESHOLDS)
    assert (ok.daily_cost_usd, ok.monthly_projection_usd, ok.alerts, ok.level) == (
        1.87,
        56.10,
        [],
        "ok",
    )
    assert ok.session["total_cost_usd"] == 1.87 and ok.prompt_tokens == 1000

    warn_day = [{"cost_usd": 1.17, "model": "a"}, {"cost_usd": 1.17, "model": "b"}]
    warn = cost_report(warn_day, warn_day, date(2026, 11, 28), **THRESHOLDS)
    assert warn.alerts == ["⚠️ WARNING: Daily cost $2.34 exceeds $2.00 warning"]
    assert warn.level == "warning" and warn.by_model == {"a": 1.17, "b": 1.17}

    crit = cost_report([{"cost_usd": 6.5}], _ledger(6.5, 30), date(2026, 11, 30), **THRESHOLDS)
    assert crit.level == "critical" and len(crit.alerts) == 2
    assert "CRITICAL: Daily cost $6.50 exceeds $5.00" in crit.alerts[0]
    assert "Monthly projection $195.00 exceeds $100.00" in crit.alerts[1]

    # a failed call logged without a cost counts as invalid, not as money
    bad = cost_report(
        [{"cost_usd": None}, {"cost_usd": "n/a"}, {"cost_usd": 0.5}],
        [],
        date(2026, 11, 1),
        **THRESHOLDS,
    )
    assert bad.invalid_entries == 2 and bad.calls == 1 and bad.daily_cost_usd == 0.5


@pytest.mark.tc("TC-ASYNC-040")
def test_performance_metrics_by_hand() -> None:
    r = [2.0, -1.0, 3.0, -2.0]
    m = performance_metrics(r)
    sd = np.std(r, ddof=1)
    assert m.win_rate == 50.0 and m.avg_profit_pct == 0.5
    assert m.sharpe_ratio == pytest.approx(0.5 / sd * math.sqrt(4), abs=1e-3)
    assert m.profit_factor == pytest.approx(5 / 3, abs=1e-3)
    # equity 1.02, 1.0098, 1.040094, 1.01929212: worst fall from 1.040094 -> 2.0 %
    assert m.max_drawdown_pct == pytest.approx(2.0, abs=1e-3)
    assert performance_metrics([]).win_rate is None


@pytest.mark.tc("TC-ASYNC-040", "TC-ASYNC-041", "TC-ASYNC-050")
def test_performance_status_thresholds() -> None:
    good = performance_metrics(
        [2.5, 3.1, -1.0, 2.8, 3.5, 2.0, 3.0, 2.2, -0.5, 2.9, 3.3, 2.6, 3.0, 2.4]
    )
    assert good.win_rate >= 70 and good.sharpe_ratio >= 2.1
    assert performance_status(good, **PERF) == ("GOOD", [])
    poor = performance_metrics([1.0] * 13 + [-1.0] * 12)  # 52 % wins, Sharpe 0.2
    status, reasons = performance_status(poor, **PERF)
    assert status == "CRITICAL" and "win rate 52.00% below 55%" in reasons[0]
    warn = performance_metrics([1.0] * 6 + [-0.2] * 4)  # 60 % wins
    assert performance_status(warn, **PERF)[0] == "WARNING"
    few = performance_metrics([1.0, -1.0, 2.0])
    assert performance_status(few, **PERF) == (
        "INSUFFICIENT_DATA",
        ["insufficient data: 3 closed trades, at least 10 needed"],
    )


@pytest.mark.tc("TC-ASYNC-040")
def test_closed_trades_from_the_store(store) -> None:  # noqa: ANN001
    from datetime import UTC, datetime, timedelta

    from integrations.store import C
    from tasks.monitoring import fetch_closed_trades

    now = datetime(2026, 11, 28, 1, tzinfo=UTC)
    store.col(C.TRADES).insert_many(
        [
            {
                "trade_id": f"t{i}",
                "strategy": "rsi",
                "profit_pct": 1.0,
                "closed_at": now - timedelta(days=d),
            }
            for i, d in enumerate([0.5, 3, 6.9, 8])
        ]
    )
    got = fetch_closed_trades.fn("store", now - timedelta(days=7), now, store)
    assert [t["trade_id"] for t in got] == ["t2", "t1", "t0"]  # oldest first, day 8 left out
