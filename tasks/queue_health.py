"""Work-queue depth and worker heartbeats of the process pool (TC-ASYNC-087, TC-ASYNC-102).

Prefect client reads only, no business rules beyond the thresholds of :class:`Settings`:

* :func:`read_pool_health` -> per work queue the number of runs waiting (due ``Scheduled``,
  ``Late``, ``AwaitingConcurrencySlot``, ``Pending``/``Submitting``) and the age of the
  oldest; per worker its last heartbeat and its age;
* :func:`pool_problems` -> the alert texts (no worker alive, a run waiting too long, a queue
  too deep);
* :func:`queue_health_services` -> the same as ``ServiceHealth`` entries of the health report.

Used by the supervisor of ``botai up`` (its watchdog, which does not run on the worker) and
by the ``system-health-check`` flow (:func:`check_queue_health`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel, Field

from core.exceptions import PrefectUnavailableError
from core.schemas.monitoring import ServiceHealth
from core.settings import Settings

#: State names of a run that waits for a worker or a slot (Scheduled ones only once due).
WAITING_STATES = ("Scheduled", "Late", "AwaitingConcurrencySlot", "Pending", "Submitting")

#: Waiting runs read per call; beyond this the totals come from a count per queue.
READ_LIMIT = 200  # the API refuses more per read


class QueueHealth(BaseModel):
    """One work queue: how many runs wait and for how long."""

    queue: str
    concurrency_limit: int | None = None
    waiting: int = Field(default=0, description="Runs due and not yet running.")
    by_state: dict[str, int] = Field(default_factory=dict, description="State name -> runs.")
    oldest_waiting_s: float | None = Field(
        default=None, description="Seconds since the oldest waiting run was due (None: none)."
    )
    oldest_run_id: str | None = None


class WorkerHealth(BaseModel):
    """One worker of the pool, as the Prefect server last heard from it."""

    name: str
    status: str
    last_heartbeat_at: datetime | None = None
    heartbeat_age_s: float | None = None
    heartbeat_interval_s: float | None = None


class PoolHealth(BaseModel):
    """Queues and workers of one work pool at ``checked_at``."""

    pool: str
    checked_at: datetime
    queues: list[QueueHealth] = Field(default_factory=list)
    workers: list[WorkerHealth] = Field(default_factory=list)

    def alive_workers(self, stale_after_s: float) -> list[WorkerHealth]:
        """Workers ONLINE whose heartbeat is at most ``stale_after_s`` old."""
        return [
            w
            for w in self.workers
            if w.status.upper().endswith("ONLINE")
            and w.heartbeat_age_s is not None
            and w.heartbeat_age_s <= stale_after_s
        ]


def _age_s(when: datetime | None, now: datetime) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (now - when).total_seconds())


def pool_health(client: Any, pool: str, now: datetime | None = None) -> PoolHealth:
    """Read the queues, waiting runs and workers of ``pool`` through a sync Prefect client.

    Returns the :class:`PoolHealth`.

    Raises:
        PrefectUnavailableError: the API did not answer or refused a read.
    """
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
        WorkQueueFilter,
        WorkQueueFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    now = now or datetime.now(UTC)
    waiting = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
        ),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=now),
    )
    in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
    try:
        queues = client.read_work_queues(work_pool_name=pool)
        runs = client.read_flow_runs(
            flow_run_filter=waiting,
            work_pool_filter=in_pool,
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=READ_LIMIT,
        )
        workers = client.read_workers_for_work_pool(pool)
        by_queue: dict[str, QueueHealth] = {
            q.name: QueueHealth(queue=q.name, concurrency_limit=q.concurrency_limit) for q in queues
        }
        for run in runs:  # oldest first
            name = run.work_queue_name or "default"
            q = by_queue.setdefault(name, QueueHealth(queue=name))
            state = run.state.name if run.state else "Scheduled"
            q.by_state[state] = q.by_state.get(state, 0) + 1
            q.waiting += 1
            if q.oldest_waiting_s is None:
                q.oldest_waiting_s = _age_s(run.expected_start_time or run.created, now)
                q.oldest_run_id = str(run.id)
        if len(runs) >= READ_LIMIT:  # the read was cut: exact totals per queue
            for q in by_queue.values():
                q.waiting = client.count_flow_runs(
                    flow_run_filter=waiting,
                    work_pool_filter=in_pool,
                    work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[q.queue])),
                )
    except Exception as e:  # httpx errors, HTTP 5xx, a missing pool
        raise PrefectUnavailableError(
            f"Prefect API: reading work pool {pool!r} failed: {type(e).__name__}: {e}"
        ) from e
    return PoolHealth(
        pool=pool,
        checked_at=now,
        queues=sorted(by_queue.values(), key=lambda q: q.queue),
        workers=[
            WorkerHealth(
                name=w.name,
                status=str(getattr(w.status, "value", w.status)),
                last_heartbeat_at=w.last_heartbeat_time,
                heartbeat_age_s=_age_s(w.last_heartbeat_time, now),
                heartbeat_interval_s=w.heartbeat_interval_seconds,
            )
            for w in workers
        ],
    )


@contextmanager
def quick_client(
    settings: Settings, timeout_s: float = 5.0, api_url: str | None = None
) -> Iterator[Any]:
    """A sync Prefect client of ``api_url`` (default: the stack's API) that does not retry and
    waits at most ``timeout_s`` per request (a watchdog must not hang on a hung server).
    Yields the client."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        PREFECT_HOME,
        temporary_settings,
    )

    updates = {
        PREFECT_API_URL: api_url or settings.prefect_api_url,
        PREFECT_HOME: settings.prefect_home,
        PREFECT_CLIENT_MAX_RETRIES: 0,
    }
    auth = settings.prefect_auth_string() if api_url is None else None
    if auth is not None:  # the stack's server requires it (docs/security.md)
        updates[PREFECT_API_AUTH_STRING] = auth
    with (
        temporary_settings(updates=updates),
        get_client(sync_client=True, httpx_settings={"timeout": timeout_s}) as client,
    ):
        yield client


