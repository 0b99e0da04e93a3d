"""The gateway under faults: pre-queue data checks, outages of the store and of the Prefect
API (real processes stopped and killed), and priority."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Pending, Running

from api.main import create_app
from api.settings import ApiSettings, load_api_settings
from flows.backtest_strategy import backtest_strategy
from integrations.embedded_mongo import start_embedded_mongo
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store, connect
from tests.api.test_gateway import SECRET, bearer, runs_of
from tests.peers import create_process_deployment, create_process_pool, free_port

BACKTEST = {
    "strategy_name": "rsi",
    "symbol": "BTCUSD",
    "start_date": "2019-08-01",
    "end_date": "2019-09-01",
}


def seed_august(store: Store) -> None:
    start = datetime(2019, 7, 31, tzinfo=UTC)
    frame = generate_candles("BTCUSD", "1h", start, 33 * 24)
    store.upsert_candles("BTCUSD", "1h", frame, source="synthetic")


@pytest.mark.tc("TC-ASYNC-008", "TC-ASYNC-013", "TC-ASYNC-066")
def test_jobs_that_cannot_run_on_the_stored_data_are_refused_before_queueing(
    client: TestClient, settings: ApiSettings, store: Store
):
    admin = bearer(settings, "pete", admin=True)
    frame = generate_candles("APIPUSDT", "1h", datetime(2026, 1, 1, tzinfo=UTC), 120)
    store.upsert_candles("APIPUSDT", "1h", frame, source="synthetic")
    cases = [
        ("train", {"symbol": "APIPUSDT", "timeframe": "1h", "days_of_data": 30}, "Insufficient data: expected 720 samples, found 120"),
        ("train", {"symbol": "APINUSDT", "timeframe": "1h"}, "Invalid trading symbol 'APINUSDT'"),
        ("predict", {"symbol": "APINUSDT"}, "Insufficient data: no 1h candles of APINUSDT"),
        ("predict", {"symbol": "APIPUSDT"}, "No deployed lstm model for APIPUSDT"),
        ("backtest", {**BACKTEST, "symbol": "APIPUSDT"}, "Insufficient data for APIPUSDT 1h from 2019-08-01"),
    ]  # fmt: skip
    for job, body, expected in cases:
        r = client.post(f"/api/tasks/{job}", json=body, headers=admin)
        assert r.status_code == 422, (job, r.json())
        assert expected in r.json()["error"], r.json()
    assert runs_of("pete") == []
    assert store.col(C.API_USAGE).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-005")
def test_a_cancel_never_orphans_a_run_a_worker_has_just_claimed(pools, store: Store):
    """The cancel race, reproduced step by step against the real server: the worker claims
    the run (Pending), the gateway cancels it (Cancelling), the flow process proposes Running
    and is refused, so it exits without running the flow. The gateway then finishes the run:
    at once when the recorded process is gone, else after the grace period. A run whose flow
    has started is left to its worker (SIGTERM, checkpoint)."""
    settings = load_api_settings(jwt_secret=SECRET, cancel_grace_s=30.0)
    short = load_api_settings(jwt_secret=SECRET, cancel_grace_s=2.0)
    app = TestClient(create_app(settings, store_factory=lambda: store))
    user = bearer(settings, "cory")
    seed_august(store)

    def claimed_run(pid: int | None, flow_started: bool = False) -> uuid.UUID:
        r = app.post("/api/tasks/backtest", json=BACKTEST, headers=user)
        assert r.status_code == 202, r.json()
        run_id = uuid.UUID(r.json()["task_id"])
        with get_client(sync_client=True) as prefect:
            assert prefect.set_flow_run_state(run_id, Pending()).status.value == "ACCEPT"
            if pid is not None:
                # the form the warm worker records (deployments/warm_worker.py)
                prefect.update_flow_run(run_id, infrastructure_pid=f"{socket.gethostname()}:{pid}")
            if flow_started:
                assert prefect.set_flow_run_state(run_id, Running()).status.value == "ACCEPT"
        return run_id

    def cancel_and_wait(run_id: uuid.UUID, process: subprocess.Popen | None) -> tuple[dict, float]:
        r = app.delete(f"/api/tasks/{run_id}", headers=user)
        assert r.status_code == 202 and r.json()["state"] == "Cancelling", r.json()
        with get_client(sync_client=True) as prefect:  # the flow process starting...
            refused = prefect.set_flow_run_state(run_id, Running())
            assert refused.status.value == "REJECT", refused
        started = time.monotonic()
        if process is not None:  # ...is refused and exits without running the flow
            process.kill()
            process.wait()
        while time.monotonic() - started < 10:
            status = app.get(f"/api/tasks/{run_id}", headers=user).json()
            if status["status"] != "PROGRESS":
                break
            time.sleep(0.2)
        return status, time.monotonic() - started

    for _ in range(3):  # its process is gone: finished at once
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        status, took = cancel_and_wait(claimed_run(process.pid), process)
        assert (status["status"], status["state"]) == ("REVOKED", "Cancelled"), status
        assert "process is gone" in status["message"] and took < 1.5, took
    app = TestClient(create_app(short, store_factory=lambda: store))
    status, took = cancel_and_wait(claimed_run(None), None)  # no process: after the grace
    assert (status["status"], status["state"]) == ("REVOKED", "Cancelled"), status
    assert "never started within 2 s" in status["message"] and took < 4.0, took
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the flow runs: its worker stops it (SIGTERM, checkpoint), not the gateway
        run_id = claimed_run(sleeper.pid, flow_started=True)
        r = app.delete(f"/api/tasks/{run_id}", headers=user)
        assert r.status_code == 202 and r.json()["state"] == "Cancelling"
        time.sleep(2.5)
        assert app.get(f"/api/tasks/{run_id}", headers=user).json()["state"] == "Cancelling"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.tc("TC-ASYNC-090")
def test_a_high_priority_run_starts_before_normal_runs_queued_earlier(
    settings: ApiSettings, store: Store, prefect_server: str
):
    pool = f"api-prio-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool, {"backtesting": 1})
    create_process_deployment(
        backtest_strategy,
        "backtest-strategy",
        pool,
        "backtesting",
        "flows/backtest_strategy.py:backtest_strategy",
    )
    seed_august(store)
    app = TestClient(create_app(settings, store_factory=lambda: store))
    user = bearer(settings, "hugo")
    ids = {}
    for name, priority in (("n1", "normal"), ("n2", "normal"), ("h1", "high"), ("h2", "high")):
        r = app.post(f"/api/tasks/backtest?priority={priority}", json=BACKTEST, headers=user)
        assert r.status_code == 202 and r.json()["priority"] == priority, r.json()
        ids[r.json()["task_id"]] = name
        time.sleep(0.05)
    r = app.post("/api/tasks/backtest?priority=urgent", json=BACKTEST, headers=user)
    assert r.status_code == 422 and "priority" in r.json()["error"]
    soon = datetime.now(UTC) + timedelta(seconds=10)
    with get_client(sync_client=True) as prefect:
        # exactly the query a worker polls with: one slot free on the queue (limit 1)
        offered = prefect.get_scheduled_flow_runs_for_work_pool(pool, scheduled_before=soon)
        assert [ids[str(o.flow_run.id)] for o in offered] == ["h1"]
        queue = prefect.read_work_queue_by_name("backtesting", work_pool_name=pool)
        prefect.update_work_queue(queue.id, concurrency_limit=10)
        offered = prefect.get_scheduled_flow_runs_for_work_pool(pool, scheduled_before=soon)
        assert [ids[str(o.flow_run.id)] for o in offered] == ["h1", "h2", "n1", "n2"]
        for run_id in ids:
            prefect.set_flow_run_state(uuid.UUID(run_id), Pending(), force=True)
            prefect.delete_flow_run(uuid.UUID(run_id))


@pytest.mark.tc("TC-ASYNC-078")
def test_a_stopped_or_killed_store_answers_503_naming_it_and_nothing_is_reserved(
    pools, tmp_path: Path, prefect_server: str
):
    """A real nx-27017 of this test's own, SIGSTOPped then SIGKILLed and started again."""
    limit_s = 1.5
    settings = load_api_settings(jwt_secret=SECRET, store_timeout_s=limit_s)
    server = start_embedded_mongo(tmp_path / "mongo")
    port = int(server.uri.rsplit(":", 1)[1].strip("/"))
    store = Store(connect(server.uri, timeout_ms=int(limit_s * 1000)), "gw_outage")
    store.ensure_indexes()
    seed_august(store)
    app = TestClient(create_app(settings, store_factory=lambda: store))
    user = bearer(settings, "sam")

    def post() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = app.post("/api/tasks/backtest", json=BACKTEST, headers=user)
        return r, time.monotonic() - started

    try:
        r, _ = post()
        assert r.status_code == 202, r.json()
        ok_id = r.json()["task_id"]
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            r, took = post()
            assert r.status_code == 503, r.json()
            assert r.json()["error"].startswith("MongoDB store unavailable"), r.json()
            assert r.headers["Retry-After"] == "5" and took < limit_s + 3
            r = app.get(f"/api/tasks/{ok_id}", headers=user)
            assert r.status_code == 503 and "MongoDB store unavailable" in r.json()["error"]
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert len(runs_of("sam")) == 1  # nothing queued while it was stopped
        r, _ = post()
        assert r.status_code == 202, r.json()
        server.process.kill()
        server.process.wait(10)
        r, took = post()
        assert r.status_code == 503 and "MongoDB store unavailable" in r.json()["error"]
        assert took < limit_s + 3
        server = start_embedded_mongo(tmp_path / "mongo", port=port)
        r, _ = post()
        assert r.status_code == 202, r.json()  # back: the next request succeeds
        assert store.col(C.API_USAGE).count_documents({"user": "sam"}) == 3
        assert store.col(C.API_USAGE).count_documents({"task_id": None}) == 0
        assert len(runs_of("sam")) == 3
    finally:
        server.stop()


