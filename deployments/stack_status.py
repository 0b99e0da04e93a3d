"""``botai status``: what runs on a state folder (services with the supervisor's view,
alerts, queues, workers, deployments and the latest runs).

Read-only: it starts nothing and works from any terminal (the CLI finds the state folder and
the stack's ports itself: deployments/profile.py).
"""

from __future__ import annotations

import time
from typing import Any

from core.settings import Settings
from deployments import service_records
from deployments.supervisor import read_state


def _service_rows(settings: Settings) -> list[dict[str, Any]]:
    """Recorded processes joined with the supervisor's view (restarts, uptime, exit code)."""
    sup = read_state(settings)
    sup_alive = bool(sup) and any(
        r.name == service_records.CONTROLLER
        and r.pid == sup.get("pid")
        and service_records.record_alive(r)
        for r in service_records.read_records(settings)
    )
    known = sup.get("services", {}) if sup_alive else {}
    now = time.time()
    rows: dict[str, dict[str, Any]] = {}
    for r in service_records.read_records(settings):
        rows[r.name] = {"name": r.name, "pid": r.pid, "alive": service_records.record_alive(r)}
    for name, st in known.items():
        row = rows.setdefault(name, {"name": name, "pid": st.get("pid"), "alive": False})
        running = st.get("status") == "running" and row["alive"]
        failures = len(st.get("failures") or [])
        state = st.get("status") if row["alive"] or st.get("status") != "running" else "dead"
        if failures >= settings.restart_alert_failures and not running:
            state = "FAILING"  # alerted as critical; still retried
        row.update(
            status=state,
            restarts=st.get("restarts", 0),
            uptime_s=round(now - st["started_at"], 1) if running and st.get("started_at") else None,
            last_exit_code=st.get("last_exit_code"),
            last_exit_at=st.get("last_exit_at"),
            last_error=st.get("last_error"),
            failures_in_window=failures,
            next_start_in_s=(
                round(max(0.0, st["next_start_at"] - now), 1) if st.get("next_start_at") else None
            ),
        )
    return list(rows.values())


def status(settings: Settings) -> dict[str, Any]:
    """What runs on this state folder: recorded processes with the supervisor's restarts,
    uptime and last exit code; its recent alerts; when the API answers, per work queue the
    waiting runs and the oldest's age, per worker its last heartbeat (TC-ASYNC-087, 102),
    deployments and the latest flow runs that left Scheduled.

    Returns a dict with ``services``, ``alerts``, ``api``, ``api_healthy`` and, when the API
    answers, ``queues``, ``workers``, ``deployments`` and ``runs``.
    """
    import httpx

    sup = read_state(settings)
    out: dict[str, Any] = {
        "state_dir": str(settings.state_dir),
        "services": _service_rows(settings),
        "alerts": sup.get("alerts", []),
        "orphaned_flow_runs": sup.get("orphaned_flow_runs", []),
        "jobs": sup.get("jobs", []),
        "api": settings.prefect_api_url,
    }
    try:
        healthy = httpx.get(f"{settings.prefect_api_url}/health", timeout=2).is_success
    except httpx.HTTPError:
        healthy = False
    out["api_healthy"] = healthy
    if healthy:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        from core.exceptions import PrefectUnavailableError
        from tasks.queue_health import pool_problems, read_pool_health

        try:
            pool = read_pool_health(settings)
            out["queues"] = [q.model_dump(mode="json") for q in pool.queues]
            out["workers"] = [w.model_dump(mode="json") for w in pool.workers]
            out["pool_problems"] = [t for _, t in pool_problems(pool, settings)]
        except PrefectUnavailableError as e:
            out["pool_error"] = str(e)
        not_scheduled = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))
        )
        from deployments.up import list_deployments, prefect_api

        with prefect_api(settings):
            out["deployments"] = list_deployments()
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=not_scheduled, limit=10, sort=FlowRunSort.START_TIME_DESC
                )
            out["runs"] = [
                {"name": r.name, "state": r.state.name if r.state else "?", "id": str(r.id)}
                for r in runs
            ]
    return out
