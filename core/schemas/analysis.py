"""Parameters and results of the ``bulk-analysis`` and ``predict-price`` flows.

Shared by the flows (so the Prefect UI renders a form and rejects bad input before a run
exists) and the HTTP gateway (api/).

Symbol validation in bulk-analysis: the list itself is checked up front (1-500 strings, no
repeats); a symbol that is not well formed (see :func:`core.market.is_valid_symbol`, e.g.
``INVALID1``) does not reject the whole request but is reported in ``failed_symbols`` with
the reason ``invalid symbol``, like a symbol without data (TC-ASYNC-012).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.echo import echo
from core.market import TIMEFRAMES, is_valid_symbol
from core.schemas.common import MODEL_TYPES, ModelType, TradingSymbol
from core.schemas.registry import VERSION_PATTERN

MAX_BULK_SYMBOLS = 500
Signal = Literal["BUY", "SELL", "HOLD"]
SignalSource = Literal["model", "indicators"]


class BulkAnalysisParams(BaseModel):
    """What to analyse: up to 500 symbols of one timeframe."""

    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(
        description="1-500 trading pairs such as BTCUSDT; malformed ones are reported as failed."
    )
    timeframe: str = Field(default="1h", description="Candle timeframe: 5m, 15m, 1h, 4h or 1d.")
    min_confidence: float | None = Field(
        default=None, description="Keep only results with confidence >= this (0-1); None keeps all."
    )
    bars: int = Field(
        default=300, ge=60, le=5000, description="Newest candles read per symbol (60-5000)."
    )
    model_version: str | None = Field(
        default=None,
        description="Serve this version for its own symbol (which must be in symbols, of this "
        "timeframe) instead of that symbol's deployed model: a version name such as "
        "lstm-BTCUSDT-1h-v3 or a model id; a candidate may serve. The other symbols keep "
        "their deployed models.",
    )

    @field_validator("model_version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return _check_version(v, VERSION_PATTERN, "a version name")

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("symbols must name at least one symbol, e.g. ['BTCUSDT']")
        if len(v) > MAX_BULK_SYMBOLS:
            raise ValueError(
                f"At most {MAX_BULK_SYMBOLS} symbols per bulk analysis (got {len(v)}): "
                "split the list into several runs"
            )
        seen: set[str] = set()
        repeated = [s for s in v if s in seen or seen.add(s)]  # type: ignore[func-returns-value]
        if repeated:
            raise ValueError(f"symbols must not repeat (repeated: {', '.join(repeated[:5])})")
        return v

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        if v not in TIMEFRAMES:
            raise ValueError(f"timeframe must be one of: {', '.join(TIMEFRAMES)} (got {echo(v)})")
        return v

    @field_validator("min_confidence")
    @classmethod
    def _min_confidence(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1 (got {v})")
        return v


class SymbolAnalysis(BaseModel):
    """The signal of one symbol.

    ``confidence`` is the strength of the directional evidence in [0, 1] (see
    :mod:`ml.analysis`): ``|2p - 1|`` for a model's up-probability p, or the absolute
    combined indicator score; below the signal threshold the signal is HOLD.
    """

    symbol: str
    signal: Signal
    confidence: float = Field(ge=0.0, le=1.0)
    price: float = Field(description="Last close.")
    timestamp: datetime = Field(description="Open time of the last candle (UTC).")
    indicators: dict[str, float | str | None]
    source: SignalSource
    model_id: str | None = None
    up_probability: float | None = Field(
        default=None, description="The model's probability of a rise (source 'model' only)."
    )
    served_model_version: str | None = Field(
        default=None, description="The version that gave the signal (source 'model' only)."
    )
    served_model_deployed: bool | None = Field(
        default=None,
        description="Whether that version is the deployed one (False: a candidate or retired "
        "version asked for by model_version).",
    )


class FailedSymbol(BaseModel):
    """A symbol that could not be analysed, and why (invalid symbol, no data, too little data)."""

    symbol: str
    reason: str


class BulkAnalysisResult(BaseModel):
    """Outcome of a bulk analysis; ``results`` sorted by confidence, highest first."""

    status: Literal["success"] = "success"
    timeframe: str
    total_symbols: int
    symbols_analyzed: int = Field(description="Symbols analysed successfully.")
    failed_symbols: list[FailedSymbol]
    results: list[SymbolAnalysis]
    below_min_confidence: int = Field(
        default=0, description="Analysed symbols left out of results by min_confidence."
    )
    batches: int = Field(description="Dask tasks the symbols were split into.")
    task_id: str | None = None
    elapsed_s: float


#: Timeframe of the models predict-price uses (its horizon is in hours).
PREDICTION_TIMEFRAME = "1h"


def no_model_message(model_type: str, symbol: str, newest: str | None = None) -> str:
    """predict-price's error text when nothing is deployed for ``model_type`` + ``symbol``
    (the flow and the gateway's pre-queue check say the same); ``newest``: the newest
    version of the key that could serve (a candidate or a retired version), if any."""
    key = f"{model_type} {symbol} {PREDICTION_TIMEFRAME}"
    head = f"No deployed {model_type} model for {symbol} ({PREDICTION_TIMEFRAME})"
    if newest is None:
        return (
            f"{head}, and no {key} model is registered: train one with the train-model flow "
            f"(model_type={model_type}, symbol={symbol}, timeframe={PREDICTION_TIMEFRAME}), "
            "then promote it (`botai models promote VERSION --reason ...`) or pass its "
            "version as model_version"
        )
    return (
        f"{head}: its models stayed candidates. Promote one (`botai models list --symbol "
        f"{symbol} --timeframe {PREDICTION_TIMEFRAME} --model-type {model_type}`, then `botai "
        f"models promote {newest} --reason ...`), or pass model_version={newest} to forecast "
        "with that version as it is"
    )


#: A version name or model id predict-price can serve (a 1h model).
PREDICT_VERSION_PATTERN = (
    r"^(?:(?:lstm|gru|transformer)-[A-Z0-9]{2,12}-1h-v[1-9][0-9]{0,8}|[0-9a-f]{32})$"
)
MODEL_VERSION_HELP = (
    "Serve this version instead of the deployed model: a version name such as "
    "lstm-BTCUSDT-1h-v3 (see `botai models list`) or a model id; a candidate may serve. "
    "None: the deployed model."
)


def _check_version(v: str | None, pattern: str, what: str) -> str | None:
    import re

    if v is not None and not re.match(pattern, v):
        raise ValueError(
            f"model_version must be {what} such as lstm-BTCUSDT-1h-v3 (model_type-symbol-"
            f"timeframe-vN) or a 32-character model id (got {echo(v)}): see `botai models list`"
        )
    return v


class PredictPriceParams(BaseModel):
    """What to forecast: hourly prices of one symbol from its deployed model."""

    model_config = ConfigDict(extra="forbid")

    symbol: TradingSymbol = Field(default="BTCUSDT", description="Trading pair, e.g. BTCUSDT.")
    model_type: ModelType = Field(default="lstm", description="lstm, gru or transformer.")
    horizon_hours: int = Field(default=24, description="Hours to forecast (1-168).")
    model_version: str | None = Field(default=None, description=MODEL_VERSION_HELP)

    @model_validator(mode="before")
    @classmethod
    def _key_of_version(cls, data: Any) -> Any:
        """A version name without symbol/model_type: they are the version's."""
        if isinstance(data, dict) and isinstance(data.get("model_version"), str):
            parts = data["model_version"].split("-")
            if len(parts) == 4 and parts[2] == PREDICTION_TIMEFRAME:
                if "symbol" not in data and is_valid_symbol(parts[1]):
                    data = {**data, "symbol": parts[1]}
                if "model_type" not in data and parts[0] in MODEL_TYPES:
                    data = {**data, "model_type": parts[0]}
        return data

    @field_validator("model_version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return _check_version(v, PREDICT_VERSION_PATTERN, "the name of a 1h version")

    @field_validator("horizon_hours")
    @classmethod
    def _horizon(cls, v: int) -> int:
        if not 1 <= v <= 168:
            raise ValueError(f"horizon_hours must be between 1 and 168 (got {v})")
        return v


class PricePoint(BaseModel):
    """The forecast for one hour ahead."""

    hour: int = Field(ge=1)
    timestamp: datetime = Field(
        description="When the forecast close applies (UTC): the newest candle's close time "
        "plus ``hour`` hours."
    )
    predicted_price: float
    lower: float = Field(description="Lower bound of the central 80% interval.")
    upper: float = Field(description="Upper bound of the central 80% interval.")
    confidence: float = Field(
        ge=0.0,
        le=1.0,
        description="P(direction): probability that the close at this hour is on the side "
        "of last_price that predicted_price is on (0.5: the model says nothing). The "
        "model's P(up) carried to each hour; highest at the model's own horizon.",
    )


class CoverageCheck(BaseModel):
    """How often the interval method contained the realised price over a set of past
    forecast origins (every origin's interval built only from data before it)."""

    interval_level: float
    origins: int
    origins_from: datetime | None = Field(default=None, description="Open time of the first.")
    origins_to: datetime | None = Field(default=None, description="Open time of the last.")
    horizons: list[int]
    pairs: int = Field(default=0, description="(origin, hour) pairs with a known outcome.")
    coverage: float = Field(description="Share of (origin, hour) pairs inside the interval.")
    standard_error: float | None = Field(
        default=None,
        description="Of the coverage, from the spread of weekly blocks of origins (nearby "
        "origins overlap); None with a single block.",
    )
    coverage_by_hour: dict[str, float]
    description: str = ""


class PredictPriceResult(BaseModel):
    """Hourly forecasts with calibrated 80% intervals."""

    symbol: str
    model_type: str
    model_id: str
    served_model_version: str | None = Field(
        default=None, description="The version that forecast, e.g. lstm-BTCUSDT-1h-v3."
    )
    served_model_deployed: bool | None = Field(
        default=None,
        description="Whether it is the deployed version (False: a candidate or retired version "
        "asked for by model_version).",
    )
    timeframe: str
    origin_time: datetime = Field(description="Open time of the newest candle used.")
    last_price: float
    up_probability: float = Field(description="The model's probability of a rise.")
    calibrated_up_probability: float | None = Field(
        default=None,
        description="up_probability mapped to what followed the model's recent scores (a "
        "logistic fit on the replayed hours): the P(up) the path and confidence use.",
    )
    confidence_calibration: str = Field(
        default="", description="Which hours the calibration was fitted on, and its fit."
    )
    model_horizon_bars: int
    horizon_hours: int
    interval_level: float
    calibration_bars: int = Field(description="Hours of history the interval quantiles used.")
    predictions: list[PricePoint]
    model_data_end: datetime | None = Field(
        default=None,
        description="Newest hour the model's training or validation used (its record).",
    )
    coverage_after_training: CoverageCheck | None = Field(
        default=None,
        description="Coverage measured only at origins after model_data_end: forecasts of "
        "hours neither the model nor its selection saw. None: no such hour has a known "
        "outcome yet (coverage_after_training_note says why).",
    )
    coverage_after_training_note: str = ""
    recent_calibration_fit: CoverageCheck | None = Field(
        default=None,
        description="The interval method replayed on the last hours of the candles, "
        "including hours the model trained on: how well it fits recent history, not a "
        "measured forecast coverage (a review found its correlation with the next month's "
        "realised coverage, over nine monthly retrains, to be 0.003).",
    )
    task_id: str | None = None
    elapsed_s: float
