"""The HTTP gateway (api/) against the session's Prefect server and a real nx-27017 store.

Runs are created from real deployments. Trainings stay queued (no worker serves their pool);
one backtest runs end to end through a real process worker. Every run a test leaves queued
is cancelled afterwards, so no other test sees a queued training of its own key.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from api import quotas
from api.main import create_app
from api.security import issue_token
from api.settings import ApiSettings, load_api_settings
from core.exceptions import ConfigurationError
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store
from tests.api.helpers import SECRET
from tests.peers import free_port, process_worker

TRAIN = {
    "model_type": "gru",
    "symbol": "APIXUSDT",
    "timeframe": "4h",
    "epochs": 5,
    "days_of_data": 30,
}


def seed_candles(store: Store, symbol: str, timeframe: str, days: int) -> None:
    """Store ``days`` of generated candles of ``symbol`` (a training's data pre-check passes)."""
    from core.market import bars_per_day

    bars = days * bars_per_day(timeframe)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    store.upsert_candles(
        symbol, timeframe, generate_candles(symbol, timeframe, start, bars), source="synthetic"
    )


def bearer(settings: ApiSettings, user: str, admin: bool = False, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, user, admin=admin, **kw)}"}


def runs_of(user: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"user:{user}"]))
        )


@pytest.mark.tc("TC-ASYNC-099")
def test_settings_reject_missing_placeholder_and_short_secrets_without_echoing_them(
    monkeypatch,
):
    monkeypatch.delenv("BOTAI_API_JWT_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="BOTAI_API_JWT_SECRET: is required"):
        load_api_settings()
    with pytest.raises(ConfigurationError, match="placeholder") as info:
        load_api_settings(jwt_secret="changethis")
    assert "changethis" not in str(info.value)
    short = "Sh0rt-but-real-looking"
    with pytest.raises(ConfigurationError, match="at least 32 characters") as info:
        load_api_settings(jwt_secret=short)
    assert short not in str(info.value)
    # pydantic's own error echoes the input: it is neither chained nor shown in tracebacks
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert SECRET not in repr(load_api_settings(jwt_secret=SECRET))


@pytest.mark.tc("TC-ASYNC-029", "TC-ASYNC-094")
def test_unauthenticated_and_regular_users_cannot_train_and_nothing_is_queued(
    client: TestClient, settings: ApiSettings, store: Store, caplog
):
    """TC-ASYNC-094: 401 without a valid token, 403 "Admin privileges required"."""
    caplog.set_level(logging.DEBUG)
    r = client.post("/api/tasks/train", json={"model_type": "lstm"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]
    expired = bearer(settings, "eve", admin=True, ttl=timedelta(seconds=-5))
    r = client.post("/api/tasks/train", json=TRAIN, headers=expired)
    assert r.status_code == 401 and "expired" in r.json()["error"]
    forged = ApiSettings(jwt_secret="another-secret-of-enough-length-000000")
    r = client.post("/api/tasks/train", json=TRAIN, headers=bearer(forged, "eve", admin=True))
    assert r.status_code == 401 and "Signature verification failed" in r.json()["error"]
    r = client.post("/api/tasks/train", json=TRAIN, headers=bearer(settings, "eve"))
    assert r.status_code == 403
    assert "Admin privileges" in r.json()["error"]
    assert runs_of("eve") == []
    assert store.col(C.API_USAGE).count_documents({}) == 0
    assert SECRET not in caplog.text


@pytest.mark.tc("TC-ASYNC-002")
def test_invalid_parameters_are_named_and_nothing_is_queued(
    client: TestClient, settings: ApiSettings, store: Store
):
    admin = bearer(settings, "ivan", admin=True)
    cases = {
        "model_type must be one of: lstm, gru, transformer": {"model_type": "cnn"},
        "epochs must be between 1-1000": {**TRAIN, "epochs": 0},
        "timeframe must be one of": {**TRAIN, "timeframe": "1w"},
        "Invalid trading symbol": {**TRAIN, "symbol": "btc"},
        "extra_knob: Extra inputs are not permitted": {**TRAIN, "extra_knob": 1},
    }
    for expected, body in cases.items():
        r = client.post("/api/tasks/train", json=body, headers=admin)
        assert r.status_code == 422, body
        assert expected in r.json()["error"], r.json()
    assert runs_of("ivan") == []
    assert store.col(C.API_USAGE).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-001", "TC-ASYNC-010")
def test_admin_starts_a_training_reads_its_status_and_cannot_queue_a_duplicate(
    client: TestClient, settings: ApiSettings, store: Store
):
    admin = bearer(settings, "alice", admin=True)
    seed_candles(store, "APIXUSDT", "4h", 30)
    r = client.post("/api/tasks/train", json={**TRAIN, "requested_by": "mallory"}, headers=admin)
    assert r.status_code == 202, r.json()
    body = r.json()
    assert body["status"] == "PENDING" and body["status_url"] == f"/api/tasks/{body['task_id']}"
    assert body["quota_remaining_today"] == settings.trainings_per_day - 1
    (run,) = runs_of("alice")
    assert str(run.id) == body["task_id"] and "api" in run.tags
    assert run.parameters["params"]["requested_by"] == "alice"  # the token's user, not the body's
    assert run.parameters["params"]["epochs"] == 5

    status = client.get(body["status_url"], headers=admin).json()
    assert status["status"] == "PENDING" and status["state"] == "Scheduled"
    assert status["job"] == "train" and status["owner"] == "alice"
    assert status["flow_name"] == "train-model" and status["result"] is None
    assert status["ui_url"] == f"http://ui.test/runs/flow-run/{body['task_id']}"

    r = client.post("/api/tasks/train", json=TRAIN, headers=admin)
    assert r.status_code == 409 and "Training already in progress" in r.json()["error"]
    assert body["task_id"] in r.json()["error"]
    assert len(runs_of("alice")) == 1
    assert quotas.used_today(store, "alice", "train", datetime.now(UTC)) == 1


@pytest.mark.tc("TC-ASYNC-028", "TC-ASYNC-095")
def test_eleventh_training_of_the_day_is_refused_until_the_next_utc_day(
    client: TestClient, settings: ApiSettings, store: Store
):
    """TC-ASYNC-095: max 10 trainings per user per day, 429 with Retry-After."""
    admin = bearer(settings, "quinn", admin=True)
    for timeframe in ("5m", "15m", "1h", "4h"):
        seed_candles(store, "APIQUSDT", timeframe, 7)
    seed_candles(store, "APIRUSDT", "4h", 30)
    keys = [(m, tf) for m in ("lstm", "gru", "transformer") for tf in ("5m", "15m", "1h", "4h")]
    for i, (model_type, timeframe) in enumerate(keys[:11]):
        body = {
            "model_type": model_type,
            "symbol": "APIQUSDT",
            "timeframe": timeframe,
            "days_of_data": 7,
        }
        r = client.post("/api/tasks/train", json=body, headers=admin)
        if i < 10:
            assert r.status_code == 202, (i, r.json())
        else:
            assert r.status_code == 429
            assert "Max 10 trainings per day exceeded" in r.json()["error"]
            assert 0 < int(r.headers["Retry-After"]) <= 86400
    assert len(runs_of("quinn")) == 10
    # another admin has their own quota; other jobs count separately
    r = client.post(
        "/api/tasks/train",
        json={**TRAIN, "symbol": "APIRUSDT"},
        headers=bearer(settings, "rita", admin=True),
    )
    assert r.status_code == 202
    listing = client.get("/api/tasks", headers=admin).json()
    assert len(listing["tasks"]) == 10
    assert listing["quota_today"]["train"] == {"used": 10, "limit": 10}
    # the count is per UTC day
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    quotas.reserve(store, "quinn", "train", 10, "trainings", tomorrow)
    assert quotas.used_today(store, "quinn", "train", tomorrow) == 1


@pytest.mark.tc("TC-ASYNC-005", "TC-ASYNC-098")
def test_users_see_and_cancel_only_their_own_tasks(
    client: TestClient, settings: ApiSettings, store: Store
):
    """TC-ASYNC-098: results of a task are visible to its owner and admins only."""
    carol, dave = bearer(settings, "carol"), bearer(settings, "dave")
    start = datetime(2019, 8, 1, tzinfo=UTC)
    store.upsert_candles(
        "BTCUSD", "1h", generate_candles("BTCUSD", "1h", start, 31 * 24), source="synthetic"
    )
    body = {
        "strategy_name": "rsi",
        "symbol": "BTCUSD",
        "start_date": "2019-08-01",
        "end_date": "2019-09-01",
    }
    r = client.post("/api/tasks/backtest", json=body, headers=carol)
    assert r.status_code == 202, r.json()
    task_id, url = r.json()["task_id"], r.json()["status_url"]
    assert client.get(url, headers=carol).status_code == 200
    r = client.get(url, headers=dave)
    assert r.status_code == 403 and "another user" in r.json()["error"]
    assert client.delete(url, headers=dave).status_code == 403
    assert client.get(f"/api/tasks/{uuid.uuid4()}", headers=dave).status_code == 404
    assert client.get(url, headers=bearer(settings, "root", admin=True)).json()["owner"] == "carol"
    assert [t["task_id"] for t in client.get("/api/tasks", headers=carol).json()["tasks"]] == [
        task_id
    ]
    assert client.get("/api/tasks", headers=dave).json()["tasks"] == []

    r = client.delete(url, headers=carol)
    assert r.status_code == 202
    assert r.json()["status"] == "REVOKED" and r.json()["state"] == "Cancelled"
    assert "carol" in r.json()["message"]
    r = client.delete(url, headers=carol)
    assert r.status_code == 409 and "already ended" in r.json()["error"]


@pytest.mark.tc("TC-ASYNC-010")
def test_a_retried_request_with_an_idempotency_key_gets_the_same_task(
    client: TestClient, settings: ApiSettings, store: Store
):
    admin = bearer(settings, "ike", admin=True)
    seed_candles(store, "APIKUSDT", "4h", 30)
    seed_candles(store, "APILUSDT", "4h", 30)
    body = {**TRAIN, "symbol": "APIKUSDT"}
    first = client.post("/api/tasks/train", json=body, headers={**admin, "Idempotency-Key": "k-1"})
    assert first.status_code == 202 and first.json()["replayed"] is False
    # the retry would be a duplicate training (409) without the key; with it, the same task
    again = client.post("/api/tasks/train", json=body, headers={**admin, "Idempotency-Key": "k-1"})
    assert again.status_code == 202, again.json()
    assert again.json()["task_id"] == first.json()["task_id"] and again.json()["replayed"] is True
    assert again.json()["quota_remaining_today"] == settings.trainings_per_day - 1
    assert len(runs_of("ike")) == 1
    other = {**body, "epochs": 7}
    r = client.post("/api/tasks/train", json=other, headers={**admin, "Idempotency-Key": "k-1"})
    assert r.status_code == 422 and "different parameters" in r.json()["error"]
    # keys are per user: the same key from another user is a new request
    r = client.post(
        "/api/tasks/train",
        json={**body, "symbol": "APILUSDT"},
        headers={**bearer(settings, "jon", admin=True), "Idempotency-Key": "k-1"},
    )
    assert r.status_code == 202 and r.json()["replayed"] is False
    r = client.post("/api/tasks/train", json=body, headers={**admin, "Idempotency-Key": "k 1"})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]
    assert store.col(C.API_USAGE).count_documents({"user": "ike"}) == 1


@pytest.mark.tc("TC-ASYNC-076")
def test_unreachable_prefect_or_missing_deployment_is_503_and_uses_no_quota(
    client: TestClient, settings: ApiSettings, store: Store
):
    admin, user = bearer(settings, "olga", admin=True), bearer(settings, "olga")
    body = {"source": "synthetic", "symbols": ["BTCUSDT"], "days": 1}
    r = client.post("/api/tasks/ingest", json=body, headers=admin)
    assert r.status_code == 503  # ingest-market-data is not deployed on the test server
    assert "deployment ingest-market-data/ingest-market-data is not registered" in r.json()["error"]
    assert "botai up" in r.json()["error"]
    start = datetime(2019, 8, 1, tzinfo=UTC)
    store.upsert_candles(
        "BTCUSD", "1h", generate_candles("BTCUSD", "1h", start, 31 * 24), source="synthetic"
    )
    closed = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: closed, PREFECT_CLIENT_MAX_RETRIES: 0}):
        body = {"strategy_name": "rsi", "symbol": "BTCUSD", "start_date": "2019-08-01"}
        r = client.post(
            "/api/tasks/backtest", json={**body, "end_date": "2019-09-01"}, headers=user
        )
    assert r.status_code == 503 and "Prefect API unavailable" in r.json()["error"]
    assert r.headers["Retry-After"] == "5"
    assert store.col(C.API_USAGE).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-066")
