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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.echo import echo
from core.market import TIMEFRAMES
from core.schemas.common import ModelType, TradingSymbol

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


def no_model_message(model_type: str, symbol: str) -> str:
    """predict-price's error text when nothing is deployed for ``model_type`` + ``symbol``
    (the flow and the gateway's pre-queue check say the same)."""
    return (
        f"No deployed {model_type} model for {symbol} ({PREDICTION_TIMEFRAME}): train one with "
        f"the train-model flow (model_type={model_type}, symbol={symbol}, "
        f"timeframe={PREDICTION_TIMEFRAME}) or deploy a candidate, then predict again"
    )


class PredictPriceParams(BaseModel):
    """What to forecast: hourly prices of one symbol from its deployed model."""

    model_config = ConfigDict(extra="forbid")

    symbol: TradingSymbol = Field(default="BTCUSDT", description="Trading pair, e.g. BTCUSDT.")
    model_type: ModelType = Field(default="lstm", description="lstm, gru or transformer.")
    horizon_hours: int = Field(default=24, description="Hours to forecast (1-168).")

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
        description="Probability that the price ends within the band (default +-2%) of "
        "predicted_price; strictly decreasing with the hour.",
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
    timeframe: str
    origin_time: datetime = Field(description="Open time of the newest candle used.")
    last_price: float
    up_probability: float = Field(description="The model's probability of a rise.")
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
