"""The recovery service's rules on real Prefect state objects: what is retryable, what is a
time limit, how attempts are counted from a state history, the backoff, and a live process
seen through its environment (no stack needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from prefect.states import Completed, Crashed, Failed, Running, Scheduled

from core.settings import load_settings
from deployments.dead_letters import DEAD_LETTERED, REQUEUE_MARK, record_status
from deployments.recovery_rules import (
    RECOVERY_MARK,
    backoff_s,
    ended_attempts,
    is_retryable_failure,
    is_time_limit,
)
from deployments.run_processes import kill_processes, local_flow_processes, parse_infrastructure_pid


def _at(state, seconds: float):
    state.timestamp = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    return state


@pytest.mark.tc("TC-ASYNC-103", "TC-ASYNC-080")
def test_retryable_failures_time_limits_and_bad_input_are_told_apart():
    store_down = Failed(message="Flow run encountered an exception: StoreUnavailableError: down")
    assert is_retryable_failure(store_down)
    assert is_retryable_failure(
        Failed(message="Flow run encountered an exception: RateLimitedError: 429")
    )
    assert not is_retryable_failure(
        Failed(message="InvalidInputError: symbol 'NOPE' is not traded")
    )
    timed_out = Failed(name="TimedOut", message="Flow run exceeded timeout of 9000 second(s)")
    assert is_time_limit(timed_out) and not is_retryable_failure(timed_out)
    soft = Failed(message="TrainingError: soft time limit of 60 s reached; StoreUnavailableError")
    assert is_time_limit(soft) and not is_retryable_failure(soft)
    assert not is_retryable_failure(Failed(name=DEAD_LETTERED, message="StoreUnavailableError"))


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-103")
def test_attempts_are_counted_from_the_state_history_and_restart_after_a_requeue():
    history = [
        _at(Scheduled(), 0),
        _at(Running(), 1),
        _at(Crashed(message="Process exited with status code: -9"), 5),
        _at(Scheduled(message=f"{RECOVERY_MARK}, attempt 2/3"), 11),
        _at(Running(), 12),
        _at(Failed(message="StoreUnavailableError: down"), 20),
    ]
    attempts = ended_attempts(list(reversed(history)))  # order of the API does not matter
    assert [(a.run_count, a.state) for a in attempts] == [(1, "Crashed"), (2, "Failed")]
    assert attempts[0].message.endswith("-9") and attempts[0].at < attempts[1].at
    requeued = [
        *history,
        _at(Failed(name=DEAD_LETTERED, message="dead-lettered after 2 attempts"), 21),
        _at(Scheduled(message=f"{REQUEUE_MARK} by ops"), 30),
        _at(Running(), 31),
        _at(Crashed(message="again"), 40),
    ]
    assert [(a.run_count, a.message) for a in ended_attempts(requeued)] == [(3, "again")]
    settings = load_settings(recovery_backoff_s=5, recovery_backoff_max_s=12)
    assert [backoff_s(settings, k) for k in (1, 2, 3, 4)] == [5, 10, 12, 12]


@pytest.mark.tc("TC-ASYNC-077")
def test_record_status_follows_the_final_state_only():
    assert record_status(Completed()) == "completed"
    assert record_status(Crashed()) == "crashed"
    assert record_status(Failed()) == "failed"
    assert record_status(Failed(name=DEAD_LETTERED)) == "dead-lettered"
    assert record_status(Running()) is None and record_status(Scheduled()) is None


@pytest.mark.tc("TC-ASYNC-077")
def test_a_flow_run_process_is_found_by_its_run_id_and_killed_even_when_stopped():
    assert parse_infrastructure_pid("host-a:4242") == ("host-a", 4242)
    assert parse_infrastructure_pid("4242") == (None, 4242)
    assert parse_infrastructure_pid(None) == (None, None)
    run_id = "0b7a1c3e-0000-4000-8000-000000000001"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)  # prefect.engine stand-in"],
        env={**os.environ, "PREFECT__FLOW_RUN_ID": run_id},
    )
    try:
        deadline = time.monotonic() + 10
        while run_id not in local_flow_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        procs = local_flow_processes()[run_id]
        assert [p.pid for p in procs] == [child.pid]
        os.kill(child.pid, 19)  # SIGSTOP: a hung process is still found, and still killed
        assert kill_processes(procs) == 1
        assert not procs[0].is_running()  # killed and reaped (psutil waited for it)
        assert run_id not in local_flow_processes()
    finally:
        child.kill()
