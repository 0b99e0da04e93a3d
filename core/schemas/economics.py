"""What a model's signals would have earned on held-out bars (shared by ``train-model``'s
result, the deploy rule and the HTTP gateway). Definitions of every figure: docs/ml.md,
"Economic evaluation"; the computation: ``ml/economics.py``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

DeployRule = Literal["accuracy", "economic", "both"]
#: The strategies every economic evaluation trades, beside the candidate ("model").
ECONOMIC_BASELINES = ("buy_and_hold", "logistic_regression")

#: How each figure is computed; copied into every evaluation so a reader never has to guess.
ECONOMIC_DEFINITIONS: dict[str, str] = {
    "signals": "long from the next bar's open when P(up) > 0.5 at a bar's close, flat "
    "otherwise; buy_and_hold is long from the second bar's open to the end",
    "total_return_pct": "final equity / initial capital - 1, in percent, after fees and "
    "slippage (an open position is marked at the last close)",
    "sharpe_ratio": "mean / std (ddof=1) of daily equity returns x sqrt(365); risk-free rate 0",
    "max_drawdown_pct": "largest fall of bar-close equity from its running peak, percent (<= 0)",
    "return_before_costs_pct": "total return of the same signals with fee and slippage 0",
    "turnover_trades": "positions opened (round trips, the last one possibly still open)",
    "standard_error": "std of the figure over circular block-bootstrap resamples of the "
    "hourly equity returns (blocks of block_bars bars, bootstrap_samples resamples, seed "
    "from the prices); the bootstrap's days are consecutive runs of bars_per_day bars",
    "difference_pct": "candidate's total return minus the comparator's, both resampled with "
    "the same blocks (paired); beaten when the difference exceeds its standard error",
}


class Figure(BaseModel):
    """One measured figure and its block-bootstrap standard error."""

    value: float
    standard_error: float


class StrategyEconomics(BaseModel):
    """One strategy's trading figures on the held-out bars, after fees and slippage."""

    name: str = Field(description="model, buy_and_hold or logistic_regression.")
    total_return_pct: Figure
    sharpe_ratio: Figure
    max_drawdown_pct: Figure
    turnover_trades: Figure
    exposure_pct: float = Field(description="Bars holding a position / all bars x 100.")
    return_before_costs_pct: float = Field(
        description="The same signals' total return without fees and slippage (what costs ate)."
    )


class EconomicComparison(BaseModel):
    """The candidate's after-fee return against one comparator (paired bootstrap)."""

    name: str
    model_id: str | None = None
    total_return_pct: float
    difference_pct: float = Field(description="candidate's total return minus this one's.")
    standard_error: float = Field(description="SE of the paired difference.")
    beaten: bool = Field(description="difference > standard error and > 0.")


class EquityCurve(BaseModel):
    """Daily equity (the last bar of each UTC day) of one strategy."""

    name: str
    days: list[date]
    equity: list[float]


class EconomicEvaluation(BaseModel):
    """The candidate, buy-and-hold and logistic regression traded on the held-out bars."""

    start: datetime = Field(description="Open time of the first held-out bar traded.")
    end: datetime = Field(description="Open time of the last held-out bar traded.")
    bars: int
    initial_capital: float
    fee_bps: float
    slippage_bps: float
    block_bars: int = Field(description="Block length of the bootstrap, in bars.")
    bootstrap_samples: int
    seed: int = Field(description="Bootstrap seed, derived from the prices (reproducible).")
    strategies: list[StrategyEconomics]
    comparisons: list[EconomicComparison] = Field(
        description="The candidate against each baseline (and the deployed model, if any)."
    )
    equity_curves: list[EquityCurve] = Field(default_factory=list)
    definitions: dict[str, str] = Field(default_factory=lambda: dict(ECONOMIC_DEFINITIONS))

    def strategy(self, name: str) -> StrategyEconomics:
        """The figures of strategy ``name``.

        Raises:
            KeyError: no such strategy in this evaluation.
        """
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)


class EconomicTest(BaseModel):
    """The deploy rule's economic test: beat every comparator's after-fee return by more
    than the standard error of the paired difference."""

    passed: bool
    comparisons: list[EconomicComparison]
    reason: str
