"""Cancel and slot safety on a real stack (warm worker, Prefect server, recovery service):
tasks cancelled right after their 202 never run, and a Prefect server killed -9 while
trainings hold both training slots leaves no slot taken."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.security import issue_token
from api.settings import load_api_settings
from integrations.store import C
from tests.reliability.stack import Stack, wait_for

pytestmark = pytest.mark.slow

TRAIN = {
    "model_type": "gru",
    "symbol": "BTCUSDT",
    "timeframe": "1h",
    "days_of_data": 30,
    "epochs": 6,
    "batch_size": 32,
    "units": 8,
    "lookback": 12,
    "learning_rate": 3e-3,
    "checkpoint_interval": 2,
}
MODEL_TYPES = ("lstm", "gru", "transformer")


def _history(stack: Stack, run_id) -> list[str]:
    return [s.type.value for s in sorted(stack.states(run_id), key=lambda s: s.timestamp)]


@pytest.mark.tc("TC-ASYNC-005", "TC-ASYNC-085")
def test_tasks_cancelled_right_after_their_202_never_execute(stack: Stack):
    settings = load_api_settings(
        jwt_secret="reliability-gateway-secret-" + "x" * 24, trainings_per_day=1000
    )
    api = TestClient(create_app(settings, store_factory=lambda: stack.store))
    admin = {"Authorization": f"Bearer {issue_token(settings, 'ops', admin=True)}"}
    runs: list[str] = []
    answers: list[str] = []
    for k in range(24):
        body = {**TRAIN, "model_type": MODEL_TYPES[k % 3]}
        r = api.post("/api/tasks/train", json=body, headers=admin)
        assert r.status_code == 202, r.json()
        runs.append(r.json()["task_id"])
        d = api.delete(f"/api/tasks/{runs[-1]}", headers=admin)
        assert d.status_code == 202, d.json()
        answers.append(d.json()["state"])
        time.sleep(0.05 * (k % 4))  # cancels land before, during and after the claim

    def all_revoked() -> bool:
        return all(
            api.get(f"/api/tasks/{r}", headers=admin).json()["status"] == "REVOKED" for r in runs
        )

    wait_for(all_revoked, 90, "every cancelled task to read REVOKED")
    time.sleep(3)  # a run that slipped through would show Running by now
    claimed = 0
    for run_id in runs:
        history = _history(stack, run_id)
        claimed += "PENDING" in history
        assert "RUNNING" not in history, (run_id, history)
        assert history[-1] == "CANCELLED", (run_id, history)
        assert stack.store.training_job_get(run_id) is None, run_id  # the flow never began
        assert stack.store.col(C.MODELS).count_documents({"training_task_id": run_id}) == 0
    print(
        f"{len(runs)} trainings cancelled right after their 202: 0 executed; "
        f"{claimed} had been claimed by the warm worker (Pending) when the cancel landed; "
        f"cancel answers: {sorted(set(answers))}"
    )
    assert claimed >= 1, "no cancel landed on a claimed run: the race was not exercised"


@pytest.mark.tc("TC-ASYNC-004", "TC-ASYNC-076")
def test_server_killed_while_trainings_hold_both_slots_later_trainings_still_run(stack: Stack):
    from prefect.client.orchestration import get_client

    from deployments.up import prefect_api
    from tasks.training import TRAINING_LIMIT, ensure_training_limit

    with prefect_api(stack.settings):
        ensure_training_limit(2)

    def active_slots() -> int:
        with prefect_api(stack.settings), get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).active_slots

    long = {**TRAIN, "epochs": 24}
    holders = [
        stack.run("train-model", {"params": {**long, "model_type": m}}) for m in ("lstm", "gru")
    ]
    wait_for(lambda: active_slots() == 2, 180, "both training slots taken")
    wait_for(
        lambda: all(stack.store.training_job_get(str(r)) for r in holders), 120, "both training"
    )
    stack.kill("server")
    killed = time.monotonic()
    time.sleep(3)
    ready_s = stack.start_server()
    if stack.procs["worker"].poll() is not None:  # the supervisor would restart it
        stack.start_worker()
    later = [
        stack.run("train-model", {"params": {**TRAIN, "model_type": "transformer"}}),
        stack.run("train-model", {"params": {**TRAIN, "model_type": "lstm", "units": 6}}),
    ]
    for r in [*holders, *later]:
        stack.wait_state(r, {"Completed"}, 600)
    took_s = time.monotonic() - killed
    wait_for(lambda: active_slots() == 0, 90, "every training slot free again")
    for r in [*holders, *later]:
        assert stack.store.col(C.MODELS).count_documents({"training_task_id": str(r)}) == 1
        job = stack.store.training_job_get(str(r))
        assert job["status"] == "completed", job
    leases = list((stack.settings.prefect_home / "concurrency_leases").glob("*.json"))
    print(
        f"Prefect server kill -9 with both training slots held: back in {ready_s:.1f} s; "
        f"{len(holders)} holders and {len(later)} later trainings completed "
        f"{took_s:.0f} s after the kill; slots taken at the end: 0; "
        f"lease files left: {len([p for p in leases if p.name != 'expirations.json'])}"
    )


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-102")
def test_runs_of_another_host_are_judged_by_heartbeats_and_pending_by_age(stack: Stack):
    """Three runs whose recorded process is on another host (so no process table here can
    judge them): one really running and sending heartbeats must be left alone; one left
    Running with no process sends none and is Crashed, then re-run here; one a worker of
    that host claimed and never started is found by its age in Pending, then re-run."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    from deployments.up import prefect_api

    alive = stack.run("rel-count-work", {"seconds": 80.0})
    wait_for(lambda: stack.executions(alive), 120, "the long run to start")
    with prefect_api(stack.settings), get_client(sync_client=True) as client:
        pid = client.read_flow_run(alive).infrastructure_pid.rpartition(":")[2]
        client.update_flow_run(alive, infrastructure_pid=f"worker-b.invalid:{pid}")
        silent = client.create_flow_run_from_deployment(
            stack.deployments["rel-count-work"], parameters={"seconds": 0.5}, state=Running()
        ).id
        never = client.create_flow_run_from_deployment(
            stack.deployments["rel-count-work"], parameters={"seconds": 0.5}, state=Pending()
        ).id
        for run_id in (silent, never):
            client.update_flow_run(run_id, infrastructure_pid="worker-b.invalid:4242")
    started = time.monotonic()
    for run_id in (silent, never):
        stack.wait_state(run_id, {"Completed"}, 180)
    found = {
        r: next(s for s in stack.states(r) if s.type.value == "CRASHED") for r in (silent, never)
    }
    stack.wait_state(alive, {"Completed"}, 120)
    assert [s.type.value for s in stack.states(alive)].count("CRASHED") == 0
    assert len(stack.executions(alive)) == 1
    assert "no heartbeat" in found[silent].message, found[silent].message
    assert "never started" in found[never].message, found[never].message
    for r in (silent, never):
        assert len(stack.executions(r)) == 1, stack.states(r)
    print(
        "another host's runs: the live one (heartbeats) left alone and completed once; "
        f"the silent Running one crashed ({found[silent].message[:80]}), the never-started "
        f"Pending one crashed ({found[never].message[:80]}), both re-run here and completed "
        f"once, {time.monotonic() - started:.0f} s in all"
    )


