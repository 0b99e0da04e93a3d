"""Crash recovery on a real stack: each test injects one fault by killing or stopping a real
process (flow run, worker, Prefect server) and checks the run reaches the expected final
state under the same flow-run id, its record matches, and the work was done exactly once."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.security import issue_token
from api.settings import load_api_settings
from deployments.dead_letters import DEAD_LETTERED, dead_letter_summary
from deployments.recovery_rules import RECOVERY_MARK
from integrations.store import C
from tests.reliability.stack import SLACK_PATH, Stack, wait_for

pytestmark = pytest.mark.slow


def _gateway(stack: Stack) -> tuple[TestClient, dict[str, str], dict[str, str]]:
    """The HTTP gateway on the stack's store, an admin's and a user's headers."""
    settings = load_api_settings(jwt_secret="reliability-gateway-secret-" + "x" * 24)
    api = TestClient(create_app(settings, store_factory=lambda: stack.store))

    def bearer(user: str, admin: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(settings, user, admin=admin)}"}

    return api, bearer("ops", True), bearer("quant", False)


def _slack_texts(stack: Stack) -> list[str]:
    return [str(req.get_json()) for req, _ in stack.slack.log if req.path == SLACK_PATH]


@pytest.fixture(scope="module", autouse=True)
def background(stack: Stack) -> dict:
    """The dead-letter scenarios, started first: they run their attempts and backoffs while
    the other tests inject their faults, and their tests only check the outcome."""
    return {
        name: stack.run(name)
        for name in ("rel-crash-always", "rel-fail-retryable", "rel-fail-bad-input")
    }


TRAIN = {
    "model_type": "gru",
    "symbol": "BTCUSDT",
    "timeframe": "1h",
    "days_of_data": 30,
    "epochs": 12,
    "batch_size": 32,
    "units": 8,
    "lookback": 12,
    "learning_rate": 3e-3,
    "checkpoint_interval": 2,
}


def _epochs_recorded(stack: Stack, run_id) -> int:
    job = stack.store.training_job_get(str(run_id)) or {}
    return len(job.get("epochs") or [])


def _state_at(stack: Stack, run_id, name: str, after=None):
    for s in sorted(stack.states(run_id), key=lambda s: s.timestamp):
        if s.name == name and (after is None or s.timestamp >= after):
            return s
    return None


@pytest.mark.tc("TC-ASYNC-006", "TC-ASYNC-077")
def test_flow_process_killed_mid_training_resumes_from_checkpoint_same_run(stack: Stack):
    run_id = stack.run("train-model", {"params": TRAIN})
    wait_for(lambda: _epochs_recorded(stack, run_id) >= 3, 240, "3 epochs of training")
    engine = stack.engine_process(run_id)
    killed_what = f"pid {engine.pid}: {' '.join(engine.cmdline())[:120]}"
    killed = datetime.now(UTC)
    engine.kill()
    run = stack.wait_state(run_id, {"Completed"}, 240)
    history = [
        (s.name, s.timestamp.isoformat(), (s.message or "")[:100])
        for s in sorted(stack.states(run_id), key=lambda s: s.timestamp)
    ]
    crashed = _state_at(stack, run_id, "Crashed", after=killed)
    assert crashed is not None, (killed_what, killed.isoformat(), history)
    requeued = next(
        (
            s
            for s in sorted(stack.states(run_id), key=lambda s: s.timestamp)
            if (s.message or "").startswith(RECOVERY_MARK) and s.timestamp >= killed
        ),
        None,
    )
    assert requeued is not None, (killed_what, killed.isoformat(), history)
    detect_s = (crashed.timestamp - killed).total_seconds()
    resubmit_s = (requeued.timestamp - crashed.timestamp).total_seconds()
    print(
        f"flow process kill -9: Crashed after {detect_s:.1f} s, resubmitted {resubmit_s:.1f} s later"
    )
    assert detect_s < 60 and resubmit_s < 60
    assert "attempt 2/3" in requeued.message
    assert run.run_count == 2
    job = stack.store.training_job_get(str(run_id))
    assert job["status"] == "completed" and job["error"] is None
    assert stack.store.col(C.MODELS).count_documents({"training_task_id": str(run_id)}) == 1
    results = job["results"]
    assert results["epochs_completed"] == TRAIN["epochs"]
    # resumed from its newest checkpoint, not from scratch (contract 1)
    assert results["resumed_from_epoch"] and results["resumed_from_epoch"] > 1


