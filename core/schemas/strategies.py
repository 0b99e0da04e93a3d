"""Parameters of the backtest strategies (RSI, MACD, Bollinger bands, volume): one model per
strategy, unknown names rejected, and :func:`validate_strategy_params`, whose errors name each
bad parameter and the fix. Used by :mod:`core.schemas.backtest` and :mod:`backtest.strategies`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.echo import echo
from core.exceptions import InvalidInputError


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown names are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RSIParams(StrategyParams):
    """Buy when RSI falls below ``oversold``; sell when it rises above ``overbought``."""

    rsi_period: int = Field(14, ge=2, le=200, description="RSI look-back in bars (Wilder).")
    oversold: float = Field(30.0, gt=0, lt=100, description="Enter long below this RSI.")
    overbought: float = Field(70.0, gt=0, lt=100, description="Exit above this RSI.")

    @model_validator(mode="after")
    def _levels(self) -> RSIParams:
        if self.oversold >= self.overbought:
            raise ValueError(
                f"oversold ({self.oversold}) must be below overbought ({self.overbought}): "
                "lower oversold or raise overbought"
            )
        return self


class MACDParams(StrategyParams):
    """Buy when the MACD line crosses above its signal line; sell when it crosses below."""

    fast: int = Field(12, ge=2, le=100, description="Fast EMA period in bars.")
    slow: int = Field(26, ge=3, le=300, description="Slow EMA period in bars.")
    signal: int = Field(9, ge=1, le=100, description="Signal EMA period in bars.")

    @model_validator(mode="after")
    def _order(self) -> MACDParams:
        if self.fast >= self.slow:
            raise ValueError(
                f"fast ({self.fast}) must be smaller than slow ({self.slow}): "
                "lower fast or raise slow"
            )
        return self


class BollingerParams(StrategyParams):
    """Mean reversion: buy a close below the lower band; sell a close above the middle band."""

    period: int = Field(20, ge=2, le=300, description="Band look-back in bars.")
    num_std: float = Field(2.0, gt=0, le=5, description="Band width in population std devs.")
    exit_band: Literal["middle", "upper"] = Field(
        "middle", description="Exit at the 'middle' or 'upper' band."
    )


class VolumeParams(StrategyParams):
    """Buy a rising bar on a volume spike; sell when the close falls below the rolling VWAP."""

    volume_period: int = Field(20, ge=2, le=500, description="Bars of the volume average.")
    spike_threshold: float = Field(
        2.0, gt=1.0, le=20, description="Volume / its average needed to enter (e.g. 2 = double)."
    )
    vwap_period: int = Field(24, ge=2, le=1000, description="Bars of the exit VWAP.")


#: Parameter model of each strategy (signals: backtest/strategies.py).
STRATEGY_PARAMS: dict[str, type[StrategyParams]] = {
    "rsi": RSIParams,
    "macd": MACDParams,
    "bollinger": BollingerParams,
    "volume": VolumeParams,
}


def validate_strategy_params(name: str, values: dict[str, Any] | None) -> StrategyParams:
    """Validate ``values`` for strategy ``name`` (missing names take their defaults).

    Returns the validated parameter model.

    Raises:
        InvalidInputError: unknown strategy, or naming each bad parameter and the fix.
    """
    model = STRATEGY_PARAMS.get(name)
    if model is None:
        raise InvalidInputError(
            f"Unknown strategy {echo(name)}: use one of {', '.join(STRATEGY_PARAMS)}"
        )
    try:
        return model(**dict(values or {}))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "parameters"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown parameter; allowed: {', '.join(model.model_fields)}"
            problems.append(f"{loc}: {msg}")
        raise InvalidInputError(
            f"Invalid parameters for strategy {echo(name)}: " + "; ".join(problems)
        ) from None
