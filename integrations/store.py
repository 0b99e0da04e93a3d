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
from bson import json_util
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
    TASK_RESULTS = "task_results"  # every job's result, one document per task (flow run) id
    DEAD_LETTERS = "dead_letters"  # runs that exhausted their recovery attempts


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
    C.API_USAGE: [
        IndexModel([("user", ASCENDING), ("day", ASCENDING)], name="user_day"),
        IndexModel([("task_id", ASCENDING)], name="task_id"),
        IndexModel([("user", ASCENDING), ("idempotency_key", ASCENDING)], name="user_key"),
    ],
    C.TASK_RESULTS: [IndexModel([("task_id", ASCENDING)], unique=True, name="task_id")],
    C.DEAD_LETTERS: [IndexModel([("task_id", ASCENDING)], unique=True, name="task_id")],
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

    # ------------------------------------------------------------ monitoring
    # Whole documents only (insert_one / replace_one): see the nx-27017 notes.
    def _mon_write(self, op: Any, what: str) -> Any:
        try:
            return op()
        except PyMongoError as e:
            raise ServiceUnavailableError(
                f"MongoDB unreachable while {what}: {type(e).__name__}"
            ) from e

    def health_report_save(self, doc: Mapping[str, Any], *, keep_days: int = 30) -> None:
        """Insert one ``health_reports`` document (expires after ``keep_days``).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        body = dict(doc)
        created = body.setdefault("created_at", datetime.now(UTC))
        body["expires_at"] = created + pd.Timedelta(days=keep_days).to_pytimedelta()
        self._mon_write(
            lambda: self.col(C.HEALTH_REPORTS).insert_one(body), "saving a health report"
        )

    def health_reports_latest(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``health_reports`` documents (without ``_id``), newest first."""
        cur = self.col(C.HEALTH_REPORTS).find({}, {"_id": 0}).sort("created_at", DESCENDING)
        return list(cur.limit(limit))

    def health_state_all(self) -> dict[str, dict[str, Any]]:
        """Every service's health state ``{service: {consecutive_failures, last_status}}``.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        docs = self._mon_write(
            lambda: list(self.col(C.HEALTH_STATE).find({}, {"_id": 0})), "reading health state"
        )
        return {d["service"]: d for d in docs}

    def health_state_save(self, service: str, state: Mapping[str, Any]) -> None:
        """Write the whole ``health_state`` document of ``service`` (insert or replace)."""
        doc = {**state, "service": service}
        col = self.col(C.HEALTH_STATE)

        def write() -> None:
            if col.count_documents({"service": service}, limit=1):
                col.replace_one({"service": service}, doc)
            else:
                col.insert_one(doc)

        self._mon_write(write, "saving health state")

    def alert_record(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``alerts`` document: fingerprint, created_at, level, title, message,
        urgent, suppressed, attempted, delivered, failed (channel -> reason), sent."""
        self._mon_write(lambda: self.col(C.ALERTS).insert_one(dict(doc)), "recording an alert")

    def alert_last_sent(self, fingerprint: str) -> datetime | None:
        """When the alert ``fingerprint`` was last delivered on some channel, or None."""
        doc = self._mon_write(
            lambda: self.col(C.ALERTS).find_one(
                {"fingerprint": fingerprint, "sent": True},
                {"created_at": 1},
                sort=[("created_at", DESCENDING)],
            ),
            "reading alerts",
        )
        return doc["created_at"] if doc else None

    def alerts_find(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``alerts`` documents matching ``query`` (without ``_id``), oldest first."""
        return list(
            self.col(C.ALERTS).find(dict(query or {}), {"_id": 0}).sort("created_at", ASCENDING)
        )

    def portfolio_report_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``portfolio_reports`` document (keyed by ``report_date``, YYYY-MM-DD)."""
        self._mon_write(
            lambda: self.col(C.PORTFOLIO_REPORTS).insert_one(dict(doc)), "saving a portfolio report"
        )

    def portfolio_reports_find(self, report_date: str) -> list[dict[str, Any]]:
        """``portfolio_reports`` of ``report_date`` (without ``_id``)."""
        return list(self.col(C.PORTFOLIO_REPORTS).find({"report_date": report_date}, {"_id": 0}))

    def api_cost_report_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``api_cost_history`` document (keyed by ``report_date``)."""
        self._mon_write(
            lambda: self.col(C.API_COST_HISTORY).insert_one(dict(doc)), "saving a cost report"
        )

    def api_cost_reports_find(self, report_date: str) -> list[dict[str, Any]]:
        """``api_cost_history`` documents of ``report_date`` (without ``_id``)."""
        return list(self.col(C.API_COST_HISTORY).find({"report_date": report_date}, {"_id": 0}))

    def record_llm_cost(
        self,
        *,
        run_id: str | None,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        created_at: datetime | None = None,
        purpose: str | None = None,
    ) -> None:
        """Append one LLM call to the ``llm_costs`` ledger.

        Document: ``{created_at (UTC), run_id, model, prompt_tokens, completion_tokens,
        cost_usd, purpose}``. Every LLM call (issue 6) writes one; the cost report sums them.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        doc = {
            "created_at": created_at or datetime.now(UTC),
            "run_id": run_id,
            "model": model,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "cost_usd": float(cost_usd),
            "purpose": purpose,
        }
        self._mon_write(lambda: self.col(C.LLM_COSTS).insert_one(doc), "recording an LLM cost")

    def llm_costs_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """``llm_costs`` documents with ``start <= created_at < end`` (without ``_id``), oldest first.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        return self._mon_write(
            lambda: list(
                self.col(C.LLM_COSTS)
                .find({"created_at": {"$gte": start, "$lt": end}}, {"_id": 0})
                .sort("created_at", ASCENDING)
            ),
            "reading LLM costs",
        )

    def set_llm_enabled(self, enabled: bool, reason: str, by: str) -> None:
        """Switch the LLM on or off (the kill switch in ``llm_settings``, document ``_id="llm"``).

        Writes the whole document ``{_id, enabled, reason, by, updated_at}``.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        doc = {
            "_id": "llm",
            "enabled": bool(enabled),
            "reason": reason,
            "by": by,
            "updated_at": datetime.now(UTC),
        }
        self._mon_write(
            lambda: self.col(C.LLM_SETTINGS).replace_one({"_id": "llm"}, doc, upsert=True),
            "switching the LLM",
        )

    def llm_settings(self) -> dict[str, Any]:
        """The kill-switch document (``enabled`` True when never set)."""
        doc = self._mon_write(
            lambda: self.col(C.LLM_SETTINGS).find_one({"_id": "llm"}), "reading LLM settings"
        )
        return doc or {"_id": "llm", "enabled": True, "reason": None, "by": None}

    def llm_enabled(self) -> bool:
        """True unless the kill switch is off. The LLM client checks this before every call.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        return bool(self.llm_settings().get("enabled", True))

    def trades_closed_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """``trades`` documents with ``start <= closed_at < end`` (without ``_id``), oldest first."""
        return self._mon_write(
            lambda: list(
                self.col(C.TRADES)
                .find({"closed_at": {"$gte": start, "$lt": end}}, {"_id": 0})
                .sort("closed_at", ASCENDING)
            ),
            "reading trades",
        )

    # ------------------------------------------------------------ self-improvement
    # Whole documents only (insert_one / replace_one): see the nx-27017 notes.
    def llm_analysis_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``llm_analysis_history`` document (keyed by ``task_id``).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        self._mon_write(
            lambda: self.col(C.LLM_ANALYSIS_HISTORY).insert_one(dict(doc)), "saving an analysis"
        )

    def llm_analyses_find(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``llm_analysis_history`` documents matching ``query`` (without ``_id``), oldest first."""
        return list(
            self.col(C.LLM_ANALYSIS_HISTORY)
            .find(dict(query or {}), {"_id": 0})
            .sort("created_at", ASCENDING)
        )

    def retrain_history_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``retrain_history`` document (keyed by ``task_id``).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        self._mon_write(
            lambda: self.col(C.RETRAIN_HISTORY).insert_one(dict(doc)), "saving a retrain"
        )

    def retrain_history_find(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``retrain_history`` documents matching ``query`` (without ``_id``), oldest first."""
        return list(
            self.col(C.RETRAIN_HISTORY).find(dict(query or {}), {"_id": 0}).sort("created_at", 1)
        )

    def strategy_state_get(self, strategy: str) -> dict[str, Any] | None:
        """The ``strategy_state`` document of ``strategy`` (without ``_id``), or None."""
        return self._mon_write(
            lambda: self.col(C.STRATEGY_STATE).find_one({"strategy": strategy}, {"_id": 0}),
            "reading strategy state",
        )

    def strategy_state_save(self, doc: Mapping[str, Any]) -> None:
        """Write the whole ``strategy_state`` document of ``doc["strategy"]`` (insert or replace).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        body = dict(doc)
        col = self.col(C.STRATEGY_STATE)

        def write() -> None:
            if col.count_documents({"strategy": body["strategy"]}, limit=1):
                col.replace_one({"strategy": body["strategy"]}, body)
            else:
                col.insert_one(body)

        self._mon_write(write, "saving strategy state")

    def lock_acquire(
        self, name: str, owner: str, ttl_s: float, *, note: str = ""
    ) -> dict[str, Any] | None:
        """Take the lock ``name`` for ``owner`` (document ``_id=name`` in ``locks``).

        A lock older than ``ttl_s`` is considered abandoned and taken over.

        Returns:
            None when acquired; the holder's document ``{_id, owner, acquired_at, note}`` when
            another owner holds it.

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        from pymongo.errors import DuplicateKeyError

        col = self.col(C.LOCKS)
        now = datetime.now(UTC)
        doc = {"_id": name, "owner": owner, "acquired_at": now, "note": note}
        try:
            col.insert_one(doc)
            return None
        except DuplicateKeyError:
            held = col.find_one({"_id": name})
        except PyMongoError as e:
            raise ServiceUnavailableError(f"MongoDB unreachable while locking {name}") from e
        if held is None:
            return self.lock_acquire(name, owner, ttl_s, note=note)
        acquired = _group_datetime(held.get("acquired_at"))
        age_s = (now - acquired).total_seconds() if acquired else float("inf")
        if held.get("owner") == owner or age_s > ttl_s:
            res = col.replace_one({"_id": name, "owner": held.get("owner")}, doc)
            return None if res.matched_count else col.find_one({"_id": name})
        return held

    def lock_release(self, name: str, owner: str) -> None:
        """Release the lock ``name`` if ``owner`` holds it."""
        self._mon_write(
            lambda: self.col(C.LOCKS).delete_one({"_id": name, "owner": owner}), "unlocking"
        )

    # ------------------------------------------------------------ bulk analysis
    def load_candles_many(
        self, symbols: list[str], timeframe: str, *, last_n: int
    ) -> dict[str, pd.DataFrame]:
        """The newest ``last_n`` candles of each of ``symbols`` in a few queries.

        One ``$group`` finds each symbol's newest bar; symbols ending within ``last_n`` bars
        of the most recent one are read with one ``$in`` query (on nx-27017 a query costs
        ~70 ms whatever it returns, so this is ~3x faster than a query per symbol); the rest
        are read one by one.

        Returns:
            ``{symbol: frame}`` as :meth:`load_candles` (empty frame: no candles stored).

        Raises:
            ServiceUnavailableError: MongoDB unreachable.
        """
        out = {s: _docs_to_frame([]) for s in symbols}
        if not symbols:
            return out
        col = self.col(C.MARKET_DATA)
        try:
            groups = col.aggregate(
                [
                    {"$match": {"symbol": {"$in": list(symbols)}, "timeframe": timeframe}},
                    {"$group": {"_id": "$symbol", "last": {"$max": "$open_time"}}},
                ]
            )
            newest = {d["_id"]: t for d in groups if (t := _group_datetime(d.get("last")))}
            if not newest:
                return out
            span = bar_length(timeframe) * last_n
            latest = max(newest.values())
            together = [s for s, t in newest.items() if latest - t < span]
            since = min(newest[s] for s in together) - span
            docs = list(
                col.find(
                    {
                        "symbol": {"$in": together},
                        "timeframe": timeframe,
                        "open_time": {"$gt": since},
                    },
                    {"_id": 0},
                )
            )
        except ConnectionFailure as e:
            raise ServiceUnavailableError(f"MongoDB unreachable while reading candles: {e}") from e
        by_symbol: dict[str, list[dict[str, Any]]] = {s: [] for s in together}
        for d in docs:
            by_symbol[d.pop("symbol")].append(d)
        for s, rows in by_symbol.items():
            for d in rows:
                d.pop("timeframe", None)
            out[s] = _docs_to_frame(rows).sort_index().iloc[-last_n:]
        for s in newest.keys() - set(together):
            out[s] = self.load_candles(s, timeframe, last_n=last_n)
        return out


# ---------------------------------------------------------------- helpers
def _group_datetime(value: Any) -> datetime | None:
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
