"""Retention: results and job records expire by TTL; models, costs, audits and dead letters stay.

nx-27017 enforces TTL indexes itself (measured: a document whose ``expires_at`` has passed is
no longer returned at once and is deleted within about a second); MongoDB's TTL monitor runs
every 60 s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.settings import load_settings
from integrations.store import EXPIRING, C, Retention, Store

OLD = datetime.now(UTC) - timedelta(days=8)


@pytest.mark.tc("TC-ASYNC-093", "TC-ASYNC-104")
def test_ensure_indexes_creates_a_ttl_on_every_expiring_collection(store: Store) -> None:
    for name in EXPIRING:
        ttl = [
            v
            for v in store.col(name).index_information().values()
            if v.get("expireAfterSeconds") == 0
        ]
        assert [k for k, _ in ttl[0]["key"]] == ["expires_at"], name
    for name in (C.MODELS, C.DEPLOYED_MODELS, C.LLM_COSTS, C.STRATEGY_STATE, C.DEAD_LETTERS):
        info = store.col(name).index_information().values()
        assert not any("expireAfterSeconds" in v for v in info), name


@pytest.mark.tc("TC-ASYNC-093", "TC-ASYNC-104")
def test_results_older_than_retention_expire_models_and_costs_stay(store: Store) -> None:
    store.backtest_result_save({"task_id": "old", "created_at": OLD})
    store.backtest_result_save({"task_id": "new", "created_at": datetime.now(UTC)})
    store.training_job_save({"task_id": "old", "created_at": OLD, "status": "completed"})
    store.task_result_save({"task_id": "old", "created_at": OLD})
    store.model_insert(
        {
            "model_id": "m1",
            "model_type": "lstm",
            "symbol": "X",
            "timeframe": "1h",
            "version": 1,
            "created_at": OLD,
            "status": "deployed",
        }
    )
    store.models.deploy_pointer_set(store.model_get("m1"), "test", OLD)
    store.record_llm_cost(
        run_id="r", model="gpt", prompt_tokens=1, completion_tokens=1, cost_usd=0.1, created_at=OLD
    )
    store.strategy_state_save({"strategy": "rsi", "enabled": False, "history": [], "at": OLD})
    store.dead_letters.dead_letter_save({"task_id": "old", "created_at": OLD})
    deadline = time.monotonic() + 70  # MongoDB's TTL monitor: every 60 s; nx-27017: at once
    while time.monotonic() < deadline and store.col(C.BACKTEST_RESULTS).count_documents({}) > 1:
        time.sleep(1)
    assert [d["task_id"] for d in store.col(C.BACKTEST_RESULTS).find()] == ["new"]
    assert store.training_job_get("old") is None
    assert store.task_result_get("old") is None
    assert store.model_get("m1") is not None
    assert store.models.deploy_pointers({"symbol": "X"})
    assert len(store.llm_costs_between(OLD - timedelta(hours=1), datetime.now(UTC))) == 1
    assert store.strategy_state_get("rsi") is not None
    assert store.dead_letters.dead_letter_get("old") is not None
    new = store.jobs.backtest_result_get("new")
    assert new["expires_at"] - new["created_at"] == timedelta(days=7)


@pytest.mark.tc("TC-ASYNC-093")
def test_retention_is_configurable_per_collection() -> None:
    settings = load_settings(retention_days=3, retention_overrides={"backtest_results": 1})
    ret = Retention(settings.retention_days, settings.retention_overrides)
    now = datetime.now(UTC)
    assert ret.expires_at(C.BACKTEST_RESULTS, now) == now + timedelta(days=1)
    assert ret.expires_at(C.TRAINING_JOBS, now) == now + timedelta(days=3)
    assert ret.expires_at(C.HEALTH_REPORTS, now) == now + timedelta(days=30)
    assert ret.expires_at(C.MODELS, now) is None
    assert ret.table()[C.LLM_COSTS] is None
    with pytest.raises(ValueError, match="never expire"):
        Retention(7, {"models": 1})
    with pytest.raises(ValueError, match="> 0"):
        Retention(0)


@pytest.mark.tc("TC-ASYNC-088", "TC-ASYNC-093")
def test_indexes_are_applied_once_and_again_only_when_forced_or_changed(store: Store) -> None:
    def has_task_id_index() -> bool:  # by its keys: nx-27017 names indexes its own way
        info = store.col(C.TASK_RESULTS).index_information().values()
        return any(v["key"] == [("task_id", 1)] and v.get("unique") for v in info)

    assert store.ensure_indexes() is False  # the fixture applied this index set: one read
    store.col(C.TASK_RESULTS).drop_index("task_id")
    assert store.ensure_indexes() is False and not has_task_id_index()  # the marker is trusted
    assert store.ensure_indexes(force=True) is True and has_task_id_index()  # botai up forces
    store.col(C.META).update_one({"_id": "indexes"}, {"$set": {"fingerprint": "older set"}})
    store.col(C.TASK_RESULTS).drop_index("task_id")
    assert store.ensure_indexes() is True and has_task_id_index()  # another index set: applied
    assert store.col(C.META).find_one({"_id": "indexes"})["fingerprint"] != "older set"


# ---------------------------------------------------------------- every retained collection
ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _documented_retention() -> dict[str, float | None]:
    """``{collection: days}`` from the Retention table of docs/architecture.md (None: forever)."""
    text = ARCHITECTURE.read_text().split("### Retention", 1)[1].split("\n## ", 1)[0]
    out: dict[str, float | None] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        kept = re.match(r"(\d+) days", cells[1])
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            out[name] = float(kept.group(1)) if kept else None
    return out


def _written_by_production(store: Store, at: datetime) -> dict[str, Callable[[], None]]:
    """One write per expiring collection, each through the call production makes."""
    from api.quotas import reserve
    from core.schemas.training import TrainModelParams
    from ml.training_jobs import new_job, save_job
    from tasks.results import write_task_result

    params = TrainModelParams(model_type="lstm", symbol="BTCUSDT", timeframe="1h")

    def training_job() -> None:  # train-model's job record (ml/lifecycle.py)
        save_job(store, {**new_job(params, "t-train"), "created_at": at})

    def task_result() -> None:  # every job's result (tasks/results.py), one attempt per try
        write_task_result.fn(store, {"task_id": "t-result", "result": {}, "saved_at": at})

    doc = {"task_id": "t-doc", "created_at": at}
    return {
        C.TRAINING_JOBS: training_job,
        C.BACKTEST_RESULTS: lambda: store.backtest_result_save(doc),
        C.OPTIMIZATION_RESULTS: lambda: store.optimization_result_save(doc),
        C.TASK_RESULTS: task_result,
        C.HEALTH_REPORTS: lambda: store.health_report_save({"created_at": at}),
        C.ALERTS: lambda: store.alert_record({"fingerprint": "fp", "created_at": at}),
        C.PORTFOLIO_REPORTS: lambda: store.portfolio_report_save({"created_at": at}),
        C.LLM_ANALYSIS_HISTORY: lambda: store.llm_analysis_save(doc),
        C.RETRAIN_HISTORY: lambda: store.retrain_history_save(doc),
        # the gateway's quota: one counter (api_quota) and one run owner (api_usage)
        C.API_QUOTA: lambda: reserve(store, "alice", "backtest", 5, "backtests", at),
        C.API_USAGE: lambda: None,  # written by the same reserve() call
        # predict-price / bulk-analysis record what they served; score-predictions its figures
        C.PREDICTION_LEDGER: lambda: store.ledger.entries_record(
            [{"entry_id": "t:X:price:1", "created_at": at, "scored": False}]
        ),
        C.MODEL_LIVE_SCORES: lambda: store.ledger.live_scores_save(
            {"model_id": "m", "created_at": at}
        ),
    }


@pytest.mark.tc("TC-ASYNC-093", "TC-ASYNC-104")
def test_every_retained_collection_gets_its_expiry_through_its_real_write_path(
    store: Store,
) -> None:
    documented = _documented_retention()
    retained = {name: days for name, days in documented.items() if days is not None}
    assert retained == store.retention.days  # docs and code name the same collections and days
    assert not set(EXPIRING) & {n for n, d in documented.items() if d is None}

    at = datetime.now(UTC).replace(microsecond=123000)  # whole ms: what the store keeps
    writers = _written_by_production(store, at)
    assert set(writers) == set(EXPIRING)  # a new expiring collection needs its write path here
    for write in writers.values():
        write()
    for name, days in retained.items():
        docs = list(store.col(name).find())
        assert len(docs) == 1, name
        expires = docs[0].get("expires_at")
        assert expires is not None, f"{name}: written without expires_at"
        assert expires.replace(tzinfo=None) == (at + timedelta(days=days)).replace(tzinfo=None), (
            name
        )
        ttl = [
            v["key"]
            for v in store.col(name).index_information().values()
            if v.get("expireAfterSeconds") == 0
        ]
        assert ttl == [[("expires_at", 1)]], name


@pytest.mark.tc("TC-ASYNC-093")
def test_documents_written_without_an_expiry_get_one_when_indexes_are_applied(
    store: Store,
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    # as task results were written before they went through the store: no expires_at
    store.col(C.TASK_RESULTS).insert_one({"task_id": "legacy", "saved_at": at})
    store.col(C.ALERTS).insert_one({"fingerprint": "legacy", "created_at": at})
    store.col(C.STRATEGY_STATE).insert_one({"strategy": "rsi", "created_at": at})
    assert store.ensure_indexes(force=True) is True  # botai up forces them on every start
    for name in (C.TASK_RESULTS, C.ALERTS):
        doc = store.col(name).find_one()
        assert doc["expires_at"].replace(tzinfo=None) == (at + timedelta(days=7)).replace(
            tzinfo=None
        ), name
    assert "expires_at" not in store.col(C.STRATEGY_STATE).find_one()  # kept forever
