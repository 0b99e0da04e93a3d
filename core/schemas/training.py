"""Parameters and result of the ``train-model`` flow (shared with the HTTP gateway).

Validation messages are the spec's (TC-ASYNC-002), so the Prefect UI, the CLI and HTTP all
reject the same bad input with the same words before anything is queued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.echo import echo
from core.schemas.common import ModelType, TradingSymbol
from core.schemas.economics import DeployRule, EconomicEvaluation, EconomicTest

TRAINING_TIMEFRAMES = ("5m", "15m", "1h", "4h")
#: Soft limit: checkpoint then fail. Hard limit: the flow's timeout (see flows/train_model.py).
SOFT_TIME_LIMIT_S = 7200.0
HARD_TIME_LIMIT_S = 9000.0
#: A year of bars: with 1h bars the held-out 20 % is ~1,750 samples, where the standard error
#: of an accuracy difference is ~0.01-0.015; 30 days held out only ~140 (SE ~0.04), too few
#: to tell a real edge from noise (see docs/ml.md).
DEFAULT_DAYS_OF_DATA = 365


class TrainModelParams(BaseModel):
    """What to train. Every check runs before a run is created or any data is read."""

    model_config = ConfigDict(extra="forbid")

    model_type: ModelType = Field(default="lstm", description="lstm, gru or transformer.")
    symbol: TradingSymbol = Field(default="BTCUSDT", description="Trading pair, e.g. BTCUSDT.")
    timeframe: str = Field(default="1h", description="Candle timeframe: 5m, 15m, 1h or 4h.")
    days_of_data: int = Field(
        default=DEFAULT_DAYS_OF_DATA,
        description="Days of candles to train on and hold out from (>= 7).",
    )
    epochs: int = Field(default=100, description="Epochs to train (1-1000).")
    batch_size: int = Field(default=64, description="Power of two; halved on out-of-memory.")
    learning_rate: float = Field(default=1e-3, description="Adam learning rate (> 0).")
    validation_split: float = Field(
        default=0.2, description="Newest share of samples held out for validation (0.0-0.5]."
    )
    holdout_split: float = Field(
        default=0.2,
        gt=0,
        le=0.5,
        description="Newest share of the bars held out BEFORE training: neither training nor "
        "epoch selection sees them; the deploy decision is made on them.",
    )
    min_improvement: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Deploy only when the held-out accuracy also beats the deployed model by "
        "at least this much (on top of beating it by more than one standard error).",
    )
    checkpoint_interval: int = Field(default=10, ge=1, description="Checkpoint every n epochs.")
    resume: bool = Field(default=False, description="Continue from the newest checkpoint.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Seed of the initial weights, dropout and shuffling: the same seed, data "
        "and parameters train the same model on the same machine. Empty: a new random start.",
    )
    mode: Literal["scratch", "incremental"] = Field(
        default="scratch", description="incremental warm-starts from the deployed model."
    )
    lookback: int = Field(default=24, ge=4, le=256, description="Bars per input window.")
    horizon_bars: int = Field(
        default=1, ge=1, le=48, description="Target: sign of the return over this many bars."
    )
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many epochs without a better validation loss; "
        "None trains every epoch. The best epoch's weights are kept either way.",
    )
    units: int = Field(default=32, ge=4, le=512, description="Width of the network.")
    soft_time_limit_s: float = Field(
        default=SOFT_TIME_LIMIT_S,
        gt=0,
        le=HARD_TIME_LIMIT_S,
        description="Checkpoint and fail after this many seconds of training.",
    )
    requested_by: str = Field(default="prefect", description="Who asked (recorded with the model).")

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        if v not in TRAINING_TIMEFRAMES:
            raise ValueError(
                f"timeframe must be one of: {', '.join(TRAINING_TIMEFRAMES)} (got {echo(v)})"
            )
        return v

    @field_validator("days_of_data")
    @classmethod
    def _days(cls, v: int) -> int:
        if v < 7:
            raise ValueError(f"days_of_data must be >= 7 (got {v})")
        return v

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError(f"epochs must be between 1-1000 (got {v})")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1 or v & (v - 1) or v > 4096:
            raise ValueError(f"batch_size must be power of 2 (32, 64, 128, 256) (got {v})")
        return v

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"learning_rate must be > 0 (got {v})")
        return v

    @field_validator("validation_split")
    @classmethod
    def _split(cls, v: float) -> float:
        if not 0.0 < v <= 0.5:
            raise ValueError(
                f"validation_split must be between 0.0 and 0.5 (got {v}; 0.0 is excluded: "
                "metrics need a held-out split)"
            )
        return v

    @property
    def training_key(self) -> str:
        """``lstm+BTCUSDT+1h``: at most one training per key is queued or running."""
        return training_key(self.model_type, self.symbol, self.timeframe)


def training_key(model_type: str, symbol: str, timeframe: str) -> str:
    """The duplicate-detection key of a training."""
    return f"{model_type}+{symbol}+{timeframe}"


def duplicate_message(model_type: str, symbol: str) -> str:
    """The spec's rejection text, e.g. 'Training already in progress for lstm+BTCUSDT'."""
    return f"Training already in progress for {model_type}+{symbol}"


