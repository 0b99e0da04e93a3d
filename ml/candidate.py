"""What a trained candidate becomes: its score on the held-out bars against the deployed
model and the baselines (the deploy decision), its registry record and the metrics of the
``train-model`` result. Steps 3 to 5 of :mod:`ml.lifecycle`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.market import bars_per_day
from core.schemas.economics import DeployRule, EconomicEvaluation
from core.schemas.training import DeployDecision, TrainingResults, TrainModelParams
from ml.deploy_rule import (
    DEPLOYED,
    Holdout,
    apply_rule,
    candidate_windows,
    economic_test,
    incumbent_probabilities,
    score_holdout,
)
from ml.economics import MODEL, EconomicsConfig, evaluate_economics
from ml.metrics import baseline_probabilities

if TYPE_CHECKING:
    from ml.records import ModelRecord
    from ml.registry import ModelRegistry


def evaluate_candidate(
    registry: ModelRegistry,
    params: TrainModelParams,
    candles: pd.DataFrame,
    holdout: Holdout,
    outcome: Any,
    dataset: Any,
    *,
    deploy_rule: DeployRule = "both",
    economics: EconomicsConfig | None = None,
) -> tuple[DeployDecision, EconomicEvaluation]:
    """Score the trained model, the deployed one (if any) and the baselines on the slice:
    direction accuracy (:func:`ml.deploy_rule.score_holdout`) and what their signals earn
    after fees (:func:`economic_held_out`), combined under ``deploy_rule``.

    Returns:
        (the deploy decision, the economic evaluation).
    """
    x_eval = candidate_windows(candles, holdout, outcome.spec)
    candidate_p = outcome.model.predict(x_eval, batch_size=512, verbose=0).reshape(-1)
    baseline_p = baseline_probabilities(dataset.x_train, dataset.y_train, x_eval)
    current = registry.deployed(params.symbol, params.timeframe, params.model_type)
    incumbent = None
    if current is not None:
        incumbent = (current.model_id, incumbent_probabilities(registry, current, candles, holdout))
    accuracy = score_holdout(
        candidate_p, holdout, baseline_p, incumbent, min_improvement=params.min_improvement
    )
    config = replace(economics or EconomicsConfig(), bars_per_day=bars_per_day(params.timeframe))
    evaluation = economic_held_out(
        candles, holdout, candidate_p, baseline_p["logistic_regression"], incumbent, config
    )
    return apply_rule(accuracy, economic_test(evaluation), deploy_rule), evaluation


def economic_held_out(
    candles: pd.DataFrame,
    holdout: Holdout,
    candidate_p: np.ndarray,
    logistic_p: np.ndarray,
    incumbent: tuple[str, np.ndarray] | None,
    config: EconomicsConfig,
) -> EconomicEvaluation:
    """Trade the candidate's, logistic regression's and the deployed model's (if any)
    held-out P(up) through the engine on the held-out bars, beside buy-and-hold.

    The probabilities (one per scored held-out bar) are placed on the bars from the first
    held-out bar to the last; a bar without one (the newest, whose outcome is unknown) is flat.

    Returns:
        the :class:`EconomicEvaluation` (``ml.economics.evaluate_economics``).
    """
    frame = candles.iloc[holdout.cut :]
    rows = holdout.positions - holdout.cut

    def on_bars(p: np.ndarray) -> np.ndarray:
        out = np.full(len(frame), np.nan)
        out[rows] = p
        return out

    p_up = {MODEL: on_bars(candidate_p), "logistic_regression": on_bars(logistic_p)}
    ids: dict[str, str] = {}
    if incumbent is not None:
        p_up[DEPLOYED] = on_bars(incumbent[1])
        ids[DEPLOYED] = incumbent[0]
    return evaluate_economics(frame, p_up, config, model_ids=ids)


def register(
    registry: ModelRegistry,
    params: TrainModelParams,
    run_id: str,
    outcome: Any,
    dataset: Any,
    decision: DeployDecision,
    units: int,
    device: str,
    economics: EconomicEvaluation | None = None,
) -> ModelRecord:
    """Register the trained model as a candidate with its validation and held-out metrics.

    Returns:
        the new record.
    """
    metrics = {
        "val_accuracy": outcome.val_metrics["accuracy"],
        "precision": outcome.val_metrics["precision"],
        "recall": outcome.val_metrics["recall"],
        "f1": outcome.val_metrics["f1"],
        "validation_loss": outcome.validation_loss,
        "final_loss": outcome.final_loss,
        "baselines": outcome.baselines,
        "validation_samples": len(dataset.y_val),
        "validation_start": dataset.t_val[0].isoformat(),
        "validation_end": dataset.t_val[-1].isoformat(),
        "holdout_accuracy": decision.candidate_accuracy,
        "holdout": decision.model_dump(mode="json"),
        "train_start": dataset.t_train[0].isoformat(),
        "train_end": dataset.t_val[-1].isoformat(),
        "holdout_end": decision.holdout_end.isoformat(),
        "economics": (
            economics.model_dump(mode="json", exclude={"equity_curves", "definitions"})
            if economics is not None
            else None
        ),
        "epochs_completed": outcome.epochs_completed,
        "best_epoch": outcome.best_epoch,
        "device": device,
    }
    return registry.register(
        outcome.model,
        model_type=params.model_type,
        symbol=params.symbol,
        timeframe=params.timeframe,
        metrics=metrics,
        feature_spec=outcome.spec.to_dict(),
        horizon_bars=outcome.spec.horizon_bars,
        created_by=params.requested_by,
        training_task_id=run_id,
        extra={"units": units, "mode": params.mode, "days_of_data": params.days_of_data},
    )


def training_results(
    outcome: Any, dataset: Any, decision: DeployDecision, device: str
) -> TrainingResults:
    """The result's ``training_results``: validation and held-out metrics of the candidate."""
    return TrainingResults(
        final_loss=outcome.final_loss,
        validation_loss=outcome.validation_loss,
        val_accuracy=outcome.val_metrics["accuracy"],
        precision=outcome.val_metrics["precision"],
        recall=outcome.val_metrics["recall"],
        f1=outcome.val_metrics["f1"],
        baselines={k: v["accuracy"] for k, v in outcome.baselines.items()},
        training_time_seconds=outcome.training_time_seconds,
        epochs_completed=outcome.epochs_completed,
        best_epoch=outcome.best_epoch,
        device=device,
        resumed_from_epoch=outcome.resumed_from_epoch,
        batch_size=outcome.batch_size,
        train_samples=len(dataset.y_train),
        validation_samples=len(dataset.y_val),
        holdout_accuracy=decision.candidate_accuracy,
        holdout_samples=decision.holdout_samples,
    )