@pytest.mark.tc("TC-ASYNC-077")
def test_hung_flow_process_sigstop_is_crashed_killed_and_rerun_once(stack: Stack):
    run_id = stack.run("rel-count-work", {"seconds": 6})
    wait_for(lambda: stack.executions(run_id), 120, "the run to start")
    time.sleep(1.5)  # its first heartbeat leaves the process
    engine = stack.engine_process(run_id)
    stopped = datetime.now(UTC)
    os.kill(engine.pid, signal.SIGSTOP)
    run = stack.wait_state(run_id, {"Completed"}, 150)
    crashed = _state_at(stack, run_id, "Crashed", after=stopped)
    detect_s = (crashed.timestamp - stopped).total_seconds()
    print(f"SIGSTOP: Crashed after {detect_s:.1f} s ({crashed.message})")
    assert detect_s < 60
    assert not engine.is_running() or engine.status() == "zombie"  # ended, never left stopped
    # the stopped attempt never finished its work: one result, two executions, same id
    assert run.run_count == 2 and len(stack.executions(run_id)) == 2
    assert stack.store.col(C.TASK_RESULTS).count_documents({"task_id": str(run_id)}) == 1


@pytest.mark.tc("TC-ASYNC-077")
def test_worker_killed_its_run_completes_once_and_no_slot_or_409_is_left(stack: Stack):
    from tasks.training import assert_no_active_training

    params = {**TRAIN, "model_type": "lstm", "epochs": 6}
    run_id = stack.run("train-model", {"params": params})
    wait_for(lambda: _epochs_recorded(stack, run_id) >= 1, 240, "the training to start")
    stack.kill("worker")
    killed = datetime.now(UTC)
    stack.start_worker()  # as the supervisor restarts it
    run = stack.wait_state(run_id, {"Completed"}, 240)
    done_s = (run.state.timestamp - killed).total_seconds()
    print(f"worker kill -9: run {run.state.name} {done_s:.1f} s later, run_count {run.run_count}")
    # one model, trained to the full epoch count, and the record says completed with it
    # (a worker's orphan dies at its next log line: this one after registering its model)
    models = list(stack.store.col(C.MODELS).find({"training_task_id": str(run_id)}))
    assert len(models) == 1
    assert models[0]["metrics"]["epochs_completed"] == params["epochs"]
    job = stack.store.training_job_get(str(run_id))
    assert job["status"] == "completed" and job["model_id"] == models[0]["model_id"]
    # nothing of it holds an ml_training slot or answers a new identical training with 409
    assert_no_active_training("lstm", "BTCUSDT", "1h")
    # the process that ran it exits once its run is final (it joins its heartbeat thread first)
    wait_for(lambda: not stack.flow_processes(run_id), 30, "the run's process to exit")


@pytest.mark.tc("TC-ASYNC-103")
def test_always_crashing_run_is_dead_lettered_after_the_cap_with_every_error(
    stack: Stack, background: dict
):
    run_id = background["rel-crash-always"]
    run = stack.wait_state(run_id, {DEAD_LETTERED}, 150)
    cap = stack.settings.recovery_max_attempts
    # executed exactly cap times, under one flow-run id, then dead-lettered
    assert len(stack.executions(run_id)) == cap
    marks = [s.message for s in stack.states(run_id) if (s.message or "").startswith(RECOVERY_MARK)]
    assert [m.split(",")[1].split("(")[0].strip() for m in marks] == [
        f"attempt {k}/{cap}" for k in range(2, cap + 1)
    ]
    assert run.state.type.value == "FAILED" and f"after {cap} attempts" in run.state.message
    letter = stack.store.col(C.DEAD_LETTERS).find_one({"task_id": str(run_id)})
    assert letter["flow_name"] == "rel-crash-always"
    assert letter["deployment"] == "rel-crash-always/rel-crash-always"
    assert len(letter["attempts"]) == cap
    assert all(a["state"] == "Crashed" and a["message"] for a in letter["attempts"])
    assert [a["at"] for a in letter["attempts"]] == sorted(a["at"] for a in letter["attempts"])
    assert letter["requeued_at"] is None
    assert str(run_id) in [d["task_id"] for d in dead_letter_summary(stack.store)]
    wait_for(lambda: any(str(run.name) in t for t in _slack_texts(stack)), 10, "the alert")

    # the gateway says so, lists it for admins, and an admin re-queues it (same task id)
    api, admin, user = _gateway(stack)
    status = api.get(f"/api/tasks/{run_id}", headers=admin).json()
    assert status["status"] == "FAILURE" and status["state"] == DEAD_LETTERED
    assert status["dead_letter"]["attempts"] == cap
    assert f"after {cap} attempts" in status["dead_letter"]["reason"]
    assert api.get("/api/dead-letters", headers=user).status_code == 403
    listed = api.get("/api/dead-letters", headers=admin).json()["dead_letters"]
    assert str(run_id) in [d["task_id"] for d in listed]
    requeued = api.post(f"/api/dead-letters/{run_id}/requeue", headers=admin)
    assert requeued.status_code == 202, requeued.text
    assert requeued.json()["requeued_by"] == "ops"
    assert api.post(f"/api/dead-letters/{run_id}/requeue", headers=admin).status_code == 404
    wait_for(lambda: len(stack.executions(run_id)) == cap + 1, 150, "the re-queued run to run")
    # attempts count from 1 again after a re-queue
    wait_for(
        lambda: any(
            (s.message or "").startswith(f"{RECOVERY_MARK}, attempt 2/{cap}")
            and s.timestamp
            > stack.store.col(C.DEAD_LETTERS).find_one({"task_id": str(run_id)})["requeued_at"]
            for s in stack.states(run_id)
        ),
        120,
        "the re-queued run's first recovery",
    )


