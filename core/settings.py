"""Platform settings: environment -> :class:`Settings` -> code.

Every value comes from an environment variable (``BOTAI_*`` unless noted) or its default.
Nothing else in the code base reads ``os.environ`` for configuration; it takes a
``Settings`` (or a Block) as an argument. Secrets are not settings: they live in
Prefect blocks (``blocks/``), created from the environment by the bootstrap step.

Code gets its settings one way: :func:`load_settings` (the environment's values, built once
per distinct environment and shared, since settings are read-only), with keyword overrides
for tests and callers that set a value explicitly.

The fields of one area live beside it and are mixed in: supervision and crash recovery
(:mod:`core.settings_supervision`), monitoring and metrics (:mod:`core.settings_monitoring`),
the economic evaluation and the deploy rule (:mod:`core.settings_economics`);
the hosts of a multi-host stack (:mod:`core.settings_multihost`);
the checkout, its state folder and the environment lookup are in :mod:`core.environment`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.environment import REPO_ROOT, alias_names, environment_key, find_state_dir
from core.settings_economics import EconomicsSettings
from core.settings_monitoring import MetricsSettings, MonitoringSettings
from core.settings_multihost import MultihostSettings
from core.settings_supervision import SupervisionSettings


class Settings(
    MultihostSettings,
    MonitoringSettings,
    MetricsSettings,
    SupervisionSettings,
    EconomicsSettings,
    BaseSettings,
):
    """Non-secret configuration of one platform installation."""

    model_config = SettingsConfigDict(env_prefix="BOTAI_", extra="ignore", frozen=True)

    state_dir: Path = Field(
        default_factory=find_state_dir,
        description="Folder holding every file the platform writes (Prefect DB, Mongo DB, "
        "models); unset: .state of the checkout the command runs in (find_state_dir).",
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
        description="Unused: predict-price's confidence is now P(direction) (docs/ml.md); "
        "kept so that existing configurations stay valid.",
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
        """The stack's Prefect API: ``remote_api_url`` on a host of a multi-host stack, else
        this host's own server."""
        return self.remote_api_url or f"http://{self.host}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        if self.remote_api_url:
            return self.remote_api_url.removesuffix("/api")
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


def load_settings(**overrides: Any) -> Settings:
    """The platform's settings: the current environment's values, ``overrides`` on top.

    Without overrides the :class:`Settings` of an environment is built once and shared (it is
    read-only); a changed ``BOTAI_*`` variable (or ``MONGODB_URI``, ``MONGODB_DATABASE``,
    ``DASK_ADDRESS``) or working folder gives a new one, so code that sets the environment
    (``botai up``, tests) reads its values at the next call.

    Args:
        overrides: field values that win over the environment (a new object each call).

    Returns:
        the settings.

    Raises:
        pydantic.ValidationError: a variable or override holds a value the field refuses.
    """
    if overrides:
        return Settings(**overrides)
    return _settings_of(_environment_key())


@functools.lru_cache(maxsize=16)
def _settings_of(environment: tuple[str, tuple[tuple[str, str], ...]]) -> Settings:
    """The :class:`Settings` of ``environment`` (the key of :func:`_environment_key`)."""
    del environment  # the cache key: Settings reads os.environ itself
    return Settings()


def _environment_key() -> tuple[str, tuple[tuple[str, str], ...]]:
    """The cache key of the current environment (:func:`core.environment.environment_key`)."""
    return environment_key(_alias_names())


@functools.cache
def _alias_names() -> frozenset[str]:
    """Variable names of fields read from outside the ``BOTAI_`` prefix (``MONGODB_URI``...)."""
    return alias_names(Settings.model_fields)
