"""What operators see and send when they operate the model registry (``ml.registry_ops``):
the versions of a model key with their figures, a comparison of two, a status change and
its audit entries. Shared by the registry operations, the gateway and ``botai models``.

A version is named ``<model_type>-<symbol>-<timeframe>-v<number>`` (``lstm-BTCUSDT-1h-v3``);
its 32-character ``model_id`` names it too.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.echo import echo
from core.market import QUOTE_ASSETS, TIMEFRAMES
from core.schemas.common import MODEL_TYPES, ModelType, TradingSymbol
from core.schemas.training import HeldOutComparison

#: A version label or a model id (what every route and command takes).
VERSION_PATTERN = r"^(?:[a-z]+-[A-Z0-9]{2,12}-[0-9]{1,3}[mhdwM]-v[1-9][0-9]{0,8}|[0-9a-f]{32})$"
VERSION_RE = re.compile(VERSION_PATTERN)
VERSION_EXAMPLE = "lstm-BTCUSDT-1h-v3"

ModelStatus = Literal["candidate", "deployed", "retired", "archived"]
RegistryAction = Literal["promote", "rollback", "archive"]

#: A reason: what the audit trail keeps of why (at least one character that is not a space).
REASON_FIELD = Field(
    min_length=3,
    max_length=500,
    pattern=r"\S",
    description="Why (3-500 characters): kept in the model audit trail with who and when.",
    examples=["holdout +1.4 points over logistic regression; reviewed the equity curve"],
)


def version_label(model_type: str, symbol: str, timeframe: str, version: int) -> str:
    """The version's name, e.g. ``lstm-BTCUSDT-1h-v3``."""
    return f"{model_type}-{symbol}-{timeframe}-v{version}"


#: ``core.market.is_valid_symbol`` as a JSON Schema pattern (the schema states the check).
SYMBOL_PATTERN = (
    "^(" + "|".join(f"[A-Z0-9]{{2,{12 - len(q)}}}{q}" for q in sorted(QUOTE_ASSETS, key=len)) + ")$"
)


class ModelKey(BaseModel):
    """A model key: the models of one type for one symbol and timeframe."""

    model_config = ConfigDict(extra="forbid")

    model_type: ModelType = Field(
        description="lstm, gru or transformer.", json_schema_extra={"enum": list(MODEL_TYPES)}
    )
    symbol: TradingSymbol = Field(
        description="Trading pair, e.g. BTCUSDT.", json_schema_extra={"pattern": SYMBOL_PATTERN}
    )
    timeframe: str = Field(
        description="Candle timeframe: 5m, 15m, 1h, 4h or 1d.",
        json_schema_extra={"enum": list(TIMEFRAMES)},
    )

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        if v not in TIMEFRAMES:
            raise ValueError(f"timeframe must be one of: {', '.join(TIMEFRAMES)} (got {echo(v)})")
        return v


class ChangeRequest(BaseModel):
    """Body of promote and archive: why."""

    model_config = ConfigDict(extra="forbid")

    reason: str = REASON_FIELD


class RollbackRequest(BaseModel):
    """Body of rollback: the key whose deployed model goes back one step, and why."""

    model_config = ConfigDict(extra="forbid")

    key: ModelKey
    reason: str = REASON_FIELD


class HeldOutFigures(BaseModel):
    """The figures the training measured, as stored with the model."""

    accuracy: float | None = Field(
        description="Direction accuracy on hours neither training nor epoch selection saw "
        "(held-out slice), or the validation accuracy for models trained before the held-out "
        "slice existed (measured_on says which)."
    )
    measured_on: Literal["holdout", "validation"] | None = None
    samples: int | None = Field(default=None, description="Hours the accuracy counts.")
    holdout_start: datetime | None = None
    holdout_end: datetime | None = None
    majority_class_accuracy: float | None = Field(
        default=None, description="Always predicting the training split's majority direction."
    )
    logistic_regression_accuracy: float | None = Field(
        default=None, description="Logistic regression on the same windows."
    )
    comparisons: list[HeldOutComparison] = Field(
        default_factory=list,
        description="Paired differences on the held-out slice (baselines and the model "
        "deployed then), each with its standard error.",
    )
    deploy_rule: str | None = Field(default=None, description="The deploy rule's reason.")


class LiveFigures(BaseModel):
    """How the version's served predictions turned out (filled from the prediction ledger;
    None where no served prediction of the version has been scored yet)."""

    model_config = ConfigDict(extra="allow")

    scored_predictions: int = 0
    hit_rate: float | None = None
    hit_rate_standard_error: float | None = None
    measured_from: datetime | None = None
    measured_to: datetime | None = None


class ModelVersion(BaseModel):
    """One registered model version."""

    version: str = Field(description="Its name, e.g. lstm-BTCUSDT-1h-v3.")
    model_id: str
    model_type: str
    symbol: str
    timeframe: str
    number: int = Field(description="Version number within the key (1, 2, ...).")
    status: ModelStatus = Field(
        description="candidate: never deployed; deployed: serves the key; retired: was "
        "deployed, replaced, may be deployed again; archived: set aside, never served."
    )
    created_at: datetime
    created_by: str
    deployed_at: datetime | None = None
    deployed_by: str | None = None
    retired_at: datetime | None = None
    archived_at: datetime | None = None
    archived_by: str | None = None
    replaced_version: str | None = Field(
        default=None, description="The version deployed before this one (where rollback goes)."
    )
    training_task_id: str | None = None
    held_out: HeldOutFigures
    live: LiveFigures | None = Field(
        default=None, description="Scored served predictions; None until some are scored."
    )


class VersionList(BaseModel):
    """``GET /api/models``: versions newest first, and each key's deployed version."""

    versions: list[ModelVersion]
    count: int
    deployed: dict[str, str] = Field(
        description="Per key (model_type-symbol-timeframe), the deployed version."
    )


class VersionComparison(BaseModel):
    """``GET /api/models/compare``: two versions side by side."""

    a: ModelVersion
    b: ModelVersion
    same_key: bool
    accuracy_difference: float | None = Field(
        description="a's held-out accuracy minus b's (None when either is unknown)."
    )
    standard_error: float | None = Field(
        description="Of the difference, treating the two held-out slices as independent "
        "samples (a paired SE needs the same hours: see same_holdout)."
    )
    same_holdout: bool = Field(description="Both measured on the same held-out hours.")
    note: str


class AuditEntry(BaseModel):
    """One status change of one model (``model_audit``)."""

    audit_id: str
    operation_id: str = Field(description="Shared by the changes of one request.")
    at: datetime
    by: str
    action: RegistryAction
    reason: str
    model_id: str
    version: str
    model_type: str
    symbol: str
    timeframe: str
    from_status: str
    to_status: str


class RegistryChange(BaseModel):
    """Answer of promote, rollback and archive."""

    action: RegistryAction
    version: ModelVersion = Field(description="The version acted on, after the change.")
    changed: bool = Field(description="False when it was already in that state (no entry).")
    audit: list[AuditEntry] = Field(description="The audit entries this change wrote.")
    message: str


class AuditList(BaseModel):
    """``GET /api/models/audit``: entries newest first."""

    entries: list[AuditEntry]
    count: int
