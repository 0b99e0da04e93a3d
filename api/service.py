"""What the routes do: start a job's flow run, read a run's status, cancel a run.

Uses the synchronous Prefect client (handlers are sync, FastAPI runs them in its thread
pool) and the platform store. Raises the platform's exceptions; ``api.main`` maps them to
HTTP answers.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Scheduled
from pydantic import BaseModel

from api import cancelling, quotas
from api.jobs import JOBS, Job
from api.outages import prefect_call, store_calls
from api.schemas import DeadLetterInfo, Priority, TaskAccepted, TaskStatus, TaskStatusName
from api.security import Principal
from api.settings import ApiSettings
from core.exceptions import (
    ConfigurationError,
    InvalidInputError,
    StoreUnavailableError,
)
from integrations.store import Store

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


TaskConflictError = cancelling.TaskConflictError
cancel_task = cancelling.cancel_task


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
    priority: Priority = "normal",
) -> TaskAccepted:
    """Create a flow run of ``job``'s deployment for ``user``.

    Order: a replay (same ``idempotency_key`` seen before for this user and job: the same
    answer again, nothing new) -> the job's pre-checks (train: no same model+symbol+timeframe
    queued or running; the stored data the job needs, :mod:`api.prechecks`) -> one quota
    slot -> the run (``priority`` "high": ahead of every normal run queued on its work
    queue, :func:`high_priority_time`). A failure at any step leaves nothing queued and no
    slot used; every Prefect and store call is bounded by the settings' timeouts.

    Returns:
        the 202 body (``replayed`` true when the key had already created the run).

    Raises:
        InvalidInputError: the idempotency key was used before with other parameters, or
            the job cannot run on the stored data (e.g. no candles of the symbol).
        InsufficientDataError: too few candles (the flow's own message).
        DuplicateRunError: a training of the same key is queued or running.
        QuotaExceededError: the user's daily limit for the job is reached.
        ConfigurationError: the deployment is not registered.
        PrefectUnavailableError, StoreUnavailableError: a service did not answer in time.
    """
    now = now or datetime.now(UTC)
    if job.who_field:
        params = params.model_copy(update={job.who_field: user.user})
    limit = daily_limit(job, settings)
    digest = _params_digest(params)
    if idempotency_key is not None:
        with store_calls(settings):
            earlier = quotas.find_by_key(store, user.user, job.name, idempotency_key)
            if earlier is not None:
                return _replay(earlier, digest, job, limit, store, user, now)
    if job.precheck is not None:
        prefect_call(lambda: job.precheck(params), settings)
    with store_calls(settings):
        if job.data_check is not None:
            job.data_check(params, store)
        reservation = quotas.reserve(
            store, user.user, job.name, limit, job.quota_noun, now, idempotency_key, digest
        )
        remaining = max(0, limit - quotas.used_today(store, user.user, job.name, now))
    try:
        run = prefect_call(
            lambda: _create_run(job, params, user, idempotency_key, priority), settings
        )
    except BaseException:
        try:
            with store_calls(settings):
                quotas.release(store, reservation)
        except StoreUnavailableError:
            log.warning("quota slot %s not given back: the store is unavailable", reservation)
        raise
    try:
        with store_calls(settings):
            confirmed = quotas.confirm(store, reservation, str(run.id))
    except StoreUnavailableError:
        _withdraw(run, "the store stopped answering before the run was recorded", settings)
        raise
    if not confirmed:
        # a concurrent request with the same key created (and counted) this run first
        with store_calls(settings):
            earlier = quotas.owner_of(store, str(run.id))
            return _replay(earlier, digest, job, limit, store, user, now)
    accepted = TaskAccepted(
        task_id=str(run.id),
        status_url=f"/api/tasks/{run.id}",
        job=job.name,
        quota_remaining_today=remaining,
        priority=priority,
    )
    log.info(
        "user %s started %s: run %s (%s, priority %s)",
        user.user,
        job.name,
        run.id,
        run.name,
        priority,
    )
    return accepted


def _withdraw(run: FlowRun, why: str, settings: ApiSettings) -> None:
    """Cancel a run the gateway created but could not record (best effort: logged)."""

    def cancel() -> None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                run.id, Cancelled(message=f"Withdrawn by the gateway: {why}"), force=True
            )

    try:
        prefect_call(cancel, settings)
    except Exception:  # noqa: BLE001 - the caller gets the 503 for the original outage
        log.exception("could not withdraw run %s (%s)", run.id, why)


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
    job: Job,
    params: BaseModel,
    user: Principal,
    idempotency_key: str | None,
    priority: Priority = "normal",
) -> FlowRun:
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(job.deployment)
        except ObjectNotFound:
            raise ConfigurationError(
                f"deployment {job.deployment} is not registered: start the stack with "
                "'botai up' (or run 'prefect deploy --all')"
            ) from None
        state = None
        if priority == "high":
            at = high_priority_time(client, deployment.work_pool_name, deployment.work_queue_name)
            state = Scheduled(scheduled_time=at) if at is not None else None
        return client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"params": params.model_dump(mode="json")},
            tags=["api", f"user:{user.user}", f"priority:{priority}"],
            # Prefect returns the existing run for a key it has seen (per flow, forever)
            idempotency_key=(
                f"api:{user.user}:{job.name}:{idempotency_key}" if idempotency_key else None
            ),
            state=state,
        )


def high_priority_time(client: Any, pool: str | None, queue: str | None) -> datetime | None:
    """When a high-priority run must be scheduled to start before every normal-priority run
    waiting on its work queue, after the high-priority runs already waiting (FIFO among them).

    A worker takes a queue's runs in the order of their scheduled start time, as many as
    the queue's concurrency limit allows (Prefect's ``get_scheduled_flow_runs`` query), so
    the run is scheduled just before the oldest waiting normal run: it shares the queue's
    limit (never more trainings at once) and is next when a slot frees. Prefect's queue
    priorities order runs across queues only, each queue with its own limit.

    Returns:
        the scheduled time, or None when no normal run waits (now is then first anyway).
    """
    if not pool or not queue:
        return None
    waiting = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[queue])),
        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        limit=200,
    )
    now = datetime.now(UTC)

    def at(run: FlowRun) -> datetime:
        return run.next_scheduled_start_time or run.expected_start_time or now

    normal = [at(r) for r in waiting if "priority:high" not in (r.tags or [])]
    if not normal or min(normal) >= now:
        return None
    first_normal = min(normal)
    high = [at(r) for r in waiting if "priority:high" in (r.tags or []) and at(r) < first_normal]
    if not high:
        return first_normal - timedelta(seconds=1)
    return max(high) + (first_normal - max(high)) / 2


_read_run = cancelling.read_run


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


def read_result(store: Store, task_id: str, job: Job | None) -> dict[str, Any] | None:
    """The result document of a run: its ``task_results`` document once the flow saved it
    (every job, ``tasks.results.save_task_result``), else the job's own record while it runs
    (train: ``training_jobs`` with the per-epoch metrics), else None."""
    doc = store.task_result_get(task_id)
    if doc is None and job is not None and job.result_collection:
        doc = store.jobs.result_get(job.result_collection, task_id)
    return doc


def task_status(
    task_id: str, owner: dict[str, Any] | None, store: Store, settings: ApiSettings
) -> TaskStatus:
    """Status, progress and the saved result of a run (see :func:`read_result`).

    Raises:
        NotFoundError: Prefect knows no such run.
        ServiceUnavailableError: the Prefect API does not answer.
    """

    def read() -> tuple[FlowRun, str | None, float | None, str | None]:
        with get_client(sync_client=True) as client:
            run = _read_run(client, task_id)
            if cancelling.finish_claimed_cancel(client, run, settings.cancel_grace_s):
                run = _read_run(client, task_id)
            flow_name = client.read_flow(run.flow_id).name
            pct, stage = _latest_progress(client, run.id)
        return run, flow_name, pct, stage

    run, flow_name, pct, stage = prefect_call(read, settings)
    job = JOBS.get(owner["job"]) if owner else None
    if job is None:
        job = next((j for j in JOBS.values() if j.deployment.split("/")[0] == flow_name), None)
    with store_calls(settings):
        result = read_result(store, task_id, job)
        letter = store.dead_letters.dead_letter_get(task_id)
    state_type = run.state.type if run.state else StateType.SCHEDULED
    if pct is not None and state_type != StateType.COMPLETED:
        pct = min(pct, 99.0)  # 100 means done: only a Completed run reads 100
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
