"""The gateway's fast path keeps its promises: what it caches stays true (deployment ids,
candle coverage kept by the candle writer) and a replayed Idempotency-Key tells the truth
about its run (a run the gateway withdrew is never answered 202 "replayed")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client

from api import prechecks, quotas, runtime
from api.jobs import JOBS
from api.service import _params_digest
from api.settings import ApiSettings
from core.exceptions import InsufficientDataError, InvalidInputError
from flows.backtest_strategy import backtest_strategy
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store
from tests.api.test_gateway import bearer, runs_of
from tests.api.test_gateway_runtime import BACKTEST, seed_august
from tests.peers import create_process_deployment

KEYED = {"Idempotency-Key": "order-7"}


def _state(task_id: str) -> tuple[str, str | None]:
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(uuid.UUID(task_id))
    return run.state.type.value, run.state.message


def _withdraw(task_id: str) -> None:
    """What the gateway does to a run it created but could not record (a store outage)."""
    with get_client(sync_client=True) as prefect:
        runtime.withdraw(prefect, uuid.UUID(task_id), "the store stopped answering")


@pytest.mark.tc("TC-ASYNC-010")
def test_a_replayed_key_never_answers_202_for_a_run_the_gateway_withdrew(
    client: TestClient, settings: ApiSettings, store: Store
):
    """The lost answer: the run was recorded, but the gateway saw the store fail and
    withdrew the run. The retry must not be told "accepted, replayed" for it: it gets a new
    run, counted once, and a later retry replays that new run."""
    user = bearer(settings, "wanda")
    seed_august(store)
    first = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert first.status_code == 202 and first.json()["replayed"] is False, first.json()
    withdrawn = first.json()["task_id"]
    _withdraw(withdrawn)

    again = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert again.status_code == 202, again.json()
    body = again.json()
    assert body["task_id"] != withdrawn and body["replayed"] is False
    assert body["status"] == "PENDING" and body["quota_remaining_today"] == 199
    assert _state(withdrawn)[0] == "CANCELLED"
    assert _state(body["task_id"])[0] == "SCHEDULED"  # a live run that will execute
    assert quotas.used_today(store, "wanda", "backtest", datetime.now(UTC)) == 1
    docs = list(store.col(C.API_USAGE).find({"user": "wanda"}, {"_id": 0, "task_id": 1}))
    assert docs == [{"task_id": body["task_id"]}]

    third = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert third.status_code == 202 and third.json()["replayed"] is True
    assert third.json()["task_id"] == body["task_id"]
    assert {str(r.id) for r in runs_of("wanda")} == {withdrawn, body["task_id"]}


@pytest.mark.tc("TC-ASYNC-010")
def test_a_key_whose_run_was_never_recorded_starts_again_once_its_request_is_over(
    client: TestClient, settings: ApiSettings, store: Store
):
    """The store failed before the run id was written: the reservation has no run. While
    such a request may still be running the retry is told to wait (409); once it cannot be,
    the retry creates the run (Prefect's key would hand back the withdrawn one: a new key
    is derived from it) and the quota counts it once."""
    user = bearer(settings, "xena")
    seed_august(store)
    job = JOBS["backtest"]
    params = job.params(**BACKTEST)
    digest = _params_digest(params)
    now = datetime.now(UTC)
    quotas.reserve(store, "xena", "backtest", 200, "backtests", now, "order-7", digest)
    r = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert r.status_code == 409 and "still being processed" in r.json()["error"], r.json()

    store.col(C.API_USAGE).delete_many({"user": "xena"})  # the same, from a dead request
    store.col(C.API_QUOTA).delete_many({"user": "xena"})
    long_ago = now - timedelta(minutes=10)
    quotas.reserve(store, "xena", "backtest", 200, "backtests", long_ago, "order-7", digest)
    with get_client(sync_client=True) as prefect:  # the run it created, then withdrew
        dep = prefect.read_deployment_by_name(job.deployment)
        lost = prefect.create_flow_run_from_deployment(
            dep.id,
            parameters={"params": params.model_dump(mode="json")},
            tags=["api", "user:xena"],
            idempotency_key="api:xena:backtest:order-7",
        )
    _withdraw(str(lost.id))
    r = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert r.status_code == 202 and r.json()["replayed"] is False, r.json()
    assert r.json()["task_id"] != str(lost.id)
    assert _state(r.json()["task_id"])[0] == "SCHEDULED"
    assert quotas.used_today(store, "xena", "backtest", now) == 1  # the old slot given back
    docs = list(store.col(C.API_USAGE).find({"user": "xena"}, {"_id": 0, "task_id": 1}))
    assert docs == [{"task_id": r.json()["task_id"]}]


@pytest.mark.tc("TC-ASYNC-010", "TC-ASYNC-005")
def test_a_replayed_key_answers_with_the_state_its_run_is_in(
    client: TestClient, settings: ApiSettings, store: Store
):
    user = bearer(settings, "yuri")
    seed_august(store)
    first = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert first.status_code == 202, first.json()
    task_id = first.json()["task_id"]
    r = client.delete(f"/api/tasks/{task_id}", headers=user)  # cancelled by its owner
    assert r.status_code == 202 and r.json()["state"] == "Cancelled"
    again = client.post("/api/tasks/backtest", json=BACKTEST, headers={**user, **KEYED})
    assert again.status_code == 202, again.json()
    assert again.json()["task_id"] == task_id and again.json()["replayed"] is True
    assert again.json()["status"] == "REVOKED"  # not "PENDING": the truth
    assert len(runs_of("yuri")) == 1
    assert quotas.used_today(store, "yuri", "backtest", datetime.now(UTC)) == 1


@pytest.mark.tc("none")
def test_a_cached_deployment_id_that_went_stale_after_a_redeploy_is_read_again(
    client: TestClient, settings: ApiSettings, store: Store, pools: dict[str, str]
):
    user = bearer(settings, "zack")
    seed_august(store)
    r = client.post("/api/tasks/backtest", json=BACKTEST, headers=user)
    assert r.status_code == 202, r.json()
    with get_client(sync_client=True) as prefect:
        old = prefect.read_deployment_by_name("backtest-strategy/backtest-strategy").id
        prefect.delete_deployment(old)
    new = create_process_deployment(
        backtest_strategy,
        "backtest-strategy",
        pools["work"],
        "backtesting",
        "flows/backtest_strategy.py:backtest_strategy",
    )
    assert new != old
    r = client.post("/api/tasks/backtest", json=BACKTEST, headers=user)
    assert r.status_code == 202, r.json()
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(uuid.UUID(r.json()["task_id"]))
    assert run.deployment_id == new


def _train(symbol: str, days: int) -> SimpleNamespace:
    return SimpleNamespace(symbol=symbol, timeframe="1h", days_of_data=days)


def _backtest(symbol: str, start: str, end: str) -> SimpleNamespace:
    from datetime import date

    return SimpleNamespace(
        symbol=symbol,
        timeframe="1h",
        start_date=date.fromisoformat(start),
        end_date=date.fromisoformat(end),
    )


@pytest.mark.tc("TC-ASYNC-008", "TC-ASYNC-066")
def test_coverage_read_from_the_tails_follows_the_candle_writers(store: Store):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame = generate_candles("COVUSDT", "1h", start, 1500)
    store.upsert_candles("COVUSDT", "1h", frame.iloc[:120], source="synthetic")
    facts = store.coverage.series_facts("COVUSDT", "1h")
    assert facts is not None and facts.bars == 120 and len(facts.newest) == 120
    with pytest.raises(InsufficientDataError, match="expected 720 samples, found 120"):
        prechecks.training_data(_train("COVUSDT", 30), store)
    with pytest.raises(InvalidInputError, match="Invalid trading symbol 'NONEUSDT'"):
        prechecks.training_data(_train("NONEUSDT", 30), store)

    store.upsert_candles("COVUSDT", "1h", frame.iloc[120:], source="synthetic")  # the writer
    facts = store.coverage.series_facts("COVUSDT", "1h")
    assert facts is not None and facts.bars == 1500 and len(facts.newest) == 1000
    prechecks.training_data(_train("COVUSDT", 30), store)  # 720 <= 1500: from the tail
    # a range inside the tail's newest 1000 bars, and one older than them (read from the
    # candles themselves); both are covered
    prechecks.range_data(_backtest("COVUSDT", "2026-02-15", "2026-03-01"), store)
    prechecks.range_data(_backtest("COVUSDT", "2026-01-02", "2026-01-20"), store)
    assert facts.bars_between(datetime(2026, 1, 2, tzinfo=UTC), start + timedelta(days=20)) is None
    with pytest.raises(InsufficientDataError, match="Insufficient data for COVUSDT 1h"):
        prechecks.range_data(_backtest("COVUSDT", "2026-02-20", "2026-04-20"), store)


@pytest.mark.tc("TC-ASYNC-008", "TC-ASYNC-013")
def test_candles_written_past_the_platform_are_found_without_a_tail(store: Store):
    """The bot's engine writes closed candles straight into market_data: no tail says so,
    the check reads the candles themselves (an indexed read, never a count)."""
    from integrations.store.candles import frame_to_docs

    frame = generate_candles("ENGUSDT", "1h", datetime(2026, 1, 1, tzinfo=UTC), 800)
    docs = frame_to_docs("ENGUSDT", "1h", frame, timedelta(hours=1), "engine")
    store.col(C.MARKET_DATA).insert_many(docs)
    assert store.coverage.series_facts("ENGUSDT", "1h") is None
    prechecks.training_data(_train("ENGUSDT", 30), store)
    prechecks.range_data(_backtest("ENGUSDT", "2026-01-05", "2026-02-01"), store)
    params = SimpleNamespace(symbol="ENGUSDT", model_type="gru")
    with pytest.raises(InvalidInputError, match="No deployed gru model for ENGUSDT"):
        prechecks.prediction_data(params, store)
    with pytest.raises(InsufficientDataError, match="no 1h candles of NOCUSDT"):
        prechecks.prediction_data(SimpleNamespace(symbol="NOCUSDT", model_type="gru"), store)