@pytest.mark.tc("TC-ASYNC-103")
def test_two_recovery_replicas_run_a_crashing_run_its_attempts_once_and_dead_letter_it_once(
    stack: Stack,
):
    import sys

    from deployments import services
    from deployments.dead_letters import DEAD_LETTERED
    from deployments.recovery_lease import LEASE_NAME

    second = services.spawn(
        "recovery-2", [sys.executable, "-m", "deployments.recovery"], stack.env, stack.settings
    )
    stack.procs["recovery-2"] = second
    try:
        run_id = stack.run("rel-crash-always")
        stack.wait_state(run_id, {DEAD_LETTERED}, 240)
        time.sleep(5)  # a second replica acting would re-run or dead-letter it again now
        history = [
            (s.timestamp.strftime("%H:%M:%S.%f"), s.name, (s.message or "")[:140])
            for s in sorted(stack.states(run_id), key=lambda s: s.timestamp)
        ]
        assert len(stack.executions(run_id)) == 3, history
        letters = stack.store.col(C.DEAD_LETTERS).count_documents({"task_id": str(run_id)})
        assert letters == 1
        logs = {
            name: (services.run_dir(stack.settings) / f"{name}.log").read_text()
            for name in ("recovery", "recovery-2")
        }
        acted = {
            name: text.count(f"({run_id}) resubmitted") + text.count(f"{run_id} dead-lettered")
            for name, text in logs.items()
        }
        assert sorted(acted.values()) == [0, 3], acted  # 2 resubmissions + 1 dead letter
        holder = stack.store.col(C.LOCKS).find_one({"_id": LEASE_NAME})
        print(
            f"two recovery replicas: 3 executions, 1 dead letter, actions per replica "
            f"{acted}, lease held by {holder and holder['owner']}"
        )
    finally:  # SIGTERM: the replica gives the lease up if it holds it
        stack.procs.pop("recovery-2").terminate()
        second.wait(20)


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-078")
def test_a_run_that_lost_the_api_after_saving_its_work_is_reconciled_to_success(stack: Stack):
    """The states a flow process leaves when the Prefect API goes away after its work was
    saved (Running, then Failed with httpx's ConnectError, as Prefect's engine reports it),
    written through the real API: recovery completes the run instead of leaving it Failed,
    and the gateway says RETRY meanwhile, SUCCESS after; the same failure without saved
    work is re-run and executes once."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.states import Failed, Running

    from deployments.up import prefect_api

    settings = load_api_settings(jwt_secret="reliability-gateway-secret-" + "x" * 24)
    api = TestClient(create_app(settings, store_factory=lambda: stack.store))
    admin = {"Authorization": f"Bearer {issue_token(settings, 'ops', admin=True)}"}
    lost = "Flow run encountered an exception: httpx.ConnectError: All connection attempts failed"
    with prefect_api(stack.settings), get_client(sync_client=True) as client:
        saved, unsaved = (
            client.create_flow_run_from_deployment(
                stack.deployments["rel-count-work"], parameters={"seconds": 0.5}, state=Running()
            ).id
            for _ in range(2)
        )
        stack.store.col(C.TASK_RESULTS).insert_one(
            {"task_id": str(saved), "status": "completed", "finished_at": datetime.now(UTC)}
        )
        for run_id in (saved, unsaved):
            client.set_flow_run_state(run_id, Failed(message=lost), force=True)
    seen = api.get(f"/api/tasks/{saved}", headers=admin).json()
    assert seen["status"] == "RETRY" and "ConnectError" in seen["retry"]["reason"], seen
    stack.wait_state(saved, {"Completed"}, 60)
    final = api.get(f"/api/tasks/{saved}", headers=admin).json()
    assert final["status"] == "SUCCESS" and "result was saved" in final["message"], final
    assert stack.executions(saved) == []  # completed from its saved work, not re-run
    stack.wait_state(unsaved, {"Completed"}, 120)
    assert len(stack.executions(unsaved)) == 1
