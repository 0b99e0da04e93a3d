"""The :class:`Store`: one database, one error boundary, one repository per domain.

``store.market``, ``store.models``, ``store.model_audit``, ``store.jobs``,
``store.monitoring``, ``store.improvement``, ``store.api_usage``, ``store.dead_letters``,
``store.blobs`` (shared model and checkpoint files, GridFS) and ``store.ledger`` hold the
accessors;
the flat methods of earlier versions (``store.load_candles(...)``...) delegate to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pymongo import IndexModel, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from integrations.store.blobs import Blobs
from integrations.store.boundary import Boundary, is_shared
from integrations.store.coverage import CandleCoverage
from integrations.store.dead_letters import DeadLetters
from integrations.store.improvement import SelfImprovement
from integrations.store.jobs import Jobs
from integrations.store.ledger import PredictionLedger
from integrations.store.market import MarketData, UpsertReport
from integrations.store.model_audit import ModelAudit
from integrations.store.models import Models
from integrations.store.monitoring import Monitoring
from integrations.store.schema import EXPIRING, INDEXES, C, Retention, indexes_fingerprint
from integrations.store.usage import ApiUsage

log = logging.getLogger(__name__)


class Store:
    """Typed access to the platform's MongoDB database.

    Args:
        client: a pymongo client (:func:`~integrations.store.boundary.connect` or
            :func:`~integrations.store.boundary.shared_client`).
        database: database name.
        retry_s: retry budget of each idempotent call on temporary errors, seconds
            (0: fail at once; jobs use ``Settings.store_retry_s``, the gateway a few seconds).
        retention: what expires when (default: 7 days, health reports 30).
        uri_label: the URI with its password masked, for log lines.
    """

    def __init__(
        self,
        client: MongoClient,
        database: str,
        *,
        retry_s: float = 0.0,
        retention: Retention | None = None,
        uri_label: str = "",
    ) -> None:
        self.client = client
        self.db: Database = client[database]
        self.boundary = Boundary(retry_s, uri_label or f"database {database}")
        self.retention = retention or Retention()
        parts = (self.db, self.boundary, self.retention)
        self.market = MarketData(*parts)
        self.models = Models(*parts)
        self.model_audit = ModelAudit(*parts)
        self.jobs = Jobs(*parts)
        self.monitoring = Monitoring(*parts)
        self.improvement = SelfImprovement(*parts)
        self.api_usage = ApiUsage(*parts)
        self.dead_letters = DeadLetters(*parts)
        self.coverage = CandleCoverage(*parts)
        self.blobs = Blobs(*parts)
        self.ledger = PredictionLedger(*parts)

    def __repr__(self) -> str:
        return f"Store({self.boundary.uri_label!r}, retry_s={self.boundary.retry_s:g})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ general
    def close(self) -> None:
        """Close the client, unless it is the process's shared client (closed at exit)."""
        if not is_shared(self.client):
            self.client.close()

    def col(self, name: str) -> Collection:
        """Return collection ``name`` (one of :class:`C`). Raw pymongo: prefer the accessors."""
        return self.db[name]

    def ping(self) -> float:
        """Ping the server once (no retry). Returns the round trip in milliseconds.

        Raises:
            StoreUnavailableError: the server did not answer.
        """
        start = time.perf_counter()
        self.boundary.call(
            "answering ping", lambda: self.client.admin.command("ping"), idempotent=False
        )
        return (time.perf_counter() - start) * 1000

    def ensure_indexes(self, *, force: bool = False) -> bool:
        """Create every index of :data:`INDEXES` (idempotent) and the deployed pointers of
        databases written before they existed, unless the store's marker (collection
        ``botai_meta``) says this very index set was applied already: then one read is all
        it costs (a forked run calls this first; creating the 21 indexes took 0.07-0.1 s).

        An index whose options changed (e.g. ``task_id`` became unique) is dropped and
        created again; a unique index that existing duplicates prevent is logged and skipped.

        Args:
            force: apply them whatever the marker says (``botai up`` does: an index dropped
                by hand comes back). Applying them also gives documents of expiring
                collections that have no ``expires_at`` one.

        Returns:
            True when the indexes were applied, False when the marker showed them current.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        fingerprint = indexes_fingerprint()
        marker = self.db[C.META]
        if not force:
            doc = self.boundary.call(
                "reading the index marker", lambda: marker.find_one({"_id": "indexes"})
            )
            if doc is not None and doc.get("fingerprint") == fingerprint:
                return False
        for name, models in INDEXES.items():
            if models:
                self.boundary.call(
                    f"creating indexes of {name}", lambda n=name, m=models: _create(self.db[n], m)
                )
        self.models.backfill_pointers()
        for name in EXPIRING:  # documents written while a write path forgot the expiry
            if stamped := self.jobs.stamp_missing_expiry(name):
                log.info("gave %d %s documents their expiry date", stamped, name)
        record = {"_id": "indexes", "fingerprint": fingerprint, "applied_at": datetime.now(UTC)}
        self.boundary.call(
            "writing the index marker",
            lambda: marker.replace_one({"_id": "indexes"}, record, upsert=True),
        )
        return True

    def retention_table(self) -> dict[str, float | None]:
        """``{collection: days kept}`` (None: kept forever)."""
        return self.retention.table()

    # ------------------------------------------------------------ market data
    def upsert_candles(
        self, symbol: str, timeframe: str, frame: pd.DataFrame, *, source: str
    ) -> UpsertReport:
        """See :meth:`MarketData.upsert_candles`."""
        return self.market.upsert_candles(symbol, timeframe, frame, source=source)

    def load_candles(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        last_n: int | None = None,
    ) -> pd.DataFrame:
        """See :meth:`MarketData.load_candles`."""
        return self.market.load_candles(symbol, timeframe, start, end, last_n=last_n)

    def load_candles_many(
        self, symbols: list[str], timeframe: str, *, last_n: int
    ) -> dict[str, pd.DataFrame]:
        """See :meth:`MarketData.load_candles_many`."""
        return self.market.load_candles_many(symbols, timeframe, last_n=last_n)

    def candle_symbols(self, timeframe: str | None = None) -> list[str]:
        """See :meth:`MarketData.candle_symbols`."""
        return self.market.candle_symbols(timeframe)

    def candle_summary(self) -> list[dict[str, Any]]:
        """See :meth:`MarketData.candle_summary`."""
        return self.market.candle_summary()

    # ------------------------------------------------------------ models and job records
    def model_insert(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Models.model_insert`."""
        self.models.model_insert(doc)

    def model_replace(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Models.model_replace`."""
        self.models.model_replace(doc)

    def model_get(self, model_id: str) -> dict[str, Any] | None:
        """See :meth:`Models.model_get`."""
        return self.models.model_get(model_id)

    def models_find(
        self, query: Mapping[str, Any], *, sort: list[tuple[str, int]] | None = None, limit: int = 0
    ) -> list[dict[str, Any]]:
        """See :meth:`Models.models_find`."""
        return self.models.models_find(query, sort=sort, limit=limit)

    def deployed_model_docs(
        self,
        *,
        symbol: str | None = None,
        timeframe: str | None = None,
        model_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """See :meth:`Models.deployed_model_docs` (the pointer is the truth, not ``status``)."""
        return self.models.deployed_model_docs(
            symbol=symbol, timeframe=timeframe, model_type=model_type
        )

    def training_job_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Jobs.training_job_save`."""
        self.jobs.training_job_save(doc)

    def training_job_get(self, task_id: str) -> dict[str, Any] | None:
        """See :meth:`Jobs.training_job_get`."""
        return self.jobs.training_job_get(task_id)

    def backtest_result_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Jobs.backtest_result_save`."""
        self.jobs.backtest_result_save(doc)

    def optimization_result_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Jobs.optimization_result_save`."""
        self.jobs.optimization_result_save(doc)

    def task_result_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Jobs.task_result_save`."""
        self.jobs.task_result_save(doc)

    def task_result_get(self, task_id: str) -> dict[str, Any] | None:
        """See :meth:`Jobs.task_result_get`."""
        return self.jobs.task_result_get(task_id)

    # ------------------------------------------------------------ monitoring
    def health_report_save(self, doc: Mapping[str, Any], *, keep_days: float | None = None) -> None:
        """See :meth:`Monitoring.health_report_save`."""
        self.monitoring.health_report_save(doc, keep_days=keep_days)

    def health_state_all(self) -> dict[str, dict[str, Any]]:
        """See :meth:`Monitoring.health_state_all`."""
        return self.monitoring.health_state_all()

    def health_state_save(self, service: str, state: Mapping[str, Any]) -> None:
        """See :meth:`Monitoring.health_state_save`."""
        self.monitoring.health_state_save(service, state)

    def alert_record(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Monitoring.alert_record`."""
        self.monitoring.alert_record(doc)

    def alert_last_sent(self, fingerprint: str) -> datetime | None:
        """See :meth:`Monitoring.alert_last_sent`."""
        return self.monitoring.alert_last_sent(fingerprint)

    def portfolio_report_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Monitoring.portfolio_report_save`."""
        self.monitoring.portfolio_report_save(doc)

    def api_cost_report_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`Monitoring.api_cost_report_save`."""
        self.monitoring.api_cost_report_save(doc)

    def trades_closed_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """See :meth:`Monitoring.trades_closed_between`."""
        return self.monitoring.trades_closed_between(start, end)

    # ------------------------------------------------------------ self-improvement
    def record_llm_cost(self, **kwargs: Any) -> None:
        """See :meth:`SelfImprovement.record_llm_cost` (keyword arguments only)."""
        self.improvement.record_llm_cost(**kwargs)

    def llm_costs_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """See :meth:`SelfImprovement.llm_costs_between`."""
        return self.improvement.llm_costs_between(start, end)

    def set_llm_enabled(self, enabled: bool, reason: str, by: str) -> None:
        """See :meth:`SelfImprovement.set_llm_enabled`."""
        self.improvement.set_llm_enabled(enabled, reason, by)

    def llm_settings(self) -> dict[str, Any]:
        """See :meth:`SelfImprovement.llm_settings`."""
        return self.improvement.llm_settings()

    def llm_enabled(self) -> bool:
        """See :meth:`SelfImprovement.llm_enabled`."""
        return self.improvement.llm_enabled()

    def llm_analysis_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`SelfImprovement.llm_analysis_save`."""
        self.improvement.llm_analysis_save(doc)

    def retrain_history_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`SelfImprovement.retrain_history_save`."""
        self.improvement.retrain_history_save(doc)

    def strategy_state_get(self, strategy: str) -> dict[str, Any] | None:
        """See :meth:`SelfImprovement.strategy_state_get`."""
        return self.improvement.strategy_state_get(strategy)

    def strategy_state_save(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`SelfImprovement.strategy_state_save`."""
        self.improvement.strategy_state_save(doc)

    def lock_acquire(
        self, name: str, owner: str, ttl_s: float, *, note: str = ""
    ) -> dict[str, Any] | None:
        """See :meth:`SelfImprovement.lock_acquire`."""
        return self.improvement.lock_acquire(name, owner, ttl_s, note=note)

    def lock_release(self, name: str, owner: str) -> None:
        """See :meth:`SelfImprovement.lock_release`."""
        self.improvement.lock_release(name, owner)


def _create(col: Collection, models: list[IndexModel]) -> None:
    """Create ``models`` on ``col``; an index on the same keys whose options differ (e.g.
    ``task_id`` became unique, a TTL changed) is dropped and created again. nx-27017 keeps the
    old index silently and MongoDB raises IndexOptionsConflict, so this compares first.

    A unique index that existing duplicates prevent is logged and created without ``unique``.
    """
    existing = col.index_information()
    for model in models:
        spec = model.document
        keys = [(k, int(v)) for k, v in spec["key"].items()]
        for name, info in existing.items():
            if (
                [(k, int(v)) for k, v in info["key"]] == keys
                and name != "_id_"
                and (
                    bool(info.get("unique")) != bool(spec.get("unique"))
                    or info.get("expireAfterSeconds") != spec.get("expireAfterSeconds")
                )
            ):
                log.info("re-creating index %s of %s with new options", name, col.name)
                col.drop_index(name)
    try:
        col.create_indexes(models)  # one command in the usual case
        return
    except OperationFailure as e:
        if not _duplicates(e):
            raise
    for model in models:  # duplicates block a unique index: find it, create it without unique
        try:
            col.create_indexes([model])
        except OperationFailure as e:
            if not _duplicates(e):
                raise
            log.warning(
                "%s holds duplicates of %s: unique index not created (remove the duplicates "
                "and start again)",
                col.name,
                model.document["name"],
            )
            keys = list(model.document["key"].items())
            col.create_indexes([IndexModel(keys, name=model.document["name"])])


def _duplicates(error: OperationFailure) -> bool:
    """True when ``error`` says a unique index met duplicates (MongoDB: code 11000; nx-27017:
    no code, "UNIQUE constraint failed")."""
    text = str(error)
    return (
        isinstance(error, DuplicateKeyError)
        or error.code == 11000
        or "UNIQUE constraint" in text
        or "duplicate key" in text
    )
