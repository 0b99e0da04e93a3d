"""Trading-domain vocabulary shared by every layer: timeframes and symbols."""

from __future__ import annotations

import re
from datetime import timedelta

from core.echo import echo
from core.exceptions import InvalidInputError

#: Supported candle timeframes and their bar length.
TIMEFRAMES: dict[str, timedelta] = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}

#: Quote assets a symbol may end with (Binance style, e.g. BTCUSDT; Coinbase BTCUSD).
QUOTE_ASSETS = ("USDT", "USDC", "BUSD", "FDUSD", "USD", "BTC", "ETH", "BNB", "EUR")

_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,12}$")


def bar_length(timeframe: str) -> timedelta:
    """Return the bar length of ``timeframe``.

    Raises:
        InvalidInputError: for a timeframe not in :data:`TIMEFRAMES`.
    """
    try:
        return TIMEFRAMES[timeframe]
    except KeyError:
        raise InvalidInputError(
            f"timeframe must be one of: {', '.join(TIMEFRAMES)} (got {echo(timeframe)})"
        ) from None


def bars_per_day(timeframe: str) -> int:
    """Number of bars of ``timeframe`` in one day (e.g. 24 for 1h)."""
    return int(timedelta(days=1) / bar_length(timeframe))


def is_valid_symbol(symbol: str) -> bool:
    """True when ``symbol`` is well formed: upper-case base asset followed by a known quote asset."""
    if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol):
        return False
    return any(symbol.endswith(q) and len(symbol) > len(q) + 1 for q in QUOTE_ASSETS)


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` when well formed.

    Raises:
        InvalidInputError: 'Invalid trading symbol' naming the expected form.
    """
    if not is_valid_symbol(symbol):
        raise InvalidInputError(
            f"Invalid trading symbol {echo(symbol)}: use upper-case BASE+QUOTE such as BTCUSDT "
            f"(quote one of {', '.join(QUOTE_ASSETS)})"
        )
    return symbol
