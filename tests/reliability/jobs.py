"""Small flows the reliability tests deploy on their own stack (entrypoints
``tests/reliability/jobs.py:<flow>``). Each records every execution in the test store's
``executions`` collection (one document per attempt), so a test counts the work done."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

from prefect import flow, task
from prefect.runtime import flow_run

from blocks.loader import load_store
from core.exceptions import InvalidInputError, StoreUnavailableError
from integrations.store import C
from tasks.retry import retry_only_retryable

EXECUTIONS = "executions"


def _record(kind: str) -> str:
    run_id = str(flow_run.get_id())
    load_store().col(EXECUTIONS).insert_one(
        {
            "task_id": run_id,
            "kind": kind,
            "run_count": flow_run.get_run_count(),
            "pid": os.getpid(),
            "at": datetime.now(UTC),
        }
    )
    return run_id


@flow(name="rel-count-work")
def count_work(seconds: float = 2.0) -> str:
    """Sleep ``seconds`` (a job's work), then write one result document keyed by the run id
    (replaced on a re-run: a re-run never duplicates). Returns the run id."""
    run_id = _record("count-work")
    time.sleep(seconds)
    col = load_store().col(C.TASK_RESULTS)
    doc = {"task_id": run_id, "status": "completed", "finished_at": datetime.now(UTC)}
    if col.count_documents({"task_id": run_id}, limit=1):
        col.replace_one({"task_id": run_id}, doc)
    else:
        col.insert_one(doc)
    return run_id


@flow(name="rel-crash-always")
def crash_always() -> None:
    """Kill its own process (-9) every time: the run can only end Crashed."""
    _record("crash-always")
    os.kill(os.getpid(), signal.SIGKILL)


@task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_only_retryable)
def read_from_store() -> None:
    raise StoreUnavailableError("MongoDB store unavailable: connection refused (test outage)")


@flow(name="rel-fail-retryable")
def fail_retryable() -> None:
    """Fail with a retryable store error after the task's last retry (TC-ASYNC-103)."""
    _record("fail-retryable")
    read_from_store()


@flow(name="rel-fail-bad-input")
def fail_bad_input() -> None:
    """Fail with an OperationalError (bad input): never resubmitted."""
    _record("fail-bad-input")
    raise InvalidInputError("symbol 'NOPE' is not traded: pass a listed symbol")
