"""Vectorised backtest engine: entry/exit signals -> positions, trades and equity.

Rules (also in docs/backtesting.md):

* a signal seen at bar t's close is filled at bar t+1's open; a signal on the last bar
  is never filled;
* long-only by default: an entry opens a long, an exit closes it. With ``allow_short`` an
  exit also opens a short and an entry closes it (always in the market after the first
  signal);
* each trade commits ``position_size`` x equity, fee included; ``fee_bps`` is charged on
  the notional of every fill and ``slippage_bps`` moves each fill against the trade;
* equity is marked at every bar's close; a trade still open at the end is marked at the
  last close (no exit fee) and reported as open.

No loop runs over bars, and most work is per signal or per trade, not per bar: positions
change only where the signal target changes, each trade's equity multiplier comes from its
fills (cumulative product across trades), and within a trade equity is linear in the close.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backtest.strategies import Candles
from core.exceptions import DataQualityError, InvalidInputError
from core.schemas.backtest import BacktestConfig


@dataclass(frozen=True)
class EngineRun:
    """Raw outcome of one backtest, as arrays (converted to reports by backtest.metrics).

    Attributes:
        held: position held during each bar (+1 long, -1 short, 0 flat).
        equity: equity at each bar's close.
        trade_entry, trade_exit: bar index of each trade's entry fill and exit fill
            (``len(candles)`` for a trade still open at the end).
        trade_side: +1 long, -1 short.
        entry_price, exit_price: fill prices after slippage (exit: last close if open).
        trade_pnl: profit in quote currency after fees; trade_return_pct: on committed capital.
    """

    candles: Candles
    config: BacktestConfig
    held: np.ndarray
    equity: np.ndarray
    trade_entry: np.ndarray
    trade_exit: np.ndarray
    trade_side: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    trade_pnl: np.ndarray
    trade_return_pct: np.ndarray

    @property
    def trade_open(self) -> np.ndarray:
        """True for a trade still open at the end of the data."""
        return self.trade_exit >= len(self.candles)


def check_candles(candles: Candles) -> None:
    """Reject candles the engine cannot trade on (messages in backtesting.py's style).

    Raises:
        InvalidInputError: too few bars, arrays of different lengths, unsorted time.
        DataQualityError: NaN/Inf or non-positive prices.
    """
    n = len(candles.close)
    if n < 2:
        raise InvalidInputError(f"`data` must have at least 2 bars to backtest (got {n})")
    arrays = {f: getattr(candles, f) for f in ("time", "open", "high", "low", "close", "volume")}
    lengths = {f: len(a) for f, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InvalidInputError(f"`data` columns must have the same length (got {lengths})")
    for field in ("open", "high", "low", "close"):
        prices = getattr(candles, field)
        lowest, highest = prices.min(), prices.max()  # NaN propagates: one pass each, no copy
        if not (np.isfinite(lowest) and np.isfinite(highest)):
            raise DataQualityError(
                "Some OHLC values are missing (NaN) or infinite. Drop those bars or fill them "
                "in before backtesting"
            )
        if lowest <= 0:
            raise DataQualityError(
                "OHLC prices must be positive; remove bars with zero or negative prices"
            )
    if not (candles.time[1:] > candles.time[:-1]).all():
        raise InvalidInputError(
            "`data` index must be sorted in ascending order with no duplicate bars; sort it first"
        )


def _check_signals(entries: np.ndarray, exits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    entries = np.asarray(entries)
    exits = np.asarray(exits)
    for name, arr in (("entries", entries), ("exits", exits)):
        if arr.shape != (n,):
            raise InvalidInputError(
                f"`{name}` must be a 1-D array of {n} booleans (got {arr.shape})"
            )
    return entries.astype(bool), exits.astype(bool)


def run_backtest(
    candles: Candles,
    entries: np.ndarray,
    exits: np.ndarray,
    config: BacktestConfig | None = None,
    *,
    checked: bool = False,
) -> EngineRun:
    """Simulate trading ``entries``/``exits`` on ``candles``.

    Args:
        entries, exits: boolean arrays, one per bar (a bar with both is ignored).
        config: capital, fees, slippage, sizing, direction (default: BacktestConfig()).
        checked: skip :func:`check_candles` (the optimiser checks the candles once).

    Returns:
        an :class:`EngineRun` with per-bar equity and the trades.

    Raises:
        InvalidInputError, DataQualityError: bad candles or signals (see :func:`check_candles`).
    """
    config = config or BacktestConfig()
    if not checked:
        check_candles(candles)
    n = len(candles.close)
    entries, exits = _check_signals(entries, exits, n)

    # The position only changes at signal bars, so work on the signals, not on every bar:
    # a bar with exactly one of entry/exit sets the target (+1 entry; exit: 0, or -1 with
    # allow_short); the target changes where it differs from the previous signal's.
    signal_bars = np.flatnonzero(entries != exits)
    target = entries[signal_bars].astype(np.int8)
    if config.allow_short:
        target = 2 * target - 1
    changed = target != np.concatenate(([0], target[:-1])).astype(np.int8)
    fills = signal_bars[changed] + 1  # filled at the next bar's open
    keep = fills < n  # a signal on the last bar is never filled
    starts = np.concatenate(([0], fills[keep]))  # segments of constant position
    ends = np.concatenate((starts[1:], [n]))
    side = np.concatenate(([0], target[changed][keep])).astype(np.float64)
    lengths = ends - starts
    held = np.repeat(side.astype(np.int8), lengths)

    fee = config.fee_bps / 1e4
    slip = config.slippage_bps / 1e4
    q = config.position_size / (1.0 + fee)  # notional / equity, so that notional + fee = size
    entry_px = candles.open[starts] * (1.0 + side * slip)
    closed = ends < n
    exit_px = np.where(
        closed, candles.open[np.minimum(ends, n - 1)] * (1.0 - side * slip), candles.close[-1]
    )
    ratio_exit = exit_px / entry_px
    # equity multiplier of each segment (flat segments: 1)
    mult = (
        1.0 - q * fee + side * q * (ratio_exit - 1.0) - np.where(closed, fee * q * ratio_exit, 0.0)
    )
    mult = np.where(side != 0, mult, 1.0)
    seg_start_equity = config.initial_capital * np.concatenate(([1.0], np.cumprod(mult[:-1])))

    # inside a segment equity is linear in the close: E0 * (1 - q*fee + side*q*(close/entry - 1))
    # = level + slope * close (flat segments: level E0, slope 0)
    level = seg_start_equity * (1.0 - q * fee - side * q)
    level = np.where(side != 0, level, seg_start_equity)
    slope = seg_start_equity * side * q / entry_px
    equity = np.repeat(slope, lengths)
    equity *= candles.close
    equity += np.repeat(level, lengths)

    trades = side != 0
    pnl = seg_start_equity[trades] * (mult[trades] - 1.0)
    return EngineRun(
        candles=candles,
        config=config,
        held=held,
        equity=equity,
        trade_entry=starts[trades],
        trade_exit=ends[trades],
        trade_side=side[trades].astype(np.int8),
        entry_price=entry_px[trades],
        exit_price=exit_px[trades],
        trade_pnl=pnl,
        trade_return_pct=(mult[trades] - 1.0) / config.position_size * 100.0,
    )
