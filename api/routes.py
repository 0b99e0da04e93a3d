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
    no_unknown_query,
    require_admin,
)
from api.jobs import JOBS, Job
from api.outages import store_calls
from api.request_schemas import request_model
from api.schemas import ErrorBody, Health, Priority, TaskAccepted, TaskList, TaskStatus
from api.security import Principal

router = APIRouter(prefix="/api", dependencies=[Depends(no_unknown_query)])

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

#: Statuses each route may answer besides its success, with what they mean (every error
#: body is ``ErrorBody``). Routing answers 404 for an unknown path and 405 for a method the
#: path does not serve (with ``Allow``) before any route runs.
STATUS_TEXT: dict[int, str] = {
    401: "No bearer token, or an invalid or expired one (WWW-Authenticate: Bearer).",
    403: "Admin privileges required, or the task belongs to another user.",
    404: "No such task (for a regular user: none they started through the gateway).",
    409: "The request conflicts with the task's state.",
    422: "Invalid parameters (the message names each field and the fix), or a body that is "
    "not a JSON object.",
    429: "Daily quota reached; Retry-After says when it resets (seconds).",
    500: "Unexpected error (the message names its type; the gateway log has the traceback).",
    503: "The Prefect API or the MongoDB store did not answer in time (named; Retry-After), "
    "or the gateway is misconfigured (e.g. a deployment is not registered).",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    429: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}},
    503: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds (outages)."}},
}


def answers(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses ``codes`` (``ErrorBody``); ``texts``
    (``s409="..."``) replace a status's description.

    Returns:
        the ``responses`` mapping of a route.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        spec: dict[str, Any] = {
            "model": ErrorBody,
            "description": texts.get(f"s{code}", STATUS_TEXT[code]),
        }
        if code in _HEADERS:
            spec["headers"] = _HEADERS[code]
        out[code] = spec
    return out


#: A task id in a path: routes match only a UUID, so ``GET /api/tasks/predict`` is not read
#: as a task id (405: that path serves POST) and a malformed id answers 404.
TASK_PATH = "/tasks/{task_id:uuid}"


def _start_route(job: Job) -> Any:
    params_model: type[BaseModel] = request_model(job.params)
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
        responses=answers(
            *((401, 403) if _job.admin_only else (401,)),
            409,
            422,
            429,
            500,
            503,
            s403="Admin privileges required: the job is for admins.",
            s409="The same training is already queued or running (train), or a request with "
            "this Idempotency-Key is still being processed.",
            s422=STATUS_TEXT[422] + " Also when the stored data cannot serve the job (e.g. "
            "'Insufficient data: expected 720 samples, found 120'), or when the "
            "Idempotency-Key was used before with other parameters.",
        ),
    )


@router.get("/tasks", tags=["tasks"], responses=answers(401, 422, 500, 503))
def list_my_tasks(user: CurrentUser, store: StoreDep, settings: SettingsDep) -> TaskList:
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
    return TaskList(user=user.user, is_admin=user.is_admin, tasks=tasks, quota_today=usage)


@router.get(
    TASK_PATH,
    response_model=TaskStatus,
    tags=["tasks"],
    responses=answers(401, 403, 404, 422, 500, 503),
)
def get_task(task: VisibleTask, store: StoreDep, settings: SettingsDep) -> TaskStatus:
    """Status (PENDING, PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED), progress and result of a
    task: RETRY while a crashed run waits to run again (with the attempt and the reason)."""
    task_id, owner = task
    return service.task_status(task_id, owner, store, settings)


@router.delete(
    TASK_PATH,
    status_code=202,
    response_model=TaskStatus,
    tags=["tasks"],
    responses=answers(401, 403, 404, 409, 422, 500, 503, s409="The task already ended."),
)
def cancel_task(
    task: VisibleTask, user: CurrentUser, store: StoreDep, settings: SettingsDep
) -> TaskStatus:
    """Cancel a task: at once when still queued, else via its worker (training checkpoints)."""
    task_id, owner = task
    service.cancel_task(task_id, user, settings)
    return service.task_status(task_id, owner, store, settings)


@router.get(
    "/health",
    tags=["meta"],
    response_model_exclude_none=True,
    responses={
        **answers(422),
        503: {"model": Health, "description": "A backend failed its check (named)."},
    },
)
def health(request: Request, settings: SettingsDep, response: Response) -> Health:
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
    return Health(status="ok" if ok else "degraded", **checks)
