"""The numbers the deploy rule decides on, checked exactly (ml/metrics.py, ml/deploy_rule.py).

Small hand-written predictions whose metrics, paired differences and standard errors are plain
arithmetic, and the whole reason text of each kind of decision. The mutation bench
(bench/bench_mutation.py) runs these against every small change of the two modules.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from core.exceptions import InsufficientDataError
from ml.deploy_rule import (
    BASELINES,
    DEPLOYED,
    MIN_HOLDOUT_SAMPLES,
    Holdout,
    candidate_windows,
    decide,
    hold_out,
    score_holdout,
)
from ml.features import inference_windows, prepare_dataset
from ml.metrics import (
    baseline_probabilities,
    baselines,
    classification_metrics,
    correct,
    paired_difference,
    selection_accuracy,
)
from tests.ml.helpers import make_candles

START = datetime(2026, 10, 1, 0, 0, tzinfo=UTC)
END = datetime(2026, 10, 20, 13, 0, tzinfo=UTC)


def _holdout(n: int) -> Holdout:
    return Holdout(
        cut=1000, positions=np.arange(1000, 1000 + n), y=np.ones(n), start=START, end=END
    )


@pytest.mark.tc("TC-ASYNC-001")
def test_classification_metrics_of_hard_labels() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    p = np.array([0.9, 0.5, 0.2, 0.7, 0.1, 0.49, 0.6, 0.3])  # 0.5 counts as up
    m = classification_metrics(y, p)
    # predicted up: 0, 1, 3, 6 -> TP 3 (0, 1, 6), FP 1 (3), FN 1 (2), TN 3
    assert m == {
        "accuracy": 6 / 8,
        "precision": 3 / 4,
        "recall": 3 / 4,
        "f1": 3 / 4,
        "n_samples": 8,
        "predicted_up_rate": 4 / 8,
        "actual_up_rate": 4 / 8,
    }
    # nothing up, actually or predicted: every "up" ratio is undefined and reported as 0
    none_up = classification_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))
    assert (none_up["precision"], none_up["recall"], none_up["f1"]) == (0.0, 0.0, 0.0)
    assert none_up["accuracy"] == 1.0
    false_alarm = classification_metrics(np.array([0, 0]), np.array([0.9, 0.1]))
    assert (false_alarm["precision"], false_alarm["recall"]) == (0.0, 0.0)
    never_up = classification_metrics(np.array([1, 0, 1]), np.array([0.1, 0.2, 0.3]))
    assert (never_up["precision"], never_up["recall"], never_up["f1"]) == (0.0, 0.0, 0.0)
    assert never_up["accuracy"] == pytest.approx(1 / 3)
    assert never_up["predicted_up_rate"] == 0.0


@pytest.mark.tc("TC-ASYNC-001")
def test_baselines_predict_the_majority_and_fit_plain_logistic_regression() -> None:
    rng = np.random.default_rng(3)
    x_train, x_val = rng.normal(size=(120, 4, 2)), rng.normal(size=(40, 4, 2))
    y_train = (x_train[:, -1, 0] + 0.3 * rng.normal(size=120) > 0.4).astype(float)  # mostly 0
    y_val = (x_val[:, -1, 0] > 0.4).astype(float)
    probs = baseline_probabilities(x_train, y_train, x_val)
    assert probs["majority_class"].tolist() == [0.0] * 40
    reference = LogisticRegression(max_iter=2000, C=1.0).fit(x_train.reshape(120, -1), y_train)
    expected = reference.predict_proba(x_val.reshape(40, -1))[:, 1]
    np.testing.assert_allclose(probs["logistic_regression"], expected, rtol=1e-9)
    report = baselines(x_train, y_train, x_val, y_val)
    assert report["majority_class"]["predicts"] == "down"
    assert report["majority_class"]["accuracy"] == pytest.approx(1 - y_val.mean())
    assert report["logistic_regression"] == classification_metrics(y_val, expected)
    assert baselines(x_train, 1 - y_train, x_val, y_val)["majority_class"]["predicts"] == "up"
    # a tie goes to "up"
    tie = baseline_probabilities(x_train[:4], np.array([1.0, 0.0, 1.0, 0.0]), x_val[:3])
    assert tie["majority_class"].tolist() == [1.0, 1.0, 1.0]
    y_tie = np.array([1.0, 0.0, 1.0, 0.0])
    assert baselines(x_train[:4], y_tie, x_val[:3], y_val[:3])["majority_class"]["predicts"] == "up"


@pytest.mark.tc("TC-ASYNC-001")
def test_baselines_without_two_classes_or_without_samples() -> None:
    x = np.zeros((5, 3, 2))
    one_class = baseline_probabilities(x, np.zeros(5), x[:2])
    assert one_class["majority_class"].tolist() == [0.0, 0.0]
    assert one_class["logistic_regression"].tolist() == [0.0, 0.0]
    assert one_class["logistic_regression"] is not one_class["majority_class"]
    no_train = baseline_probabilities(x[:0], np.zeros(0), x[:2])
    assert no_train["majority_class"].tolist() == [1.0, 1.0]
    nothing_to_score = baseline_probabilities(x, np.array([0, 1, 0, 1, 1.0]), x[:0])
    assert nothing_to_score["logistic_regression"].shape == (0,)


@pytest.mark.tc("TC-ASYNC-057")
def test_correctness_and_the_paired_difference() -> None:
    assert correct(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.5, 0.5, 0.49, 0.2])).tolist() == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    a = np.array([1, 1, 1, 0, 1], dtype=float)
    b = np.array([1, 0, 0, 0, 1], dtype=float)
    diff, se = paired_difference(a, b)  # d = 0 1 1 0 0: mean 0.4, sd sqrt(0.3)
    assert diff == pytest.approx(0.4)
    assert se == pytest.approx(math.sqrt(0.3) / math.sqrt(5))
    assert paired_difference(np.array([1.0]), np.array([0.0])) == (1.0, 0.0)
    nan_diff, nan_se = paired_difference(np.array([]), np.array([]))
    assert math.isnan(nan_diff) and math.isnan(nan_se)


@pytest.mark.tc("TC-ASYNC-056")
def test_models_are_ranked_by_holdout_accuracy_when_they_have_one() -> None:
    assert selection_accuracy({"holdout_accuracy": 0.61, "val_accuracy": 0.7}) == 0.61
    assert selection_accuracy({"holdout_accuracy": 0.0, "val_accuracy": 0.7}) == 0.0
    assert selection_accuracy({"holdout_accuracy": None, "val_accuracy": 0.7}) == 0.7
    assert selection_accuracy({"val_accuracy": 0.55}) == 0.55
    assert selection_accuracy({}) == 0.0
    assert selection_accuracy(None) == 0.0


@pytest.mark.tc("TC-ASYNC-056")
def test_hold_out_sets_the_newest_bars_aside() -> None:
    candles = make_candles(200)
    h = hold_out(candles, 0.25, 2)
    assert h.cut == 150
    assert h.positions.tolist() == list(range(150, 198))  # the last 2 bars have no outcome
    assert h.n == 48
    close = candles["close"].to_numpy()
    assert h.y.tolist() == [float(close[t + 2] > close[t]) for t in range(150, 198)]
    assert (h.start, h.end) == (candles.index[150].to_pydatetime(), candles.index[197])
    exactly = hold_out(candles, 0.16, 1)  # 32 held out, 31 scorable
    assert exactly.n == 31 and exactly.cut == 168
    assert hold_out(candles, 0.16, 1, min_samples=31).n == 31
    thirty = hold_out(make_candles(100), 0.31, 1)  # the default minimum, exactly
    assert thirty.n == MIN_HOLDOUT_SAMPLES == 30
    with pytest.raises(InsufficientDataError) as info:
        hold_out(candles, 0.16, 1, min_samples=32)
    assert str(info.value) == (
        "Insufficient data: holding out 0.16 of 200 candles leaves 31 scorable bars, the deploy "
        "decision needs at least 32; load more days of data or raise holdout_split"
    )
    with pytest.raises(InsufficientDataError, match="leaves 29 scorable bars"):
        hold_out(make_candles(100), 0.3, 1)


@pytest.mark.tc("TC-ASYNC-056")
def test_candidate_windows_are_the_windows_of_the_whole_history() -> None:
    candles = make_candles(900)
    h = hold_out(candles, 0.1, 1)
    spec = prepare_dataset(candles.iloc[: h.cut], lookback=6, horizon_bars=1).spec
    windows = candidate_windows(candles, h, spec)
    full, ends = inference_windows(candles, spec)
    row = {int(e): i for i, e in enumerate(ends)}
    np.testing.assert_allclose(windows, full[[row[int(p)] for p in h.positions]], atol=1e-9)
    early = Holdout(cut=2, positions=np.arange(2, 40), y=np.ones(38), start=START, end=END)
    with pytest.raises(InsufficientDataError) as info:
        candidate_windows(candles, early, spec)
    first_full = min(row)
    assert str(info.value) == (
        f"Insufficient data: {first_full - 2} held-out bars lack a full feature window"
    )


def _rows(decision) -> dict:
    return {c.name: c for c in decision.comparisons}


@pytest.mark.tc("TC-ASYNC-056", "TC-ASYNC-057")
def test_a_decision_to_deploy_names_every_comparator_beaten() -> None:
    n = 40
    cand = np.array([1.0] * 30 + [0.0] * 10)  # 0.75
    deployed = np.array([1.0] * 10 + [0.0] * 30)  # 0.25: d = 1 x20, 0 x20
    majority = np.array([1.0] * 20 + [0.0] * 20)  # 0.5: d = 0 x20, 1 x10, 0 x10
    logistic = np.array([0.0] * 30 + [1.0] * 10)  # 0.25: d = 1 x30, -1 x10
    comparators = [(DEPLOYED, "m-1", deployed), (BASELINES[0], None, majority)]
    comparators.append((BASELINES[1], None, logistic))
    d = decide(_holdout(n), cand, comparators, min_improvement=0.5)
    assert d.deployed and d.outcome == "deployed"
    assert (d.holdout_start, d.holdout_end, d.holdout_samples) == (START, END, 40)
    assert (d.candidate_accuracy, d.min_improvement) == (0.75, 0.5)
    rows = _rows(d)
    assert [c.name for c in d.comparisons] == [DEPLOYED, "majority_class", "logistic_regression"]
    se_dep = round(np.std([1.0] * 20 + [0.0] * 20, ddof=1) / math.sqrt(40), 4)
    se_maj = round(np.std([0.0] * 20 + [1.0] * 10 + [0.0] * 10, ddof=1) / math.sqrt(40), 4)
    se_log = round(np.std([1.0] * 30 + [-1.0] * 10, ddof=1) / math.sqrt(40), 4)
    assert (rows[DEPLOYED].model_id, rows[DEPLOYED].accuracy) == ("m-1", 0.25)
    assert (rows[DEPLOYED].difference, rows[DEPLOYED].standard_error) == (0.5, se_dep)
    assert (rows["majority_class"].difference, rows["majority_class"].standard_error) == (
        0.25,
        se_maj,
    )
    assert rows["logistic_regression"].standard_error == se_log
    assert all(c.beaten for c in d.comparisons)  # the deployed model by exactly 0.5: enough
    assert d.reason == (
        "deployed: accuracy 0.750 on 40 held-out bars 2026-10-01 00:00 .. 2026-10-20 13:00 UTC "
        f"beats the deployed model m-1 (0.250, +0.500 > SE {se_dep:.3f}), majority class "
        f"(0.500, +0.250 > SE {se_maj:.3f}), logistic regression (0.250, +0.500 > SE "
        f"{se_log:.3f})"
    )


@pytest.mark.tc("TC-ASYNC-057")
def test_a_refusal_names_the_first_comparator_not_beaten_and_the_others() -> None:
    cand = np.array([1.0, 1.0, 1.0, 0.0] * 300)  # 0.75 on 1,200 bars
    deployed = np.array([1.0, 1.0, 0.0, 1.0] * 300)  # 0.75: not beaten
    majority = np.array([1.0, 1.0, 1.0, 1.0] * 300)  # 1.0: not beaten
    logistic = np.array([0.0, 1.0, 1.0, 0.0] * 300)  # 0.5: beaten
    comps = [(DEPLOYED, "m-7", deployed), ("majority_class", None, majority)]
    comps.append(("logistic_regression", None, logistic))
    d = decide(_holdout(1200), cand, comps, min_improvement=0.02)
    assert not d.deployed and d.outcome == "kept_deployed"
    assert [c.beaten for c in d.comparisons] == [False, False, True]
    se = round(math.sqrt(600 / 1199) / math.sqrt(1200), 4)  # d = 0, 0, 1, -1
    assert d.reason == (
        "not deployed, stays a candidate (the deployed model stays): accuracy 0.750 vs the "
        "deployed model m-7 0.750 on 1,200 held-out bars 2026-10-01 00:00 .. 2026-10-20 13:00 UTC:"
        f" difference +0.000, standard error {se:.3f}; it must beat it by more than the "
        "standard error and the required improvement 0.02 (nor beats: majority class)"
    )
    # without a required improvement the text does not mention one
    plain = decide(_holdout(1200), cand, comps)
    assert plain.reason.endswith("by more than the standard error (nor beats: majority class)")
    # no deployed model: the candidate stays a candidate; a baseline is named first
    alone = decide(_holdout(1200), cand, comps[1:], min_improvement=0.02)
    assert alone.outcome == "candidate" and not alone.deployed
    assert alone.reason.startswith(
        "not deployed, stays a candidate (no model deployed): accuracy 0.750 vs majority class "
        "1.000 on 1,200 held-out bars"
    )
    assert alone.reason.endswith("by more than the standard error")


@pytest.mark.tc("TC-ASYNC-057")
def test_beating_needs_more_than_one_standard_error_and_the_improvement() -> None:
    # d = 1, 0: difference 0.5 equals its SE 0.5: not beaten
    d = decide(_holdout(2), np.array([1.0, 1.0]), [("majority_class", None, np.array([0.0, 1.0]))])
    row = d.comparisons[0]
    assert (row.difference, row.standard_error, row.beaten) == (0.5, 0.5, False)
    # an improvement just short of the one required is not enough
    cand, old = np.array([1.0] * 30 + [0.0] * 10), np.array([1.0] * 10 + [0.0] * 30)
    short = decide(_holdout(40), cand, [(DEPLOYED, "m", old)], min_improvement=0.5001)
    assert not short.deployed
    # the improvement asked of the deployed model is not asked of a baseline
    base = decide(_holdout(40), cand, [("majority_class", None, old)], min_improvement=0.9)
    assert base.deployed


@pytest.mark.tc("TC-ASYNC-056", "TC-ASYNC-057")
def test_score_holdout_keeps_the_comparison_paired() -> None:
    n = 40
    y = np.array([1.0, 0.0] * 20)
    h = Holdout(cut=500, positions=np.arange(500, 540), y=y, start=START, end=END)
    cand = np.where(y == 1.0, 0.8, 0.3)  # always right
    cand[0] = np.nan  # the candidate has no prediction for the first bar
    old = np.where(y == 1.0, 0.2, 0.7)  # always wrong
    old[1:4] = np.nan  # nor the deployed model for the next three
    base = {"majority_class": np.full(n, 1.0), "logistic_regression": np.full(n, 0.0)}
    d = score_holdout(cand, h, base, ("m-2", old))
    assert d.holdout_samples == 36 and d.candidate_accuracy == 1.0
    assert [c.name for c in d.comparisons] == [DEPLOYED, "majority_class", "logistic_regression"]
    assert [c.accuracy for c in d.comparisons] == [0.0, 0.5, 0.5]
    assert d.comparisons[0].model_id == "m-2"
    assert d.deployed
    # without a deployed model only the candidate's gaps are left out
    alone = score_holdout(cand, h, base, None)
    assert alone.holdout_samples == 39 and [c.name for c in alone.comparisons] == list(BASELINES)
    assert alone.reason.startswith("deployed: accuracy 1.000 on 39 held-out bars")
    # exactly the minimum of scorable bars is enough, one fewer is not
    few = cand.copy()
    few[31:] = np.nan  # bars 1..30 scorable: 30
    assert score_holdout(few, h, base, None).holdout_samples == 30
    few[30] = np.nan
    with pytest.raises(InsufficientDataError) as info:
        score_holdout(few, h, base, None)
    assert str(info.value) == "Insufficient data: only 29 held-out bars could be scored"


@pytest.mark.tc("TC-ASYNC-057")
def test_figures_are_rounded_to_four_places_and_every_comparator_not_beaten_is_named() -> None:
    cand = np.array([1.0, 1.0, 1.0] * 10)
    third = np.array([1.0, 0.0, 0.0] * 10)  # 1/3 right
    d = decide(_holdout(30), cand, [(DEPLOYED, "m-3", third)])
    assert (d.comparisons[0].accuracy, d.comparisons[0].difference) == (0.3333, 0.6667)
    worse = np.ones(30)
    comps = [(DEPLOYED, "m-4", worse), ("majority_class", None, worse)]
    comps.append(("logistic_regression", None, worse))
    refused = decide(_holdout(30), third, comps)
    assert refused.candidate_accuracy == 0.3333
    assert refused.reason.endswith("(nor beats: majority class, logistic regression)")


@pytest.mark.tc("TC-ASYNC-056")
def test_score_holdout_scores_each_baseline_on_its_own_predictions() -> None:
    y = np.array([1.0, 0.0] * 20)
    h = Holdout(cut=500, positions=np.arange(500, 540), y=y, start=START, end=END)
    cand = np.where(y == 1.0, 0.8, 0.3)
    right_on_3_of_4 = np.where(np.arange(40) % 4 == 0, 1.0 - y, y)
    base = {"majority_class": np.full(40, 0.0), "logistic_regression": right_on_3_of_4}
    d = score_holdout(cand, h, base, None)
    assert [c.accuracy for c in d.comparisons] == [0.5, 0.75]
