"""Trading strategies: validated parameters -> entry/exit signals on candles.

A strategy looks at bar ``t``'s close and says "enter" or "exit"; the engine fills the
order at bar ``t + 1``'s open. Each strategy has a pydantic parameter model (the error
names the parameter and the fix) and a default parameter space for optimisation.

Signals are evaluated on plain numpy arrays (``Candles``); indicators are memoised in an
optional ``cache`` dict so an optimisation over many parameter sets computes each
indicator once per distinct period.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from backtest import indicators as ind
from core.echo import echo
from core.exceptions import InvalidInputError
from core.schemas.strategies import (
    BollingerParams,
    MACDParams,
    RSIParams,
    StrategyParams,
    VolumeParams,
    validate_strategy_params,
)

if TYPE_CHECKING:
    import pandas as pd

Signals = tuple[np.ndarray, np.ndarray]
Cache = dict[tuple[Any, ...], np.ndarray]


@dataclass(frozen=True)
class Candles:
    """OHLCV as float arrays plus bar open times (``datetime64[ns]``, UTC), oldest first."""

    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Candles:
        """Build from a frame with columns open, high, low, close, volume and a DatetimeIndex."""
        import pandas as pd  # only here: the engine itself runs on numpy alone

        # a tz-aware index holds UTC nanoseconds already; a naive one is taken as UTC
        idx = pd.DatetimeIndex(frame.index).as_unit("ns")
        return cls(
            time=idx.asi8.view("datetime64[ns]"),
            **{
                c: frame[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume")
            },
        )

    def __len__(self) -> int:
        return len(self.close)

    @cached_property
    def day_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """UTC calendar days from the first bar's to the last bar's, and each day's closing bar.

        Computed once per candles (an optimisation reuses it for every parameter set).

        Returns:
            ``(days, bar)``: ``datetime64[D]`` days and, for each, the index of its last bar
            (a day without bars gets the previous day's last bar).
        """
        first, last = self.time[[0, -1]].astype("datetime64[D]")
        days = np.arange(first, last + np.timedelta64(1, "D"))
        next_midnight = (days + np.timedelta64(1, "D")).astype(self.time.dtype)
        return days, np.searchsorted(self.time, next_midnight) - 1

    def slice(self, start: int, stop: int) -> Candles:
        """Bars ``start`` to ``stop - 1``."""
        return Candles(
            *(
                getattr(self, f)[start:stop]
                for f in ("time", "open", "high", "low", "close", "volume")
            )
        )


def _cached(cache: Cache | None, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


# ---------------------------------------------------------------- RSI
def rsi_signals(c: Candles, p: RSIParams, cache: Cache | None = None) -> Signals:
    """Entries where RSI < oversold, exits where RSI > overbought (NaN warm-up: no signal)."""
    r = _cached(cache, ("rsi", p.rsi_period), lambda: ind.rsi(c.close, p.rsi_period))
    return r < p.oversold, r > p.overbought


# ---------------------------------------------------------------- MACD
def macd_signals(c: Candles, p: MACDParams, cache: Cache | None = None) -> Signals:
    """Entries on the bar the histogram turns positive, exits on the bar it turns negative."""
    _, _, hist = _cached(
        cache,
        ("macd", p.fast, p.slow, p.signal),
        lambda: ind.macd(c.close, p.fast, p.slow, p.signal),
    )
    prev = np.concatenate(([np.nan], hist[:-1]))
    return (hist > 0) & (prev <= 0), (hist < 0) & (prev >= 0)


# ---------------------------------------------------------------- Bollinger
def bollinger_signals(c: Candles, p: BollingerParams, cache: Cache | None = None) -> Signals:
    """Entries where close < lower band; exits where close > the chosen exit band."""
    upper, middle, lower = _cached(
        cache, ("bb", p.period, p.num_std), lambda: ind.bollinger(c.close, p.period, p.num_std)
    )
    return c.close < lower, c.close > (middle if p.exit_band == "middle" else upper)


# ---------------------------------------------------------------- Volume
def volume_signals(c: Candles, p: VolumeParams, cache: Cache | None = None) -> Signals:
    """Entries: spike >= threshold on a bar closing above its open; exits: close < VWAP."""
    spike = _cached(
        cache, ("spike", p.volume_period), lambda: ind.volume_spike(c.volume, p.volume_period)
    )
    vw = _cached(
        cache,
        ("vwap", p.vwap_period),
        lambda: ind.vwap(c.high, c.low, c.close, c.volume, p.vwap_period),
    )
    return (spike >= p.spike_threshold) & (c.close > c.open), c.close < vw


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Strategy:
    """A named strategy: its parameter model, signal function and default search space."""

    name: str
    params_model: type[StrategyParams]
    signal_fn: Callable[[Candles, Any, Cache | None], Signals]
    space: Mapping[str, tuple[Any, ...]]

    def params(self, values: Mapping[str, Any] | None = None) -> StrategyParams:
        """Validate ``values`` (missing names take their defaults).

        Raises:
            InvalidInputError: naming each bad parameter, what is wrong and the fix.
        """
        return validate_strategy_params(self.name, values)

    def signals(
        self, candles: Candles, params: StrategyParams, cache: Cache | None = None
    ) -> Signals:
        """Return ``(entries, exits)`` boolean arrays of ``len(candles)``."""
        return self.signal_fn(candles, params, cache)

    def space_size(self, space: Mapping[str, tuple[Any, ...]] | None = None) -> int:
        """Number of combinations in ``space`` (default: this strategy's), valid or not."""
        return int(np.prod([len(v) for v in (space or self.space).values()]))


STRATEGIES: dict[str, Strategy] = {
    "rsi": Strategy(
        "rsi",
        RSIParams,
        rsi_signals,
        {
            "rsi_period": tuple(range(6, 31, 2)),  # 13 x 7 x 6 = 546
            "oversold": (15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0),
            "overbought": (60.0, 65.0, 70.0, 75.0, 80.0, 85.0),
        },
    ),
    "macd": Strategy(
        "macd",
        MACDParams,
        macd_signals,
        {
            "fast": (6, 8, 10, 12, 14, 16),
            "slow": (20, 24, 26, 30, 36, 42),
            "signal": (5, 7, 9, 12),
        },
    ),
    "bollinger": Strategy(
        "bollinger",
        BollingerParams,
        bollinger_signals,
        {
            "period": (10, 14, 20, 26, 34, 50),
            "num_std": (1.5, 1.75, 2.0, 2.25, 2.5, 3.0),
            "exit_band": ("middle", "upper"),
        },
    ),
    "volume": Strategy(
        "volume",
        VolumeParams,
        volume_signals,
        {
            "volume_period": (10, 20, 30, 48),
            "spike_threshold": (1.5, 2.0, 2.5, 3.0, 4.0),
            "vwap_period": (12, 24, 48, 96),
        },
    ),
}


def get_strategy(name: str) -> Strategy:
    """Return the strategy called ``name``.

    Raises:
        InvalidInputError: unknown name, listing the known ones.
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InvalidInputError(
            f"Unknown strategy {echo(name)}: use one of {', '.join(STRATEGIES)}"
        ) from None
