"""``daily-api-cost-report`` (09:00 UTC): LLM spend of the day, month to date and projected.

Steps: ``llm_costs`` ledger (tasks.monitoring.compute_cost_report ->
integrations.reports.cost_report) -> above the daily critical threshold the LLM kill switch is
turned off (``Store.set_llm_enabled``) -> ``api_cost_history`` -> alerts (critical: urgent,
Slack and e-mail; warning: Slack).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from prefect import flow, get_run_logger

from blocks.loader import load_store
from core.schemas.monitoring import CostReportResult, ReportParameters
from core.settings import load_settings
from tasks.monitoring import compute_cost_report
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result


@flow(name="daily-api-cost-report", validate_parameters=True, timeout_seconds=300)
def daily_api_cost_report(
    params: ReportParameters = ReportParameters(),  # noqa: B008
) -> CostReportResult:
    """Report the LLM cost of ``params.report_date`` (default: yesterday, UTC).

    Returns ``{status: "success", report: {...}, notifications: [...]}``.
    """
    logger = get_run_logger()
    settings = load_settings()
    day = (
        date.fromisoformat(params.report_date)
        if params.report_date
        else datetime.now(UTC).date() - timedelta(days=1)
    )
    store = load_store()
    report = compute_cost_report(store, day, settings)
    if report.daily_cost_usd > settings.cost_daily_critical_usd:
        store.set_llm_enabled(
            False,
            reason=f"daily cost ${report.daily_cost_usd:.2f} on {report.report_date} above "
            f"${settings.cost_daily_critical_usd:.2f}",
            by="daily-api-cost-report",
        )
        report.llm_disabled = True
        logger.error("LLM switched off: daily cost $%.2f", report.daily_cost_usd)
    store.api_cost_report_save({**report.model_dump(mode="json"), "created_at": datetime.now(UTC)})
    logger.info(
        "LLM cost %s: $%.2f (month to date $%.2f, projection $%.2f = $%.2f / %d x %d); alerts: %s",
        report.report_date,
        report.daily_cost_usd,
        report.month_to_date_usd,
        report.monthly_projection_usd,
        report.month_to_date_usd,
        report.days_elapsed,
        report.days_in_month,
        report.alerts or "none",
    )
    result = CostReportResult(report=report)
    if params.notify and report.alerts:
        notifier = build_notifier(store, settings)
        critical = report.level == "critical"
        message = (
            f"Daily ${report.daily_cost_usd:.2f}, month to date ${report.month_to_date_usd:.2f}, "
            f"projection ${report.monthly_projection_usd:.2f}\nBy model: {report.by_model}\n"
            + "\n".join(report.alerts)
            + (
                "\nThe LLM is switched OFF until an admin re-enables it."
                if report.llm_disabled
                else ""
            )
        )
        result.notifications.append(
            send_notification(
                notifier,
                "critical" if critical else "warning",
                report.alerts[0],
                message,
                urgent=report.llm_disabled,
                dedupe_key=f"cost:{report.report_date}:{report.level}",
            )
        )
    return save_task_result(result, store)
