"""MongoDB storage: the one module that owns collection names, their indexes and typed accessors.

The code speaks only pymongo, so the embedded nx-27017 store and a real MongoDB (or Atlas)
are interchangeable by URI. Datetimes are stored as BSON dates in UTC and read back
timezone-aware (the client is opened with ``tz_aware=True``).

Candles use the schema the bot's Rust engine already writes::

    {symbol, timeframe, open_time, close_time, open_price, high_price, low_price,
     close_price, volume, quote_volume, trades_count, source}

unique on (symbol, timeframe, open_time).

Accessors are grouped by domain in sections below; each issue adds its own section.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError

from core.exceptions import ServiceUnavailableError
from core.market import bar_length

log = logging.getLogger(__name__)


class C:
    """Collection names. Use these constants, never string literals, elsewhere."""

    MARKET_DATA = "market_data"
    MODELS = "models"
    TRAINING_JOBS = "training_jobs"
    BACKTEST_RESULTS = "backtest_results"
    OPTIMIZATION_RESULTS = "optimization_results"
    HEALTH_REPORTS = "health_reports"
    HEALTH_STATE = "health_state"
    ALERTS = "alerts"
    PORTFOLIO_REPORTS = "portfolio_reports"
    TRADES = "trades"
    LLM_COSTS = "llm_costs"
    LLM_SETTINGS = "llm_settings"
    API_COST_HISTORY = "api_cost_history"
    LLM_ANALYSIS_HISTORY = "llm_analysis_history"
    RETRAIN_HISTORY = "retrain_history"
    STRATEGY_STATE = "strategy_state"
    LOCKS = "locks"
    API_USAGE = "api_usage"


#: Indexes of every collection: unique keys and TTLs. Applied by :meth:`Store.ensure_indexes`.
INDEXES: dict[str, list[IndexModel]] = {
    C.MARKET_DATA: [
        IndexModel(
            [("symbol", ASCENDING), ("timeframe", ASCENDING), ("open_time", ASCENDING)],
            unique=True,
            name="symbol_timeframe_open_time",
        )
    ],
    C.MODELS: [
        IndexModel([("model_id", ASCENDING)], unique=True, name="model_id"),
        IndexModel(
            [
                ("model_type", ASCENDING),
                ("symbol", ASCENDING),
                ("timeframe", ASCENDING),
                ("status", ASCENDING),
            ],
            name="type_symbol_timeframe_status",
        ),
    ],
    C.TRAINING_JOBS: [IndexModel([("task_id", ASCENDING)], unique=True, name="task_id")],
    C.BACKTEST_RESULTS: [IndexModel([("task_id", ASCENDING)], name="task_id")],
    C.OPTIMIZATION_RESULTS: [IndexModel([("task_id", ASCENDING)], name="task_id")],
    C.HEALTH_REPORTS: [
        IndexModel([("created_at", DESCENDING)], name="created_at"),
        # health reports are kept 30 days
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="ttl"),
    ],
    C.HEALTH_STATE: [IndexModel([("service", ASCENDING)], unique=True, name="service")],
    C.ALERTS: [IndexModel([("fingerprint", ASCENDING), ("created_at", DESCENDING)], name="fp")],
    C.PORTFOLIO_REPORTS: [IndexModel([("report_date", ASCENDING)], name="report_date")],
    C.TRADES: [IndexModel([("trade_id", ASCENDING)], unique=True, name="trade_id")],
    C.LLM_COSTS: [IndexModel([("created_at", ASCENDING)], name="created_at")],
    C.LLM_SETTINGS: [],
    C.API_COST_HISTORY: [IndexModel([("report_date", ASCENDING)], name="report_date")],
    C.LLM_ANALYSIS_HISTORY: [IndexModel([("task_id", ASCENDING)], name="task_id")],
    C.RETRAIN_HISTORY: [IndexModel([("task_id", ASCENDING)], name="task_id")],
    C.STRATEGY_STATE: [IndexModel([("strategy", ASCENDING)], unique=True, name="strategy")],
    C.LOCKS: [],
    C.API_USAGE: [IndexModel([("user", ASCENDING), ("day", ASCENDING)], name="user_day")],
}

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


def connect(uri: str, *, timeout_ms: int = 5000) -> MongoClient:
    """Open a pymongo client (lazy: no I/O happens until the first command).

    Returns a client reading datetimes back as UTC-aware values.
    """
    return MongoClient(
        uri,
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 6, 30000),
    )


@dataclass(frozen=True)
class UpsertReport:
    """Outcome of a bulk candle write: how many were new, changed or already identical."""

    inserted: int
    updated: int
    unchanged: int


class Store:
    """Typed access to the platform's MongoDB database.

    Args:
        client: a pymongo client (see :func:`connect`).
        database: database name.
    """

    def __init__(self, client: MongoClient, database: str) -> None:
        self.client = client
        self.db: Database = client[database]

    # ------------------------------------------------------------ general
    def col(self, name: str) -> Collection:
        """Return collection ``name`` (one of :class:`C`)."""
        return self.db[name]

    def ping(self) -> float:
        """Ping the server. Returns the round trip in milliseconds.

        Raises:
            ServiceUnavailableError: the server did not answer.
        """
        start = datetime.now(UTC)
        try:
            self.client.admin.command("ping")
        except PyMongoError as e:
            raise ServiceUnavailableError(f"MongoDB did not answer ping: {type(e).__name__}") from e
        return (datetime.now(UTC) - start).total_seconds() * 1000

    def ensure_indexes(self) -> None:
        """Create every index of :data:`INDEXES` (idempotent)."""
        try:
            for name, models in INDEXES.items():
                if models:
                    self.db[name].create_indexes(models)
        except ConnectionFailure as e:
            raise ServiceUnavailableError(f"MongoDB unreachable while creating indexes: {e}") from e

    # ------------------------------------------------------------ market data (candles)
    def upsert_candles(
        self, symbol: str, timeframe: str, frame: pd.DataFrame, *, source: str
    ) -> UpsertReport:
        """Write candles idempotently: new bars inserted, changed bars updated, equal bars kept.

        Args:
            frame: columns ``open, high, low, close, volume`` (optional ``quote_volume``,
                ``trades_count``), indexed by UTC bar open time; already quality-checked.
            source: where the data came from (``binance``, ``csv:<file>``, ``synthetic``).

        Returns:
            counts of inserted, updated and unchanged bars.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        if frame.empty:
            return UpsertReport(0, 0, 0)
        step = bar_length(timeframe)
        docs = _frame_to_docs(symbol, timeframe, frame, step, source)
        col = self.col(C.MARKET_DATA)
        key = {"symbol": symbol, "timeframe": timeframe}
        try:
            existing = {
                d["open_time"]: d
                for d in col.find(
                    {
                        **key,
                        "open_time": {"$gte": docs[0]["open_time"], "$lte": docs[-1]["open_time"]},
                    },
                    {"_id": 0},
                )
            }
            new_docs = [d for d in docs if d["open_time"] not in existing]
            changed = [
                d
                for d in docs
                if d["open_time"] in existing and not _same_candle(d, existing[d["open_time"]])
            ]
            inserted = 0
            if new_docs:
                try:
                    inserted = len(col.insert_many(new_docs, ordered=False).inserted_ids)
                except BulkWriteError as e:  # a concurrent writer got there first: fine
                    inserted = e.details.get("nInserted", 0)
            for d in changed:  # whole-document replace (see docs/architecture.md on nx-27017)
                col.replace_one({**key, "open_time": d["open_time"]}, d)
        except ConnectionFailure as e:
            raise ServiceUnavailableError(f"MongoDB unreachable while writing candles: {e}") from e
        return UpsertReport(inserted, len(changed), len(docs) - len(new_docs) - len(changed))

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
            ServiceUnavailableError: MongoDB unreachable.
        """
        query: dict[str, Any] = {"symbol": symbol, "timeframe": timeframe}
        bounds: dict[str, datetime] = {}
        if start is not None:
            bounds["$gte"] = start
        if end is not None:
            bounds["$lte"] = end
        if bounds:
            query["open_time"] = bounds
        try:
            cursor = (
                self.col(C.MARKET_DATA)
                .find(query, {"_id": 0})
                .sort("open_time", DESCENDING if last_n else ASCENDING)
            )
            if last_n:
                cursor = cursor.limit(last_n)
            docs = list(cursor)
        except ConnectionFailure as e:
            raise ServiceUnavailableError(f"MongoDB unreachable while reading candles: {e}") from e
        if last_n:
            docs.reverse()
        return _docs_to_frame(docs)

    def candle_symbols(self, timeframe: str | None = None) -> list[str]:
        """Symbols with at least one stored candle (of ``timeframe`` when given), sorted."""
        query = {"timeframe": timeframe} if timeframe else {}
        return sorted(self.col(C.MARKET_DATA).distinct("symbol", query))

    def candle_summary(self) -> list[dict[str, Any]]:
        """One row per (symbol, timeframe): bars, first and last open time, sources, sorted."""
        col = self.col(C.MARKET_DATA)
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

    # ------------------------------------------------------------ ml models and training jobs
    # Whole documents only (insert_one / replace_one): see the nx-27017 notes.
    def model_insert(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``models`` document (a registry record)."""
        self._ml_write(lambda: self.col(C.MODELS).insert_one(dict(doc)), "registering a model")

    def model_replace(self, doc: Mapping[str, Any]) -> None:
        """Replace the ``models`` document with the same ``model_id`` by ``doc``."""
        self._ml_write(
            lambda: self.col(C.MODELS).replace_one({"model_id": doc["model_id"]}, dict(doc)),
            "updating a model",
        )

    def model_get(self, model_id: str) -> dict[str, Any] | None:
        """The ``models`` document of ``model_id`` (without ``_id``), or None."""
        return self.col(C.MODELS).find_one({"model_id": model_id}, {"_id": 0})

    def models_find(
        self,
        query: Mapping[str, Any],
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """``models`` documents matching ``query`` (without ``_id``)."""
        cursor = self.col(C.MODELS).find(dict(query), {"_id": 0})
        if sort:
            cursor = cursor.sort(sort)
        if limit:
            cursor = cursor.limit(limit)
        return list(cursor)

    def training_job_save(self, doc: Mapping[str, Any]) -> None:
        """Write the whole ``training_jobs`` document of ``doc["task_id"]`` (insert or replace)."""
        col = self.col(C.TRAINING_JOBS)

        def write() -> None:
            if col.count_documents({"task_id": doc["task_id"]}, limit=1):
                col.replace_one({"task_id": doc["task_id"]}, dict(doc))
            else:
                col.insert_one(dict(doc))

        self._ml_write(write, "saving a training job")

    def training_job_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``training_jobs`` document of ``task_id`` (without ``_id``), or None."""
        return self.col(C.TRAINING_JOBS).find_one({"task_id": task_id}, {"_id": 0})

    def _ml_write(self, op: Any, what: str) -> Any:
        try:
            return op()
        except ConnectionFailure as e:
            raise ServiceUnavailableError(f"MongoDB unreachable while {what}: {e}") from e

    # ------------------------------------------------------------ backtesting and optimisation
    # One whole document per run (insert_one); the result body is JSON-compatible.
    def backtest_result_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``backtest_results`` document (keyed by ``task_id``).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        try:
            self.col(C.BACKTEST_RESULTS).insert_one(dict(doc))
        except ConnectionFailure as e:
            raise ServiceUnavailableError(
                f"MongoDB unreachable while saving a backtest: {e}"
            ) from e

    def backtest_result_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``backtest_results`` document of ``task_id`` (without ``_id``), or None."""
        return self.col(C.BACKTEST_RESULTS).find_one({"task_id": task_id}, {"_id": 0})

    def optimization_result_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``optimization_results`` document (keyed by ``task_id``).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        try:
            self.col(C.OPTIMIZATION_RESULTS).insert_one(dict(doc))
        except ConnectionFailure as e:
            raise ServiceUnavailableError(
                f"MongoDB unreachable while saving an optimisation: {e}"
            ) from e

    def optimization_result_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``optimization_results`` document of ``task_id`` (without ``_id``), or None."""
        return self.col(C.OPTIMIZATION_RESULTS).find_one({"task_id": task_id}, {"_id": 0})


# ---------------------------------------------------------------- helpers
def _frame_to_docs(
    symbol: str, timeframe: str, frame: pd.DataFrame, step: Any, source: str
) -> list[dict[str, Any]]:
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


def _same_candle(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return all(new.get(f) == old.get(f) for f in (*CANDLE_FIELDS, "source"))


def _docs_to_frame(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
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
