"""Parameters and results of the monitoring flows and of the notifier.

Shared by the flows (``system-health-check``, ``daily-portfolio-report``,
``daily-api-cost-report``, ``daily-performance-analysis``), the pure layer
(``integrations/health.py``, ``integrations/reports.py``, ``integrations/notifications.py``)
and the HTTP gateway (api/).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from core.schemas.live import LiveModelSummary

Level = Literal["info", "warning", "critical"]
# "unknown": the service was not checked (no target configured); never counted as healthy.
ServiceStatus = Literal["healthy", "slow", "failing", "down", "unknown", "warning", "critical"]
# "unknown": no service was checked at all, so nothing is known to be healthy.
OverallStatus = Literal["healthy", "degraded", "critical", "unknown"]
PerformanceStatus = Literal["GOOD", "WARNING", "CRITICAL", "INSUFFICIENT_DATA"]


# ------------------------------------------------------------ notifications
class ChannelOutcome(BaseModel):
    """One channel's delivery attempt: delivered or the reason it failed (never a secret)."""

    channel: Literal["slack", "email"]
    delivered: bool
    error: str | None = None


class NotificationResult(BaseModel):
    """What :meth:`integrations.notifications.Notifier.notify` did."""

    level: Level
    title: str
    suppressed: bool = Field(
        default=False, description="An identical alert was sent within the cool-down."
    )
    attempted: list[str] = Field(default_factory=list)
    delivered: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict, description="channel -> reason.")
    outcomes: list[ChannelOutcome] = Field(default_factory=list)


# ------------------------------------------------------------ system-health-check
class HealthCheckParameters(BaseModel):
    """Parameters of ``system-health-check``."""

    config_path: str | None = Field(
        default=None,
        description="YAML of checks; empty: Settings.health_checks_path (config/health_checks.yaml).",
    )
    notify: bool = Field(default=True, description="Send alerts to Slack/e-mail.")


class ServiceHealth(BaseModel):
    """One service's result.

    ``failing`` means it failed once: it becomes ``down`` (and alerts) only on the second
    consecutive failure, which prevents false positives.
    """

    name: str
    kind: str
    status: ServiceStatus
    response_time_ms: float | None = None
    error: str | None = None
    note: str | None = None
    consecutive_failures: int = 0
    value_pct: float | None = Field(default=None, description="Usage % of disk/memory checks.")
    severity: Literal["ok", "warning", "critical"] = "ok"


class HealthReport(BaseModel):
    """The whole health check: every service, the overall status and alerts.

    ``overall_status`` is the worst status of the services actually checked; services that
    were not checked (``unknown``) never count as healthy, and when none was checked the
    overall status is ``unknown``. ``summary`` says how many were checked, e.g.
    ``"5 of 11 checked: 5 healthy; 6 not checked (not configured)"``.
    """

    created_at: datetime
    overall_status: OverallStatus
    summary: str = Field(default="", description="How many services were checked, and with what.")
    checked_count: int = Field(default=0, description="Services actually checked.")
    unchecked: list[str] = Field(
        default_factory=list, description="Services not checked (status unknown), by name."
    )
    services: dict[str, ServiceHealth]
    alerts: list[str] = Field(default_factory=list)
    critical_alerts: list[str] = Field(default_factory=list)
    duration_ms: float
    saved_to: str = Field(default="mongodb", description="mongodb or the JSON-lines file path.")
    notifications: list[NotificationResult] = Field(default_factory=list)


class HealthCheckResult(BaseModel):
    """Result of ``system-health-check``."""

    status: Literal["success"] = "success"
    health_report: HealthReport


# ------------------------------------------------------------ daily-portfolio-report
class ReportParameters(BaseModel):
    """Parameters of the daily reports."""

    report_date: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="YYYY-MM-DD (UTC) the report covers; empty: yesterday for the cost report, "
        "today for the portfolio report.",
    )
    notify: bool = Field(default=True, description="Send the report/alerts to Slack/e-mail.")


class StrategyBreakdown(BaseModel):
    trades: int
    wins: int | None = None
    losses: int | None = None
    win_rate: float | None = None
    pnl_usd: float | None = None


class PortfolioReport(BaseModel):
    """Daily portfolio summary from the engine API."""

    report_date: str
    balance: float
    initial_balance: float | None = None
    total_return_pct: float | None
    total_trades: int
    winning_trades: int
    losing_trades: int
    win_rate: float | None = Field(
        description="winning / total * 100, 2 decimals; None: no trades."
    )
    avg_profit_per_trade: float | None
    strategies: dict[str, StrategyBreakdown] = Field(default_factory=dict)
    trades_today: int = Field(default=0, description="Trades closed on report_date.")
    pnl_today_usd: float = 0.0
    no_trades: bool = Field(default=False, description="No trade closed on report_date.")
    summary: str


class PortfolioReportResult(BaseModel):
    status: Literal["success"] = "success"
    report: PortfolioReport
    notifications: list[NotificationResult] = Field(default_factory=list)


# ------------------------------------------------------------ daily-api-cost-report
class CostReport(BaseModel):
    """LLM cost of one day, month to date and the monthly projection.

    ``monthly_projection_usd = month_to_date_usd / days_elapsed * days_in_month`` where
    days_elapsed counts the report day (e.g. $28.05 by the 15th of a 30-day month -> $56.10).
    """

    report_date: str
    daily_cost_usd: float
    month_to_date_usd: float
    days_elapsed: int
    days_in_month: int
    monthly_projection_usd: float
    calls: int
    invalid_entries: int = Field(default=0, description="Ledger entries without a valid cost.")
    prompt_tokens: int
    completion_tokens: int
    by_model: dict[str, float] = Field(default_factory=dict)
    session: dict[str, float] = Field(default_factory=dict)
    alerts: list[str] = Field(default_factory=list)
    level: Literal["ok", "warning", "critical"] = "ok"
    llm_disabled: bool = False


class CostReportResult(BaseModel):
    status: Literal["success"] = "success"
    report: CostReport
    notifications: list[NotificationResult] = Field(default_factory=list)


# ------------------------------------------------------------ daily-performance-analysis
class PerformanceParameters(BaseModel):
    """Parameters of ``daily-performance-analysis``."""

    window_days: int | None = Field(default=None, ge=1, le=90, description="Default 7.")
    source: Literal["engine", "store"] = Field(
        default="engine", description="Closed trades from the engine API or the trades collection."
    )
    notify: bool = True


class PerformanceMetrics(BaseModel):
    """Metrics of a set of closed trades (see integrations.reports.performance_metrics)."""

    trades: int
    wins: int
    losses: int
    win_rate: float | None
    avg_profit_pct: float | None
    sharpe_ratio: float | None
    profit_factor: float | None
    max_drawdown_pct: float | None
    total_profit_pct: float | None


class PerformanceResult(BaseModel):
    status: PerformanceStatus
    metrics: PerformanceMetrics
    per_strategy: dict[str, PerformanceMetrics] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    model_live: list[LiveModelSummary] = Field(
        default_factory=list,
        description="Deployed models' live record (score-predictions); decayed ones are "
        "named in reasons.",
    )
    gpt4_analysis_triggered: bool = False
    analysis_flow_run_id: str | None = None
    analysis_note: str | None = None
    strategies_to_disable: dict[str, str] = Field(
        default_factory=dict, description="Strategies whose win rate is critical -> reason."
    )
    strategy_disable_run_id: str | None = Field(
        default=None, description="The emergency-strategy-disable run started for them."
    )
    strategy_disable_note: str | None = None
    window_start: datetime
    window_end: datetime
    notifications: list[NotificationResult] = Field(default_factory=list)
