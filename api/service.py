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

from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from api import cancelling, quotas, runtime
from api.jobs import JOBS, Job
from api.outages import prefect_call, store_calls
from api.schemas import (
    DeadLetterInfo,
    Priority,
    RetryInfo,
    TaskAccepted,
    TaskStatus,
    TaskStatusName,
)
from api.security import Principal
from api.settings import ApiSettings
from core.exceptions import InvalidInputError, StoreUnavailableError
from deployments.recovery_rules import awaits_recovery
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


def status_of(run: FlowRun) -> tuple[TaskStatusName, RetryInfo | None]:
    """The Celery-style status of ``run`` and, for RETRY, the next attempt and the reason.

    A Crashed run, or a Failed one whose error is retryable (or that lost the Prefect API),
    is RETRY while the recovery service has it (:func:`deployments.recovery_rules.
    awaits_recovery`): it is re-run, or set Completed when its work was saved. FAILURE
    is final (dead-lettered, a time limit, bad input).
    """
    if run.state is None:
        return "PENDING", None
    if awaits_recovery(run.state):
        reason = f"{run.state.name}: {(run.state.message or '')[:300]}"
        return "RETRY", RetryInfo(attempt=(run.run_count or 0) + 1, reason=reason)
    return STATUS_OF[run.state.type], None


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
    run again with its real state, nothing new; a run the gateway withdrew is created
    again, :func:`_replay_if_live`) -> the job's pre-checks (train: no same
    model+symbol+timeframe queued or running; the stored data the job needs,
    :mod:`api.prechecks`) -> one quota slot -> the run (``priority`` "high": ahead of every
    normal run queued on its work queue, :func:`api.runtime.high_priority_time`) -> the run
    recorded as the user's. A failure at any step leaves nothing queued and no slot used;
    every Prefect and store call is bounded by the settings' timeouts.

    Round trips of a normal request without a key: the data check (one indexed store read),
    two store writes for the slot, one API call for the run (the deployment id is cached,
    the Prefect client shared), one store write to record it.

    Returns:
        the 202 body (``replayed`` true when the key had already created the run).

    Raises:
        InvalidInputError: the idempotency key was used before with other parameters, or
            the job cannot run on the stored data (e.g. no candles of the symbol).
        InsufficientDataError: too few candles (the flow's own message).
        DuplicateRunError: a training of the same key is queued or running.
        TaskConflictError: a request with this key is still being processed.
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
        replay = _replay_if_live(job, digest, limit, store, user, settings, now, idempotency_key)
        if replay is not None:
            return replay
    if job.precheck is not None:
        prefect_call(lambda: job.precheck(params), settings)
    with store_calls(settings):
        if job.data_check is not None:
            job.data_check(params, store)
        reservation = quotas.reserve_slot(
            store, user.user, job.name, limit, job.quota_noun, now, idempotency_key, digest
        )
    key = f"api:{user.user}:{job.name}:{idempotency_key}" if idempotency_key else None

    def create() -> FlowRun:
        with runtime.prefect_client() as client:
            return runtime.create_run(
                client,
                job.deployment,
                {"params": params.model_dump(mode="json")},
                ["api", f"user:{user.user}", f"priority:{priority}"],
                key,  # Prefect returns the run it created for a key it has seen
                high_priority=priority == "high",
            )

    try:
        run = prefect_call(create, settings)
    except BaseException:
        try:
            with store_calls(settings):
                quotas.release(store, reservation.id)
        except StoreUnavailableError:
            log.warning("quota slot %s not given back: the store is unavailable", reservation)
        raise
    try:
        with store_calls(settings):
            confirmed = quotas.confirm(store, reservation.id, str(run.id), shared=key is not None)
    except StoreUnavailableError:
        _withdraw(run, "the store stopped answering before the run was recorded", settings)
        raise
    if not confirmed:
        # a concurrent request with the same key created (and counted) this run first
        with store_calls(settings):
            earlier = quotas.owner_of(store, str(run.id))
            return _replay(earlier, digest, job, limit, store, user, now, run)
    log.info(
        "user %s started %s: run %s (%s, priority %s)",
        user.user,
        job.name,
        run.id,
        run.name,
        priority,
    )
    return TaskAccepted(
        task_id=str(run.id),
        status_url=f"/api/tasks/{run.id}",
        job=job.name,
        quota_remaining_today=max(0, limit - reservation.used),
        priority=priority,
    )


def in_flight_limit_s(settings: ApiSettings) -> float:
    """How long a request can be processing at most: every Prefect call with its retries
    and every store call timing out. A reservation without a run older than this belongs to
    a request that died (or whose clean-up could not reach the store)."""
    prefect = settings.prefect_timeout_s * (settings.prefect_retries + 1) + 1.5
    return 3 * prefect + 6 * settings.store_timeout_s


def _replay_if_live(
    job: Job,
    digest: str,
    limit: int,
    store: Store,
    user: Principal,
    settings: ApiSettings,
    now: datetime,
    idempotency_key: str,
) -> TaskAccepted | None:
    """The answer to a replayed ``idempotency_key``, or None when it must start a run.

    Returns the earlier run with its real state (a cancelled or finished run says so). None,
    with the earlier reservation given back, when that request produced no live run: its
    run was withdrawn by the gateway (it could not be recorded) or no longer exists, or it
    never got one and is older than :func:`in_flight_limit_s`.

    Raises:
        TaskConflictError: the earlier request is still being processed.
        InvalidInputError: the key was used with other parameters.
        PrefectUnavailableError, StoreUnavailableError: a service did not answer in time.
    """
    with store_calls(settings):
        earlier = quotas.reservation_by_key(store, user.user, job.name, idempotency_key)
    if earlier is None:
        return None
    task_id = earlier.get("task_id")
    if task_id is None:
        created = earlier.get("created_at")
        age = (now - created).total_seconds() if isinstance(created, datetime) else None
        if age is not None and age < in_flight_limit_s(settings):
            raise TaskConflictError(
                "a request with this Idempotency-Key is still being processed; retry in a moment"
            )
        why = "its request never recorded a run"
    else:
        if earlier.get("params_sha256") != digest:
            raise _other_params()

        def read() -> FlowRun | None:
            with runtime.prefect_client() as client:
                try:
                    return client.read_flow_run(UUID(task_id))
                except ObjectNotFound:
                    return None

        run = prefect_call(read, settings)
        if run is not None and not runtime.is_withdrawn(run):
            return _replay(earlier, digest, job, limit, store, user, now, run)
        why = f"its run {task_id} was withdrawn" if run else f"its run {task_id} is gone"
    log.info("user %s retried %s key: %s; starting it again", user.user, job.name, why)
    with store_calls(settings):
        quotas.release(store, earlier["_id"])
    return None


def _withdraw(run: FlowRun, why: str, settings: ApiSettings) -> None:
    """Cancel a run the gateway created but could not record (best effort: logged)."""

    def cancel() -> None:
        with runtime.prefect_client() as client:
            runtime.withdraw(client, run.id, why)

    try:
        prefect_call(cancel, settings)
    except Exception:  # noqa: BLE001 - the caller gets the 503 for the original outage
        log.exception("could not withdraw run %s (%s)", run.id, why)


def _params_digest(params: BaseModel) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()


def _other_params() -> InvalidInputError:
    return InvalidInputError(
        "Idempotency-Key was already used with different parameters: send a new key for a new task"
    )


def _replay(
    earlier: dict[str, Any] | None,
    digest: str,
    job: Job,
    limit: int,
    store: Store,
    user: Principal,
    now: datetime,
    run: FlowRun,
) -> TaskAccepted:
    """The 202 of a replayed key: the earlier run, with its state as it is now."""
    if earlier is None or earlier.get("task_id") is None:
        raise TaskConflictError(
            "a request with this Idempotency-Key is still being processed; retry in a moment"
        )
    if earlier.get("params_sha256") != digest:
        raise _other_params()
    log.info("user %s replayed %s: run %s", user.user, job.name, earlier["task_id"])
    used = quotas.used_today(store, user.user, job.name, now)
    return TaskAccepted(
        task_id=earlier["task_id"],
        status=status_of(run)[0],
        status_url=f"/api/tasks/{earlier['task_id']}",
        job=job.name,
        quota_remaining_today=max(0, limit - used),
        replayed=True,
    )


high_priority_time = runtime.high_priority_time
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
        with runtime.prefect_client() as client:
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
    status, retry = status_of(run)
    return TaskStatus(
        task_id=task_id,
        job=job.name if job else None,
        flow_name=flow_name,
        status=status,
        retry=retry,
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