@pytest.mark.tc("TC-ASYNC-103")
def test_retryable_failure_after_last_task_retry_is_resubmitted_then_dead_lettered(
    stack: Stack, background: dict
):
    retryable, bad_input = background["rel-fail-retryable"], background["rel-fail-bad-input"]
    run = stack.wait_state(retryable, {DEAD_LETTERED}, 150)
    cap = stack.settings.recovery_max_attempts
    assert len(stack.executions(retryable)) == cap
    letter = stack.store.col(C.DEAD_LETTERS).find_one({"task_id": str(retryable)})
    assert [a["state"] for a in letter["attempts"]] == ["Failed"] * cap
    assert all("StoreUnavailableError" in a["message"] for a in letter["attempts"])
    assert "StoreUnavailableError" in run.state.message
    # bad input (OperationalError) is left Failed: never re-run, never dead-lettered
    other = stack.read(bad_input)
    assert other.state.name == "Failed" and "InvalidInputError" in other.state.message
    assert len(stack.executions(bad_input)) == 1
    assert stack.store.col(C.DEAD_LETTERS).find_one({"task_id": str(bad_input)}) is None


def _count_runs(stack: Stack, n: int, seconds: float) -> list:
    return [stack.run("rel-count-work", {"seconds": seconds}) for _ in range(n)]


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-078")
def test_prefect_server_killed_with_queued_and_running_runs_all_complete_exactly_once(
    stack: Stack,
):
    runs = _count_runs(stack, 6, 4.0)
    wait_for(lambda: any(stack.executions(r) for r in runs), 120, "a first run to start")
    stack.kill("server")
    killed = time.monotonic()
    time.sleep(3)
    ready_s = stack.start_server()
    if stack.procs["worker"].poll() is not None:  # the supervisor would restart it
        stack.start_worker()
    for r in runs:
        stack.wait_state(r, {"Completed"}, 180)
    print(
        f"Prefect server kill -9: back in {ready_s:.1f} s; all {len(runs)} runs completed "
        f"{time.monotonic() - killed:.1f} s after the kill"
    )
    results = stack.store.col(C.TASK_RESULTS)
    for r in runs:
        assert results.count_documents({"task_id": str(r)}) == 1
        assert len(stack.executions(r)) == 1, stack.states(r)


@pytest.mark.tc("TC-ASYNC-078", "TC-ASYNC-079")
def test_store_killed_mid_training_the_run_rides_the_outage_out_once(stack: Stack):
    """kill -9 of the store (nx-27017) while a training writes its epochs: the job's store
    calls retry (BOTAI_STORE_RETRY_S) until the store is back on its port, the run completes
    in its first execution with every epoch recorded once, and the recovery service, which
    also lost the store, goes on working."""
    from integrations.embedded_mongo import start_embedded_mongo

    run_id = stack.run("train-model", {"params": {**TRAIN, "symbol": "BTCUSDT"}})
    wait_for(lambda: _epochs_recorded(stack, run_id) >= 2, 240, "2 epochs of training")
    stack.mongo.process.kill()
    stack.mongo.process.wait(10)
    killed = datetime.now(UTC)
    time.sleep(8)  # an outage several epochs long
    stack.mongo = start_embedded_mongo(stack.settings.mongodb_dir, port=stack.settings.mongodb_port)
    run = stack.wait_state(run_id, {"Completed"}, 240)
    print(
        f"store kill -9: run completed {(datetime.now(UTC) - killed).total_seconds():.1f} s after"
    )
    names = [s.name for s in stack.states(run_id)]
    assert run.run_count == 1 and "Crashed" not in names and "Failed" not in names, names
    job = stack.store.training_job_get(str(run_id))
    assert job["status"] == "completed" and job["error"] is None
    epochs = [e["epoch"] for e in job["epochs"]]
    assert epochs == list(range(1, TRAIN["epochs"] + 1)), epochs  # each epoch once, none lost
    assert stack.store.col(C.MODELS).count_documents({"training_task_id": str(run_id)}) == 1
    assert stack.procs["recovery"].poll() is None  # the recovery service survived the outage
