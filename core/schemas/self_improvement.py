"""Parameters and results of the self-improvement flows (issue 6) and the LLM answer schema.

Flows: ``llm-self-analysis``, ``adaptive-retrain``, ``emergency-strategy-disable``,
``strategy-enable``. Shared by the flows, the pure layer (``integrations/llm.py``) and the
HTTP gateway (api/).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.echo import echo
from core.schemas.common import MODEL_TYPES
from core.schemas.live import LiveModelSummary
from core.schemas.monitoring import NotificationResult, PerformanceMetrics
from core.schemas.training import DeployDecision

Recommendation = Literal[
    "NO_RETRAINING",
    "RETRAIN_LSTM",
    "RETRAIN_GRU",
    "RETRAIN_TRANSFORMER",
    "RETRAIN_ALL",
    "OPTIMIZE_PARAMETERS",
]
#: Model types each recommendation retrains.
RETRAIN_TYPES: dict[str, list[str]] = {
    "RETRAIN_LSTM": ["lstm"],
    "RETRAIN_GRU": ["gru"],
    "RETRAIN_TRANSFORMER": ["transformer"],
    "RETRAIN_ALL": list(MODEL_TYPES),
}


# ------------------------------------------------------------ LLM answer
class LLMRecommendation(BaseModel):
    """The JSON object the LLM must answer with. Anything else is an invalid answer."""

    model_config = ConfigDict(extra="ignore")

    recommendation: Recommendation
    confidence: float = Field(ge=0.0, le=1.0)
    urgency: Literal["low", "medium", "high"]
    reasoning: str = Field(min_length=1)
    suggested_actions: list[str] = Field(default_factory=list)


class LLMCall(BaseModel):
    """What one (possibly retried) LLM request cost and how it went."""

    model: str
    attempts: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


# ------------------------------------------------------------ llm-self-analysis
class SelfAnalysisParams(BaseModel):
    """Parameters of ``llm-self-analysis``."""

    model_config = ConfigDict(extra="forbid")

    force_analysis: bool = Field(
        default=False, description="Ask the LLM even when performance is acceptable."
    )
    window_days: int = Field(default=7, ge=1, le=90, description="Trading window, days.")
    source: Literal["engine", "store"] = Field(
        default="engine", description="Closed trades from the engine API or the trades collection."
    )
    timeframe: str = Field(default="1h", description="Timeframe of the models and market context.")
    notify: bool = Field(default=True, description="Notify admins on fallback and retrain.")


class SelfAnalysisDecision(BaseModel):
    """The decision part of the result (the spec's ``analysis``)."""

    recommendation: Recommendation
    confidence: float
    urgency: Literal["low", "medium", "high"]
    reasoning: str
    suggested_actions: list[str] = Field(default_factory=list)
    retrain_triggered: bool = False
    retrain_model_types: list[str] = Field(default_factory=list)
    retrain_flow_run_id: str | None = None
    decided_by: Literal["llm", "fallback"] = "llm"


class SelfAnalysisResult(BaseModel):
    """Result of ``llm-self-analysis``: status success|skipped|fallback."""

    status: Literal["success", "skipped", "fallback"]
    analysis: SelfAnalysisDecision | None = None
    cost_usd: float = 0.0
    task_id: str
    performance: PerformanceMetrics | None = None
    performance_status: str | None = None
    model_accuracy: dict[str, float] = Field(default_factory=dict)
    model_live: list[LiveModelSummary] = Field(
        default_factory=list,
        description="Deployed models' live record (score-predictions), beside the held-out "
        "accuracy; a decayed model is never skipped.",
    )
    skip_reason: str | None = None
    llm_error: str | None = None
    notifications: list[NotificationResult] = Field(default_factory=list)


# ------------------------------------------------------------ adaptive-retrain
class AdaptiveRetrainParams(BaseModel):
    """Parameters of ``adaptive-retrain``. The training knobs are passed to ``train-model``."""

    model_config = ConfigDict(extra="forbid")

    model_types: list[str] = Field(description="One or more of lstm, gru, transformer.")
    symbols: list[str] | None = Field(
        default=None, description="Symbols to retrain; empty: those with a deployed model."
    )
    timeframe: str = Field(default="1h", description="Timeframe of the models.")
    reason: str = Field(default="", description="Why (e.g. the LLM's reasoning).")
    days_of_data: int | None = Field(
        default=None, ge=7, description="Days of data; empty: Settings.retrain_days_of_data (60)."
    )
    min_improvement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Deploy only if the new model also beats the old by this much on the held-out "
        "bars (it must always beat it, and the baselines, by more than the standard error); "
        "empty: Settings.retrain_min_improvement.",
    )
    epochs: int = Field(default=50, ge=1, le=1000)
    batch_size: int = Field(default=64)
    learning_rate: float = Field(default=1e-3, gt=0)
    units: int = Field(default=32, ge=4, le=512)
    lookback: int = Field(default=24, ge=4, le=256)
    validation_split: float = Field(default=0.2, gt=0, le=0.5)
    requested_by: str = Field(default="adaptive-retrain")

    @field_validator("model_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("model_types must name at least one of: lstm, gru, transformer")
        bad = [t for t in v if t not in MODEL_TYPES]
        if bad:
            raise ValueError(
                f"model_types must be among: {', '.join(MODEL_TYPES)} (got {echo(bad)})"
            )
        return list(dict.fromkeys(v))


class ModelRetrainOutcome(BaseModel):
    """Before/after of one retrained model: both scored on the same newest bars, held out
    before training (neither training nor epoch selection saw them)."""

    model_type: str
    symbol: str
    old_model_id: str | None = None
    old_accuracy: float | None = None
    new_accuracy: float | None = None
    model_id: str | None = None
    deployed: bool = False
    outcome: Literal["deployed", "kept_old", "candidate"] = Field(
        default="candidate",
        description="deployed: the new model replaced the old (retired); kept_old: the old "
        "stays deployed; candidate: none was deployed and the new one did not beat the baselines.",
    )
    reason: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    window_samples: int | None = None
    decision: DeployDecision | None = None


class AdaptiveRetrainResult(BaseModel):
    """Result of ``adaptive-retrain``; ``models`` keyed by type (``type/SYMBOL`` for several symbols).

    ``success``: every model was retrained and decided (deployed or old kept: both are
    successes, ``models[...].outcome`` says which); ``partial``: some trainings failed
    (``errors``). A run in which every training failed ends Failed instead.
    """

    status: Literal["success", "partial"]
    task_id: str
    reason: str = ""
    models: dict[str, ModelRetrainOutcome] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)
    notification: NotificationResult | None = None