class TrainingResults(BaseModel):
    """Numbers measured by one training (validation metrics on the held-out split)."""

    final_loss: float | None = None
    validation_loss: float | None = None
    val_accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    baselines: dict[str, Any] = Field(default_factory=dict)
    training_time_seconds: float = 0.0
    epochs_completed: int = 0
    best_epoch: int | None = None
    device: str = "cpu"
    resumed_from_epoch: int | None = None
    holdout_accuracy: float | None = None
    holdout_samples: int | None = None
    batch_size: int | None = None
    train_samples: int | None = None
    validation_samples: int | None = None


class HeldOutComparison(BaseModel):
    """The candidate against one comparator on the held-out slice (paired, same samples)."""

    name: str = Field(description="deployed_model, majority_class or logistic_regression.")
    model_id: str | None = None
    accuracy: float
    difference: float = Field(description="candidate accuracy minus this one's.")
    standard_error: float = Field(description="SE of the paired per-sample difference.")
    beaten: bool = Field(description="difference > standard error (and >= min_improvement).")


class DeployDecision(BaseModel):
    """Why a trained model was deployed or left a candidate (the one deploy rule)."""

    deployed: bool
    outcome: Literal["deployed", "kept_deployed", "candidate"] = Field(
        description="deployed; kept_deployed: the deployed model stays; candidate: none is "
        "deployed and this one did not beat the baselines."
    )
    reason: str
    holdout_start: datetime
    holdout_end: datetime
    holdout_samples: int
    candidate_accuracy: float
    comparisons: list[HeldOutComparison] = Field(default_factory=list)
    min_improvement: float = 0.0
    rule: DeployRule = Field(
        default="accuracy",
        description="The tests the deploy rule ran (setting BOTAI_DEPLOY_RULE): accuracy, "
        "economic or both.",
    )
    decided_by: DeployRule = Field(
        default="accuracy",
        description="The test that decided: the one that failed (both: both failed), or, when "
        "deployed, the tests that passed (both under the rule both).",
    )
    accuracy_passed: bool | None = Field(
        default=None, description="Whether the accuracy test passed (always run)."
    )
    economic: EconomicTest | None = Field(
        default=None, description="The economic test: after-fee returns, paired bootstrap SE."
    )


class TrainModelResult(BaseModel):
    """Result of ``train-model``."""

    status: Literal["success", "failed", "cancelled"]
    model_type: str
    symbol: str
    timeframe: str
    training_results: TrainingResults
    model_id: str | None = None
    model_path: str | None = None  # the sealed model file's name in the store (any host)
    model_status: str | None = None
    task_id: str
    error: str | None = None
    deployment: DeployDecision | None = None
    economics: EconomicEvaluation | None = Field(
        default=None,
        description="The candidate's signals traded on the held-out bars after fees, beside "
        "buy-and-hold and logistic regression, each figure with a block-bootstrap SE.",
    )
