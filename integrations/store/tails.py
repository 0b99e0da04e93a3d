"""``candle_tails``: the newest bars of each candle series, one document per series.

Why: on nx-27017 a query costs ~80 us per returned document, so reading 100 symbols x 300
bars from ``market_data`` takes 2-4 s. A tail holds the newest :data:`TAIL_BARS` bars of one
(symbol, timeframe) as columns of bytes (numpy arrays in BSON ``Binary``), so the same read
is 100 small documents. Tails are derived data: never the source of truth, never expiring,
rebuilt from ``market_data`` by every platform write.

Document (unique on ``symbol, timeframe``)::

    {symbol, timeframe, state: "valid" | "dirty", writer (token of the write that made it),
     built_at, reason (dirty only),
     bars, last_open_time, sum_close, sum_volume,   # fingerprint of the WHOLE series
     n,                                             # bars in the tail: min(bars, TAIL_BARS)
     open_time (int64 ns), open, high, low, close, volume, quote_volume (float64),
     trades_count (int64): Binary, little-endian, oldest first;
     source: the value when all bars share it, else [[value, bars], ...] runs, oldest first}

Write path (``MarketData.upsert_candles``, the platform's only candle write): the tail is
marked dirty with a fresh writer token, then ``market_data`` is written, then
:func:`rebuild` computes the fingerprint (one ``$group``), reads the newest bars (one
query) and writes the tail "valid" - only if it still carries that writer's token (a
concurrent writer's dirty mark is not overwritten). A crash in between leaves it dirty. The
whole sequence is safe to run again (the repository's retry does).

Read path (``MarketData.load_candles_many``): one ``$group`` gives each requested series'
current fingerprint, one find its tail; a tail serves a symbol only if it is valid, its
fingerprint equals the current one (sums to a relative :data:`REL_TOL`) and it holds
``last_n`` bars or the whole series. Everything else is read from ``market_data``. Reads
never write.

Writers that bypass the platform's store (the bot's Rust engine writes closed candles to
``market_data`` directly in production) are caught by the fingerprint: a new bar, a removed
bar, or a changed ``close_price`` or ``volume`` anywhere in the series changes it, and the
tail is not used for that symbol until the next platform write rebuilds it. Not caught: such
a writer changing only ``open/high/low_price``, ``quote_volume``, ``trades_count`` or
``source`` of a bar that keeps its time, close and volume, or changing a close or volume by
less than :data:`REL_TOL` of the series' sum. The fingerprint is taken before the tail is
read, so a write racing the rebuild leaves a tail newer than its fingerprint (unused, never
wrong).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from bson import Binary
from pymongo import DESCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from integrations.store.candles import (
    CANDLE_FIELDS,
    FRAME_COLUMNS,
    docs_to_frame,
    group_datetime,
)

#: Bars kept per series: reads of up to this many bars can be served from the tail.
TAIL_BARS = 1000
VALID = "valid"
DIRTY = "dirty"
#: Relative tolerance of the fingerprint's float sums (summation order may differ).
REL_TOL = 1e-12

_F8 = np.dtype("<f8")
_I8 = np.dtype("<i8")
_FLOATS = ("open", "high", "low", "close", "volume", "quote_volume")
_PROJECTION = {"_id": 0, "open_time": 1, "source": 1, **dict.fromkeys(CANDLE_FIELDS, 1)}


@dataclass(frozen=True)
class Fingerprint:
    """What identifies the content of one whole series in ``market_data``."""

    bars: int
    last_open_time: datetime
    sum_close: float
    sum_volume: float

    def matches(self, other: Fingerprint) -> bool:
        """True when ``other`` describes the same series (sums within :data:`REL_TOL`)."""
        return (
            self.bars == other.bars
            and self.last_open_time == other.last_open_time
            and math.isclose(self.sum_close, other.sum_close, rel_tol=REL_TOL, abs_tol=0.0)
            and math.isclose(self.sum_volume, other.sum_volume, rel_tol=REL_TOL, abs_tol=0.0)
        )

    def fields(self) -> dict[str, Any]:
        """The fingerprint as fields of a tail document."""
        return {
            "bars": self.bars,
            "last_open_time": self.last_open_time,
            "sum_close": self.sum_close,
            "sum_volume": self.sum_volume,
        }


def new_writer() -> str:
    """A fresh writer token (one per platform write)."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------- fingerprints
def fingerprints(
    market: Collection, symbols: Iterable[str], timeframe: str
) -> dict[str, Fingerprint]:
    """The current fingerprint of each series of ``symbols`` in ``market_data``: one ``$group``.

    Returns:
        ``{symbol: Fingerprint}``; symbols without candles (or an unreadable newest time)
        are absent.

    Raises:
        pymongo errors: run it inside the repository's error boundary.
    """
    groups = market.aggregate(
        [
            {"$match": {"symbol": {"$in": list(symbols)}, "timeframe": timeframe}},
            {
                "$group": {
                    "_id": "$symbol",
                    "bars": {"$sum": 1},
                    "last": {"$max": "$open_time"},
                    "sum_close": {"$sum": "$close_price"},
                    "sum_volume": {"$sum": "$volume"},
                }
            },
        ]
    )
    out = {}
    for g in groups:
        last = group_datetime(g.get("last"))
        if last is not None:
            out[g["_id"]] = Fingerprint(
                int(g["bars"]), last, _number(g.get("sum_close")), _number(g.get("sum_volume"))
            )
    return out


