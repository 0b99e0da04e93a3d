"""``system-health-check`` (every 15 minutes): check every configured service in parallel.

Steps: config/health_checks.yaml (integrations.health.load_checks) -> check-queue-health task
(tasks.queue_health: a live worker, queue depth, the oldest waiting run) -> run-health-checks task
(tasks.monitoring.perform_health_check: parallel checks within a deadline, two-failures rule,
report to MongoDB ``health_reports`` or the JSON-lines fallback file, one Slack/e-mail alert).
"""

from __future__ import annotations

from prefect import flow
from prefect.settings import PREFECT_API_URL

from core.schemas.monitoring import HealthCheckParameters, HealthCheckResult
from core.settings import load_settings
from integrations.health import load_checks
from tasks.monitoring import open_health_store, run_health_checks
from tasks.notify import build_notifier
from tasks.queue_health import check_queue_health
from tasks.results import save_task_result


@flow(name="system-health-check", validate_parameters=True, timeout_seconds=120)
def system_health_check(
    params: HealthCheckParameters = HealthCheckParameters(),  # noqa: B008
) -> HealthCheckResult:
    """Check the services. Returns ``{status: "success", health_report: {...}}``; never fails
    because a service is down (only a broken configuration file fails the run)."""
    settings = load_settings()
    specs = load_checks(params.config_path or settings.health_checks_path)
    store = open_health_store(settings)
    notifier = build_notifier(store, settings) if params.notify else None
    # workers alive, queue depth, oldest waiting run (TC-ASYNC-087, TC-ASYNC-102)
    queues = check_queue_health(settings, PREFECT_API_URL.value())
    report = run_health_checks(
        specs, settings, store, notifier, PREFECT_API_URL.value(), params.notify, queues
    )
    return save_task_result(HealthCheckResult(health_report=report), store, best_effort=True)
