"""Parameters and results of ``score-predictions``: models' live figures from the ledger.

Shared by the flow, the tasks that store the figures and the flows that read them
(``llm-self-analysis``, ``daily-performance-analysis``).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ScorePredictionsParams(BaseModel):
    """How ``score-predictions`` scores the ledger and judges decay."""

    model_config = ConfigDict(extra="forbid")

    fee_pct: float = Field(
        default=0.1, ge=0.0, le=5.0, description="Fee per side, percent, in the signal P&L."
    )
    window_entries: int = Field(
        default=2000,
        ge=20,
        le=100_000,
        description="Newest scored predictions per model the direction test of the decay "
        "rule reads (it does not judge a model with fewer).",
    )
    min_edge: float = Field(
        default=0.04,
        ge=0.0,
        le=0.5,
        description="Edge over the majority direction a model must keep showing (hit rate's "
        "95 % upper bound): the decay rule fires below it.",
    )
    coverage_days: float = Field(
        default=7.0,
        gt=0.0,
        le=90.0,
        description="Days of scored intervals the coverage test reads.",
    )
    min_coverage_pairs: int = Field(
        default=200, ge=10, description="Fewest scored intervals the coverage test judges."
    )
    max_entries: int = Field(
        default=50_000, ge=1, description="Most due entries scored in one run (the rest next run)."
    )


class LiveFigure(BaseModel):
    """A model's live figures for one kind of prediction and horizon (hours or bars).

    Standard errors are clustered by the UTC day of the forecast origin: the hours of one
    forecast, and forecasts made hours apart, share outcomes and are not independent.
    """

    model_id: str
    model_version: int | None = None
    symbol: str
    kind: str = Field(description="price (predict-price) or signal (bulk-analysis).")
    hour: int = Field(description="Hours (bars) ahead of the origin.")
    scored: int = Field(description="Scored predictions.")
    first_target: datetime
    last_target: datetime
    hit_rate: float | None = Field(description="Share whose predicted direction was right.")
    hit_rate_se: float | None = None
    majority_rate: float | None = Field(
        default=None,
        description="Naive baseline: the share of the more frequent realised direction.",
    )
    brier: float | None = Field(default=None, description="Mean (P(up) - rose)^2.")
    brier_se: float | None = None
    brier_baseline: float | None = Field(
        default=None, description="Brier of always forecasting the realised up share."
    )
    mean_confidence: float | None = Field(
        default=None, description="Mean stated confidence (P(direction)); compare hit_rate."
    )
    coverage: float | None = Field(
        default=None, description="Share of realised prices inside the interval (price only)."
    )
    coverage_se: float | None = None
    trades: int = Field(default=0, description="Predictions that took a position (not HOLD).")
    pnl_mean_pct: float | None = Field(
        default=None, description="Mean return per trade after fees, percent."
    )
    pnl_se_pct: float | None = None


class DecayVerdict(BaseModel):
    """The decay rule's judgement of one model."""

    model_id: str
    symbol: str
    decayed: bool
    reasons: list[str] = Field(description="Why it fired (empty when it did not).")
    direction_scored: int = Field(description="Scored predictions the direction test read.")
    hit_rate: float | None = None
    hit_rate_ucb: float | None = Field(
        default=None, description="One-sided 95 % upper confidence bound of the hit rate."
    )
    majority_rate: float | None = None
    coverage_pairs: int = 0
    coverage: float | None = None
    coverage_se: float | None = None
    note: str = ""


class ModelLiveScores(BaseModel):
    """What one scoring run found for one model (stored in ``model_live_scores``)."""

    model_id: str
    model_version: int | None = None
    symbol: str
    created_at: datetime
    figures: list[LiveFigure]
    decay: DecayVerdict


class ScorePredictionsResult(BaseModel):
    """Outcome of a ``score-predictions`` run."""

    due: int = Field(description="Unscored entries whose target hour had passed.")
    scored: int = Field(description="Entries this run scored.")
    waiting: int = Field(description="Due entries whose outcome candle has not arrived yet.")
    already_scored: int = Field(
        default=0, description="Entries another run scored between reading and writing."
    )
    models: list[ModelLiveScores]
    decayed: list[str] = Field(description="Model ids the decay rule flagged.")
    task_id: str | None = None
    elapsed_s: float


class LiveModelSummary(BaseModel):
    """A deployed model's live record as the self-analysis and the performance analysis read
    it: the newest scoring run's decay verdict and figures at the model's own horizon."""

    model_id: str
    model_type: str
    symbol: str
    timeframe: str
    scored_at: datetime = Field(description="When the scoring run judged it.")
    direction_scored: int
    hit_rate: float | None = None
    hit_rate_ucb: float | None = None
    majority_rate: float | None = None
    coverage: float | None = None
    coverage_se: float | None = None
    pnl_mean_pct: float | None = Field(
        default=None, description="Mean return per trade after fees at the model's horizon, %."
    )
    pnl_se_pct: float | None = None
    decayed: bool
    reasons: list[str] = Field(default_factory=list)
