"""Response bodies of the gateway (requests use the flows' own parameter models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Task status as the spec names it (Celery's words), from the Prefect state type. RETRY: the
#: run crashed or failed on a retryable error and the recovery service runs it again (or
#: finds its work saved); FAILURE and REVOKED are final.
TaskStatusName = Literal["PENDING", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]
#: Queue priority of a new task (TC-ASYNC-090): "high" starts before waiting "normal" runs.
Priority = Literal["high", "normal"]


class ErrorBody(BaseModel):
    """Every non-2xx answer: what went wrong and what to change."""

    error: str


class TaskAccepted(BaseModel):
    """202 answer to ``POST /api/tasks/{job}``."""

    task_id: str = Field(description="The Prefect flow run id.")
    status: TaskStatusName = "PENDING"
    status_url: str
    job: str
    quota_remaining_today: int
    priority: Priority = Field(
        default="normal", description="high: starts before normal runs queued earlier."
    )
    replayed: bool = Field(
        default=False,
        description="True when this Idempotency-Key had already created the task: same task, "
        "no new run, no quota used.",
    )


class DeadLetterInfo(BaseModel):
    """A run that used every recovery attempt (the dead-letter collection)."""

    task_id: str
    flow_name: str | None = None
    attempts: int = Field(description="Executions that ended Crashed or Failed.")
    reason: str | None = Field(description="Why, with the last attempt's error.")
    created_at: datetime | None = None
    requeued_at: datetime | None = None


class RetryInfo(BaseModel):
    """Why a task shows RETRY and which execution comes next."""

    attempt: int = Field(description="The execution that comes next (the first is 1).")
    reason: str = Field(description="How the last execution ended (its Prefect state).")


class TaskStatus(BaseModel):
    """``GET /api/tasks/{task_id}``."""

    task_id: str
    job: str | None = Field(description="Gateway job name; None for runs started elsewhere.")
    flow_name: str | None
    status: TaskStatusName
    state: str = Field(description="Prefect state name, e.g. Scheduled, Running, Completed.")
    message: str | None = Field(description="Prefect state message (the error on failure).")
    progress_pct: float | None = Field(description="Latest progress artifact value, 0-100.")
    stage: str | None = Field(description="Latest progress stage, e.g. 'Training epoch 3/10'.")
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    owner: str | None
    result: dict[str, Any] | None = Field(
        description="The run's result document: {task_id, flow_name, result_type, result, "
        "run_count, saved_at} once the run completed (every job); while a training runs, its "
        "training_jobs record (per-epoch metrics); None before."
    )
    ui_url: str | None = None
    dead_letter: DeadLetterInfo | None = Field(
        default=None,
        description="Set when the run exhausted its recovery attempts (dead-lettered).",
    )
    retry: RetryInfo | None = Field(
        default=None,
        description="Set while the status is RETRY: the next attempt and the reason.",
    )


class QuotaUse(BaseModel):
    """One job's quota use today (UTC)."""

    used: int
    limit: int


class TaskEntry(BaseModel):
    """One task the caller started through the gateway (its ``api_usage`` record)."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    job: str
    created_at: datetime
    status_url: str


class TaskList(BaseModel):
    """``GET /api/tasks``: the caller's newest 50 tasks and their quota use today."""

    user: str
    is_admin: bool
    tasks: list[TaskEntry]
    quota_today: dict[str, QuotaUse] = Field(description="Per job the caller may start.")


class Health(BaseModel):
    """``GET /api/health``: ok, or degraded naming the failed check (503)."""

    status: Literal["ok", "degraded"]
    mongodb_ms: float | None = Field(default=None, description="Store ping, milliseconds.")
    mongodb_error: str | None = Field(default=None, description="Why the store check failed.")
    prefect_error: str | None = Field(default=None, description="Why the Prefect check failed.")


class DeadLetterList(BaseModel):
    """``GET /api/dead-letters``: dead letters not re-queued yet, newest first."""

    dead_letters: list[DeadLetterInfo]
    count: int


class Requeued(BaseModel):
    """``POST /api/dead-letters/{task_id}/requeue``: the run is scheduled again."""

    task_id: str
    status: TaskStatusName = "PENDING"
    status_url: str
    requeued_at: datetime
    requeued_by: str
