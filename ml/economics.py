"""What a model's signals would have earned: P(up) per bar -> long/flat signals -> our own
backtest engine (``backtest.engine``, fees and slippage) beside buy-and-hold and the
baselines' signals, each figure with a circular block-bootstrap standard error.

Signals: at bar t's close the strategy wants to be long when P(up) > 0.5 and flat otherwise
(no prediction: flat); the engine fills the change at bar t+1's open, so a position taken on
bar t's prediction earns bar t+1's move, the move the prediction is about. Buy-and-hold is
long from the second bar's open (the same first fill as any signal) to the end.

Standard errors: the hourly equity returns of every strategy are resampled with the SAME
circular blocks of ``block_bars`` bars (default 24: a day keeps the intraday dependence of
volatility and of the signals' runs), ``bootstrap_samples`` times, with a seed derived from
the prices (the same data give the same figures). Each resampled path yields a total return,
a Sharpe ratio (days: consecutive runs of ``bars_per_day`` bars), a max drawdown and a count
of positions opened; a figure's SE is the std (ddof=1) of its resampled values. Because the
blocks are shared, the difference of two strategies' returns is paired, and its SE is the std
of the resampled differences.

Pure layer (no Prefect).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backtest.engine import EngineRun, run_backtest
from backtest.metrics import compute_metrics, equity_curve
from backtest.strategies import Candles
from core.exceptions import InvalidInputError
from core.schemas.backtest import BacktestConfig
from core.schemas.economics import (
    EconomicComparison,
    EconomicEvaluation,
    EquityCurve,
    Figure,
    StrategyEconomics,
)

#: The candidate's name in an evaluation; buy-and-hold is always added.
MODEL = "model"
BUY_AND_HOLD = "buy_and_hold"
#: Resamples per chunk (bounds memory: chunk x bars floats per array).
_CHUNK = 200


@dataclass(frozen=True)
class EconomicsConfig:
    """Costs and bootstrap of an economic evaluation (from the settings ``BOTAI_ECONOMICS_*``)."""

    fee_bps: float = 10.0
    slippage_bps: float = 0.0
    initial_capital: float = 10_000.0
    block_bars: int = 24
    bootstrap_samples: int = 1000
    bars_per_day: int = 24

    def backtest_config(self, *, costs: bool = True) -> BacktestConfig:
        """The engine's config: long-only, whole equity per trade (``costs=False``: no fee
        and no slippage)."""
        return BacktestConfig(
            initial_capital=self.initial_capital,
            fee_bps=self.fee_bps if costs else 0.0,
            slippage_bps=self.slippage_bps if costs else 0.0,
        )


def long_flat_signals(p_up: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Engine signals of "long when P(up) > threshold, flat otherwise" (NaN: flat).

    Returns:
        ``(entries, exits)``: exactly one of them is True on every bar.
    """
    p = np.asarray(p_up, dtype=np.float64)
    entries = p > threshold  # NaN compares False: flat
    return entries, ~entries


def seed_from_prices(close: np.ndarray) -> int:
    """A bootstrap seed derived from the prices: the same bars, the same resamples.

    Returns:
        an int in [0, 2**32).
    """
    data = np.ascontiguousarray(np.asarray(close, dtype=np.float64)).tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big")


