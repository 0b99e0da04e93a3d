"""Parameters and results of the backtest-strategy and optimize-strategy flows.

Shared by the flow signatures (the Prefect UI renders them as forms and rejects bad
input) and the HTTP gateway. Conventions of every metric: docs/backtesting.md.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from core.echo import echo
from core.market import check_symbol
from core.schemas.model_backtest import (
    MODEL_STRATEGY,
    ModelBacktestInfo,
    validate_model_params,
)
from core.schemas.strategies import STRATEGY_PARAMS, validate_strategy_params

StrategyName = Literal["rsi", "macd", "bollinger", "volume"]
#: backtest-strategy also trades a trained model's signals ("model").
BacktestStrategyName = Literal["rsi", "macd", "bollinger", "volume", "model"]
Timeframe = Literal["5m", "15m", "1h", "4h", "1d"]
ParamValue = int | float | str

#: How the metrics are computed; copied into every result so a reader never has to guess.
CONVENTIONS: dict[str, str] = {
    "fills": "orders are filled at the next bar's open after the signal bar's close",
    "fees": "fee_bps charged on the notional of every entry and exit; slippage_bps moves each fill against the trade",
    "position_size": "each trade commits position_size x equity (fee included) at entry",
    "date_range": "start_date inclusive (00:00 UTC), end_date exclusive (00:00 UTC)",
    "equity_curve": "one point per UTC calendar day: equity at the day's last bar close (open trades marked to market)",
    "sharpe_ratio": "mean / std (ddof=1) of daily equity returns x sqrt(365); risk-free rate 0",
    "sortino_ratio": "mean daily return / sqrt(mean(min(daily return, 0)^2)) x sqrt(365)",
    "max_drawdown_pct": "largest fall of bar-close equity from its running peak, in percent (<= 0)",
    "cagr_pct": "compound annual growth over the span (last - first open time) x bars / (bars - 1), 365-day years",
    "win_rate_pct": "winning closed trades (P&L > 0 after fees) / closed trades x 100",
    "profit_factor": "gross profit / gross loss of closed trades, in money after fees; null when no losing trade",
    "total_trades": "trades entered (closed + still open at the end)",
    "avg_trade_pct": "mean return of closed trades on the capital committed to them, after fees",
    "exposure_pct": "bars holding a position / all bars x 100",
}


class BacktestConfig(BaseModel):
    """How the engine trades: capital, costs, sizing and direction."""

    model_config = ConfigDict(extra="forbid")

    initial_capital: float = Field(10_000.0, gt=0, description="Starting equity in quote currency.")
    fee_bps: float = Field(
        10.0, ge=0, le=1000, description="Fee per fill in basis points (10 = 0.1%)."
    )
    slippage_bps: float = Field(
        0.0, ge=0, le=1000, description="Price moved against each fill, basis points."
    )
    position_size: float = Field(
        1.0, gt=0, le=1, description="Fraction of equity committed to each trade (0-1]."
    )
    allow_short: bool = Field(
        False, description="False: long-only (exit = flat). True: exit signals open shorts."
    )


class _RangeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy_name: StrategyName = Field("rsi", description="rsi, macd, bollinger or volume.")
    symbol: str = Field("BTCUSDT", description="Upper-case BASE+QUOTE, e.g. BTCUSDT.")
    timeframe: Timeframe = Field("1h", description="Candle timeframe.")
    start_date: date = Field(description="First day (inclusive, UTC).")
    end_date: date = Field(description="Last day (exclusive, UTC).")
    config: BacktestConfig = Field(default_factory=BacktestConfig)

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, v: str) -> str:
        return check_symbol(v)

    @model_validator(mode="after")
    def _dates(self) -> _RangeParams:
        if self.end_date <= self.start_date:
            raise ValueError(
                f"end_date ({self.end_date}) must be after start_date ({self.start_date})"
            )
        return self


class BacktestParameters(_RangeParams):
    """Parameters of the backtest-strategy flow."""

    strategy_name: BacktestStrategyName = Field(  # type: ignore[assignment]
        "rsi",
        description="rsi, macd, bollinger, volume, or model: a trained model's signals "
        "(parameters model_type for the deployed model of symbol/timeframe, or model_id).",
    )
    parameters: dict[str, ParamValue] = Field(
        default_factory=dict,
        description="Strategy parameters, e.g. {rsi_period: 14, oversold: 30, overbought: 70}; "
        "for model: {model_type: lstm} or {model_id: ...}, optional threshold (0.5).",
    )

    @model_validator(mode="after")
    def _strategy_params(self) -> BacktestParameters:
        if self.strategy_name == MODEL_STRATEGY:
            validate_model_params(self.parameters)
        else:
            validate_strategy_params(self.strategy_name, self.parameters)
        return self


class OptimizeParameters(_RangeParams):
    """Parameters of the optimize-strategy flow."""

    method: Literal["grid", "genetic", "walk_forward"] = Field("grid")
    parameter_variations: int = Field(
        50, ge=1, le=5000, description="Grid: combinations drawn evenly from the space."
    )
    space: dict[str, list[ParamValue]] | None = Field(
        None, description="Search space {name: [values]}; default: the strategy's own."
    )
    population: int = Field(16, ge=4, le=500, description="Genetic: individuals per generation.")
    generations: int = Field(10, ge=1, le=200, description="Genetic: generations.")
    seed: int = Field(42, description="Genetic: random seed (same seed, same answer).")
    max_evaluations_pct: float = Field(
        30.0, gt=0, le=100, description="Genetic: stop after this share of the space is evaluated."
    )
    compare_exhaustive: bool = Field(
        True, description="Genetic: also run the exhaustive grid and report the ratio."
    )
    wf_windows: int = Field(4, ge=1, le=50, description="Walk-forward: number of test windows.")
    wf_train_ratio: float = Field(
        3.0, gt=0, le=20, description="Walk-forward: train window length / test window length."
    )
    holdout_pct: float = Field(
        0.0,
        ge=0,
        le=50,
        description="Grid/genetic: newest share of the bars held out of the search; the best "
        "set is then traded on them (out-of-sample headline). 0: no holdout, every figure is "
        "in-sample (chosen on the same bars it is measured on).",
    )

    @model_validator(mode="after")
    def _space(self) -> OptimizeParameters:
        fields = STRATEGY_PARAMS[self.strategy_name].model_fields
        if self.space is not None:
            unknown = set(self.space) - set(fields)
            if unknown:
                raise ValueError(
                    f"space has unknown parameters {sorted(unknown)} for strategy "
                    f"{echo(self.strategy_name)}; allowed: {', '.join(fields)}"
                )
            empty = [k for k, v in self.space.items() if not v]
            if empty:
                raise ValueError(f"space values must not be empty: {empty}")
        return self


class TradeRecord(BaseModel):
    """One trade: entry and exit fills (after slippage) and its result after fees."""

    side: Literal["long", "short"]
    entry_time: datetime
    exit_time: datetime | None = Field(description="None while still open at the end.")
    entry_price: float
    exit_price: float = Field(description="Exit fill, or the last close for an open trade.")
    bars_held: int
    return_pct: float
    pnl: float
    is_open: bool


class CurvePoint(BaseModel):
    """Equity and drawdown at the end of one UTC day."""

    day: date
    equity: float
    drawdown_pct: float


class BacktestMetrics(BaseModel):
    """Summary statistics of one backtest (conventions: :data:`CONVENTIONS`)."""

    total_return_pct: float
    cagr_pct: float
    sharpe_ratio: float
    sortino_ratio: float
    max_drawdown_pct: float
    win_rate_pct: float
    profit_factor: float | None
    total_trades: int
    closed_trades: int
    avg_trade_pct: float
    exposure_pct: float
    final_equity: float
    buy_and_hold_return_pct: float = Field(description="Naive baseline: hold from first open.")


class BacktestResult(BaseModel):
    """Result of the backtest-strategy flow (saved to ``backtest_results``)."""

    status: Literal["success"] = "success"
    strategy_name: str
    symbol: str
    timeframe: str
    start: datetime = Field(description="Open time of the first bar.")
    end: datetime = Field(description="Open time of the last bar.")
    bars: int
    parameters: dict[str, Any]
    config: BacktestConfig
    metrics: BacktestMetrics
    trades: list[TradeRecord]
    equity_curve: list[CurvePoint]
    conventions: dict[str, str] = Field(default_factory=lambda: dict(CONVENTIONS))
    elapsed_s: float = 0.0
    chart_path: str | None = None
    task_id: str | None = None
    in_sample: bool | None = Field(
        None,
        description="strategy model only: true when the range overlaps the bars the model "
        "was trained or selected on (optimistic figures); null for rule strategies.",
    )
    model: ModelBacktestInfo | None = Field(None, description="strategy model: which model.")


Sample = Literal["in_sample", "out_of_sample"]


class OptimizationEntry(BacktestMetrics):
    """IN-SAMPLE metrics of one evaluated parameter set, on the bars the search ranked it on."""

    parameters: dict[str, Any]
    sample: Sample = "in_sample"


class SampleReport(BaseModel):
    """Metrics of the chosen parameters on one sample of bars, labelled in- or out-of-sample.

    In-sample: measured on the bars the parameters were chosen on (the best of many sets
    there, so optimistic). Out-of-sample: on bars the choice never saw.
    """

    sample: Sample
    start: datetime = Field(description="Open time of the first bar.")
    end: datetime = Field(description="Open time of the last bar.")
    bars: int
    metrics: BacktestMetrics
    description: str


class WalkForwardWindow(BaseModel):
    """One walk-forward step: optimise on train, evaluate the choice on the next test window."""

    index: int
    train_start: datetime
    train_end: datetime
    test_start: datetime
    test_end: datetime
    best_parameters: dict[str, Any]
    train_sharpe: float = Field(description="IN-SAMPLE: the chosen set's Sharpe on its train bars.")
    test: BacktestMetrics = Field(description="Out-of-sample: the chosen set on the test bars.")


class WalkForwardReport(BaseModel):
    """Out-of-sample statistics per window and over all test windows, and parameter stability."""

    windows: list[WalkForwardWindow]
    overall_out_of_sample: BacktestMetrics = Field(
        description="Out-of-sample: the test windows stitched, each traded with the set chosen "
        "on the train bars before it."
    )
    parameter_stability: dict[str, dict[str, Any]]


class GeneticReport(BaseModel):
    """What the genetic search cost and how close it came to the exhaustive grid."""

    population: int
    generations: int
    seed: int
    evaluations: int
    space_size: int
    evaluated_pct: float
    best_sharpe: float = Field(description="IN-SAMPLE: best Sharpe found on the search bars.")
    exhaustive_best_sharpe: float | None = None
    ratio_to_exhaustive_pct: float | None = None


class OptimizationResult(BaseModel):
    """Result of the optimize-strategy flow (saved to ``optimization_results``).

    ``headline`` says which sample ``headline_metrics`` come from: out-of-sample for
    walk-forward (the stitched test windows) and for a grid/genetic search with a holdout;
    in-sample otherwise, i.e. the best of ``evaluations`` sets measured on the very bars it
    was chosen on (expect worse on new data). ``all_results``, ``best_result`` and
    ``in_sample`` are always in-sample.
    """

    status: Literal["success"] = "success"
    method: str
    strategy_name: str
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    space_size: int
    evaluations: int
    headline: Sample = Field(description="Sample of headline_metrics.")
    headline_metrics: BacktestMetrics
    headline_note: str = Field(description="What the headline figures are, in words.")
    in_sample: SampleReport
    out_of_sample: SampleReport | None = Field(
        None, description="None: no bars were held out (grid/genetic with holdout_pct 0)."
    )
    all_results: list[OptimizationEntry] = Field(
        description="IN-SAMPLE: every evaluated set on the search bars, ranked by Sharpe."
    )
    best_parameters: dict[str, Any]
    best_result: BacktestResult = Field(
        description="IN-SAMPLE: full backtest of best_parameters on bars they were chosen on "
        "(walk-forward: the last window's choice over the whole range, its train bars included)."
    )
    genetic: GeneticReport | None = None
    walk_forward: WalkForwardReport | None = None
    elapsed_s: float = 0.0
    task_id: str | None = None