def stored_fingerprint(doc: Mapping[str, Any]) -> Fingerprint | None:
    """The fingerprint a tail document was built with, or None when it has none."""
    last = doc.get("last_open_time")
    if not isinstance(last, datetime) or not isinstance(doc.get("bars"), int):
        return None
    last = last if last.tzinfo else last.replace(tzinfo=UTC)
    return Fingerprint(
        doc["bars"], last, _number(doc.get("sum_close")), _number(doc.get("sum_volume"))
    )


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


# ---------------------------------------------------------------- encoding
def encode(frame: pd.DataFrame) -> dict[str, Any]:
    """The columns of ``frame`` (as :func:`~integrations.store.candles.docs_to_frame` builds
    it, oldest first) as tail fields: ``n``, the binary columns and ``source``.

    Raises:
        ValueError: the frame cannot be decoded back exactly (a missing field or an
            unexpected type in some document, unsorted or repeated times): no tail.
    """
    idx = frame.index
    if not isinstance(idx, pd.DatetimeIndex) or not (idx.is_monotonic_increasing and idx.is_unique):
        raise ValueError("open times are not strictly increasing")
    out: dict[str, Any] = {"n": len(frame), "open_time": _binary(idx.as_unit("ns").asi8, _I8)}
    for name in _FLOATS:
        if frame[name].dtype != np.float64:
            raise ValueError(f"{name} is {frame[name].dtype}, not float64")
        out[name] = _binary(frame[name].to_numpy(), _F8)
    if frame["trades_count"].dtype != np.int64:
        raise ValueError(f"trades_count is {frame['trades_count'].dtype}, not int64")
    out["trades_count"] = _binary(frame["trades_count"].to_numpy(), _I8)
    sources = frame["source"].tolist()
    if not all(isinstance(s, str) for s in sources):
        raise ValueError("a bar has no source")
    runs: list[list[Any]] = []
    for s in sources:
        if runs and runs[-1][0] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    out["source"] = runs[0][0] if len(runs) == 1 else runs
    return out


def decode(doc: Mapping[str, Any], last_n: int) -> pd.DataFrame:
    """The newest ``last_n`` bars of a tail document, as ``docs_to_frame`` would build them.

    Raises:
        ValueError: a column does not hold ``n`` values (a malformed document).
    """
    n = doc["n"]
    k = min(last_n, n)
    cols: dict[str, Any] = {}
    for name in _FLOATS:
        cols[name] = _column(doc, name, _F8, n)[n - k :]
    cols["trades_count"] = _column(doc, "trades_count", _I8, n)[n - k :]
    source = doc["source"]
    if isinstance(source, str):
        cols["source"] = [source] * k
    else:
        values = np.array([v for v, _ in source], dtype=object)
        counts = np.array([c for _, c in source], dtype=np.int64)
        if counts.sum() != n:
            raise ValueError("source runs do not add up to n")
        cols["source"] = np.repeat(values, counts)[n - k :].tolist()
    ns = _column(doc, "open_time", _I8, n)[n - k :].astype("datetime64[ns]")
    idx = pd.DatetimeIndex(ns, name="open_time").tz_localize(UTC).as_unit(_index_unit())
    return pd.DataFrame(cols, index=idx, columns=[*FRAME_COLUMNS, "source"], copy=True)


def _binary(values: np.ndarray, dtype: np.dtype) -> Binary:
    return Binary(np.ascontiguousarray(values, dtype=dtype).tobytes())


def _column(doc: Mapping[str, Any], name: str, dtype: np.dtype, n: int) -> np.ndarray:
    raw = doc.get(name)
    if not isinstance(raw, bytes) or len(raw) != n * dtype.itemsize:
        raise ValueError(f"tail column {name} does not hold {n} values")
    return np.frombuffer(raw, dtype=dtype)


@cache
def _index_unit() -> str:
    """The unit of the ``open_time`` index ``docs_to_frame`` builds (pandas version dependent)."""
    probe = docs_to_frame(
        [{"open_time": datetime(2000, 1, 1, tzinfo=UTC), **dict.fromkeys(CANDLE_FIELDS, 0)}]
    )
    return str(probe.index.unit)