def read_pool_health(settings: Settings, timeout_s: float = 5.0) -> PoolHealth:
    """:func:`pool_health` of ``settings.work_pool`` on ``settings.prefect_api_url``.

    Raises:
        PrefectUnavailableError: the API did not answer within ``timeout_s`` or failed.
    """
    try:
        with quick_client(settings, timeout_s) as client:
            return pool_health(client, settings.work_pool)
    except PrefectUnavailableError:
        raise
    except Exception as e:  # opening the client (connection refused at the version check)
        raise PrefectUnavailableError(
            f"Prefect API at {settings.prefect_api_url} unreachable: {type(e).__name__}"
        ) from e


def pool_problems(health: PoolHealth, settings: Settings) -> list[tuple[str, str]]:
    """What is wrong with the pool, as (severity, text): ``critical`` when no worker sent a
    heartbeat within ``worker_heartbeat_stale_s``, ``warning`` per queue whose oldest waiting
    run is older than ``queue_max_wait_s`` or which holds more than ``queue_max_depth`` runs.
    Returns an empty list when all is well."""
    out: list[tuple[str, str]] = []
    if not health.alive_workers(settings.worker_heartbeat_stale_s):
        seen = ", ".join(
            f"{w.name} {w.status.lower()}"
            + (f" {w.heartbeat_age_s:.0f}s ago" if w.heartbeat_age_s is not None else "")
            for w in health.workers
        )
        out.append(
            (
                "critical",
                f"no live worker in work pool {health.pool!r} (no heartbeat within "
                f"{settings.worker_heartbeat_stale_s:g}s; {seen or 'no worker ever registered'})",
            )
        )
    for q in health.queues:
        if q.oldest_waiting_s is not None and q.oldest_waiting_s > settings.queue_max_wait_s:
            out.append(
                (
                    "warning",
                    f"work queue {q.queue!r}: oldest waiting run due {q.oldest_waiting_s:.0f}s "
                    f"ago (threshold {settings.queue_max_wait_s:g}s), {q.waiting} waiting",
                )
            )
        if q.waiting > settings.queue_max_depth:
            out.append(
                (
                    "warning",
                    f"work queue {q.queue!r}: {q.waiting} runs waiting "
                    f"(threshold {settings.queue_max_depth})",
                )
            )
    return out


def queue_health_services(
    health: PoolHealth | None, settings: Settings, error: str | None = None
) -> dict[str, ServiceHealth]:
    """The pool's health as health-report entries: one for the workers, one per queue.

    A problem is ``severity`` critical/warning with its text in ``error``; ``health`` None
    (the API did not answer) gives one ``unknown`` entry: the Prefect API check reports it.
    Returns name -> entry.
    """
    if health is None:
        return {
            "Work queues": ServiceHealth(
                name="Work queues",
                kind="work_queue",
                status="unknown",
                note=f"not read: {error or 'Prefect API unavailable'}",
            )
        }
    problems = pool_problems(health, settings)
    out: dict[str, ServiceHealth] = {}
    alive = health.alive_workers(settings.worker_heartbeat_stale_s)
    worker_problem = next((t for s, t in problems if s == "critical"), None)
    newest = min((w.heartbeat_age_s for w in alive if w.heartbeat_age_s is not None), default=None)
    out["Worker heartbeats"] = ServiceHealth(
        name="Worker heartbeats",
        kind="worker_heartbeat",
        status="critical" if worker_problem else "healthy",
        severity="critical" if worker_problem else "ok",
        error=worker_problem,
        note=None if worker_problem else f"{len(alive)} live, newest heartbeat {newest:.0f}s ago",
    )
    for q in health.queues:
        texts = [t for _, t in problems if t.startswith(f"work queue {q.queue!r}")]
        out[f"Work queue {q.queue}"] = ServiceHealth(
            name=f"Work queue {q.queue}",
            kind="work_queue",
            status="warning" if texts else "healthy",
            severity="warning" if texts else "ok",
            error="; ".join(texts) or None,
            note=f"{q.waiting} waiting"
            + (f", oldest {q.oldest_waiting_s:.0f}s" if q.oldest_waiting_s is not None else ""),
        )
    return out


@task(name="check-queue-health", cache_policy=NONE)
def check_queue_health(settings: Settings, api_url: str | None = None) -> dict[str, ServiceHealth]:
    """Task: read the pool of ``api_url`` (the run's own API) within
    ``health_check_timeout_s`` per request, no retries, and judge it.

    Returns :func:`queue_health_services` (an ``unknown`` entry when the API failed: the
    Prefect API check reports that).
    """
    try:
        with quick_client(settings, settings.health_check_timeout_s, api_url) as client:
            return queue_health_services(pool_health(client, settings.work_pool), settings)
    except Exception as e:  # PrefectUnavailableError, or the client could not open
        return queue_health_services(None, settings, str(e) or type(e).__name__)