# ------------------------------------------------------------ strategy control
class StrategyDisableParams(BaseModel):
    """Parameters of ``emergency-strategy-disable``."""

    model_config = ConfigDict(extra="forbid")

    strategies: list[str] = Field(description="Strategy names to disable now.")
    reason: str = Field(description="Why, e.g. 'Win rate 40% (critical threshold 45%)'.")
    by: str = Field(default="prefect", description="Who or what disabled them.")
    deadline_s: float = Field(
        default=90.0,
        ge=5.0,
        le=240.0,
        description="Total time for the engine calls of all strategies (they run in parallel, "
        "each engine call also bounded by the engine block's timeout). The URGENT alert goes "
        "out before any engine call; whatever is not done by the deadline is reported as not "
        "done and the run ends Failed.",
    )

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        names = [s.strip() for s in v if s and s.strip()]
        if not names:
            raise ValueError("strategies must name at least one strategy")
        return list(dict.fromkeys(names))

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("reason is required: say why the strategies are disabled")
        return v.strip()


DisableOutcome = Literal["disabled", "disabled_signals_not_cancelled", "not_disabled"]


class StrategyOutcome(BaseModel):
    """One strategy's disable/enable outcome: what was done, and what was not and why."""

    strategy: str
    outcome: DisableOutcome | None = Field(
        default=None,
        description="Disable only: disabled (and its pending signals cancelled), "
        "disabled_signals_not_cancelled, or not_disabled.",
    )
    enabled: bool | None = Field(
        default=None, description="The engine's state after the call; None: unknown."
    )
    signals_cancelled: int = 0
    recorded: bool = Field(default=False, description="Written to strategy_state.")
    error: str | None = None
    elapsed_s: float | None = None


class StrategyDisableResult(BaseModel):
    """Result of ``emergency-strategy-disable``.

    ``status``: success (every strategy disabled, its signals cancelled and recorded),
    partial (some), failed (none). A run whose status is not success ends Failed with this
    result's summary as its message (``core.exceptions.JobFailedError``).
    """

    status: Literal["success", "partial", "failed"]
    task_id: str
    reason: str
    strategies_disabled: list[str] = Field(default_factory=list)
    pending_signals_cancelled: int = 0
    outcomes: dict[str, StrategyOutcome] = Field(
        default_factory=dict, description="Per strategy, in the order asked."
    )
    alert: NotificationResult | None = Field(
        default=None, description="The URGENT alert sent before any engine call."
    )
    notification: NotificationResult | None = Field(
        default=None, description="The follow-up message with the per-strategy outcomes."
    )
    alert_after_s: float | None = Field(
        default=None, description="Seconds from the run's start to the alert's delivery."
    )
    elapsed_s: float | None = None
    summary: str = ""


class StrategyEnableParams(BaseModel):
    """Parameters of ``strategy-enable``: a reviewer and a note are required."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="Strategy to re-enable.")
    reviewer: str = Field(description="Name of the person who reviewed the strategy.")
    note: str = Field(description="What the review found / why it is safe to re-enable.")

    @field_validator("strategy", "reviewer", "note")
    @classmethod
    def _required(cls, v: str, info: Any) -> str:
        if not v or not v.strip():
            raise ValueError(f"{info.field_name} is required to re-enable a strategy")
        return v.strip()


class StrategyEnableResult(BaseModel):
    """Result of ``strategy-enable``."""

    status: Literal["success"]
    task_id: str
    strategy: str
    reviewer: str
    note: str
    enabled: bool = True
