"""The host-aware liveness rules, the start guard, the recovery lease, idempotent dead letters
and the gateway's RETRY status, on real Prefect objects, a real Prefect server, a real
nx-27017 and real processes (no stack needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, Cancelling, Crashed, Failed, Pending, Running, Scheduled

from api.service import status_of
from core.settings import load_settings
from deployments.dead_letters import DEAD_LETTERED
from deployments.recovery_lease import RecoveryLease
from deployments.recovery_liveness import judge
from deployments.recovery_rules import awaits_recovery, is_api_lost
from deployments.run_processes import forget_process
from deployments.start_guard import cancel_requested, host_pid, may_start, requeued_since
from integrations.store import Store

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SETTINGS = load_settings(
    recovery_exit_grace_s=5,
    recovery_start_grace_s=45,
    recovery_pending_max_s=120,
    recovery_heartbeat_stale_s=75,
    heartbeat_s=30,
)


def _run(state, age_s: float, pid: str | None = None) -> FlowRun:
    state.timestamp = NOW - timedelta(seconds=age_s)
    return FlowRun(flow_id=uuid4(), state=state, infrastructure_pid=pid)


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.tc("TC-ASYNC-077")
def test_own_processes_are_judged_by_the_process_table(sleeper):
    alive = _run(Running(), 600, host_pid(sleeper.pid))
    assert judge(alive, {}, SETTINGS, NOW, None, {}) is None  # no heartbeat needed: it runs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _run(Running(), 6, host_pid(gone.pid))
    verdict = judge(dead, {}, SETTINGS, NOW, None, {})
    assert verdict is not None and "no live process" in verdict.reason
    assert judge(_run(Running(), 2, host_pid(gone.pid)), {}, SETTINGS, NOW, None, {}) is None


@pytest.mark.tc("TC-ASYNC-077")
def test_a_warm_run_without_a_recorded_pid_is_not_crashed_after_the_start_grace():
    # a warm run is invisible to the process scan until its pid is recorded: before, it
    # was crashed 45 s into Pending; now only the no-process-table bound applies
    assert judge(_run(Pending(), 60, None), {}, SETTINGS, NOW, None, {}) is None
    verdict = judge(_run(Pending(), 125, None), {}, SETTINGS, NOW, None, {})
    assert verdict is not None and "never started" in verdict.reason


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-102")
def test_another_hosts_runs_are_judged_by_heartbeats_never_by_the_local_table(sleeper):
    # a pid that is free here (or even alive here) means nothing for another host's run
    other = f"worker-b.invalid:{sleeper.pid}"
    fresh = NOW - timedelta(seconds=20)
    assert judge(_run(Running(), 600, other), {}, SETTINGS, NOW, fresh, {}) is None
    stale = NOW - timedelta(seconds=80)
    verdict = judge(_run(Running(), 600, other), {}, SETTINGS, NOW, stale, {})
    assert verdict is not None and "no heartbeat for 80 s" in verdict.reason
    # found within 90 s of its last heartbeat
    assert (
        judge(_run(Running(), 600, other), {}, SETTINGS, NOW, NOW - timedelta(seconds=74), {})
        is None
    )
    # a Pending run another host claimed and never started: no process table needed
    assert judge(_run(Pending(), 100, other), {}, SETTINGS, NOW, None, {}) is None
    assert judge(_run(Pending(), 121, other), {}, SETTINGS, NOW, None, {}) is not None
    # with local checks off, this host's Pending run that never starts is found the same way
    off = SETTINGS.model_copy(update={"recovery_local_workers": False})
    assert judge(_run(Pending(), 121, host_pid(sleeper.pid)), {}, off, NOW, None, {}) is not None
    assert judge(_run(Pending(), 60, host_pid(sleeper.pid)), {}, off, NOW, None, {}) is None


@pytest.mark.tc("TC-ASYNC-005")
def test_the_start_guard_sees_a_cancel_of_the_current_attempt_only():
    def at(state, s):
        state.timestamp = NOW + timedelta(seconds=s)
        return state

    claimed_then_cancelled = [at(Scheduled(), 0), at(Pending(), 1), at(Cancelling(), 2)]
    assert cancel_requested(claimed_then_cancelled).type.value == "CANCELLING"
    forced_on_pending = [at(Scheduled(), 0), at(Pending(), 1), at(Cancelled(), 2)]
    assert cancel_requested(list(reversed(forced_on_pending))) is not None
    rerun = [*forced_on_pending, at(Scheduled(message="requeued from dead letters"), 3)]
    assert cancel_requested(rerun) is None
    assert cancel_requested([at(Scheduled(), 0), at(Pending(), 1)]) is None


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-103")
def test_a_late_crash_report_of_an_attempt_never_lands_on_the_next_one():
    def at(state, s):
        state.timestamp = NOW + timedelta(seconds=s)
        return state

    claimed = at(Scheduled(), 0)
    first = [claimed, at(Pending(), 1), at(Running(), 2), at(Crashed(), 3)]
    assert not requeued_since(first, claimed)  # its own crash: reported
    again = [
        *first,
        at(Scheduled(message="recovered after crash, attempt 2/3"), 5),
        at(Pending(), 6),
    ]
    assert requeued_since(again, claimed)  # the next attempt: the old report is dropped


@pytest.mark.tc("TC-ASYNC-005")
def test_a_run_process_exits_without_running_when_the_cancel_came_first(prefect_server: str):
    from prefect import flow

    @flow(name="guard-probe")
    def probe() -> None:  # never executed: runs are created, not started
        return None

    with get_client(sync_client=True) as client:
        claimed = client.create_flow_run(probe, state=Pending())
        assert (
            client.set_flow_run_state(claimed.id, Cancelling(message="by ops")).status.value
            == "ACCEPT"
        )
        assert may_start(str(claimed.id)) is False
        after = client.read_flow_run(claimed.id)
        assert after.state.type.value == "CANCELLED" and "saw the cancel" in after.state.message
        # Prefect would accept Running now: the guard is what keeps the flow from running
        fresh = client.create_flow_run(probe, state=Pending())
        assert may_start(str(fresh.id)) is True
        assert client.read_flow_run(fresh.id).infrastructure_pid == host_pid()
        # a run queued again forgets its dead process: the next attempt is not judged by it
        forget_process(client, fresh.id)
        again = client.read_flow_run(fresh.id)
        assert not again.infrastructure_pid
        again.state.timestamp = NOW - timedelta(seconds=60)
        assert judge(again, {}, SETTINGS, NOW, None, {}) is None


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-103")
def test_crashed_runs_show_retry_with_the_attempt_and_failure_only_when_final():
    crashed = _run(Crashed(message="Process exited with status code: -9"), 1)
    crashed.run_count = 1
    status, retry = status_of(crashed)
    assert status == "RETRY" and retry.attempt == 2 and "-9" in retry.reason
    lost = Failed(message="Flow run encountered an exception: httpx.ConnectError: [Errno 111]")
    assert is_api_lost(lost) and awaits_recovery(lost)
    assert status_of(_run(lost, 1))[0] == "RETRY"
    for final in (
        Failed(name=DEAD_LETTERED, message="dead-lettered after 3 attempts; last: Crashed"),
        Failed(message="InvalidInputError: symbol 'NOPE' is not traded"),
        Failed(name="TimedOut", message="Flow run exceeded timeout of 60 second(s)"),
    ):
        assert status_of(_run(final, 1)) == ("FAILURE", None), final.message


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-103")
def test_only_one_recovery_replica_holds_the_lease_until_it_lapses(store: Store):
    first, second = RecoveryLease(2.0, owner="host-a:1"), RecoveryLease(2.0, owner="host-b:2")
    assert first.acquire(store) and first.valid()
    assert not second.acquire(store) and second.holder == "host-a:1" and not second.valid()
    assert first.acquire(store)  # renewing is harmless
    time.sleep(1.1)
    assert not first.valid()  # past half its lease a holder stops acting ...
    assert not second.acquire(store)  # ... before anyone else may take it
    time.sleep(1.2)
    assert second.acquire(store) and second.valid()  # not renewed for 2 s: taken over
    assert not first.acquire(store) and first.holder == "host-b:2"
    second.release(store)
    assert first.acquire(store)


@pytest.mark.tc("TC-ASYNC-103")
def test_a_dead_letter_is_written_once_however_often_it_is_added(store: Store):
    doc = {"task_id": str(uuid4()), "reason": "dead-lettered after 3 attempts", "requeued_at": None}
    assert store.dead_letters.dead_letter_add(dict(doc)) is True
    assert store.dead_letters.dead_letter_add(dict(doc, reason="again")) is False
    assert store.dead_letters.dead_letter_get(doc["task_id"])["reason"] == doc["reason"]
    store.dead_letters.dead_letter_mark_requeued(doc["task_id"], "ops")
    assert store.dead_letters.dead_letter_add(dict(doc, reason="after requeue")) is True
    assert store.col("dead_letters").count_documents({"task_id": doc["task_id"]}) == 1
