"""The one deploy rule (ml.deploy_rule, used by ml.lifecycle): scored on the newest bars, held out before training;
deploy only when the candidate beats the deployed model AND the naive baselines by more than
the standard error of the paired difference.

Fast: the competitors here are logistic regressions on the one feature that carries the
synthetic signal (return x volume of the last bar), so many seeds cost a second; the Keras
path through the same functions is covered by test_train_flow.py and the adaptive-retrain test.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from core.exceptions import InsufficientDataError
from ml.deploy_rule import DEPLOYED, candidate_windows, decide, hold_out, score_holdout
from ml.features import prepare_dataset
from ml.metrics import baseline_probabilities, correct, paired_difference
from tests.ml.helpers import make_gated_candles

LOOKBACK = 4


def _gate_feature(x: np.ndarray, names: list[str]) -> np.ndarray:
    """(return, return x volume) of each window's last bar: what the gated signal needs."""
    r = x[:, -1, names.index("ret_1")]
    v = x[:, -1, names.index("volume_ratio")]
    return np.column_stack([r, r * v])


def _setup(seed: int, gate: float = 0.7, n_bars: int = 1500):
    candles = make_gated_candles(n_bars, seed=seed, gate=gate)
    holdout = hold_out(candles, 0.25, 1)
    ds = prepare_dataset(candles.iloc[: holdout.cut], lookback=LOOKBACK, horizon_bars=1)
    return candles, holdout, ds, candidate_windows(candles, holdout, ds.spec)


def _fit(ds, rows: np.ndarray) -> LogisticRegression:
    names = ds.spec.feature_names
    return LogisticRegression().fit(_gate_feature(ds.x_train[rows], names), ds.y_train[rows])


def _p(model: LogisticRegression, ds, x: np.ndarray) -> np.ndarray:
    return model.predict_proba(_gate_feature(x, ds.spec.feature_names))[:, 1]


@pytest.mark.tc("TC-ASYNC-001", "TC-ASYNC-056")
def test_held_out_slice_is_newer_than_everything_training_and_epoch_selection_see():
    candles, holdout, ds, x = _setup(seed=1)
    assert holdout.cut == 1500 - 375 and holdout.n == 374  # the newest bar has no outcome yet
    assert ds.t_val[-1] < holdout.start and ds.t_train[-1] < holdout.start
    # the last training label compares closes before the cut; the slice's first after it
    assert ds.t_val[-1] + (ds.t_val[1] - ds.t_val[0]) <= candles.index[holdout.cut - 1]
    assert len(x) == holdout.n and x.shape[1:] == (LOOKBACK, ds.spec.n_features)
    with pytest.raises(InsufficientDataError, match="deploy decision needs at least 30"):
        hold_out(candles.iloc[:100], 0.2, 1)


@pytest.mark.tc("TC-ASYNC-057")
def test_paired_standard_error_and_the_reason_say_everything():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=float)
    b = np.array([1, 0, 0, 1, 1, 0, 1, 0], dtype=float)
    diff, se = paired_difference(a, b)
    d = a - b
    assert diff == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(8))
    candles, holdout, ds, x = _setup(seed=2)
    y = holdout.y
    same = correct(y, np.full(len(y), 0.9))
    decision = decide(holdout, same, [("majority_class", None, same)])
    assert not decision.deployed and decision.outcome == "candidate"
    r = decision.reason
    assert r.startswith("not deployed, stays a candidate (no model deployed)")
    assert f"{holdout.n:,} held-out bars {holdout.start:%Y-%m-%d %H:%M}" in r
    assert "difference +0.000, standard error 0.000" in r


@pytest.mark.tc("TC-ASYNC-057")
def test_a_same_regime_competitor_is_kept_about_as_often_as_chance_says():
    """Old and new are the same procedure fitted on different resamples of the same regime:
    neither is better, so the new one should replace the old only by chance: the rule needs a
    difference > 1 SE, which a zero-mean difference exceeds about 16 % of the time."""
    deploys, beat_old, beat_baselines = 0, 0, 0
    seeds = range(20)
    for seed in seeds:
        candles, holdout, ds, x = _setup(seed)
        rng = np.random.default_rng(seed)
        n = len(ds.y_train)
        old = _fit(ds, rng.choice(n, n))
        new = _fit(ds, rng.choice(n, n))
        decision = score_holdout(
            _p(new, ds, x),
            holdout,
            baseline_probabilities(ds.x_train, ds.y_train, x),
            ("old-model", _p(old, ds, x)),
        )
        rows = {c.name: c for c in decision.comparisons}
        deploys += decision.deployed
        beat_old += rows[DEPLOYED].beaten
        beat_baselines += rows["majority_class"].beaten and rows["logistic_regression"].beaten
        if not decision.deployed:
            assert decision.outcome == "kept_deployed"
            assert "the deployed model stays" in decision.reason
    print(
        f"same regime: deployed {deploys}/20, beat old {beat_old}/20, baselines {beat_baselines}/20"
    )
    assert beat_baselines >= 18  # both models carry the signal: the old model decides
    assert deploys <= 5  # chance: ~3 of 20 (P(z > 1) = 0.16)


@pytest.mark.tc("TC-ASYNC-056")
def test_a_clearly_better_new_model_is_deployed():
    """The old model learned the opposite regime (momentum on quiet bars): the new one beats
    it, and both baselines, by many standard errors."""
    candles, holdout, ds, x = _setup(seed=5)
    _, _, ds_old, _ = _setup(seed=6, gate=-0.7)
    old = _fit(ds_old, np.arange(len(ds_old.y_train)))
    new = _fit(ds, np.arange(len(ds.y_train)))
    decision = score_holdout(
        _p(new, ds, x),
        holdout,
        baseline_probabilities(ds.x_train, ds.y_train, x),
        ("old-model", _p(old, ds_old, x)),
    )
    assert decision.deployed and decision.outcome == "deployed"
    rows = {c.name: c for c in decision.comparisons}
    assert rows[DEPLOYED].model_id == "old-model"
    assert all(c.difference > 2 * c.standard_error for c in decision.comparisons)
    assert decision.reason.startswith(f"deployed: accuracy {decision.candidate_accuracy:.3f}")
    # the same model must also beat the old one by min_improvement, when one is asked for
    strict = score_holdout(
        _p(new, ds, x),
        holdout,
        baseline_probabilities(ds.x_train, ds.y_train, x),
        ("old-model", _p(old, ds_old, x)),
        min_improvement=0.9,
    )
    assert not strict.deployed and "required improvement 0.9" in strict.reason
