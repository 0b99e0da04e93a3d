"""``daily-portfolio-report`` (08:00 UTC): the portfolio from the trading engine, summarised.

Steps: engine API (tasks.monitoring.fetch_portfolio) -> integrations.reports.portfolio_report
-> MongoDB ``portfolio_reports`` -> Slack and e-mail (a delivery failure is recorded, not fatal).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from prefect import flow, get_run_logger

from blocks.loader import load_store
from core.schemas.monitoring import PortfolioReportResult, ReportParameters
from core.settings import load_settings
from integrations.reports import portfolio_report
from tasks.monitoring import fetch_portfolio, load_engine_client
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result


@flow(name="daily-portfolio-report", validate_parameters=True, timeout_seconds=300)
def daily_portfolio_report(
    params: ReportParameters = ReportParameters(),  # noqa: B008
) -> PortfolioReportResult:
    """Build, save and send the report of ``params.report_date`` (default: today, UTC).

    Returns ``{status: "success", report: {...}, notifications: [...]}``.
    """
    logger = get_run_logger()
    day = date.fromisoformat(params.report_date) if params.report_date else datetime.now(UTC).date()
    store = load_store()
    portfolio, trades_today = fetch_portfolio(load_engine_client(), day)
    report = portfolio_report(portfolio, trades_today, day)
    store.portfolio_report_save({**report.model_dump(mode="json"), "created_at": datetime.now(UTC)})
    logger.info(report.summary)
    result = PortfolioReportResult(report=report)
    if params.notify:
        notifier = build_notifier(store, load_settings())
        result.notifications.append(
            send_notification(
                notifier,
                "info",
                f"Daily portfolio report {report.report_date}",
                report.summary,
                channels=["slack", "email"],
                dedupe_key=f"portfolio-report:{report.report_date}",
            )
        )
    return save_task_result(result, store)
