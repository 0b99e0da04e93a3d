"""The one deploy rule: a slice of the newest bars held out before training, and the paired
comparison on it (used by ``ml.lifecycle`` for train-model and adaptive-retrain alike).

* :func:`hold_out` sets the newest bars aside BEFORE anything is fitted.
* :func:`candidate_windows` / :func:`incumbent_probabilities`: inputs and predictions of the
  held-out bars (causal features; each model with its own scaler and lookback).
* :func:`decide`: deploy only when the candidate beats EVERY comparator (the deployed model, the
  majority class, logistic regression) by more than the standard error of the paired
  per-sample difference (SE = std / sqrt(n)), and the deployed model also by
  ``min_improvement``; otherwise the reason names the slice (dates, n), both accuracies, the
  difference and its SE.
* :func:`economic_test` / :func:`apply_rule`: the economic test (the candidate's after-fee
  return beats every comparator's, buy-and-hold and logistic regression and the deployed
  model, by more than the SE of the paired bootstrap difference: ``ml.economics``) and the
  setting ``deploy_rule`` (accuracy, economic or both) that says which tests must pass; the
  decision names the test that decided.

Pure layer (no Prefect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.exceptions import InsufficientDataError
from core.schemas.economics import DeployRule, EconomicEvaluation, EconomicTest
from core.schemas.training import DeployDecision, HeldOutComparison
from ml.features import FeatureSpec, inference_windows, make_labels
from ml.metrics import correct, paired_difference
from ml.predictor import WARMUP_BARS

if TYPE_CHECKING:
    from ml.records import ModelRecord
    from ml.registry import ModelRegistry

#: Fewer held-out samples than this cannot support a decision.
MIN_HOLDOUT_SAMPLES = 30
#: Names of the comparators in decisions and results.
DEPLOYED = "deployed_model"
BASELINES = ("majority_class", "logistic_regression")


# ---------------------------------------------------------------- held-out slice
@dataclass
class Holdout:
    """The newest bars, set aside before training.

    Attributes:
        cut: position of the first held-out bar; training uses ``candles[:cut]`` only, so no
            training label (close[t + h] > close[t], t + h < cut) reaches into the slice.
        positions: held-out bar positions with a known outcome (the samples scored).
        y: their labels (1.0 up, 0.0 not up).
    """

    cut: int
    positions: np.ndarray
    y: np.ndarray
    start: datetime
    end: datetime

    @property
    def n(self) -> int:
        return len(self.positions)


def hold_out(
    candles: pd.DataFrame,
    fraction: float,
    horizon_bars: int,
    min_samples: int = MIN_HOLDOUT_SAMPLES,
) -> Holdout:
    """Set the newest ``fraction`` of ``candles`` aside.

    Raises:
        InsufficientDataError: fewer than ``min_samples`` held-out bars with a known outcome.
    """
    n = len(candles)
    cut = n - int(round(n * fraction))
    labels = make_labels(candles["close"].to_numpy(np.float64), horizon_bars)
    positions = np.arange(cut, n)
    positions = positions[np.isfinite(labels[positions])]
    if len(positions) < min_samples:
        raise InsufficientDataError(
            f"Insufficient data: holding out {fraction:g} of {n} candles leaves {len(positions)} "
            f"scorable bars, the deploy decision needs at least {min_samples}; load more days "
            "of data or raise holdout_split"
        )
    index = pd.DatetimeIndex(candles.index)
    return Holdout(
        cut=cut,
        positions=positions,
        y=labels[positions],
        start=index[positions[0]].to_pydatetime(),
        end=index[positions[-1]].to_pydatetime(),
    )


def _tail(candles: pd.DataFrame, holdout: Holdout, lookback: int) -> tuple[pd.DataFrame, int]:
    """The candles the held-out windows need (history for indicators) and their offset."""
    start = max(0, holdout.cut - lookback - WARMUP_BARS)
    return candles.iloc[start:], start


def candidate_windows(candles: pd.DataFrame, holdout: Holdout, spec: FeatureSpec) -> np.ndarray:
    """The candidate's input windows of every held-out bar (its scaler, causal features).

    Raises:
        InsufficientDataError: a held-out bar lacks a full feature window.
    """
    tail, offset = _tail(candles, holdout, spec.lookback)
    windows, ends = inference_windows(tail, spec)
    row = {int(e) + offset: i for i, e in enumerate(ends)}
    missing = [p for p in holdout.positions if int(p) not in row]
    if missing:
        raise InsufficientDataError(
            f"Insufficient data: {len(missing)} held-out bars lack a full feature window"
        )
    return windows[[row[int(p)] for p in holdout.positions]]


def incumbent_probabilities(
    registry: ModelRegistry, record: ModelRecord, candles: pd.DataFrame, holdout: Holdout
) -> np.ndarray:
    """P(up) of a registered model for every held-out bar (NaN where it has no window)."""
    loaded = registry.load(record)
    tail, offset = _tail(candles, holdout, loaded.spec.lookback)
    p = loaded.predict_up_probabilities(tail)
    return p[holdout.positions - offset]


# ---------------------------------------------------------------- the deploy rule
def _label(name: str, model_id: str | None) -> str:
    if name == DEPLOYED:
        return f"the deployed model {model_id}"
    return name.replace("_", " ")


def decide(
    holdout: Holdout,
    candidate_correct: np.ndarray,
    comparators: Sequence[tuple[str, str | None, np.ndarray]],
    *,
    min_improvement: float = 0.0,
) -> DeployDecision:
    """The one deploy rule: beat every comparator by more than the paired standard error.

    Args:
        candidate_correct: per-sample correctness (1/0) of the candidate on the slice.
        comparators: (name, model_id, per-sample correctness) of the deployed model (name
            :data:`DEPLOYED`, if any) and the baselines, on the same samples.
        min_improvement: the deployed model must also be beaten by at least this much.

    Returns:
        the decision; ``reason`` names the slice (dates, n) and, when not deployed, the
        comparator not beaten with both accuracies, the difference and its SE.
    """
    n = len(candidate_correct)
    acc = float(np.mean(candidate_correct))
    rows: list[HeldOutComparison] = []
    for name, model_id, other in comparators:
        diff, se = paired_difference(candidate_correct, other)
        needed = min_improvement if name == DEPLOYED else 0.0
        rows.append(
            HeldOutComparison(
                name=name,
                model_id=model_id,
                accuracy=round(float(np.mean(other)), 4),
                difference=round(diff, 4),
                standard_error=round(se, 4),
                beaten=bool(diff > se and diff > 0 and diff >= needed - 1e-12),
            )
        )
    span = f"{n:,} held-out bars {holdout.start:%Y-%m-%d %H:%M} .. {holdout.end:%Y-%m-%d %H:%M} UTC"
    has_deployed = any(r.name == DEPLOYED for r in rows)
    failed = [r for r in rows if not r.beaten]
    if not failed:
        beats = ", ".join(
            f"{_label(r.name, r.model_id)} ({r.accuracy:.3f}, +{r.difference:.3f} > SE "
            f"{r.standard_error:.3f})"
            for r in rows
        )
        reason = f"deployed: accuracy {acc:.3f} on {span} beats {beats}"
        outcome = "deployed"
    else:
        worst = failed[0]
        extra = (
            f" and the required improvement {min_improvement:g}"
            if worst.name == DEPLOYED and min_improvement > 0
            else ""
        )
        keeps = "the deployed model stays" if has_deployed else "no model deployed"
        reason = (
            f"not deployed, stays a candidate ({keeps}): accuracy {acc:.3f} vs "
            f"{_label(worst.name, worst.model_id)} {worst.accuracy:.3f} on {span}: difference "
            f"{worst.difference:+.3f}, standard error {worst.standard_error:.3f}; it must beat it "
            f"by more than the standard error{extra}"
        )
        others = [_label(r.name, r.model_id) for r in failed[1:]]
        if others:
            reason += f" (nor beats: {', '.join(others)})"
        outcome = "kept_deployed" if has_deployed else "candidate"
    return DeployDecision(
        deployed=not failed,
        outcome=outcome,
        reason=reason,
        holdout_start=holdout.start,
        holdout_end=holdout.end,
        holdout_samples=n,
        candidate_accuracy=round(acc, 4),
        comparisons=rows,
        min_improvement=min_improvement,
    )


def score_holdout(
    candidate_p: np.ndarray,
    holdout: Holdout,
    baseline_p: dict[str, np.ndarray],
    incumbent: tuple[str, np.ndarray] | None,
    *,
    min_improvement: float = 0.0,
) -> DeployDecision:
    """Score the candidate, the deployed model (model_id, P(up)) and the baselines on the
    held-out slice and apply :func:`decide`. Samples where the deployed model has no
    prediction are left out for every comparator (the comparison stays paired).

    Returns:
        the decision.
    """
    ok = np.isfinite(candidate_p)
    if incumbent is not None:
        ok &= np.isfinite(incumbent[1])
    if ok.sum() < MIN_HOLDOUT_SAMPLES:
        raise InsufficientDataError(
            f"Insufficient data: only {int(ok.sum())} held-out bars could be scored"
        )
    y = holdout.y[ok]
    comparators: list[tuple[str, str | None, np.ndarray]] = []
    if incumbent is not None:
        comparators.append((DEPLOYED, incumbent[0], correct(y, incumbent[1][ok])))
    comparators += [(name, None, correct(y, baseline_p[name][ok])) for name in BASELINES]
    scored = holdout
    if not ok.all():
        pos = holdout.positions[ok]
        scored = Holdout(holdout.cut, pos, y, holdout.start, holdout.end)
    return decide(scored, correct(y, candidate_p[ok]), comparators, min_improvement=min_improvement)


# ---------------------------------------------------------------- the economic test
def _return_label(name: str, model_id: str | None) -> str:
    return _label(DEPLOYED, model_id) if name == DEPLOYED else name.replace("_", " ")


def economic_test(evaluation: EconomicEvaluation) -> EconomicTest:
    """The candidate's after-fee return must beat every comparator's by more than the
    standard error of the paired (same bootstrap blocks) difference.

    Returns:
        the test, its reason naming the bars, the fee, both returns, the difference and its
        SE of the first comparator not beaten (or of every one, when all are).
    """
    model = evaluation.strategy("model").total_return_pct.value
    rows = evaluation.comparisons
    failed = [c for c in rows if not c.beaten]
    where = (
        f"after fees ({evaluation.fee_bps:g} bps per fill, slippage {evaluation.slippage_bps:g} "
        f"bps) on {evaluation.bars:,} held-out bars"
    )
    if not failed:
        beats = ", ".join(
            f"{_return_label(c.name, c.model_id)} {c.total_return_pct:+.1f}% "
            f"(+{c.difference_pct:.1f} > SE {c.standard_error:.1f})"
            for c in rows
        )
        return EconomicTest(
            passed=True, comparisons=rows, reason=f"{where} return {model:+.1f}% beats {beats}"
        )
    worst = failed[0]
    reason = (
        f"{where} return {model:+.1f}% vs {_return_label(worst.name, worst.model_id)} "
        f"{worst.total_return_pct:+.1f}%: difference {worst.difference_pct:+.1f} points, "
        f"standard error {worst.standard_error:.1f}; it must beat it by more than the "
        "standard error"
    )
    others = [_return_label(c.name, c.model_id) for c in failed[1:]]
    if others:
        reason += f" (nor beats: {', '.join(others)})"
    return EconomicTest(passed=False, comparisons=rows, reason=reason)


def apply_rule(
    accuracy: DeployDecision, economic: EconomicTest | None, rule: DeployRule
) -> DeployDecision:
    """Combine the accuracy decision (:func:`decide`) and the economic test under ``rule``.

    accuracy: only the accuracy test counts; economic: only the economic one; both: both
    must pass. ``decided_by`` names the failing test (both when both failed), or, when the
    model is deployed, the test(s) that deployed it. The reason starts with the deciding
    test's own reason and then states the other test's outcome.

    Returns:
        the decision (``accuracy`` updated).

    Raises:
        ValueError: ``rule`` needs the economic test and ``economic`` is None.
    """
    if economic is None and rule != "accuracy":
        raise ValueError(f"deploy rule {rule!r} needs the economic test")
    acc_ok = accuracy.deployed
    econ_ok = economic is not None and economic.passed
    if rule == "accuracy":
        deployed, decided = acc_ok, "accuracy"
    elif rule == "economic":
        deployed, decided = econ_ok, "economic"
    else:
        deployed = acc_ok and econ_ok
        decided = "both" if acc_ok == econ_ok else ("economic" if acc_ok else "accuracy")
    has_deployed = any(c.name == DEPLOYED for c in accuracy.comparisons)
    keeps = "the deployed model stays" if has_deployed else "no model deployed"
    required = "" if rule == "both" else " (not required)"
    acc_body = accuracy.reason.split(": ", 1)[1]  # without "deployed: " / "not deployed, ...: "
    acc_text = f"accuracy test {'passed' if acc_ok else 'failed'}{required}: {acc_body}"
    if decided == "economic":
        assert economic is not None
        head = "deployed" if deployed else f"not deployed, stays a candidate ({keeps})"
        reason = f"{head}: {economic.reason}; {acc_text}"
    else:
        reason = accuracy.reason
        if economic is not None:
            verdict = "passed" if econ_ok else "failed"
            reason += f"; economic test {verdict}{required}: {economic.reason}"
    outcome = "deployed" if deployed else ("kept_deployed" if has_deployed else "candidate")
    label = "both tests" if decided == "both" else f"the {decided} test"
    return accuracy.model_copy(
        update={
            "deployed": deployed,
            "outcome": outcome,
            "reason": f"{reason} [deploy rule {rule}: decided by {label}]",
            "rule": rule,
            "decided_by": decided,
            "accuracy_passed": acc_ok,
            "economic": economic,
        }
    )
