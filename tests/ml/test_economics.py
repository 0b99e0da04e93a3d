"""What a model's signals earn after fees (ml/economics.py) and the deploy rule's economic test
(ml/deploy_rule.py: economic_test, apply_rule), with real tiny GRUs.

A GRU trained on generated hours with a planted signal (tests.ml.helpers.make_gated_candles,
which logistic regression cannot see) must earn after fees on the held-out hours and pass
both tests; one trained on a random walk must pass neither; the planted model with fees that
eat its edge passes the accuracy test and fails the economic one, and the decision says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from backtest.engine import run_backtest
from backtest.metrics import compute_metrics
from backtest.strategies import Candles
from core.schemas.economics import ECONOMIC_DEFINITIONS, StrategyEconomics
from ml.candidate import economic_held_out
from ml.deploy_rule import (
    apply_rule,
    candidate_windows,
    economic_test,
    hold_out,
    score_holdout,
)
from ml.economics import (
    EconomicsConfig,
    circular_block_indices,
    evaluate_economics,
    path_statistics,
    seed_from_prices,
)
from ml.features import prepare_dataset
from ml.metrics import baseline_probabilities
from ml.models import build_model
from tests.ml.helpers import make_candles, make_gated_candles

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ml.md"


class Scored:
    """A tiny GRU trained on the bars before the held-out slice, and what the rule needs."""

    def __init__(self, candles: pd.DataFrame) -> None:
        keras.utils.set_random_seed(1)
        self.candles = candles
        self.holdout = hold_out(candles, 0.3, 1)
        ds = prepare_dataset(candles.iloc[: self.holdout.cut], lookback=12, horizon_bars=1)
        model = build_model("gru", 12, ds.spec.n_features, units=16, learning_rate=5e-3)
        model.fit(
            ds.x_train,
            ds.y_train,
            epochs=8,
            batch_size=32,
            verbose=0,
            validation_data=(ds.x_val, ds.y_val),
        )
        x = candidate_windows(candles, self.holdout, ds.spec)
        self.p = model.predict(x, verbose=0).reshape(-1)
        self.baselines = baseline_probabilities(ds.x_train, ds.y_train, x)

    def decide(self, rule: str, config: EconomicsConfig | None = None):  # noqa: ANN201
        accuracy = score_holdout(self.p, self.holdout, self.baselines, None)
        evaluation = economic_held_out(
            self.candles,
            self.holdout,
            self.p,
            self.baselines["logistic_regression"],
            None,
            config or EconomicsConfig(),
        )
        return apply_rule(accuracy, economic_test(evaluation), rule), evaluation


@pytest.fixture(scope="module")
def planted() -> Scored:
    """2,500 hours whose next return follows the last one after loud bars and reverses after
    quiet ones (AR 0.8): 750 held-out hours."""
    return Scored(make_gated_candles(2500, seed=3, gate=0.8))


@pytest.fixture(scope="module")
def noise() -> Scored:
    """2,500 hours of a random walk: nothing to learn."""
    return Scored(make_candles(2500, seed=3, momentum=0.0))


@pytest.mark.tc("TC-ASYNC-020", "TC-ASYNC-056")
def test_a_model_with_a_planted_signal_earns_after_fees_and_passes_both_tests(planted: Scored):
    decision, ev = planted.decide("both")
    print(decision.reason)
    model = ev.strategy("model")
    hold = ev.strategy("buy_and_hold")
    assert decision.deployed and decision.outcome == "deployed"
    assert decision.rule == decision.decided_by == "both" and decision.accuracy_passed
    assert decision.reason.endswith("[deploy rule both: decided by both tests]")
    assert "economic test passed: after fees (10 bps per fill" in decision.reason
    assert model.total_return_pct.value > 0 and model.sharpe_ratio.value > 0
    for c in ev.comparisons:  # beaten by more than the paired SE, and by a wide margin
        assert c.beaten and c.difference_pct > 2 * c.standard_error > 0
    assert model.turnover_trades.value > 50 and model.turnover_trades.standard_error > 0
    # costs are charged: the same signals earn more without them
    assert model.return_before_costs_pct > model.total_return_pct.value
    # buy-and-hold: one entry fee (still open at the end: marked at the last close, no exit
    # fee), so equity = capital x (last close / entry) / (1 + fee)
    assert hold.turnover_trades.value == 1
    assert 1 + hold.return_before_costs_pct / 100 == pytest.approx(
        (1 + hold.total_return_pct.value / 100) * 1.001
    )


@pytest.mark.tc("TC-ASYNC-057")
def test_fees_that_eat_the_edge_fail_the_economic_test_and_the_decision_says_so(planted: Scored):
    """The situation seen on real BTC hours: more right than wrong, poorer after fees."""
    dear = EconomicsConfig(fee_bps=150.0)
    decision, ev = planted.decide("both", dear)
    print(decision.reason)
    assert decision.accuracy_passed and not decision.economic.passed
    assert not decision.deployed and decision.outcome == "candidate"
    assert decision.decided_by == "economic"
    assert decision.reason.startswith(
        "not deployed, stays a candidate (no model deployed): after fees (150 bps per fill"
    )
    assert "; accuracy test passed: accuracy" in decision.reason
    assert decision.reason.endswith("decided by the economic test]")
    # the accuracy rule alone deploys it, and says the economic test was not required
    alone, _ = planted.decide("accuracy", dear)
    assert alone.deployed and alone.decided_by == "accuracy"
    assert "economic test failed (not required)" in alone.reason


@pytest.mark.tc("TC-ASYNC-057")
def test_a_model_of_noise_passes_neither_test(noise: Scored):
    for rule in ("both", "economic", "accuracy"):
        decision, ev = noise.decide(rule)
        assert not decision.deployed and decision.outcome == "candidate", decision.reason
        assert decision.decided_by == rule
    print(decision.reason)
    assert not decision.economic.passed
    assert (
        ev.strategy("model").total_return_pct.value
        < ev.strategy("buy_and_hold").total_return_pct.value
    )
    decision, _ = noise.decide("economic")
    assert decision.reason.startswith("not deployed, stays a candidate (no model deployed): after")
    assert decision.reason.endswith("[deploy rule economic: decided by the economic test]")


@pytest.mark.tc("TC-ASYNC-020")
def test_point_figures_are_the_engines_and_the_bootstrap_is_reproducible():
    candles = make_candles(600, seed=11, momentum=0.3)
    rng = np.random.default_rng(0)
    p = rng.uniform(size=len(candles))
    config = EconomicsConfig(bootstrap_samples=300)
    ev = evaluate_economics(candles, {"model": p}, config)
    bars = Candles.from_frame(candles)
    engine = compute_metrics(run_backtest(bars, p > 0.5, p <= 0.5, config.backtest_config()))
    model = ev.strategy("model")
    assert model.total_return_pct.value == engine.total_return_pct
    assert model.sharpe_ratio.value == engine.sharpe_ratio
    assert model.max_drawdown_pct.value == engine.max_drawdown_pct
    assert model.turnover_trades.value == engine.total_trades
    assert ev.seed == seed_from_prices(candles["close"].to_numpy())
    again = evaluate_economics(candles.copy(), {"model": p.copy()}, config)
    assert again.model_dump() == ev.model_dump()
    other = evaluate_economics(make_candles(600, seed=12), {"model": p}, config)
    assert other.seed != ev.seed


@pytest.mark.tc("TC-ASYNC-020")
def test_bootstrap_pieces_exactly():
    idx = circular_block_indices(10, 4, 3, np.random.default_rng(5))
    assert idx.shape == (3, 10)
    for row in idx:  # runs of consecutive bars (mod 10) starting every 4th position
        for start in (0, 4, 8):
            block = row[start : start + 4]
            assert all((b - block[0]) % 10 == k for k, b in enumerate(block))
    r = np.array([[0.1, -0.5, 0.2, 0.0]])
    total, sharpe, dd = path_statistics(r, bars_per_day=2)
    growth = np.cumprod(1 + r[0])  # 1.1, 0.55, 0.66, 0.66
    assert total[0] == pytest.approx((growth[-1] - 1) * 100)
    assert dd[0] == pytest.approx((0.55 / 1.1 - 1) * 100)
    days = np.array([0.55 / 1.0 - 1, 0.66 / 0.55 - 1])
    assert sharpe[0] == pytest.approx(days.mean() / days.std(ddof=1) * np.sqrt(365))


@pytest.mark.tc("TC-ASYNC-020")
def test_every_economic_figure_is_documented():
    text = DOCS.read_text()
    figures = [f for f in StrategyEconomics.model_fields if f != "name"]
    for name in [*figures, *ECONOMIC_DEFINITIONS, "BOTAI_DEPLOY_RULE"]:
        assert re.search(rf"`{name}`", text), f"{name} is not documented in {DOCS.name}"


@pytest.mark.tc("TC-ASYNC-057")
def test_the_deployed_model_is_a_comparator_and_an_equal_one_stays(planted: Scored):
    """Against a deployed model giving the same signals the candidate earns exactly as much:
    difference 0, not beaten, the deployed model stays, and the economic test decided."""
    incumbent = ("old-model-id", planted.p.copy())
    accuracy = score_holdout(planted.p, planted.holdout, planted.baselines, incumbent)
    ev = economic_held_out(
        planted.candles,
        planted.holdout,
        planted.p,
        planted.baselines["logistic_regression"],
        incumbent,
        EconomicsConfig(),
    )
    rows = {c.name: c for c in ev.comparisons}
    assert list(rows) == ["buy_and_hold", "logistic_regression", "deployed_model"]
    same = rows["deployed_model"]
    assert same.model_id == "old-model-id" and same.difference_pct == 0.0 and not same.beaten
    assert rows["buy_and_hold"].beaten and rows["logistic_regression"].beaten
    decision = apply_rule(accuracy, economic_test(ev), "economic")
    assert not decision.deployed and decision.outcome == "kept_deployed"
    assert decision.decided_by == "economic"
    assert decision.reason.startswith(
        "not deployed, stays a candidate (the deployed model stays): after fees"
    )
    assert "vs the deployed model old-model-id" in decision.reason