# ---------------------------------------------------------------- write path
def mark_dirty(tails: Collection, symbol: str, timeframe: str, writer: str, reason: str) -> None:
    """Replace the tail of (symbol, timeframe) by a dirty marker carrying ``writer``.

    Raises:
        pymongo errors: run it inside the repository's error boundary.
    """
    key = {"symbol": symbol, "timeframe": timeframe}
    doc = {**key, "state": DIRTY, "writer": writer, "built_at": datetime.now(UTC), "reason": reason}
    try:
        tails.replace_one(key, doc, upsert=True)
    except DuplicateKeyError:  # a concurrent upsert inserted the key first
        tails.replace_one(key, doc)


def rebuild(
    market: Collection, tails: Collection, symbols: list[str], timeframe: str, writer: str
) -> dict[str, str]:
    """Rebuild the tails of ``symbols`` from ``market_data`` (each already marked dirty by
    ``writer``): one ``$group`` for the fingerprints, then one query per symbol for its
    newest :data:`TAIL_BARS` bars. A tail is written only while it still carries ``writer``.

    Returns:
        ``{symbol: state written}``: "valid", "dirty" (no candles, a bar that cannot be
        encoded exactly, or the series changed during the rebuild) or "skipped" (another
        writer marked it since).

    Raises:
        pymongo errors: run it inside the repository's error boundary.
    """
    current = fingerprints(market, symbols, timeframe)  # before the bars: see the docstring
    out = {}
    for symbol in symbols:
        key = {"symbol": symbol, "timeframe": timeframe}
        doc = {**key, "writer": writer, "built_at": datetime.now(UTC)}
        fp = current.get(symbol)
        if fp is None:
            doc |= {"state": DIRTY, "reason": "no candles"}
        else:
            cursor = market.find(key, _PROJECTION).sort("open_time", DESCENDING).limit(TAIL_BARS)
            frame = docs_to_frame(reversed(list(cursor)))
            doc |= fp.fields()
            try:
                doc |= _checked(frame, fp) | {"state": VALID}
            except ValueError as e:
                doc |= {"state": DIRTY, "reason": str(e)}
        out[symbol] = doc["state"] if _replace_own(tails, key, writer, doc) else "skipped"
    return out


def _replace_own(tails: Collection, key: dict[str, Any], writer: str, doc: dict[str, Any]) -> bool:
    """Replace the tail of ``key`` by ``doc`` if it still carries ``writer``; True if done.

    Delete, then insert: nx-27017 cannot ``replace_one`` an existing document by one holding
    ``Binary`` (it raises "Object of type bytes is not JSON serializable"); inserts work. In
    between, readers find no tail and read ``market_data``. A concurrent writer's dirty mark
    landing in between makes the insert a duplicate key: its mark stays.
    """
    if not tails.delete_one({**key, "writer": writer}).deleted_count:
        return False
    try:
        tails.insert_one(dict(doc))
    except DuplicateKeyError:
        return False
    return True


def _checked(frame: pd.DataFrame, fp: Fingerprint) -> dict[str, Any]:
    if len(frame) != min(fp.bars, TAIL_BARS) or not len(frame):
        raise ValueError("the series changed during the rebuild (bar count)")
    newest = frame.index[-1].to_pydatetime()
    if abs(newest - fp.last_open_time) >= timedelta(seconds=1):  # nx-27017: whole seconds
        raise ValueError("the series changed during the rebuild (newest bar)")
    return encode(frame)


# ---------------------------------------------------------------- read path
def read_usable(
    tails: Collection,
    current: Mapping[str, Fingerprint],
    symbols: list[str],
    timeframe: str,
    last_n: int,
) -> dict[str, dict[str, Any]]:
    """The tails (one find) that can serve the newest ``last_n`` bars of their symbol.

    Returns:
        ``{symbol: tail document}`` for the symbols whose tail is valid, matches the current
        fingerprint in ``current`` and holds ``last_n`` bars or the whole series.

    Raises:
        pymongo errors: run it inside the repository's error boundary.
    """
    if last_n < 1:
        return {}
    docs = tails.find({"symbol": {"$in": symbols}, "timeframe": timeframe}, {"_id": 0})
    return {d["symbol"]: d for d in docs if usable(d, current.get(d["symbol"]), last_n)}


def usable(doc: Mapping[str, Any], current: Fingerprint | None, last_n: int) -> bool:
    """True when tail ``doc`` may serve the newest ``last_n`` bars of a series whose current
    fingerprint is ``current`` (None: the series has no candles)."""
    stored = stored_fingerprint(doc)
    if doc.get("state") != VALID or current is None or stored is None:
        return False
    n = doc.get("n")
    if not isinstance(n, int) or n != min(stored.bars, TAIL_BARS) or not stored.matches(current):
        return False
    return (n >= last_n or n == current.bars) and _well_formed(doc, n)


def _well_formed(doc: Mapping[str, Any], n: int) -> bool:
    try:
        for name in (*_FLOATS, "trades_count", "open_time"):
            _column(doc, name, _F8 if name in _FLOATS else _I8, n)
        source = doc.get("source")
        if isinstance(source, str):
            return True
        return isinstance(source, list) and sum(int(c) for _, c in source) == n
    except (TypeError, ValueError):
        return False
