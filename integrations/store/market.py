"""Market data: candles in the schema the bot's Rust engine already writes::

    {symbol, timeframe, open_time, close_time, open_price, high_price, low_price,
     close_price, volume, quote_volume, trades_count, source}

unique on (symbol, timeframe, open_time). Frames use :data:`FRAME_COLUMNS`. Every write
keeps the series' tail in ``candle_tails`` (:mod:`.tails`) up to date; batched reads use
the tails that still match ``market_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError

from core.market import bar_length
from integrations.store.base import Repository
from integrations.store.candles import (
    CANDLE_FIELDS,
    FRAME_COLUMNS,
    docs_to_frame,
    frame_to_docs,
    group_datetime,
    same_candle,
)
from integrations.store.schema import C
from integrations.store.tails import (
    Fingerprint,
    decode,
    fingerprints,
    mark_dirty,
    new_writer,
    read_usable,
    rebuild,
)

__all__ = [
    "CANDLE_FIELDS",
    "FRAME_COLUMNS",
    "CandleBatch",
    "MarketData",
    "UpsertReport",
    "group_datetime",
]


@dataclass(frozen=True)
class UpsertReport:
    """Outcome of a bulk candle write: how many were new, changed or already identical."""

    inserted: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class CandleBatch:
    """Outcome of a batched candle read.

    Attributes:
        frames: ``{symbol: frame}`` as :meth:`MarketData.load_candles`.
        from_tails: symbols served from their tail in ``candle_tails``, in request order.
        from_candles: symbols with candles read from ``market_data``, in request order.
    """

    frames: dict[str, pd.DataFrame]
    from_tails: tuple[str, ...]
    from_candles: tuple[str, ...]


class MarketData(Repository):
    """The ``market_data`` collection (candles)."""

    def upsert_candles(
        self, symbol: str, timeframe: str, frame: pd.DataFrame, *, source: str
    ) -> UpsertReport:
        """Write candles idempotently: new bars inserted, changed bars updated, equal bars kept.

        The series' tail in ``candle_tails`` is marked dirty before and rebuilt after the
        write (see :mod:`.tails`); the whole sequence is safe to repeat.

        Args:
            frame: columns ``open, high, low, close, volume`` (optional ``quote_volume``,
                ``trades_count``), indexed by UTC bar open time; already quality-checked.
            source: where the data came from (``binance``, ``csv:<file>``, ``synthetic``).

        Returns:
            counts of inserted, updated and unchanged bars.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        if frame.empty:
            return UpsertReport(0, 0, 0)
        docs = frame_to_docs(symbol, timeframe, frame, bar_length(timeframe), source)
        col = self.col(C.MARKET_DATA)
        tails = self.col(C.CANDLE_TAILS)
        key = {"symbol": symbol, "timeframe": timeframe}

        def write() -> UpsertReport:  # the whole write is repeatable: it starts by reading
            writer = new_writer()
            mark_dirty(tails, symbol, timeframe, writer, "candles being written")
            span = {"$gte": docs[0]["open_time"], "$lte": docs[-1]["open_time"]}
            existing = {d["open_time"]: d for d in col.find({**key, "open_time": span}, {"_id": 0})}
            new_docs = [dict(d) for d in docs if d["open_time"] not in existing]
            changed = [
                d
                for d in docs
                if d["open_time"] in existing and not same_candle(d, existing[d["open_time"]])
            ]
            inserted = 0
            if new_docs:
                try:
                    inserted = len(col.insert_many(new_docs, ordered=False).inserted_ids)
                except BulkWriteError as e:  # a concurrent writer got there first: fine
                    inserted = e.details.get("nInserted", 0)
            for d in changed:  # whole-document replace (see docs/architecture.md on nx-27017)
                col.replace_one({**key, "open_time": d["open_time"]}, dict(d))
            rebuild(col, tails, [symbol], timeframe, writer)
            return UpsertReport(inserted, len(changed), len(docs) - len(new_docs) - len(changed))

        return self.call("writing candles", write)

    def load_candles(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        last_n: int | None = None,
    ) -> pd.DataFrame:
        """Read candles as a DataFrame.

        Args:
            start, end: inclusive bounds on bar open time (UTC); None means unbounded.
            last_n: keep only the newest ``last_n`` bars (after the bounds).

        Returns:
            columns ``open, high, low, close, volume, quote_volume, trades_count, source``,
            a UTC ``DatetimeIndex`` named ``open_time``, oldest first; empty when none.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        query: dict[str, Any] = {"symbol": symbol, "timeframe": timeframe}
        bounds: dict[str, datetime] = {}
        if start is not None:
            bounds["$gte"] = start
        if end is not None:
            bounds["$lte"] = end
        if bounds:
            query["open_time"] = bounds

        def read() -> list[dict[str, Any]]:
            cursor = (
                self.col(C.MARKET_DATA)
                .find(query, {"_id": 0})
                .sort("open_time", DESCENDING if last_n else ASCENDING)
            )
            if last_n:
                cursor = cursor.limit(last_n)
            return list(cursor)

        docs = self.call("reading candles", read)
        if last_n:
            docs.reverse()
        return docs_to_frame(docs)

    def candle_symbols(self, timeframe: str | None = None) -> list[str]:
        """Symbols with at least one stored candle (of ``timeframe`` when given), sorted."""
        query = {"timeframe": timeframe} if timeframe else {}
        return sorted(
            self.call("listing symbols", lambda: self.col(C.MARKET_DATA).distinct("symbol", query))
        )

    def candle_summary(self) -> list[dict[str, Any]]:
        """One row per (symbol, timeframe): bars, first and last open time, sources, sorted."""
        col = self.col(C.MARKET_DATA)

        def read() -> list[dict[str, Any]]:
            out = []
            for symbol in sorted(col.distinct("symbol")):
                for timeframe in sorted(col.distinct("timeframe", {"symbol": symbol})):
                    key = {"symbol": symbol, "timeframe": timeframe}
                    first = col.find_one(key, {"open_time": 1}, sort=[("open_time", ASCENDING)])
                    last = col.find_one(key, {"open_time": 1}, sort=[("open_time", DESCENDING)])
                    out.append(
                        {
                            "symbol": symbol,
                            "timeframe": timeframe,
                            "bars": col.count_documents(key),
                            "first": first["open_time"],
                            "last": last["open_time"],
                            "sources": sorted(s for s in col.distinct("source", key) if s),
                        }
                    )
            return out

        return self.call("summarising candles", read)

    def load_candles_many(
        self, symbols: list[str], timeframe: str, *, last_n: int
    ) -> dict[str, pd.DataFrame]:
        """The newest ``last_n`` candles of each of ``symbols`` in a few queries.

        Returns:
            ``{symbol: frame}`` as :meth:`load_candles` (empty frame: no candles stored);
            see :meth:`load_candles_batch`.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        return self.load_candles_batch(symbols, timeframe, last_n=last_n).frames

    def load_candles_batch(self, symbols: list[str], timeframe: str, *, last_n: int) -> CandleBatch:
        """The newest ``last_n`` candles of each of ``symbols``, and where they came from.

        One ``$group`` gives each series' fingerprint and newest bar, one find the tails of
        ``candle_tails``; a symbol whose tail still matches its series is served from it
        (see :mod:`.tails`). Of the others, those ending within ``last_n`` bars of the most
        recent one are read with one ``$in`` query (on nx-27017 a query costs ~70 ms
        whatever it returns, so this is ~3x faster than a query per symbol); the rest one by
        one, and so are those the ``$in`` window gave fewer bars than ``last_n`` of a longer
        series (gaps in it). Nothing is written.

        Returns:
            the frames (as :meth:`load_candles`; empty frame: no candles stored) and which
            symbols were served from tails.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        symbols = list(dict.fromkeys(symbols))
        out = {s: docs_to_frame([]) for s in symbols}
        if not symbols:
            return CandleBatch(out, (), ())
        col = self.col(C.MARKET_DATA)
        tails = self.col(C.CANDLE_TAILS)

        def read() -> tuple[
            dict[str, Any], dict[str, Fingerprint], list[str], list[dict[str, Any]]
        ]:
            current = fingerprints(col, symbols, timeframe)
            served = read_usable(tails, current, symbols, timeframe, last_n)
            rest = {s: fp for s, fp in current.items() if s not in served}
            newest = {s: fp.last_open_time for s, fp in rest.items()}
            if not newest:
                return served, rest, [], []
            span = bar_length(timeframe) * last_n
            latest = max(newest.values())
            together = [s for s, t in newest.items() if latest - t < span]
            since = min(newest[s] for s in together) - span
            query = {
                "symbol": {"$in": together},
                "timeframe": timeframe,
                "open_time": {"$gt": since},
            }
            return served, rest, together, list(col.find(query, {"_id": 0}))

        served, rest, together, docs = self.call("reading candles", read)
        for s, tail in served.items():
            out[s] = decode(tail, last_n)
        by_symbol: dict[str, list[dict[str, Any]]] = {s: [] for s in together}
        for d in docs:
            by_symbol[d.pop("symbol")].append(d)
        for s, rows in by_symbol.items():
            for d in rows:
                d.pop("timeframe", None)
            out[s] = docs_to_frame(rows).sort_index().iloc[-last_n:]
        gapped = {s for s in together if len(out[s]) < min(last_n, rest[s].bars)}
        for s in (rest.keys() - set(together)) | gapped:
            out[s] = self.load_candles(s, timeframe, last_n=last_n)
        return CandleBatch(
            out,
            tuple(s for s in symbols if s in served),
            tuple(s for s in symbols if s in rest),
        )

    def rebuild_candle_tails(self, symbols: list[str], timeframe: str) -> dict[str, str]:
        """Rebuild the tails of ``symbols`` from ``market_data`` as a platform write does
        (after candles were loaded around :meth:`upsert_candles`, e.g. by a bulk insert).

        Returns:
            ``{symbol: state written}`` ("valid", "dirty" or "skipped": see
            :func:`~integrations.store.tails.rebuild`).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        symbols = list(dict.fromkeys(symbols))
        col = self.col(C.MARKET_DATA)
        tails = self.col(C.CANDLE_TAILS)

        def write() -> dict[str, str]:
            writer = new_writer()
            for s in symbols:
                mark_dirty(tails, s, timeframe, writer, "being rebuilt")
            return rebuild(col, tails, symbols, timeframe, writer)

        return self.call("rebuilding candle tails", write)
