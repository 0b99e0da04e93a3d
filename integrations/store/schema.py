"""Collection names, their indexes (unique keys and TTLs) and what expires when.

Every collection the platform writes is named in :class:`C`; :data:`INDEXES` lists its
indexes and :data:`EXPIRING` the collections whose documents carry an ``expires_at`` date
(set by the store on every write, removed by a TTL index with ``expireAfterSeconds=0``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta

from pymongo import ASCENDING, DESCENDING, IndexModel


class C:
    """Collection names. Use these constants, never string literals, elsewhere."""

    MARKET_DATA = "market_data"
    CANDLE_TAILS = "candle_tails"  # derived: newest bars of each market_data series, rebuilt
    MODELS = "models"
    DEPLOYED_MODELS = "deployed_models"  # one pointer per (model_type, symbol, timeframe)
    MODEL_AUDIT = "model_audit"  # every operator change of a model's status: who, when, why
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
    API_QUOTA = "api_quota"  # one counter per (user, job, day): the atomic quota
    TASK_RESULTS = "task_results"  # every job's result, one document per task (flow run) id
    DEAD_LETTERS = "dead_letters"  # runs that exhausted their recovery attempts
    PREDICTION_LEDGER = "prediction_ledger"  # every served prediction, scored when it resolves
    MODEL_LIVE_SCORES = "model_live_scores"  # a model's live figures, one per scoring run
    META = "botai_meta"  # one marker: the index set last applied (Store.ensure_indexes)
    # GridFS bucket "blobs" (shared model and checkpoint files): GridFS creates its indexes;
    # no index of ours (nx-27017 then cannot create the bucket: "duplicate column name")
    BLOB_FILES = "blobs.files"


#: Results and job records: they carry ``expires_at`` and a TTL index removes them.
#: Everything else (models, the deployed pointer, the model audit trail, candles, trades, the LLM cost ledger and
#: cost reports, the strategy-disable audit in ``strategy_state``, dead letters) is kept;
#: ``candle_tails`` too: it is derived from ``market_data`` and rebuilt by every candle write.
EXPIRING: tuple[str, ...] = (
    C.TRAINING_JOBS,
    C.BACKTEST_RESULTS,
    C.OPTIMIZATION_RESULTS,
    C.TASK_RESULTS,
    C.HEALTH_REPORTS,
    C.ALERTS,
    C.PORTFOLIO_REPORTS,
    C.LLM_ANALYSIS_HISTORY,
    C.RETRAIN_HISTORY,
    C.API_USAGE,
    C.API_QUOTA,
    C.PREDICTION_LEDGER,
    C.MODEL_LIVE_SCORES,
)

#: Retention overrides that differ from the platform default (days).
#: The ledger outlives the longest forecast (168 hours) and the decay rule's windows.
DEFAULT_RETENTION_OVERRIDES: dict[str, float] = {
    C.HEALTH_REPORTS: 30.0,
    C.PREDICTION_LEDGER: 90.0,
    C.MODEL_LIVE_SCORES: 90.0,
}


def _ttl() -> IndexModel:
    return IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="ttl")


def _task_id() -> IndexModel:
    return IndexModel([("task_id", ASCENDING)], unique=True, name="task_id")


_KEY = [("model_type", ASCENDING), ("symbol", ASCENDING), ("timeframe", ASCENDING)]

#: Indexes of every collection: unique keys and TTLs. Applied by ``Store.ensure_indexes``.
INDEXES: dict[str, list[IndexModel]] = {
    C.MARKET_DATA: [
        IndexModel(
            [("symbol", ASCENDING), ("timeframe", ASCENDING), ("open_time", ASCENDING)],
            unique=True,
            name="symbol_timeframe_open_time",
        )
    ],
    C.CANDLE_TAILS: [
        IndexModel(
            [("symbol", ASCENDING), ("timeframe", ASCENDING)], unique=True, name="symbol_timeframe"
        )
    ],
    C.MODELS: [
        IndexModel([("model_id", ASCENDING)], unique=True, name="model_id"),
        IndexModel([*_KEY, ("version", ASCENDING)], unique=True, name="key_version"),
        IndexModel([*_KEY, ("status", ASCENDING)], name="type_symbol_timeframe_status"),
    ],
    C.DEPLOYED_MODELS: [IndexModel(_KEY, unique=True, name="model_key")],
    C.MODEL_AUDIT: [
        IndexModel([("audit_id", ASCENDING)], unique=True, name="audit_id"),
        IndexModel([*_KEY, ("at", DESCENDING)], name="key_at"),
        IndexModel([("at", DESCENDING)], name="at"),
    ],
    C.TRAINING_JOBS: [_task_id(), _ttl()],
    C.BACKTEST_RESULTS: [_task_id(), _ttl()],
    C.OPTIMIZATION_RESULTS: [_task_id(), _ttl()],
    C.HEALTH_REPORTS: [IndexModel([("created_at", DESCENDING)], name="created_at"), _ttl()],
    C.HEALTH_STATE: [IndexModel([("service", ASCENDING)], unique=True, name="service")],
    C.ALERTS: [
        IndexModel([("fingerprint", ASCENDING), ("created_at", DESCENDING)], name="fp"),
        _ttl(),
    ],
    C.PORTFOLIO_REPORTS: [IndexModel([("report_date", ASCENDING)], name="report_date"), _ttl()],
    C.TRADES: [IndexModel([("trade_id", ASCENDING)], unique=True, name="trade_id")],
    C.LLM_COSTS: [IndexModel([("created_at", ASCENDING)], name="created_at")],
    C.LLM_SETTINGS: [],
    C.API_COST_HISTORY: [IndexModel([("report_date", ASCENDING)], name="report_date")],
    C.LLM_ANALYSIS_HISTORY: [IndexModel([("task_id", ASCENDING)], name="task_id"), _ttl()],
    C.RETRAIN_HISTORY: [IndexModel([("task_id", ASCENDING)], name="task_id"), _ttl()],
    C.STRATEGY_STATE: [IndexModel([("strategy", ASCENDING)], unique=True, name="strategy")],
    C.LOCKS: [],
    C.API_USAGE: [
        IndexModel([("user", ASCENDING), ("day", ASCENDING)], name="user_day"),
        IndexModel([("task_id", ASCENDING)], name="task_id"),
        IndexModel([("user", ASCENDING), ("idempotency_key", ASCENDING)], name="user_key"),
        _ttl(),
    ],
    C.API_QUOTA: [
        IndexModel(
            [("user", ASCENDING), ("job", ASCENDING), ("day", ASCENDING)],
            unique=True,
            name="user_job_day",
        ),
        _ttl(),
    ],
    C.TASK_RESULTS: [_task_id(), _ttl()],
    C.DEAD_LETTERS: [_task_id()],
    C.PREDICTION_LEDGER: [
        IndexModel([("entry_id", ASCENDING)], unique=True, name="entry_id"),
        # the scoring query: unscored entries whose target hour has passed
        IndexModel([("scored", ASCENDING), ("target_time", ASCENDING)], name="scored_target"),
        # a model's scored entries, newest first (live figures, decay rule, charts)
        IndexModel([("model_id", ASCENDING), ("target_time", DESCENDING)], name="model_target"),
        _ttl(),
    ],
    C.MODEL_LIVE_SCORES: [
        IndexModel([("model_id", ASCENDING), ("created_at", DESCENDING)], name="model_created"),
        _ttl(),
    ],
}


class Retention:
    """How long the documents of each expiring collection are kept.

    Args:
        default_days: retention of every collection in :data:`EXPIRING`.
        overrides: per-collection days (e.g. ``{"health_reports": 30}``); a collection
            not in :data:`EXPIRING` cannot be given one.

    Raises:
        ValueError: an override names a collection that never expires, or days <= 0.
    """

    def __init__(self, default_days: float = 7.0, overrides: Mapping[str, float] | None = None):
        merged = {**DEFAULT_RETENTION_OVERRIDES, **(overrides or {})}
        bad = sorted(set(merged) - set(EXPIRING))
        if bad:
            raise ValueError(
                f"retention overrides for collections that never expire: {bad}; "
                f"expiring collections are {list(EXPIRING)}"
            )
        if default_days <= 0 or any(d <= 0 for d in merged.values()):
            raise ValueError("retention days must be > 0")
        self.days = {name: float(merged.get(name, default_days)) for name in EXPIRING}

    def expires_at(self, collection: str, written_at: datetime) -> datetime | None:
        """When a document of ``collection`` written at ``written_at`` expires (None: never)."""
        days = self.days.get(collection)
        return None if days is None else written_at + timedelta(days=days)

    def table(self) -> dict[str, float | None]:
        """``{collection: days kept}`` for every collection in :class:`C` (None: kept forever)."""
        names = [v for k, v in vars(C).items() if k.isupper()]
        return {name: self.days.get(name) for name in names}


def indexes_fingerprint() -> str:
    """A hash of :data:`INDEXES` (every collection's index keys and options): the store
    records it once they are applied, and a run whose store carries the same hash skips
    creating them again."""
    spec = {name: [m.document for m in models] for name, models in sorted(INDEXES.items())}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
