"""What the routes do: start a job's flow run, read a run's status, cancel a run.

Uses the synchronous Prefect client (handlers are sync, FastAPI runs them in its thread
pool) and the platform store. Raises the platform's exceptions; ``api.main`` maps them to
HTTP answers.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling
from pydantic import BaseModel

from api import quotas
from api.jobs import JOBS, Job
from api.schemas import DeadLetterInfo, TaskAccepted, TaskStatus, TaskStatusName
from api.security import Principal
from api.settings import ApiSettings
from core.exceptions import (
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)
from integrations.store import C, Store

log = logging.getLogger(__name__)

STATUS_OF: dict[StateType, TaskStatusName] = {
    StateType.SCHEDULED: "PENDING",
    StateType.PENDING: "PENDING",
    StateType.PAUSED: "PENDING",
    StateType.RUNNING: "PROGRESS",
    StateType.CANCELLING: "PROGRESS",
    StateType.COMPLETED: "SUCCESS",
    StateType.FAILED: "FAILURE",
    StateType.CRASHED: "FAILURE",
    StateType.CANCELLED: "REVOKED",
}
#: States without a process yet: cancelling them needs no worker.
_NOT_STARTED = {StateType.SCHEDULED, StateType.PAUSED}


class TaskConflictError(Exception):
    """The request conflicts with the task's state (HTTP 409), e.g. cancelling a finished run."""


def daily_limit(job: Job, settings: ApiSettings) -> int:
    """The per-user daily limit of ``job``."""
    return settings.trainings_per_day if job.name == "train" else settings.tasks_per_day


def start_task(
    job: Job,
    params: BaseModel,
    user: Principal,
    store: Store,
    settings: ApiSettings,
    now: datetime | None = None,
    idempotency_key: str | None = None,
) -> TaskAccepted:
    """Create a flow run of ``job``'s deployment for ``user``.

    Order: a replay (same ``idempotency_key`` seen before for this user and job: the same
    answer again, nothing new) -> the job's pre-check (train: no same model+symbol+timeframe
    queued or running) -> one quota slot -> the run. A failure at any step leaves nothing
    queued and no slot used.

    Returns:
        the 202 body (``replayed`` true when the key had already created the run).

    Raises:
        InvalidInputError: the idempotency key was used before with other parameters.
        DuplicateRunError: a training of the same key is queued or running.
        QuotaExceededError: the user's daily limit for the job is reached.
        ConfigurationError: the deployment is not registered.
        ServiceUnavailableError: the Prefect API does not answer.
    """
    now = now or datetime.now(UTC)
    if job.who_field:
        params = params.model_copy(update={job.who_field: user.user})
    limit = daily_limit(job, settings)
    digest = _params_digest(params)
    if idempotency_key is not None:
        earlier = quotas.find_by_key(store, user.user, job.name, idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest, job, limit, store, user, now)
    if job.precheck is not None:
        _prefect_call(lambda: job.precheck(params))
    reservation = quotas.reserve(
        store, user.user, job.name, limit, job.quota_noun, now, idempotency_key, digest
    )
    try:
        run = _prefect_call(lambda: _create_run(job, params, user, idempotency_key))
    except BaseException:
        quotas.release(store, reservation)
        raise
    if not quotas.confirm(store, reservation, str(run.id)):
        # a concurrent request with the same key created (and counted) this run first
        return _replay(quotas.owner_of(store, str(run.id)), digest, job, limit, store, user, now)
    log.info("user %s started %s: run %s (%s)", user.user, job.name, run.id, run.name)
    return _accepted(str(run.id), job, limit, store, user, now)


def _params_digest(params: BaseModel) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()


def _accepted(
    task_id: str,
    job: Job,
    limit: int,
    store: Store,
    user: Principal,
    now: datetime,
    replayed: bool = False,
) -> TaskAccepted:
    return TaskAccepted(
        task_id=task_id,
        status="PENDING",
        status_url=f"/api/tasks/{task_id}",
        job=job.name,
        quota_remaining_today=max(0, limit - quotas.used_today(store, user.user, job.name, now)),
        replayed=replayed,
    )


def _replay(
    earlier: dict[str, Any] | None,
    digest: str,
    job: Job,
    limit: int,
    store: Store,
    user: Principal,
    now: datetime,
) -> TaskAccepted:
    if earlier is None or earlier.get("task_id") is None:
        raise TaskConflictError(
            "a request with this Idempotency-Key is still being processed; retry in a moment"
        )
    if earlier.get("params_sha256") != digest:
        raise InvalidInputError(
            "Idempotency-Key was already used with different parameters: "
            "send a new key for a new task"
        )
    log.info("user %s replayed %s: run %s", user.user, job.name, earlier["task_id"])
    return _accepted(earlier["task_id"], job, limit, store, user, now, replayed=True)