def test_a_backtest_runs_end_to_end_through_a_worker_and_every_caller_reads_its_result(
    pools,
    settings: ApiSettings,
    mongo_block: Store,
    tmp_path: Path,
    prefect_server: str,
    monkeypatch,
):
    """POST -> PENDING -> SUCCESS with progress 100; the result is in task_results (read back
    through the gateway), on the run's page as an artifact and in the persisted flow result."""
    start = datetime(2019, 7, 1, tzinfo=UTC)
    frame = generate_candles("BTCUSD", "1h", start, 92 * 24)
    mongo_block.upsert_candles("BTCUSD", "1h", frame, source="synthetic")
    client = TestClient(create_app(settings, store_factory=lambda: mongo_block))
    user = bearer(settings, "nina")
    body = {
        "strategy_name": "rsi",
        "symbol": "BTCUSD",
        "start_date": "2019-08-01",
        "end_date": "2019-09-01",
        "parameters": {"rsi_period": 14, "oversold": 30, "overbought": 70},
    }
    r = client.post("/api/tasks/backtest", json=body, headers=user)
    assert r.status_code == 202, r.json()
    url, task_id = r.json()["status_url"], r.json()["task_id"]
    seen = set()
    # the worker's environment as botai up gives it (deployments.services.prefect_env)
    monkeypatch.setenv("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    monkeypatch.setenv("PREFECT_TASKS_DEFAULT_PERSIST_RESULT", "false")
    monkeypatch.setenv("PREFECT_RESULTS_DEFAULT_SERIALIZER", "json")
    with process_worker(pools["work"], prefect_server, tmp_path / "worker.log"):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = client.get(url, headers=user).json()
            seen.add(status["status"])
            if status["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                break
            time.sleep(0.5)
    assert status["status"] == "SUCCESS", (status, (tmp_path / "worker.log").read_text()[-3000:])
    assert "PENDING" in seen
    assert status["progress_pct"] == 100.0
    saved = status["result"]
    assert saved["task_id"] == task_id and saved["flow_name"] == "backtest-strategy"
    assert saved["result_type"] == "BacktestResult" and saved["run_count"] == 1
    result = saved["result"]
    assert result["task_id"] == task_id
    assert result["metrics"]["total_trades"] == len(result["trades"]) > 0
    assert len(result["equity_curve"]) == 31  # one point per day of August
    assert mongo_block.col(C.TASK_RESULTS).count_documents({"task_id": task_id}) == 1
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(uuid.UUID(task_id))
        persisted = run.state.result()  # what `prefect` CLI / flow-run API users read
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                key=ArtifactFilterKey(any_=["backtest-strategy-result"]),
            )
        )
    assert persisted.metrics.total_trades == result["metrics"]["total_trades"]
    assert task_id in artifact.data and "metrics.total_trades" in artifact.data


@pytest.mark.tc("TC-ASYNC-031")
def test_health_reports_both_backends(client: TestClient):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["mongodb_ms"] >= 0
