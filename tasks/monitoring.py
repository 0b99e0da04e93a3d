"""Prefect tasks of the monitoring flows: health checks, engine reads, cost and performance.

Thin wrappers around ``integrations.health``, ``integrations.reports``,
``integrations.trading_engine`` and the store. Engine reads retry only
:class:`RetryableError` with exponential backoff.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.settings import PREFECT_API_AUTH_STRING
from prefect.tasks import exponential_backoff

from core.exceptions import BotAIError
from core.schemas.monitoring import (
    CostReport,
    HealthReport,
    NotificationResult,
    PerformanceMetrics,
    ServiceHealth,
)
from core.settings import Settings
from integrations import health, health_status, reports
from integrations.notifications import Notifier
from integrations.store import Store
from integrations.trading_engine import TradingEngineClient
from tasks.retry import retry_only_retryable

HEALTH_STATE_FILE = "health_state.json"
HEALTH_REPORTS_FILE = "health_reports.jsonl"


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # called outside a run (tests of the plain function)
        import logging

        return logging.getLogger(__name__)


# ------------------------------------------------------------ clients
def open_health_store(settings: Settings) -> Store | None:
    """The Store of the "mongodb" block with a short server-selection timeout, or None when the
    block is missing (the MongoDB check is then skipped with a note)."""
    from blocks.loader import load_block
    from blocks.mongodb import MongoDBBlock

    try:
        block = load_block(MongoDBBlock)
    except BotAIError as e:
        _logger().warning("MongoDB check skipped: %s", e)
        return None
    timeout_ms = int(min(settings.health_check_timeout_s, 5.0) * 1000)
    return block.get_store(timeout_ms=timeout_ms)


def load_engine_client() -> TradingEngineClient:
    """The engine client of the "trading-engine" block.

    Raises:
        ConfigurationError: the block is missing (names TRADING_ENGINE_URL).
    """
    from blocks.loader import load_block
    from blocks.trading_engine import TradingEngineBlock

    return load_block(TradingEngineBlock).get_client()


# ------------------------------------------------------------ system-health-check
def perform_health_check(
    specs: list[health.CheckSpec],
    settings: Settings,
    store: Store | None,
    notifier: Notifier | None,
    *,
    probes: health.Probes | None = None,
    prefect_api_url: str | None = None,
    notify: bool = True,
    extra_services: dict[str, ServiceHealth] | None = None,
) -> HealthReport:
    """Run the checks, apply the two-failures rule, save the report and send one alert.

    ``extra_services`` (the work-queue and worker-heartbeat entries of
    ``tasks.queue_health``) join the report as they are; each one with a severity adds its
    ``error`` as an alert.

    State and report go to MongoDB; when MongoDB itself is not healthy they go to
    ``<state_dir>/health_state.json`` and ``<state_dir>/health_reports.jsonl`` instead (the
    state file is always kept as a mirror). All alerts of one run go out as one notification:
    critical when any alert is critical (Slack + e-mail), else warning (Slack).

    Returns:
        the report (``saved_to`` says where). Never raises for a service's failure.
    """
    logger = _logger()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    probes = probes or health.Probes()
    if store is not None and probes.mongo_ping is None:
        probes.mongo_ping = store.ping
    overrides = {"prefect_api_url": prefect_api_url} if prefect_api_url else {}
    overrides["prefect_api_auth_string"] = PREFECT_API_AUTH_STRING.value()  # None: no auth
    outcomes = health.run_checks(specs, settings, probes, overrides=overrides)
    mongo_checks = [o for o in outcomes if o.spec.kind == "mongodb" and not o.skipped_note]
    # no MongoDB check configured: try the store, falling back to files if a write fails
    mongo_ok = store is not None and all(o.ok for o in mongo_checks)
    state_file = settings.state_dir / HEALTH_STATE_FILE
    previous: dict[str, Any] = health.read_state_file(state_file)
    if mongo_ok:
        try:
            previous = {**previous, **store.health_state_all()}  # type: ignore[union-attr]
        except BotAIError as e:
            logger.warning("health state from file only: %s", e)
            mongo_ok = False
    services, state = health_status.apply_failure_state(outcomes, previous, settings)
    health.write_state_file(state_file, {**previous, **state})
    services.update(extra_services or {})
    report = health_status.build_report(services, started, (time.perf_counter() - t0) * 1000)
    for svc in (extra_services or {}).values():  # queue depth / heartbeats (TC-ASYNC-087, 102)
        if svc.severity != "ok" and svc.error:
            text = f"{'❌' if svc.severity == 'critical' else '⚠️'} {svc.name}: {svc.error}"
            report.alerts.append(text)
            if svc.severity == "critical":
                report.critical_alerts.append(text)
    doc = report.model_dump(mode="json", exclude={"notifications"})
    doc["created_at"] = started
    if mongo_ok:
        try:
            for name, st in state.items():
                store.health_state_save(name, st)  # type: ignore[union-attr]
            store.health_report_save(doc)  # type: ignore[union-attr]
        except BotAIError as e:
            logger.warning("health report to file, MongoDB failed: %s", e)
            mongo_ok = False
    if not mongo_ok:
        path = settings.state_dir / HEALTH_REPORTS_FILE
        health.append_jsonl(path, doc)
        report.saved_to = str(path)
        logger.warning("MongoDB unavailable: health report appended to %s", path)
    for name, svc in services.items():
        logger.info(
            "%s: %s%s%s",
            name,
            svc.status,
            f" {svc.response_time_ms:.0f}ms" if svc.response_time_ms is not None else "",
            f" ({svc.error or svc.note})" if (svc.error or svc.note) else "",
        )
    logger.info(
        "overall %s (%s); alerts: %s",
        report.overall_status,
        report.summary,
        report.alerts or "none",
    )
    if notify and notifier is not None and report.alerts:
        if store is not None and not mongo_ok:
            notifier.store = None  # no cool-down lookups against a dead store
        level = "critical" if report.critical_alerts else "warning"
        title = "; ".join(report.critical_alerts or report.alerts)
        details = "\n".join(
            f"{a}" + (f" - {services[n].error}" if services[n].error else "")
            for n, a in ((n, health_status.alert_text(s)) for n, s in services.items())
            if a
        )
        message = f"Overall status: {report.overall_status.upper()} ({report.summary})\n{details}"
        report.notifications.append(
            _notify_within(
                notifier,
                level,
                title,
                message,
                "health:" + "|".join(report.alerts),
                budget_s=max(2.0, settings.health_deadline_s + 3 - (time.perf_counter() - t0)),
            )
        )
    report.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
    return report


def _notify_within(
    notifier: Notifier, level: str, title: str, message: str, dedupe_key: str, *, budget_s: float
) -> NotificationResult:
    """Send one alert but wait at most ``budget_s`` (a hanging Slack/SMTP peer must not push
    the health check past its bound). Returns the result, or one marking the channels failed."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-notify")
    fut = pool.submit(notifier.notify, level, title, message, dedupe_key=dedupe_key)
    pool.shutdown(wait=False)
    try:
        return fut.result(timeout=budget_s)
    except FuturesTimeout:
        channels = notifier.channels_for(level)  # type: ignore[arg-type]
        reason = f"no answer within {budget_s:.0f}s"
        _logger().warning("health alert %r: %s", title, reason)
        return NotificationResult(
            level=level,  # type: ignore[arg-type]
            title=title,
            attempted=channels,
            failed=dict.fromkeys(channels, reason),
        )


