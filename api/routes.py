"""Routes: ``POST /api/tasks/{job}`` per job, ``GET``/``DELETE /api/tasks/{task_id}``,
``GET /api/tasks`` (the caller's tasks) and ``GET /api/health``.

No ``from __future__ import annotations`` here: each job's handler is built in a loop and
FastAPI must see the job's parameter model itself, not a string naming a local variable.
"""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel

from api import quotas, service
from api.deps import (
    CurrentUser,
    SettingsDep,
    StoreDep,
    VisibleTask,
    current_principal,
    get_store,
    require_admin,
)
from api.jobs import JOBS, Job
from api.outages import store_calls
from api.schemas import ErrorBody, Priority, TaskAccepted, TaskStatus
from api.security import Principal

router = APIRouter(prefix="/api")

#: A retried request with the same key gets the same task instead of a second run.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Optional. Retrying with the same key (same parameters) returns the "
        "task the first request created; no second run, no quota used.",
    ),
]

#: Queue priority (TC-ASYNC-090): a high-priority task starts before normal ones queued earlier.
PriorityParam = Annotated[
    Priority,
    Query(
        description="high: the run starts before every normal-priority run waiting on its "
        "work queue (after high-priority runs queued earlier); normal (default): FIFO."
    ),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or an invalid or expired one."},
    403: {"model": ErrorBody, "description": "Admin privileges required / not your task."},
    422: {"model": ErrorBody, "description": "Invalid parameters: the message says which."},
}


def _start_route(job: Job) -> Any:
    params_model: type[BaseModel] = job.params
    guard = require_admin if job.admin_only else current_principal

    def start(
        user: Annotated[Principal, Depends(guard)],
        params: params_model,  # type: ignore[valid-type]
        store: StoreDep,
        settings: SettingsDep,
        idempotency_key: IdempotencyKey = None,
        priority: PriorityParam = "normal",
    ) -> TaskAccepted:
        return service.start_task(
            job,
            params,
            user,
            store,
            settings,
            idempotency_key=idempotency_key,
            priority=priority,
        )

    start.__name__ = f"start_{job.name.replace('-', '_')}"
    return start


for _job in JOBS.values():
    router.add_api_route(
        f"/tasks/{_job.name}",
        _start_route(_job),
        methods=["POST"],
        status_code=202,
        response_model=TaskAccepted,
        summary=_job.summary,
        tags=["tasks"],
        responses={
            **ERRORS,
            409: {"model": ErrorBody, "description": "Same training already queued/running."},
            422: {
                "model": ErrorBody,
                "description": "Invalid parameters, or the stored data cannot serve the job "
                "(e.g. 'Insufficient data: expected 720 samples, found 120').",
            },
            429: {"model": ErrorBody, "description": "Daily quota reached (Retry-After set)."},
            503: {
                "model": ErrorBody,
                "description": "Prefect API or MongoDB store unavailable (named; Retry-After).",
            },
        },
    )


@router.get("/tasks", tags=["tasks"], responses=ERRORS)
def list_my_tasks(user: CurrentUser, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """The caller's newest 50 tasks and their quota use today."""
    now = datetime.now(UTC)
    with store_calls(settings):
        tasks = [
            {**doc, "status_url": f"/api/tasks/{doc['task_id']}"}
            for doc in quotas.tasks_of(store, user.user)
        ]
        usage = {
            job.name: {
                "used": quotas.used_today(store, user.user, job.name, now),
                "limit": service.daily_limit(job, settings),
            }
            for job in JOBS.values()
            if not job.admin_only or user.is_admin
        }
    return {"user": user.user, "is_admin": user.is_admin, "tasks": tasks, "quota_today": usage}


@router.get(
    "/tasks/{task_id}",
    response_model=TaskStatus,
    tags=["tasks"],
    responses={**ERRORS, 404: {"model": ErrorBody}},
)
def get_task(task: VisibleTask, store: StoreDep, settings: SettingsDep) -> TaskStatus:
    """Status (PENDING, PROGRESS, SUCCESS, FAILURE, REVOKED), progress and result of a task."""
    task_id, owner = task
    return service.task_status(task_id, owner, store, settings)


@router.delete(
    "/tasks/{task_id}",
    status_code=202,
    response_model=TaskStatus,
    tags=["tasks"],
    responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def cancel_task(
    task: VisibleTask, user: CurrentUser, store: StoreDep, settings: SettingsDep
) -> TaskStatus:
    """Cancel a task: at once when still queued, else via its worker (training checkpoints)."""
    task_id, owner = task
    service.cancel_task(task_id, user, settings)
    return service.task_status(task_id, owner, store, settings)


@router.get("/health", tags=["meta"])
def health(request: Request, settings: SettingsDep, response: Response) -> dict[str, Any]:
    """Whether the gateway reaches MongoDB and the Prefect API (no token needed), each
    within its timeout."""
    from prefect.client.orchestration import get_client

    checks: dict[str, Any] = {}
    try:
        store = get_store(request)
        with store_calls(settings):
            checks["mongodb_ms"] = round(store.ping(), 1)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        checks["mongodb_error"] = type(e).__name__
    try:
        with get_client(sync_client=True) as client:
            failure = client.api_healthcheck()
        if failure is not None:
            checks["prefect_error"] = type(failure).__name__
    except Exception as e:  # noqa: BLE001
        checks["prefect_error"] = type(e).__name__
    ok = not any(k.endswith("_error") for k in checks)
    response.status_code = 200 if ok else 503
    return {"status": "ok" if ok else "degraded", **checks}
