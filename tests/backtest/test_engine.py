"""Engine, metrics and strategies on the real BTC hours (no Prefect)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest.engine import check_candles, run_backtest
from backtest.metrics import compute_metrics, equity_curve, trade_list
from backtest.service import backtest_candles, check_range
from backtest.strategies import STRATEGIES, Candles, get_strategy
from core.exceptions import DataQualityError, InsufficientDataError, InvalidInputError
from core.schemas.backtest import CONVENTIONS, BacktestConfig, BacktestMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "backtesting.md"


@pytest.fixture(scope="module")
def candles(btc_hours: pd.DataFrame) -> Candles:
    return Candles.from_frame(btc_hours)


def _synthetic_hours(seed: int, n: int = 5_000) -> pd.DataFrame:
    """A random walk of hourly candles (1 % hourly volatility), reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, 0.001, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.003, n)))
    index = pd.date_range("2020-01-01", periods=n, freq="h", tz="UTC")
    volume = rng.uniform(1.0, 10.0, n)
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


#: Tolerance of the cross-check on the total return, percentage points. Under the matched
#: convention the engines differed by at most 5.7e-7 pp on these series (backtesting.py's
#: whole units at 1e12 cash); a real 0.1 pp error fails by three orders of magnitude.
CROSS_CHECK_TOL_PP = 1e-4


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-068", "TC-ASYNC-069", "TC-ASYNC-070")
@pytest.mark.parametrize("strategy", ["rsi", "macd", "bollinger", "volume"])
@pytest.mark.parametrize(
    "series", ["real-all", "real-first-5000", "real-last-4416", "synthetic-0", "synthetic-1"]
)
def test_same_signals_match_backtesting_py(
    btc_hours: pd.DataFrame, series: str, strategy: str
) -> None:
    """The same signals through our engine and backtesting.py 0.6.6 under the engine's
    convention (a trade still open at the end is marked at the last close, not closed:
    ``finalize_trades=False``): the same closed trades at the same bars and the same total
    return to ``CROSS_CHECK_TOL_PP``."""
    from backtesting import Backtest, Strategy

    frame = {
        "real-all": lambda: btc_hours,
        "real-first-5000": lambda: btc_hours.iloc[:5_000],
        "real-last-4416": lambda: btc_hours.iloc[-4_416:],
        "synthetic-0": lambda: _synthetic_hours(0),
        "synthetic-1": lambda: _synthetic_hours(1),
    }[series]()
    c = Candles.from_frame(frame)
    strat = get_strategy(strategy)
    entries, exits = strat.signals(c, strat.params({}))
    run = run_backtest(c, entries, exits, BacktestConfig(fee_bps=10))
    ours = compute_metrics(run)

    class Replay(Strategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            i = len(self.data) - 1
            if entries[i] and not exits[i] and not self.position:
                self.buy()
            elif exits[i] and not entries[i] and self.position:
                self.position.close()

    data = frame.rename(columns=str.capitalize)[["Open", "High", "Low", "Close", "Volume"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # huge cash: backtesting.py buys whole units only (1e9 left 1e-3 pp of rounding)
        stats = Backtest(data, Replay, cash=1e12, commission=0.001, finalize_trades=False).run()
    theirs = stats["_trades"]
    closed = ~run.trade_open
    assert ours.closed_trades == stats["# Trades"] == len(theirs) > 5
    assert run.trade_entry[closed].tolist() == theirs["EntryBar"].tolist()
    assert run.trade_exit[closed].tolist() == theirs["ExitBar"].tolist()
    assert abs(ours.total_return_pct - stats["Return [%]"]) < CROSS_CHECK_TOL_PP, (
        ours.total_return_pct,
        stats["Return [%]"],
    )


@pytest.mark.tc("TC-ASYNC-066")
def test_fills_fees_and_slippage_by_hand() -> None:
    """Buy at bar 1's open, sell at bar 3's open: return computed by hand."""
    t = np.arange(5).astype("datetime64[h]").astype("datetime64[ns]")
    opens = np.array([100.0, 110.0, 120.0, 130.0, 140.0])
    c = Candles(t, opens, opens + 5, opens - 5, opens + 1, np.ones(5))
    entries = np.array([True, False, False, False, False])
    exits = np.array([False, False, True, False, False])
    cfg = BacktestConfig(initial_capital=1000, fee_bps=10, slippage_bps=20, position_size=0.5)
    run = run_backtest(c, entries, exits, cfg)
    fee, slip = 0.001, 0.002
    buy, sell = 110 * (1 + slip), 130 * (1 - slip)
    units = 500 / (buy * (1 + fee))
    expected = 1000 - 500 + units * sell * (1 - fee)
    assert run.equity[-1] == pytest.approx(expected, rel=1e-12)
    assert list(run.held) == [0, 1, 1, 0, 0]
    (trade,) = trade_list(run)
    assert (trade.entry_price, trade.exit_price, trade.bars_held) == pytest.approx((buy, sell, 2))
    assert trade.pnl == pytest.approx(expected - 1000)
    # long/short: the exit also opens a short, closed by nothing -> open at the end
    run_ls = run_backtest(c, entries, exits, cfg.model_copy(update={"allow_short": True}))
    assert list(run_ls.held) == [0, 1, 1, -1, -1]
    assert [tr.side for tr in trade_list(run_ls)] == ["long", "short"]
    assert trade_list(run_ls)[-1].is_open


def _bar_by_bar(
    c: Candles, entries: np.ndarray, exits: np.ndarray, cfg: BacktestConfig
) -> tuple[list[int], list[float], list[float]]:
    """The engine's rules (module docstring of backtest.engine) as a plain loop over bars.

    Returns:
        (position held in each bar, equity at each close, profit of each trade).
    """
    fee, slip = cfg.fee_bps / 1e4, cfg.slippage_bps / 1e4
    q = cfg.position_size / (1 + fee)
    equity, pos, start_equity, entry = cfg.initial_capital, 0, 0.0, 0.0
    wanted, held, curve, pnl = 0, [], [], []
    for t in range(len(c.close)):
        if wanted != pos:  # decided at the previous close, filled at this open
            if pos:
                ratio = c.open[t] * (1 - pos * slip) / entry
                equity = start_equity * (1 - q * fee + pos * q * (ratio - 1) - fee * q * ratio)
                pnl.append(equity - start_equity)
            pos = wanted
            if pos:
                start_equity, entry = equity, c.open[t] * (1 + pos * slip)
        held.append(pos)
        mark = equity
        if pos:
            mark = start_equity * (1 - q * fee + pos * q * (c.close[t] / entry - 1))
        curve.append(mark)
        if entries[t] and not exits[t]:
            wanted = 1
        elif exits[t] and not entries[t]:
            wanted = -1 if cfg.allow_short else 0
    if pos:
        pnl.append(curve[-1] - start_equity)
    return held, curve, pnl


@pytest.mark.tc("TC-ASYNC-066")
@pytest.mark.parametrize("allow_short", [False, True])
def test_engine_equals_a_bar_by_bar_loop(candles: Candles, allow_short: bool) -> None:
    """Random signals on 3,000 real hours: positions, equity and trade profits as the loop's."""
    rng = np.random.default_rng(7)
    c = candles.slice(0, 3_000)
    entries, exits = rng.random(3_000) < 0.03, rng.random(3_000) < 0.03
    entries[-1] = True  # a signal on the last bar is never filled
    cfg = BacktestConfig(fee_bps=10, slippage_bps=5, position_size=0.8, allow_short=allow_short)
    run = run_backtest(c, entries, exits, cfg)
    held, curve, pnl = _bar_by_bar(c, entries, exits, cfg)
    assert len(pnl) > 40
    assert run.held.tolist() == held
    np.testing.assert_allclose(run.equity, curve, rtol=1e-12)
    np.testing.assert_allclose(run.trade_pnl, pnl, rtol=1e-9)


@pytest.mark.tc("TC-ASYNC-066")
def test_metrics_conventions(candles: Candles) -> None:
    strategy = get_strategy("rsi")
    run = run_backtest(candles, *strategy.signals(candles, strategy.params({})))
    m = compute_metrics(run)
    curve = equity_curve(run)
    days = pd.date_range("2017-07-01", "2019-10-17", freq="D")
    assert len(curve) == len(days)
    daily = np.array([p.equity for p in curve])
    r = np.diff(np.concatenate(([10_000.0], daily))) / np.concatenate(([10_000.0], daily[:-1]))
    assert m.sharpe_ratio == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(365))
    trades = [t for t in trade_list(run) if not t.is_open]
    assert m.closed_trades == len(trades)
    assert m.win_rate_pct == pytest.approx(100 * sum(t.pnl > 0 for t in trades) / len(trades))
    gains = sum(t.pnl for t in trades if t.pnl > 0)
    losses = -sum(t.pnl for t in trades if t.pnl < 0)
    assert m.profit_factor == pytest.approx(gains / losses)
    assert m.exposure_pct == pytest.approx(100 * np.mean(run.held != 0))
    assert m.max_drawdown_pct <= min(p.drawdown_pct for p in curve) + 1e-9


@pytest.mark.tc("TC-ASYNC-066")
def test_every_metric_and_convention_is_documented() -> None:
    text = DOCS.read_text()
    for name in [*BacktestMetrics.model_fields, *CONVENTIONS]:
        assert re.search(rf"`{name}`", text), f"{name} is not documented in {DOCS.name}"


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-068", "TC-ASYNC-069", "TC-ASYNC-070")
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_trade_on_real_data(btc_six_months: pd.DataFrame, name: str) -> None:
    result = backtest_candles(btc_six_months, name, {}, symbol="BTCUSD", timeframe="1h")
    assert result.metrics.total_trades > 0
    assert len(result.equity_curve) == 184
    assert result.parameters == get_strategy(name).params({}).model_dump()
    assert get_strategy(name).space_size() >= 48


@pytest.mark.tc("TC-ASYNC-083")
def test_bad_parameters_and_data_are_rejected(btc_six_months: pd.DataFrame) -> None:
    with pytest.raises(InvalidInputError, match=r"oversold \(80.0\) must be below overbought"):
        get_strategy("rsi").params({"oversold": 80, "overbought": 70})
    with pytest.raises(
        InvalidInputError, match="rsi_period: Input should be greater than or equal to 2"
    ):
        get_strategy("rsi").params({"rsi_period": 1})
    with pytest.raises(InvalidInputError, match="unknown parameter; allowed: fast, slow, signal"):
        get_strategy("macd").params({"period": 3})
    with pytest.raises(InvalidInputError, match="Unknown strategy 'foo': use one of rsi, macd"):
        get_strategy("foo")
    bad = btc_six_months.copy()
    bad.iloc[10, bad.columns.get_loc("close")] = np.nan
    with pytest.raises(DataQualityError, match="missing \\(NaN\\)"):
        check_candles(Candles.from_frame(bad))
    with pytest.raises(InvalidInputError, match="sorted in ascending order"):
        check_candles(Candles.from_frame(btc_six_months.iloc[::-1]))
    start, end = btc_six_months.index[0], btc_six_months.index[0] + pd.Timedelta(days=400)
    with pytest.raises(InsufficientDataError, match="BTCUSD 1h .*expected 9600 bars, found 4416"):
        check_range(btc_six_months, "BTCUSD", "1h", start, end)


@pytest.mark.tc("TC-ASYNC-072")
@pytest.mark.parametrize(("timeframe", "rule"), [("4h", "4h"), ("1d", "1D")])
def test_coarser_timeframes_from_real_hours(
    btc_six_months: pd.DataFrame, timeframe: str, rule: str
) -> None:
    bars = btc_six_months.resample(rule, label="left", closed="left").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    start = bars.index[0].to_pydatetime()
    end = start + pd.Timedelta(days=184)
    frame = check_range(bars, "BTCUSD", timeframe, start, end)
    result = backtest_candles(frame, "rsi", {"rsi_period": 6}, symbol="BTCUSD", timeframe=timeframe)
    assert result.bars == 184 * 24 // int(pd.Timedelta(rule).total_seconds() // 3600)
    assert len(result.equity_curve) == 184
    assert result.metrics.total_trades > 0


@pytest.mark.tc("TC-ASYNC-072", "TC-ASYNC-068")
@pytest.mark.parametrize(
    ("timeframe", "freq", "per_day"), [("5m", "5min", 288), ("15m", "15min", 96)]
)
def test_intraday_timeframes(timeframe: str, freq: str, per_day: int) -> None:
    """No real 5m/15m data exists here: a seeded random walk stands in as input."""
    rng = np.random.default_rng(3)
    n = per_day * 30
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    opens = np.concatenate(([close[0]], close[:-1]))
    idx = pd.date_range("2024-05-22", periods=n, freq=freq, tz="UTC")
    frame = pd.DataFrame(
        {
            "open": opens,
            "high": np.maximum(opens, close) * 1.0005,
            "low": np.minimum(opens, close) * 0.9995,
            "close": close,
            "volume": rng.lognormal(2, 1, n),
        },
        index=idx,
    )
    result = backtest_candles(frame, "macd", {}, symbol="BTCUSDT", timeframe=timeframe)
    assert len(result.equity_curve) == 30
    assert result.metrics.total_trades > 10
    assert result.trades[0].entry_time > idx[33]  # MACD warm-up, next-bar fill