def circular_block_indices(
    n: int, block: int, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``samples`` circular block-bootstrap resamples of ``n`` bars.

    Each resample joins blocks of ``block`` consecutive bars starting at uniform random
    positions, wrapping past the end to the start, cut to ``n`` bars.

    Returns:
        an int array of shape ``(samples, n)``.
    """
    block = max(1, min(block, n))
    blocks = -(-n // block)
    starts = rng.integers(0, n, size=(samples, blocks))
    idx = (starts[:, :, None] + np.arange(block)) % n
    return idx.reshape(samples, blocks * block)[:, :n]


def bar_returns(run: EngineRun) -> np.ndarray:
    """Return of each bar: equity at its close over the previous close's (the first bar's
    over the initial capital)."""
    prev = np.concatenate(([run.config.initial_capital], run.equity[:-1]))
    return run.equity / prev - 1.0


def entries_opened(run: EngineRun) -> np.ndarray:
    """1.0 on each bar a position is opened (held now, flat on the bar before), else 0."""
    held = run.held != 0
    return (held & ~np.concatenate(([False], held[:-1]))).astype(np.float64)


def path_statistics(
    returns: np.ndarray, bars_per_day: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Total return %, Sharpe and max drawdown % of each row of bar returns.

    Days are consecutive runs of ``bars_per_day`` bars (the last one possibly shorter);
    Sharpe = mean / std (ddof=1) of daily returns x sqrt(365) (0 without variance).

    Returns:
        three arrays of ``len(returns)``.
    """
    growth = np.cumprod(1.0 + returns, axis=1)
    total = (growth[:, -1] - 1.0) * 100.0
    n = returns.shape[1]
    ends = np.unique(np.concatenate((np.arange(bars_per_day - 1, n, bars_per_day), [n - 1])))
    daily = np.concatenate((np.ones((len(growth), 1)), growth[:, ends]), axis=1)
    day_ret = daily[:, 1:] / daily[:, :-1] - 1.0
    if day_ret.shape[1] >= 2:
        std = day_ret.std(axis=1, ddof=1)
        mean = day_ret.mean(axis=1)
        safe = np.where(std > 0, std, 1.0)
        sharpe = np.where(std > 0, mean / safe * math.sqrt(365.0), 0.0)
    else:
        sharpe = np.zeros(len(growth))
    peak = np.maximum(np.maximum.accumulate(growth, axis=1), 1.0)
    drawdown = np.minimum((growth / peak).min(axis=1) - 1.0, 0.0) * 100.0
    return total, sharpe, drawdown


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _curve(name: str, run: EngineRun) -> EquityCurve:
    points = equity_curve(run)
    return EquityCurve(name=name, days=[p.day for p in points], equity=[p.equity for p in points])


def evaluate_economics(
    candles: pd.DataFrame,
    p_up: Mapping[str, np.ndarray],
    config: EconomicsConfig | None = None,
    *,
    model_ids: Mapping[str, str] | None = None,
) -> EconomicEvaluation:
    """Trade each strategy's P(up) on ``candles`` through the engine, beside buy-and-hold.

    Args:
        candles: the bars to trade (columns open..volume, UTC index, oldest first).
        p_up: strategy name -> P(up) at each bar's close (NaN: no prediction, flat); it must
            hold :data:`MODEL`, the candidate every other strategy is compared with.
        model_ids: strategy name -> model id, shown in the comparisons (deployed model).

    Returns:
        the :class:`EconomicEvaluation`: figures with SEs per strategy (model first, then
        buy-and-hold, then the others in order), the candidate against each other one
        (paired), daily equity curves.

    Raises:
        InvalidInputError: no :data:`MODEL` entry, or an array not one value per bar.
        DataQualityError: bad candles (see ``backtest.engine.check_candles``).
    """
    config = config or EconomicsConfig()
    if MODEL not in p_up:
        raise InvalidInputError(f"p_up must hold the candidate's probabilities as {MODEL!r}")
    bars = Candles.from_frame(candles)
    n = len(bars)
    names = [MODEL, BUY_AND_HOLD, *[k for k in p_up if k not in (MODEL, BUY_AND_HOLD)]]
    signals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        if name == BUY_AND_HOLD:
            signals[name] = (np.ones(n, dtype=bool), np.zeros(n, dtype=bool))
            continue
        p = np.asarray(p_up[name], dtype=np.float64)
        if p.shape != (n,):
            raise InvalidInputError(
                f"p_up[{name!r}] must hold one probability per bar ({n}), got shape {p.shape}"
            )
        signals[name] = long_flat_signals(p)
    runs = {k: run_backtest(bars, *s, config.backtest_config()) for k, s in signals.items()}
    before = {
        k: run_backtest(bars, *s, config.backtest_config(costs=False), checked=True)
        for k, s in signals.items()
    }
    seed = seed_from_prices(bars.close)
    boot = _bootstrap(runs, config, seed)
    strategies = []
    for name, run in runs.items():
        m = compute_metrics(run)
        totals, sharpes, drawdowns, trades = boot[name]
        strategies.append(
            StrategyEconomics(
                name=name,
                total_return_pct=Figure(value=m.total_return_pct, standard_error=_se(totals)),
                sharpe_ratio=Figure(value=m.sharpe_ratio, standard_error=_se(sharpes)),
                max_drawdown_pct=Figure(value=m.max_drawdown_pct, standard_error=_se(drawdowns)),
                turnover_trades=Figure(value=m.total_trades, standard_error=_se(trades)),
                exposure_pct=m.exposure_pct,
                return_before_costs_pct=compute_metrics(before[name]).total_return_pct,
            )
        )
    by_name = {s.name: s for s in strategies}
    model_return = by_name[MODEL].total_return_pct.value
    comparisons = []
    for name in names[1:]:
        diff = model_return - by_name[name].total_return_pct.value
        se = _se(boot[MODEL][0] - boot[name][0])
        comparisons.append(
            EconomicComparison(
                name=name,
                model_id=(model_ids or {}).get(name),
                total_return_pct=by_name[name].total_return_pct.value,
                difference_pct=diff,
                standard_error=se,
                beaten=bool(diff > se and diff > 0),
            )
        )
    index = pd.DatetimeIndex(candles.index)
    return EconomicEvaluation(
        start=index[0].to_pydatetime(),
        end=index[-1].to_pydatetime(),
        bars=n,
        initial_capital=config.initial_capital,
        fee_bps=config.fee_bps,
        slippage_bps=config.slippage_bps,
        block_bars=config.block_bars,
        bootstrap_samples=config.bootstrap_samples,
        seed=seed,
        strategies=strategies,
        comparisons=comparisons,
        equity_curves=[_curve(k, r) for k, r in runs.items()],
    )


