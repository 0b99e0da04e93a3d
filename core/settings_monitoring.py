"""Settings of monitoring: the system health check, alert thresholds, performance analysis
and the Prometheus metrics endpoints (mixed into :class:`core.settings.Settings`, which gives
them their ``BOTAI_`` variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from core.environment import REPO_ROOT


class MonitoringSettings(BaseModel):
    """Health-check, alert and performance-analysis fields of the platform's settings."""

    # ------------------------------------------------------------ monitoring
    health_checks_path: Path = Field(
        default=REPO_ROOT / "config" / "health_checks.yaml",
        description="YAML file listing the system-health-check checks.",
    )
    health_deadline_s: float = Field(
        default=25.0, gt=0, description="Whole health check finishes within this, seconds."
    )
    health_check_timeout_s: float = Field(
        default=8.0, gt=0, description="Default timeout of one health check, seconds."
    )
    health_slow_ms: float = Field(
        default=5000.0, gt=0, description="An HTTP service answering slower than this is slow."
    )
    disk_warning_pct: float = Field(default=80.0, description="Disk usage warning threshold, %.")
    disk_critical_pct: float = Field(default=90.0, description="Disk usage critical threshold, %.")
    memory_warning_pct: float = Field(default=85.0, description="Memory warning threshold, %.")
    memory_critical_pct: float = Field(default=95.0, description="Memory critical threshold, %.")
    rust_engine_url: str | None = Field(
        default=None,
        description="Health URL of the Rust core engine, e.g. http://127.0.0.1:8080/api/health.",
    )
    python_ai_url: str | None = Field(
        default=None,
        description="Health URL of the Python AI service, e.g. http://host:8000/health.",
    )
    frontend_url: str | None = Field(
        default=None, description="URL of the frontend dashboard, e.g. http://host:3000/."
    )
    redis_address: str | None = Field(
        default=None, description="host:port of Redis for the health check; unset: skipped."
    )
    rabbitmq_address: str | None = Field(
        default=None,
        description="host:port of RabbitMQ (AMQP) for the health check; unset: skipped.",
    )
    alert_cooldown_s: float = Field(
        default=3600.0, ge=0, description="Identical alerts are suppressed this long, seconds."
    )
    cost_daily_warning_usd: float = Field(default=2.0, description="Daily LLM cost warning, USD.")
    cost_daily_critical_usd: float = Field(
        default=5.0, description="Daily LLM cost above this: critical and the LLM is switched off."
    )
    cost_monthly_critical_usd: float = Field(
        default=100.0, description="Monthly LLM cost projection critical threshold, USD."
    )
    perf_window_days: int = Field(default=7, ge=1, description="Performance analysis window, days.")
    perf_min_trades: int = Field(
        default=10, ge=1, description="Fewer closed trades than this: insufficient data."
    )
    perf_critical_win_rate_pct: float = Field(
        default=55.0, description="Win rate critical below, %."
    )
    perf_warning_win_rate_pct: float = Field(default=70.0, description="Win rate warning below, %.")
    perf_critical_sharpe: float = Field(default=1.0, description="Sharpe critical below.")
    perf_warning_sharpe: float = Field(default=2.0, description="Sharpe warning below.")
    self_analysis_deployment: str = Field(
        default="llm-self-analysis/llm-self-analysis",
        description="Deployment started when performance is CRITICAL (flow/deployment name).",
    )


class MetricsSettings(BaseModel):
    """Prometheus metrics fields of the platform's settings (gateway and worker endpoints)."""

    # ------------------------------------------------------------ metrics (Prometheus)
    metrics_window_s: float = Field(
        default=3600.0,
        gt=0,
        description="Runs that ended this recently feed the ended-run counts and the "
        "request -> Running/Completed histograms of /metrics, seconds.",
    )
    metrics_timeout_s: float = Field(
        default=4.0,
        gt=0,
        le=60,
        description="A metrics source (Prefect API, store) slower than this is left out of "
        "the scrape and reported in botai_scrape_errors, seconds.",
    )
    metrics_max_runs: int = Field(
        default=2000,
        ge=1,
        description="Most flow runs (and dead letters) one scrape reads per kind.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, /metrics answers only 'Authorization: Bearer <this>' "
        "(gateway and worker endpoints).",
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the warm worker's metrics endpoint on BOTAI_HOST; 0: off.",
    )
    worker_metrics_platform: bool = Field(
        default=False,
        description="The worker's endpoint also serves the platform metrics (Prefect, store), "
        "for stacks without the gateway.",
    )
