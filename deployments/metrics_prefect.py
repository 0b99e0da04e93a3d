"""The Prefect side of the platform metrics (see deployments/metrics.py): runs of the work
pool by deployment and state, request -> Running/Completed gauge histograms of the runs that
ended within the window, resubmissions by crash recovery, and the pool's queues and workers
(``tasks.queue_health``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from core.settings import Settings
from deployments.recovery import RECOVERY_MARK

#: Upper bounds (seconds) of the request -> Running / Completed histogram buckets.
LATENCY_BUCKETS_S = (0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: Runs read per page (the API refuses more).
PAGE = 200
#: State histories read per scrape to count recoveries (runs executed more than once).
MAX_STATE_READS = 50


def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    """Returns an empty gauge family ``name`` with ``labels``."""
    return GaugeMetricFamily(name, doc, labels=list(labels))


def aware(when: datetime | None) -> datetime | None:
    """Returns ``when`` with UTC as its zone when it has none (None stays None)."""
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when


def requested_at(run: Any) -> datetime | None:
    """When ``run`` was asked for: the later of its creation and its due time."""
    times = [t for t in (aware(run.created), aware(run.expected_start_time)) if t]
    return max(times) if times else None


def _histogram(name: str, doc: str, samples: dict[str, list[float]]) -> GaugeHistogramMetricFamily:
    """A gauge histogram per deployment of ``samples`` (deployment -> seconds)."""
    family = GaugeHistogramMetricFamily(name, doc, labels=["deployment"])
    for deployment, values in sorted(samples.items()):
        buckets = [(floatToGoString(b), sum(v <= b for v in values)) for b in LATENCY_BUCKETS_S]
        buckets.append(("+Inf", len(values)))
        family.add_metric([deployment], buckets, gsum_value=sum(values))
    return family


def _read_pages(client: Any, cap: int, sort: Any, **kwargs: Any) -> tuple[list[Any], bool]:
    """Flow runs matching ``kwargs`` in ``sort`` order, page by page, at most ``cap``.

    Returns (runs, True when the cap cut the read)."""
    runs: list[Any] = []
    while True:
        want = min(PAGE, cap + 1 - len(runs))  # one more than the cap: is there more?
        page = client.read_flow_runs(sort=sort, limit=want, offset=len(runs), **kwargs)
        runs.extend(page)
        if len(runs) > cap:
            return runs[:cap], True
        if len(page) < want:
            return runs, False


def _maybe_recovered(run: Any) -> bool:
    """True when ``run`` may have been resubmitted: executed more than once, waiting again
    after an execution, or in the recovery's own Scheduled state. (Not seen: a run that
    died before it ever ran, once its recovery state was replaced, e.g. by Late.)"""
    if (run.run_count or 0) > 1:
        return True
    if run.state is not None and (run.state.message or "").startswith(RECOVERY_MARK):
        return True
    waiting = run.state_type is not None and run.state_type.value in ("SCHEDULED", "PENDING")
    return waiting and (run.run_count or 0) >= 1


def _recoveries(client: Any, runs: list[Any], names: Callable[[Any], str]) -> Counter[str]:
    """Resubmissions by the recovery service among ``runs``, per deployment (their state
    histories are read only for runs executed more than once or waiting after a recovery)."""
    out: Counter[str] = Counter()
    candidates = [r for r in runs if _maybe_recovered(r)]
    for run in candidates[:MAX_STATE_READS]:
        states = client.read_flow_run_states(run.id)
        out[names(run)] += sum(
            s.type.value == "SCHEDULED" and (s.message or "").startswith(RECOVERY_MARK)
            for s in states
        )
    return out


def read_prefect(client: Any, settings: Settings, now: datetime | None = None) -> list[Metric]:
    """The Prefect side of the metrics through a sync Prefect client.

    Returns the metric families (see the module docstring).

    Raises:
        PrefectUnavailableError, httpx errors: the API did not answer or refused a read.
    """
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks.queue_health import pool_health

    now = now or datetime.now(UTC)
    in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[settings.work_pool]))
    deployments = {d.id: d.name for d in client.read_deployments(limit=PAGE)}

    def name(run: Any) -> str:  # a deployment beyond the first page shows by its id
        if not run.deployment_id:
            return "(none)"
        return deployments.get(run.deployment_id) or str(run.deployment_id)

    active_types = [
        StateType.SCHEDULED,
        StateType.PENDING,
        StateType.RUNNING,
        StateType.CANCELLING,
        StateType.PAUSED,
    ]
    active, cut_active = _read_pages(
        client,
        settings.metrics_max_runs,
        FlowRunSort.EXPECTED_START_TIME_ASC,  # the oldest waiting first
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active_types)),
            expected_start_time=FlowRunFilterExpectedStartTime(before_=now),
        ),
        work_pool_filter=in_pool,
    )
    ended, cut_ended = _read_pages(
        client,
        settings.metrics_max_runs,
        FlowRunSort.END_TIME_DESC,  # the newest first
        flow_run_filter=FlowRunFilter(
            end_time=FlowRunFilterEndTime(
                after_=now - timedelta(seconds=settings.metrics_window_s)
            ),
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(not_any_=active_types)  # a re-run has an end_time
            ),
        ),
        work_pool_filter=in_pool,
    )
    window = f"{settings.metrics_window_s:g}"
    runs = gauge(
        "botai_flow_runs",
        "Runs of the work pool due or in progress now, by deployment and state "
        "(future scheduled runs are not counted).",
        ["deployment", "state"],
    )
    for (dep, state), n in sorted(Counter((name(r), r.state_name or "?") for r in active).items()):
        runs.add_metric([dep, state], n)
    finished = gauge(
        "botai_flow_runs_ended",
        f"Runs of the work pool that ended within the last {window} s, by deployment and "
        "final state.",
        ["deployment", "state"],
    )
    for (dep, state), n in sorted(Counter((name(r), r.state_name or "?") for r in ended).items()):
        finished.add_metric([dep, state], n)
    truncated = gauge(
        "botai_flow_runs_read_truncated",
        f"1 when more runs than metrics_max_runs ({settings.metrics_max_runs}) matched a "
        "read: the counts above are then lower bounds.",
        ["read"],
    )
    truncated.add_metric(["active"], float(cut_active))
    truncated.add_metric(["ended"], float(cut_ended))

    to_running: dict[str, list[float]] = {}
    to_completed: dict[str, list[float]] = {}
    for run in ended:
        asked, started = requested_at(run), aware(run.start_time)
        if asked is None or started is None or (run.run_count or 0) > 1:
            continue
        to_running.setdefault(name(run), []).append(max(0.0, (started - asked).total_seconds()))
        if run.state_type == StateType.COMPLETED and run.end_time is not None:
            took = (aware(run.end_time) - asked).total_seconds()
            to_completed.setdefault(name(run), []).append(max(0.0, took))
    start_hist = _histogram(
        "botai_run_start_seconds",
        f"Request -> Running, seconds, of the runs that ended within the last {window} s "
        "(executed once).",
        to_running,
    )
    complete_hist = _histogram(
        "botai_run_complete_seconds",
        f"Request -> Completed, seconds, of the runs that completed within the last {window} s "
        "(executed once).",
        to_completed,
    )
    recoveries = gauge(
        "botai_recoveries",
        "Resubmissions by the crash-recovery service of the runs due or in progress now or "
        f"ended within the last {window} s, by deployment.",
        ["deployment"],
    )
    for dep, n in sorted(_recoveries(client, active + ended, name).items()):
        recoveries.add_metric([dep], n)
    return [
        runs,
        finished,
        truncated,
        start_hist,
        complete_hist,
        recoveries,
        *_pool_metrics(pool_health(client, settings.work_pool, now), settings),
    ]


def _pool_metrics(health: Any, settings: Settings) -> list[Metric]:
    """Queue depth, oldest wait and workers of a ``tasks.queue_health.PoolHealth``."""
    depth = gauge("botai_queue_depth", "Runs due and waiting in the work queue.", ["queue"])
    by_state = gauge(
        "botai_queue_waiting", "Runs waiting in the work queue by state.", ["queue", "state"]
    )
    oldest = gauge(
        "botai_queue_oldest_wait_seconds",
        "Seconds since the queue's oldest waiting run was due (0: none waits).",
        ["queue"],
    )
    limit = gauge(
        "botai_queue_concurrency_limit", "Concurrency limit of the work queue.", ["queue"]
    )
    for q in health.queues:
        depth.add_metric([q.queue], q.waiting)
        oldest.add_metric([q.queue], q.oldest_waiting_s or 0.0)
        for state, n in sorted(q.by_state.items()):
            by_state.add_metric([q.queue, state], n)
        if q.concurrency_limit is not None:
            limit.add_metric([q.queue], q.concurrency_limit)
    heartbeat = gauge(
        "botai_worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat in the work pool.",
        ["worker"],
    )
    for w in health.workers:
        if w.heartbeat_age_s is not None:
            heartbeat.add_metric([w.name], w.heartbeat_age_s)
    alive = gauge(
        "botai_workers_alive",
        "Workers of the pool online with a heartbeat within worker_heartbeat_stale_s.",
    )
    alive.add_metric([], len(health.alive_workers(settings.worker_heartbeat_stale_s)))
    return [depth, by_state, oldest, limit, heartbeat, alive]
