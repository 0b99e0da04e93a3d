"""The candle document schema the bot's Rust engine writes to ``market_data``, and frames::

    {symbol, timeframe, open_time, close_time, open_price, high_price, low_price,
     close_price, volume, quote_volume, trades_count, source}

Shared by :mod:`.market` (the repository) and :mod:`.tails` (the derived ``candle_tails``).
Frames use :data:`FRAME_COLUMNS` plus ``source``, indexed by a UTC ``open_time``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from bson import json_util

CANDLE_FIELDS = (
    "open_price",
    "high_price",
    "low_price",
    "close_price",
    "volume",
    "quote_volume",
    "trades_count",
)
#: Column names of the candle DataFrames used by ml/ and backtest/.
FRAME_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "trades_count")
_DOC_TO_FRAME = dict(zip(CANDLE_FIELDS, FRAME_COLUMNS, strict=True))


def group_datetime(value: Any) -> datetime | None:
    """A ``$max`` of datetimes from ``$group``: a datetime on MongoDB; nx-27017 returns it as
    extended JSON text (``{"$date": "..."}``). Returns a UTC datetime, or None."""
    if isinstance(value, str):
        try:
            value = json_util.loads(value)
        except ValueError:
            return None
    if isinstance(value, Mapping) and "$date" in value:
        value = pd.Timestamp(value["$date"]).to_pydatetime()
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def frame_to_docs(
    symbol: str, timeframe: str, frame: pd.DataFrame, step: Any, source: str
) -> list[dict[str, Any]]:
    """The candle documents of ``frame`` (columns ``open, high, low, close, volume``, optional
    ``quote_volume`` and ``trades_count``), oldest first; ``step`` is the bar length."""
    frame = frame.sort_index()
    idx = pd.DatetimeIndex(frame.index)
    idx = idx.tz_localize(UTC) if idx.tz is None else idx.tz_convert(UTC)
    quote = frame["quote_volume"] if "quote_volume" in frame else frame["close"] * frame["volume"]
    trades = frame["trades_count"] if "trades_count" in frame else pd.Series(0, index=frame.index)
    docs = []
    for t, o, h, lo, c, v, q, n in zip(
        idx.to_pydatetime(),
        frame["open"].to_numpy(float),
        frame["high"].to_numpy(float),
        frame["low"].to_numpy(float),
        frame["close"].to_numpy(float),
        frame["volume"].to_numpy(float),
        np.asarray(quote, dtype=float),
        np.asarray(trades.fillna(0), dtype=np.int64),
        strict=True,
    ):
        docs.append(
            {
                "symbol": symbol,
                "timeframe": timeframe,
                "open_time": t,
                "close_time": t + step,
                "open_price": o,
                "high_price": h,
                "low_price": lo,
                "close_price": c,
                "volume": v,
                "quote_volume": q,
                "trades_count": int(n),
                "source": source,
            }
        )
    return docs


def same_candle(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """True when two candle documents have the same prices, volumes, trades and source."""
    return all(new.get(f) == old.get(f) for f in (*CANDLE_FIELDS, "source"))


def docs_to_frame(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The frame of candle documents (without ``symbol``/``timeframe`` or with them ignored):
    :data:`FRAME_COLUMNS` and ``source``, a UTC ``DatetimeIndex`` named ``open_time`` in the
    documents' order; an empty frame of those columns when there are none."""
    docs = list(docs)
    cols = [*FRAME_COLUMNS, "source"]
    if not docs:
        return pd.DataFrame(columns=cols, index=pd.DatetimeIndex([], tz=UTC, name="open_time"))
    frame = pd.DataFrame.from_records(docs)
    frame = frame.rename(columns=_DOC_TO_FRAME)
    frame.index = pd.DatetimeIndex(
        pd.to_datetime(frame.pop("open_time"), utc=True), name="open_time"
    )
    if "source" not in frame:
        frame["source"] = None
    return frame[cols]