@pytest.fixture
def own_prefect_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A `prefect server start` of this test's own (the session's server must keep running)."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
            f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-services"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(
            f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}"
        )
    yield proc, url
    os.killpg(proc.pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.mark.tc("TC-ASYNC-076")
def test_a_hung_prefect_server_answers_503_within_the_timeout_and_no_quota_is_used(
    own_prefect_server: tuple[subprocess.Popen, str], store: Store
):
    proc, url = own_prefect_server
    limit_s = 2.0
    settings = load_api_settings(jwt_secret=SECRET, prefect_timeout_s=limit_s)
    seed_august(store)
    user = bearer(settings, "pat")
    with temporary_settings({PREFECT_API_URL: url}):
        pool = f"api-hung-{uuid.uuid4().hex[:6]}"
        create_process_pool(pool, {"backtesting": None})
        create_process_deployment(
            backtest_strategy,
            "backtest-strategy",
            pool,
            "backtesting",
            "flows/backtest_strategy.py:backtest_strategy",
        )
        app = TestClient(create_app(settings, store_factory=lambda: store))
        r = app.post("/api/tasks/backtest", json=BACKTEST, headers=user)
        assert r.status_code == 202, r.json()
        task_id = r.json()["task_id"]
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            for method, path in (("post", "/api/tasks/backtest"), ("get", f"/api/tasks/{task_id}")):
                started = time.monotonic()
                r = app.request(
                    method, path, json=BACKTEST if method == "post" else None, headers=user
                )
                took = time.monotonic() - started
                assert r.status_code == 503, r.json()
                assert r.json()["error"].startswith("Prefect API unavailable"), r.json()
                assert took < limit_s + 3, took
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        assert store.col(C.API_USAGE).count_documents({"user": "pat"}) == 1
        r = app.post("/api/tasks/backtest", json=BACKTEST, headers=user)
        assert r.status_code == 202, r.json()  # back: the next request succeeds
        with get_client(sync_client=True) as prefect:
            assert len(prefect.read_flow_runs()) == 2
