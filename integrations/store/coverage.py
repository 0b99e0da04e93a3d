"""What the stored candles cover, answered by indexed reads (the gateway's data pre-checks).

Counting is the expensive question on nx-27017: ``count_documents`` is an aggregation that
scans the whole collection whatever the filter and limit (measured: 0.8 s for one series
among 20,000 candles at load 4, seconds on a loaded machine), while an indexed ``find_one``
costs about a millisecond. So coverage is read where it is cheap:

1. the series' tail in ``candle_tails`` (:mod:`.tails`), which the platform's candle
   writer (``MarketData.upsert_candles``) rebuilds on every write: the whole series' bar
   count and the open times of its newest bars, one ``find_one`` by the unique key;
2. only when the tail cannot prove enough (none yet, being rebuilt, or a range older than
   its bars): the candles themselves, by an indexed ``find`` of open times, stopped as soon
   as enough bars are seen.

A tail is only trusted to say "at least": candles are never deleted, so every bar it lists
is still stored and the series has at least its ``bars``. A writer that bypasses the
platform (the bot's engine adding closed candles) only adds bars, which step 2 finds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from integrations.store.base import Repository
from integrations.store.schema import C


@dataclass(frozen=True)
class SeriesFacts:
    """What a series' tail proves about it (lower bounds).

    Attributes:
        bars: bars of the whole series when the tail was built.
        newest: open times of its newest bars (up to the tail's length), oldest first,
            as int64 nanoseconds since the epoch (UTC).
    """

    bars: int
    newest: np.ndarray

    def bars_between(self, start: datetime, end: datetime) -> int | None:
        """Bars with open time in ``[start, end)`` when the tail reaches back to ``start``
        (or the whole series is in the tail); None when it cannot tell."""
        lo, hi = _ns(start), _ns(end)
        complete = len(self.newest) >= self.bars
        if not complete and (len(self.newest) == 0 or int(self.newest[0]) > lo):
            return None
        return int(np.count_nonzero((self.newest >= lo) & (self.newest < hi)))


def _ns(when: datetime) -> int:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return int(round(when.timestamp() * 1_000_000)) * 1000


class CandleCoverage(Repository):
    """Coverage questions about ``market_data`` (reads only)."""

    def series_facts(self, symbol: str, timeframe: str) -> SeriesFacts | None:
        """The facts the tail of (symbol, timeframe) proves, or None when it has none
        (no tail, a tail being rebuilt, or a malformed one). One indexed ``find_one``.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        doc = self.call(
            "reading candle coverage",
            lambda: self.col(C.CANDLE_TAILS).find_one(
                {"symbol": symbol, "timeframe": timeframe},
                {"_id": 0, "bars": 1, "n": 1, "open_time": 1},
            ),
        )
        if doc is None:
            return None
        bars, n, raw = doc.get("bars"), doc.get("n"), doc.get("open_time")
        if not isinstance(bars, int) or not isinstance(n, int) or not isinstance(raw, bytes):
            return None
        if n < 0 or len(raw) != n * 8 or n > bars:
            return None
        return SeriesFacts(bars, np.frombuffer(raw, dtype="<i8"))

    def bars_at_least(
        self,
        symbol: str,
        timeframe: str,
        wanted: int,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int:
        """Bars of (symbol, timeframe) with open time in ``[start, end)`` (unbounded when
        None), counted up to ``wanted``: an indexed read of their open times that stops at
        ``wanted`` (not a count, which scans the collection on nx-27017).

        Returns:
            ``min(bars found, wanted)``.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        query: dict = {"symbol": symbol, "timeframe": timeframe}
        bounds = {k: v for k, v in (("$gte", start), ("$lt", end)) if v is not None}
        if bounds:
            query["open_time"] = bounds
        if wanted <= 0:
            return 0

        def read() -> int:
            cursor = self.col(C.MARKET_DATA).find(query, {"_id": 0, "open_time": 1})
            return len(list(cursor.limit(int(wanted))))

        return self.call("reading candle coverage", read)

    def open_time_span(
        self, symbol: str, timeframe: str, start: datetime, end: datetime
    ) -> tuple[datetime, datetime]:
        """Open times of the first and the last bar of (symbol, timeframe) in ``[start, end)``:
        two indexed reads, whatever the number of bars between.

        Raises:
            LookupError: no bar in the range.
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        query = {"symbol": symbol, "timeframe": timeframe, "open_time": {"$gte": start, "$lt": end}}

        def read(direction: int) -> datetime:
            doc = self.col(C.MARKET_DATA).find_one(
                query, {"_id": 0, "open_time": 1}, sort=[("open_time", direction)]
            )
            if doc is None:
                raise LookupError(f"no {symbol} {timeframe} bar from {start} to {end}")
            return doc["open_time"]

        what = "reading the first and last candle"
        return self.call(what, lambda: read(1)), self.call(what, lambda: read(-1))

    def has_deployed_model(self, model_type: str, symbol: str, timeframe: str) -> bool:
        """True when a model of the key is deployed (its pointer exists): one indexed read.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        key = {"model_type": model_type, "symbol": symbol, "timeframe": timeframe}
        found = self.call(
            "reading deployed models",
            lambda: self.col(C.DEPLOYED_MODELS).find_one(key, {"_id": 0, "model_id": 1}),
        )
        return found is not None
