"""Parameters and labels of a backtest of a trained model's signals (``strategy_name="model"``
in ``backtest-strategy``): which model, and whether the range is in-sample for it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.exceptions import InvalidInputError
from core.schemas.common import ModelType

#: The strategy name that backtests a trained model.
MODEL_STRATEGY = "model"


class ModelSignalParams(BaseModel):
    """Which model's signals to trade: the model deployed now for the backtest's symbol and
    timeframe and ``model_type``, or the version ``model_id`` (a candidate included).
    Long when its P(up) at a bar's close is above ``threshold``, flat otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: ModelType | None = Field(
        None, description="lstm, gru or transformer: the deployed model of the symbol/timeframe."
    )
    model_id: str | None = Field(None, description="An explicit model version id.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Long when P(up) > threshold.")

    @model_validator(mode="after")
    def _one_model(self) -> ModelSignalParams:
        if (self.model_type is None) == (self.model_id is None):
            raise ValueError(
                "name exactly one model: parameters.model_type (the deployed lstm, gru or "
                'transformer model of symbol and timeframe, e.g. {"model_type": "lstm"}) or '
                "parameters.model_id (a version id from the model registry)"
            )
        return self


def validate_model_params(values: dict[str, Any] | None) -> ModelSignalParams:
    """Validate the parameters of ``strategy_name="model"``.

    Returns:
        the validated parameters.

    Raises:
        InvalidInputError: naming each bad parameter and the fix.
    """
    try:
        return ModelSignalParams(**dict(values or {}))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(f"parameters.{x}" for x in err["loc"]) or "parameters"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown parameter; allowed: {', '.join(ModelSignalParams.model_fields)}"
            problems.append(f"{loc}: {msg}")
        raise InvalidInputError(
            "Invalid parameters for strategy 'model': " + "; ".join(problems)
        ) from None


class ModelBacktestInfo(BaseModel):
    """The model a backtest traded, and the bars it learned from or was selected on."""

    model_id: str
    model_type: str
    version: int
    status: str = Field(description="candidate, deployed or archived when the backtest ran.")
    threshold: float
    seen_start: datetime | None = Field(
        description="First bar its training saw (None: not recorded, assumed unbounded)."
    )
    seen_end: datetime = Field(
        description="Last bar its training, epoch selection or deploy decision saw (the "
        "held-out slice's end; the model's creation time when not recorded)."
    )
    in_sample: bool = Field(
        description="True when the backtest range overlaps [seen_start, seen_end]: the model "
        "learned from or was selected on some of these bars, so the figures are optimistic."
    )
    note: str
