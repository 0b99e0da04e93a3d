"""Cancelling a task, including a run a worker has just claimed (TC-ASYNC-005).

The cancel race this module closes (reproduced against the Prefect 3.9 server): the
gateway used to read a run, find it unclaimed and force ``Cancelled``; a warm worker claims
a run within about 0.1 s, so the forced state could land on a run already ``Pending``, and
the server accepts ``Running`` after ``Cancelled`` (a terminal state may be left for a
re-run): the flow of a cancelled task ran. Now the gateway only *proposes* ``Cancelling``
and lets the server decide against the run's state at that moment: a run no worker holds
(``Scheduled``, no process) becomes ``Cancelled`` at once (Prefect's
``BypassCancellingFlowRunsWithNoInfra``) and can no longer be claimed (``Pending`` after
``Cancelled`` is refused); a claimed run becomes ``Cancelling``, which refuses ``Running``.
The run's process checks the cancel itself before its flow starts
(:mod:`deployments.start_guard`) and finishes it. Nothing else in Prefect takes a run left
``Cancelling`` before its flow started to ``Cancelled`` (the worker only does so for runs it
is still submitting), so :func:`watch_claimed_cancel` finishes it once its process is gone.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from api.outages import prefect_call
from api.security import Principal
from api.settings import ApiSettings
from core.exceptions import NotFoundError
from deployments.run_processes import is_local_host, parse_infrastructure_pid
from deployments.start_guard import cancel_requested

log = logging.getLogger(__name__)

#: States of a run a worker has claimed; its flow may not have started yet.
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
    """Cancel a run: propose ``Cancelling`` and let the server decide against the run's
    state at that moment (never forced): a run no process holds becomes ``Cancelled`` at
    once; a running one is stopped by its worker (SIGTERM, so training writes its checkpoint
    first); one a worker has just claimed is stopped by its own process before its flow
    starts (:mod:`deployments.start_guard`), or finished by :func:`watch_claimed_cancel`.

    Raises:
        NotFoundError: no such run.
        TaskConflictError: the run already ended (also when it ended while cancelling).
        PrefectUnavailableError: the Prefect API does not answer in time.
    """
    settings = settings or ApiSettings.model_construct()

    def cancel() -> Any:
        with get_client(sync_client=True) as client:
            run = read_run(client, task_id)
            if run.state is not None and run.state.is_final():
                raise TaskConflictError(
                    f"Task {task_id} already ended ({run.state.name}); nothing to cancel"
                )
            message = f"Cancelled by {user.user} through the gateway"
            result = client.set_flow_run_state(run.id, Cancelling(message=message))
            state = result.state
            if state is None:  # aborted: the run ended between the read and the proposal
                state = read_run(client, task_id).state
            elif result.status.value == "REJECT" and state.type == StateType.CANCELLED:
                # unclaimed: the server cancelled it at once, without our message; a
                # Cancelled run can no longer be claimed, so saying who cancelled it is safe
                state = client.set_flow_run_state(run.id, Cancelled(message=message)).state
            ended = state is not None and state.is_final() and state.type != StateType.CANCELLED
            if result.status.value != "ACCEPT" and ended:
                raise TaskConflictError(
                    f"Task {task_id} already ended ({state.name}); nothing to cancel"
                )
            return run.id, state

    run_id, state = prefect_call(cancel, settings)
    if state is not None and state.type in _CLAIMED:
        ctx = contextvars.copy_context()  # the request's bounded Prefect settings
        threading.Thread(
            target=ctx.run,
            args=(watch_claimed_cancel, run_id, settings.cancel_grace_s),
            name=f"cancel-{run_id}",
            daemon=True,
        ).start()

    log.info("user %s cancelled run %s", user.user, task_id)


def flow_started(states: list[Any]) -> bool:
    """True when the current attempt's flow started (a Running state after the last
    Scheduled one in the history ``states``)."""
    started = False
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type == StateType.SCHEDULED:
            started = False
        elif state.type == StateType.RUNNING:
            started = True
    return started


def finish_claimed_cancel(client: Any, run: FlowRun, grace_s: float) -> bool:
    """Set Cancelled a run left Cancelling before its flow started, once no process can
    start it: the process recorded as ``host:pid`` (the warm worker's form; a bare pid
    counts as this host's) is gone from this host, or no process was recorded and the
    Cancelling state is older than ``grace_s``. A live process, or one on another host, is
    left alone: its start guard or its worker finishes the cancel.

    Returns:
        True when the run was set Cancelled.
    """
    state = run.state
    if state is None or state.type != StateType.CANCELLING:
        return False
    history = client.read_flow_run_states(run.id)
    if flow_started(history) or cancel_requested(history) is None:
        return False
    age_s = (datetime.now(UTC) - state.timestamp).total_seconds()
    host, pid = parse_infrastructure_pid(run.infrastructure_pid)
    if pid is not None:
        if not is_local_host(host) or _pid_alive(pid):
            return False
        why = " (its flow never started; its process is gone)"
    elif age_s >= grace_s:
        why = f" (its flow never started within {grace_s:g} s)"
    else:
        return False
    result = client.set_flow_run_state(
        run.id, Cancelled(message=(state.message or "Cancelled") + why)
    )
    if result.status.value != "ACCEPT":
        return False
    log.info("run %s: cancelled before its flow started, set Cancelled", run.id)
    return True


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch_claimed_cancel(run_id: UUID, grace_s: float, poll_s: float = 0.5) -> None:
    """Follow a run cancelled just after a worker claimed it until it is final or its flow
    started; finish it with :func:`finish_claimed_cancel` (errors are logged)."""
    deadline = time.monotonic() + grace_s + 5 * poll_s
    try:
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                run = client.read_flow_run(run_id)
                if run.state is None or run.state.type != StateType.CANCELLING:
                    return
                if finish_claimed_cancel(client, run, grace_s):
                    return
                time.sleep(poll_s)
    except Exception:  # noqa: BLE001 - a status read finishes it later (task_status)
        log.warning("could not follow the cancel of run %s", run_id, exc_info=True)