def _bootstrap(
    runs: Mapping[str, EngineRun], config: EconomicsConfig, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Resampled (total return %, Sharpe, max drawdown %, positions opened) per strategy,
    every strategy resampled with the same blocks (paired)."""
    rng = np.random.default_rng(seed)
    series = {k: (bar_returns(r), entries_opened(r)) for k, r in runs.items()}
    n = len(next(iter(runs.values())).equity)
    out: dict[str, list[list[np.ndarray]]] = {k: [[], [], [], []] for k in runs}
    left = config.bootstrap_samples
    while left > 0:
        idx = circular_block_indices(n, config.block_bars, min(_CHUNK, left), rng)
        left -= len(idx)
        for name, (returns, opened) in series.items():
            total, sharpe, drawdown = path_statistics(returns[idx], config.bars_per_day)
            opened_count = opened[idx].sum(axis=1)
            for acc, values in zip(out[name], (total, sharpe, drawdown, opened_count), strict=True):
                acc.append(values)
    return {k: tuple(np.concatenate(v) for v in lists) for k, lists in out.items()}  # type: ignore[misc]


def economics_markdown(evaluation: EconomicEvaluation, title: str) -> str:
    """A markdown table of every strategy's figures (value ± SE), the paired comparisons and
    the definitions behind them.

    Returns:
        the markdown text (the chart is added by the caller).
    """
    rows = []
    for s in evaluation.strategies:
        cells = [
            f"{f.value:+.2f} ± {f.standard_error:.2f}"
            for f in (s.total_return_pct, s.sharpe_ratio, s.max_drawdown_pct)
        ]
        trades = f"{s.turnover_trades.value:.0f} ± {s.turnover_trades.standard_error:.1f}"
        rows.append(
            f"| {s.name.replace('_', ' ')} | {' | '.join(cells)} | {trades} | "
            f"{s.return_before_costs_pct:+.2f} |"
        )
    comparisons = "\n".join(
        f"| {c.name.replace('_', ' ')}{f' {c.model_id}' if c.model_id else ''} | "
        f"{c.difference_pct:+.2f} | {c.standard_error:.2f} | {'yes' if c.beaten else 'no'} |"
        for c in evaluation.comparisons
    )
    definitions = "\n".join(f"- **{k}**: {v}" for k, v in evaluation.definitions.items())
    return (
        f"# {title}\n\n"
        f"{evaluation.bars:,} held-out bars {evaluation.start:%Y-%m-%d %H:%M} .. "
        f"{evaluation.end:%Y-%m-%d %H:%M} UTC; fee {evaluation.fee_bps:g} bps and slippage "
        f"{evaluation.slippage_bps:g} bps per fill; SE: circular block bootstrap, blocks of "
        f"{evaluation.block_bars} bars, {evaluation.bootstrap_samples} resamples, seed "
        f"{evaluation.seed}\n\n"
        "| strategy | total return % | Sharpe | max drawdown % | trades | return before "
        "costs % |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        "## The model's return after fees against each comparator (paired)\n\n"
        "| comparator | difference (points) | SE | beaten |\n| --- | --- | --- | --- |\n"
        f"{comparisons}\n\n## Definitions\n{definitions}\n"
    )
