"""Retention: results and job records expire by TTL; models, costs, audits and dead letters stay.

nx-27017 enforces TTL indexes itself (measured: a document whose ``expires_at`` has passed is
no longer returned at once and is deleted within about a second); MongoDB's TTL monitor runs
every 60 s.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from core.settings import Settings
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
    settings = Settings(retention_days=3, retention_overrides={"backtest_results": 1})
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
