"""Cancelling a task, including a run a worker has just claimed (TC-ASYNC-005).

Cause of the cancel race this module closes (reproduced against the Prefect 3.9 server): a
run cancelled while Pending (a worker has claimed it, its process is starting) is set to
Cancelling. Its process then proposes Running and is refused ("Cannot transition flows
that are cancelling to a state other than Cancelled"), so it exits without running the
flow. The worker only finishes cancellations of runs it is still submitting, so nothing
takes the run from Cancelling to Cancelled: it shows "in progress" for minutes. Setting
such a run Cancelled at once is no cure: the server accepts Running after Cancelled, so a
process still starting would run the flow of a cancelled task.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psutil
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from api.outages import prefect_call
from api.security import Principal
from api.settings import ApiSettings
from core.exceptions import NotFoundError

log = logging.getLogger(__name__)

#: States without a process yet: cancelling them needs no worker.
_NOT_STARTED = {StateType.SCHEDULED, StateType.PAUSED}
#: States of a run a worker has claimed; with run_count 0 its flow has not started.
_CLAIMED = {StateType.PENDING, StateType.CANCELLING}


class TaskConflictError(Exception):
    """The request conflicts with the task's state (HTTP 409), e.g. cancelling a finished run."""


def read_run(client: Any, task_id: str) -> FlowRun:
    """The flow run ``task_id``.

    Raises:
        NotFoundError: Prefect knows no such run.
    """
    try:
        return client.read_flow_run(UUID(task_id))
    except ObjectNotFound:
        raise NotFoundError(f"No task {task_id}") from None


def cancel_task(task_id: str, user: Principal, settings: ApiSettings | None = None) -> None:
    """Cancel a run: at once if no process has it yet, else through its worker (SIGTERM,
    so training writes its checkpoint first).

    A run a worker has just claimed (Pending, flow not started) is set to Cancelling like
    any other: its process, proposing Running, is then refused and exits without running
    the flow. Nothing in Prefect then takes that run from Cancelling to Cancelled (the
    worker only does so for runs it is still submitting), so it would show "in progress"
    for minutes: :func:`watch_claimed_cancel` finishes it once its process is gone.

    Raises:
        NotFoundError: no such run.
        TaskConflictError: the run already ended.
        PrefectUnavailableError: the Prefect API does not answer in time.
    """
    settings = settings or ApiSettings.model_construct()

    def cancel() -> FlowRun:
        with get_client(sync_client=True) as client:
            run = read_run(client, task_id)
            if run.state is not None and run.state.is_final():
                raise TaskConflictError(
                    f"Task {task_id} already ended ({run.state.name}); nothing to cancel"
                )
            message = f"Cancelled by {user.user} through the gateway"
            not_started = run.state is None or run.state.type in _NOT_STARTED
            state = Cancelled(message=message) if not_started else Cancelling(message=message)
            client.set_flow_run_state(run.id, state, force=True)
            return run

    run = prefect_call(cancel, settings)
    if run.state is not None and run.state.type in _CLAIMED and not run.run_count:
        ctx = contextvars.copy_context()  # the request's bounded Prefect settings
        threading.Thread(
            target=ctx.run,
            args=(watch_claimed_cancel, run.id, settings.cancel_grace_s),
            name=f"cancel-{run.id}",
            daemon=True,
        ).start()

    log.info("user %s cancelled run %s", user.user, task_id)


def finish_claimed_cancel(client: Any, run: FlowRun, grace_s: float) -> bool:
    """Set Cancelled a run left Cancelling before its flow started, once no process can
    start it: its process is gone (the pid the worker recorded is not alive on this host),
    or the Cancelling state is older than ``grace_s``.

    Returns:
        True when the run was set Cancelled.
    """
    state = run.state
    if state is None or state.type != StateType.CANCELLING or run.run_count:
        return False
    age_s = (datetime.now(UTC) - state.timestamp).total_seconds()
    pid = int(run.infrastructure_pid) if str(run.infrastructure_pid or "").isdigit() else None
    gone = pid is not None and not psutil.pid_exists(pid)
    if not gone and age_s < grace_s:
        return False
    message = (state.message or "Cancelled") + (
        " (its flow never started; its process is gone)"
        if gone
        else f" (its flow never started within {grace_s:g} s)"
    )
    client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
    log.info("run %s: cancelled before its flow started, set Cancelled", run.id)
    return True


def watch_claimed_cancel(run_id: UUID, grace_s: float, poll_s: float = 0.5) -> None:
    """Follow a run cancelled just after a worker claimed it until it is final or its flow
    started; finish it with :func:`finish_claimed_cancel` (errors are logged)."""
    deadline = time.monotonic() + grace_s + 5 * poll_s
    try:
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                run = client.read_flow_run(run_id)
                if run.state is None or run.state.is_final() or run.run_count:
                    return
                if finish_claimed_cancel(client, run, grace_s):
                    return
                time.sleep(poll_s)
    except Exception:  # noqa: BLE001 - a status read finishes it later (task_status)
        log.warning("could not follow the cancel of run %s", run_id, exc_info=True)