@task(name="run-health-checks", cache_policy=NONE)
def run_health_checks(
    specs: list[health.CheckSpec],
    settings: Settings,
    store: Store | None,
    notifier: Notifier | None,
    prefect_api_url: str | None,
    notify: bool,
    extra_services: dict[str, ServiceHealth] | None = None,
) -> HealthReport:
    """Task around :func:`perform_health_check`. Returns the report."""
    return perform_health_check(
        specs,
        settings,
        store,
        notifier,
        prefect_api_url=prefect_api_url,
        notify=notify,
        extra_services=extra_services,
    )


# ------------------------------------------------------------ engine reads
@task(
    name="fetch-portfolio",
    retries=2,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def fetch_portfolio(client: TradingEngineClient, day: date) -> tuple[dict, list[dict]]:
    """Returns (the engine's portfolio, trades closed on ``day``).

    Raises:
        ServiceUnavailableError (retried), PeerRejectedError.
    """
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    portfolio = client.get_portfolio()
    trades = [
        t for t in client.get_closed_trades(start) if _closed_at(t) is None or _closed_at(t) < end
    ]
    return portfolio, trades


@task(
    name="fetch-closed-trades",
    retries=2,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def fetch_closed_trades(
    source: str, since: datetime, until: datetime, store: Store | None
) -> list[dict]:
    """Closed trades of [since, until) from the engine API or the ``trades`` collection,
    oldest first."""
    if source == "store":
        assert store is not None
        return store.trades_closed_between(since, until)
    trades = load_engine_client().get_closed_trades(since)
    keyed = [(t, _closed_at(t)) for t in trades]
    keyed = [(t, c) for t, c in keyed if c is None or (since <= c < until)]
    keyed.sort(key=lambda tc: tc[1] or since)
    return [t for t, _ in keyed]


def _closed_at(trade: dict) -> datetime | None:
    raw = trade.get("closed_at") or trade.get("close_time") or trade.get("exit_time")
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if isinstance(raw, (int, float)):
        return datetime.fromtimestamp(raw / (1000 if raw > 1e11 else 1), UTC)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return None


# ------------------------------------------------------------ cost
@task(name="compute-cost-report", cache_policy=NONE)
def compute_cost_report(store: Store, day: date, settings: Settings) -> CostReport:
    """Sum the ``llm_costs`` ledger for ``day`` and its month. Returns the report with alerts."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    month_start = start.replace(day=1)
    return reports.cost_report(
        store.llm_costs_between(start, end),
        store.llm_costs_between(month_start, end),
        day,
        daily_warning_usd=settings.cost_daily_warning_usd,
        daily_critical_usd=settings.cost_daily_critical_usd,
        monthly_critical_usd=settings.cost_monthly_critical_usd,
    )


# ------------------------------------------------------------ performance
@task(name="trigger-self-analysis", cache_policy=NONE)
def trigger_self_analysis(
    deployment: str, metrics: PerformanceMetrics, reasons: list[str]
) -> tuple[bool, str | None, str]:
    """Start ``deployment`` (``flow-name/deployment-name``) without waiting.

    Returns:
        (triggered, flow-run id or None, a note saying what happened).
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = _logger()
    try:
        run = run_deployment(name=deployment, timeout=0, tags=["performance-critical"])
    except ObjectNotFound:
        note = f"Deployment {deployment!r} is not deployed: self-analysis not triggered"
        logger.warning(note)
        return False, None, note
    note = f"Started {deployment} as flow run {run.id} ({'; '.join(reasons)})"
    logger.info(note)
    return True, str(run.id), note