def _create_run(
    job: Job, params: BaseModel, user: Principal, idempotency_key: str | None
) -> FlowRun:
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(job.deployment)
        except ObjectNotFound:
            raise ConfigurationError(
                f"deployment {job.deployment} is not registered: start the stack with "
                "'botai up' (or run 'prefect deploy --all')"
            ) from None
        return client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"params": params.model_dump(mode="json")},
            tags=["api", f"user:{user.user}"],
            # Prefect returns the existing run for a key it has seen (per flow, forever)
            idempotency_key=(
                f"api:{user.user}:{job.name}:{idempotency_key}" if idempotency_key else None
            ),
        )


def _prefect_call(fn: Any) -> Any:
    """Run ``fn``, turning an unreachable Prefect API into ServiceUnavailableError."""
    try:
        return fn()
    except httpx.TransportError as e:
        raise ServiceUnavailableError(f"Prefect API unreachable: {e}") from e


def _read_run(client: Any, task_id: str) -> FlowRun:
    try:
        return client.read_flow_run(UUID(task_id))
    except ObjectNotFound:
        raise NotFoundError(f"No task {task_id}") from None


def _latest_progress(client: Any, run_id: UUID) -> tuple[float | None, str | None]:
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            type=ArtifactFilterType(any_=["progress"]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    if not artifacts:
        return None, None
    return float(artifacts[0].data), artifacts[0].description


def task_status(
    task_id: str, owner: dict[str, Any] | None, store: Store, settings: ApiSettings
) -> TaskStatus:
    """Status, progress and (for train/backtest/optimize) the saved result of a run.

    Raises:
        NotFoundError: Prefect knows no such run.
        ServiceUnavailableError: the Prefect API does not answer.
    """

    def read() -> tuple[FlowRun, str | None, float | None, str | None]:
        with get_client(sync_client=True) as client:
            run = _read_run(client, task_id)
            flow_name = client.read_flow(run.flow_id).name
            pct, stage = _latest_progress(client, run.id)
        return run, flow_name, pct, stage

    run, flow_name, pct, stage = _prefect_call(read)
    job = JOBS.get(owner["job"]) if owner else None
    if job is None:
        job = next((j for j in JOBS.values() if j.deployment.split("/")[0] == flow_name), None)
    result = None
    if job is not None and job.result_collection:
        result = store.col(job.result_collection).find_one({"task_id": task_id}, {"_id": 0})
    state_type = run.state.type if run.state else StateType.SCHEDULED
    if pct is not None and state_type != StateType.COMPLETED:
        pct = min(pct, 99.0)  # 100 means done: only a Completed run reads 100
    letter = store.col(C.DEAD_LETTERS).find_one({"task_id": task_id}, {"_id": 0})
    return TaskStatus(
        task_id=task_id,
        job=job.name if job else None,
        flow_name=flow_name,
        status=STATUS_OF[state_type],
        state=run.state.name if run.state else "Scheduled",
        message=run.state.message if run.state else None,
        progress_pct=pct,
        stage=stage,
        created_at=run.created,
        started_at=run.start_time,
        ended_at=run.end_time,
        owner=owner["user"] if owner else None,
        result=result,
        ui_url=(
            f"{settings.prefect_ui_url.rstrip('/')}/runs/flow-run/{task_id}"
            if settings.prefect_ui_url
            else None
        ),
        dead_letter=(
            DeadLetterInfo(**{**letter, "attempts": len(letter.get("attempts") or [])})
            if letter
            else None
        ),
    )


def cancel_task(task_id: str, user: Principal) -> None:
    """Cancel a run: at once if no process has it yet, else through its worker (SIGTERM,
    so training writes its checkpoint first).

    Raises:
        NotFoundError: no such run.
        TaskConflictError: the run already ended.
        ServiceUnavailableError: the Prefect API does not answer.
    """

    def cancel() -> None:
        with get_client(sync_client=True) as client:
            run = _read_run(client, task_id)
            if run.state is not None and run.state.is_final():
                raise TaskConflictError(
                    f"Task {task_id} already ended ({run.state.name}); nothing to cancel"
                )
            message = f"Cancelled by {user.user} through the gateway"
            not_started = run.state is None or run.state.type in _NOT_STARTED
            state = Cancelled(message=message) if not_started else Cancelling(message=message)
            client.set_flow_run_state(run.id, state, force=True)

    _prefect_call(cancel)
    log.info("user %s cancelled run %s", user.user, task_id)
