"""Platform settings: environment -> :class:`Settings` -> code.

Every value comes from an environment variable (``BOTAI_*`` unless noted) or its default.
Nothing else in the code base reads ``os.environ`` for configuration; it takes a
``Settings`` (or a Block) as an argument. Secrets are not settings: they live in
Prefect blocks (``blocks/``), created from the environment by the bootstrap step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Non-secret configuration of one platform installation."""

    model_config = SettingsConfigDict(env_prefix="BOTAI_", extra="ignore")

    state_dir: Path = Field(
        default=REPO_ROOT / ".state",
        description="Folder holding every file the platform writes (Prefect DB, Mongo DB, models).",
    )
    data_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "data",
        description="Folder of the real market-data CSV files.",
    )
    data_dirs: Annotated[list[Path] | None, NoDecode] = Field(
        default=None,
        description="Folders a CSV import may read from, separated by ':' (BOTAI_DATA_DIRS); "
        "unset: data_dir and <state_dir>/data. A path outside them is refused.",
    )

    @field_validator("data_dirs", mode="before")
    @classmethod
    def _split_data_dirs(cls, v: object) -> object:
        """``BOTAI_DATA_DIRS=/a:/b`` -> [/a, /b] (a list is taken as it is)."""
        if isinstance(v, str):
            return [p for p in v.split(os.pathsep) if p.strip()] or None
        return v

    @property
    def allowed_data_dirs(self) -> list[Path]:
        """The folders CSV imports may read (``data_dirs``, or ``data_dir`` and
        ``<state_dir>/data``), absolute, symbolic links resolved."""
        dirs = self.data_dirs or [self.data_dir, self.state_dir / "data"]
        return [Path(d).expanduser().resolve() for d in dirs]

    host: str = Field(default="127.0.0.1", description="Interface embedded services bind to.")
    prefect_port: int = Field(default=4200, description="Port of the Prefect server (UI and API).")
    mongodb_port: int = Field(default=27017, description="Port of the embedded nx-27017 store.")
    mongodb_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MONGODB_URI", "BOTAI_MONGODB_URI"),
        description="A MongoDB URI; unset means the embedded nx-27017 store.",
    )
    mongodb_database: str = Field(
        default="bot_ai",
        validation_alias=AliasChoices("MONGODB_DATABASE", "BOTAI_MONGODB_DATABASE"),
    )
    dask_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DASK_ADDRESS", "BOTAI_DASK_ADDRESS"),
        description="Address of an existing Dask scheduler; unset means a local cluster.",
    )
    prefect_database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Prefect server database; unset means SQLite in state_dir.",
    )
    work_pool: str = Field(default="botai-process", description="Prefect process work pool name.")
    min_free_disk_gb: float = Field(default=10.0, ge=0, description="Free disk needed to train.")
    checkpoint_every_s: float = Field(
        default=60.0,
        gt=0,
        description="Training also checkpoints when this many seconds passed since the last save.",
    )

    # ------------------------------------------------------------ store (MongoDB)
    store_retry_s: float = Field(
        default=60.0,
        ge=0,
        description="Jobs retry each idempotent store call this long on temporary errors, seconds.",
    )
    store_timeout_ms: int = Field(
        default=5000, gt=0, description="Store server-selection and connect timeout, ms."
    )
    retention_days: float = Field(
        default=7.0, gt=0, description="Results and job records expire after this many days."
    )
    retention_overrides: dict[str, float] = Field(
        default_factory=dict,
        description='Per-collection retention in days, JSON, e.g. {"health_reports": 30}.',
    )

    # ------------------------------------------------------------ market data
    binance_base_url: str = Field(
        default="https://api.binance.com",
        description="Base URL of the Binance public REST API (klines).",
    )
    binance_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of one Binance request, seconds."
    )
    binance_max_retries: int = Field(
        default=4, ge=0, description="Retries of a Binance request on 429/418/5xx/timeouts."
    )
    demo_symbols: list[str] = Field(
        default=["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"],
        description="Symbols the run command loads as demo data.",
    )
    demo_timeframe: str = Field(default="1h", description="Timeframe of the demo data.")
    demo_days: int = Field(default=90, ge=60, description="Days of demo data per symbol.")
    demo_probe_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="How long Binance may take to answer before demo data is synthetic.",
    )

    # ------------------------------------------------------------ bulk-analysis / predict-price
    prediction_interval_level: float = Field(
        default=0.8, gt=0, lt=1, description="Central probability of predict-price intervals."
    )
    prediction_calibration_bars: int = Field(
        default=2160,
        ge=240,
        description="Forecast origins (hours) whose known outcomes calibrate the interval.",
    )
    prediction_band_pct: float = Field(
        default=2.0,
        gt=0,
        description="predict-price confidence: P(price within +-this % of the prediction).",
    )
    prediction_coverage_bars: int = Field(
        default=720,
        ge=0,
        description="Recent hours on which predict-price measures its interval coverage.",
    )

    # ------------------------------------------------------------ platform (run command)
    startup_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="How long the run command waits for each service (Prefect server migrations).",
    )
    worker_query_seconds: float = Field(
        default=2.0, gt=0, description="How often the worker polls its queues for runs, seconds."
    )
    concurrency_slot_wait_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the server re-checks a run waiting for a concurrency slot, seconds.",
    )
    heartbeat_s: int = Field(
        default=30, ge=30, description="Flow-run heartbeat period, seconds (Prefect minimum 30)."
    )
    crash_after_s: int = Field(
        default=60, ge=30, description="A running flow without a heartbeat this long is Crashed."
    )

    # ------------------------------------------------------------ supervisor and watchdog
    supervisor_poll_s: float = Field(
        default=2.0, gt=0, description="How often botai up checks that its services run, seconds."
    )
    restart_backoff_initial_s: float = Field(
        default=1.0, gt=0, description="Wait before the first restart of a dead service, seconds."
    )
    restart_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest wait between restarts (doubling), seconds."
    )
    restart_stable_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A service up this long is stable again: its backoff starts over, seconds.",
    )
    restart_alert_failures: int = Field(
        default=3,
        ge=1,
        description="Deaths or failed starts of one service within the window that raise a "
        "critical alert (the supervisor keeps trying).",
    )
    restart_alert_window_s: float = Field(
        default=600.0, gt=0, description="Window of restart_alert_failures, seconds."
    )
    watchdog_interval_s: float = Field(
        default=5.0, gt=0, description="How often the watchdog probes services and queues, seconds."
    )
    service_hung_after_s: float = Field(
        default=20.0,
        gt=0,
        description="A service stopped (SIGSTOP) or failing its probe this long is hung: it is "
        "killed and restarted, seconds.",
    )
    worker_heartbeat_s: float = Field(
        default=10.0, gt=0, description="Heartbeat period of the stack's worker, seconds."
    )
    worker_heartbeat_stale_s: float = Field(
        default=30.0,
        gt=0,
        description="A worker whose last heartbeat is older than this is not alive, seconds.",
    )
    flow_run_stop_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="An orphaned flow-run process gets SIGTERM, then SIGKILL after this, seconds.",
    )
    queue_max_wait_s: float = Field(
        default=3600.0,
        gt=0,
        description="Alert when a work queue's oldest due run has waited longer, seconds "
        "(TC-ASYNC-087: processed within 1 hour).",
    )
    queue_max_depth: int = Field(
        default=1000,
        ge=1,
        description="Alert when more runs than this wait in one work queue (TC-ASYNC-087).",
    )
    run_retention_days: float = Field(
        default=7.0,
        ge=1,
        description="Finished Prefect flow runs (db-vacuum), result and chart files older than "
        "this are deleted, days.",
    )
    cleanup_interval_s: float = Field(
        default=3600.0, ge=60, description="How often old runs and files are deleted, seconds."
    )
    # ------------------------------------------------------------ crash recovery
    recovery_poll_s: float = Field(
        default=3.0, gt=0, description="How often the recovery service looks for dead runs, s."
    )
    recovery_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Executions of one run, the first included, before it is dead-lettered.",
    )
    recovery_backoff_s: float = Field(
        default=5.0, ge=0, description="Wait before the first resubmission, s (doubles after)."
    )
    recovery_backoff_max_s: float = Field(
        default=60.0, ge=0, description="Longest wait between two resubmissions, s."
    )
    recovery_exit_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="A Running run without a live process this long is Crashed, s.",
    )
    recovery_start_grace_s: float = Field(
        default=45.0,
        ge=0,
        description="A Pending/Submitting run without a process this long is Crashed, s.",
    )
    recovery_hung_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A run whose process is stopped (SIGSTOP) this long is Crashed, s.",
    )
    recovery_window_h: float = Field(
        default=24.0, gt=0, description="Crashed/failed runs older than this are left alone, h."
    )
    recovery_local_workers: bool = Field(
        default=True,
        description="Every worker of the pool runs on this machine (process checks are local).",
    )

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

    # ------------------------------------------------------------ self-improvement (issue 6)
    self_analysis_min_accuracy: float = Field(
        default=0.65,
        gt=0,
        lt=1,
        description="A deployed model below this accuracy needs retraining.",
    )
    self_analysis_min_confidence: float = Field(
        default=0.75, ge=0, le=1, description="LLM confidence needed to start a retrain."
    )
    llm_max_attempts: int = Field(default=3, ge=1, description="Attempts per LLM request.")
    llm_backoff_s: float = Field(
        default=2.0, ge=0, description="First wait between LLM attempts, seconds (doubles)."
    )
    adaptive_retrain_deployment: str = Field(
        default="adaptive-retrain/adaptive-retrain",
        description="Deployment the self-analysis starts to retrain (flow/deployment name).",
    )
    retrain_days_of_data: int = Field(
        default=60, ge=7, description="Days of candles adaptive retraining trains on."
    )
    retrain_max_data_age_h: float = Field(
        default=48.0, gt=0, description="Newest candle older than this: data stale, no retrain."
    )
    retrain_min_improvement: float = Field(
        default=0.0, ge=0, le=1, description="New model deploys only if accuracy >= old + this."
    )
    retrain_lock_ttl_s: float = Field(
        default=4 * 9000.0, gt=0, description="An adaptive-retrain lock older than this is stale."
    )
    strategy_critical_win_rate_pct: float = Field(
        default=45.0, description="A strategy below this win rate is disabled automatically, %."
    )
    emergency_disable_deployment: str = Field(
        default="emergency-strategy-disable/emergency-strategy-disable",
        description="Deployment the performance analysis starts to disable a strategy.",
    )
    engine_strategy_disable_path: str = Field(
        default="/api/strategies/{name}/disable", description="Engine POST: disable a strategy."
    )
    engine_strategy_enable_path: str = Field(
        default="/api/strategies/{name}/enable", description="Engine POST: enable a strategy."
    )
    engine_cancel_signals_path: str = Field(
        default="/api/strategies/{name}/signals/cancel",
        description="Engine POST: cancel a strategy's pending signals.",
    )

    @field_validator("mongodb_uri")
    @classmethod
    def _reject_placeholder_uri(cls, v: str | None) -> str | None:
        """Reject a MongoDB URI whose password is a placeholder (``changeme``, ``xxx``...)."""
        from core.redact import check_not_placeholder

        if v and "@" in v.split("://", 1)[-1].split("/", 1)[0]:
            userinfo = v.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]
            check_not_placeholder(userinfo.partition(":")[2] or None, "MONGODB_URI (password)")
        return v

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def embedded_mongodb_uri(self) -> str:
        return f"mongodb://{self.host}:{self.mongodb_port}/"

    @property
    def effective_mongodb_uri(self) -> str:
        """The URI the platform connects to: ``MONGODB_URI`` if set, else the embedded store."""
        return self.mongodb_uri or self.embedded_mongodb_uri

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def prefect_auth_string_path(self) -> Path:
        """File (0600) holding the stack's Prefect API auth string (``deployments.secrets``)."""
        return self.state_dir / "secrets" / "prefect-api-auth"

    def prefect_auth_string(self) -> str | None:
        """The stack's Prefect API auth string, or None when this state folder has none."""
        path = self.prefect_auth_string_path
        return path.read_text().strip() if path.exists() else None

    @property
    def mongodb_dir(self) -> Path:
        return self.state_dir / "mongodb"

    @property
    def model_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_dir / "checkpoints"


def load_settings() -> Settings:
    """Read settings from the environment. Returns a new :class:`Settings` each call."""
    return Settings()
