"""The life of one model, in one place: hold out, train, score, register, deploy only if better.

Pure layer (no Prefect). ``tasks.training.train_and_register`` wraps :func:`train_and_register`
with the run's progress, cancel watch and logger; ``train-model`` and ``adaptive-retrain`` (which
runs ``train-model`` as a subflow) both go through it, so there is ONE deploy rule (:mod:`ml.deploy_rule`).

1. :func:`ml.deploy_rule.hold_out` sets the newest ``holdout_split`` of the bars aside BEFORE anything is
   fitted: the scaler, the training, the validation split and the best-epoch selection see only
   the older bars.
2. :func:`ml.training.train` trains on the older bars (resuming from a checkpoint when asked,
   or automatically when this flow run is a re-run that left a checkpoint: :func:`resume_point`).
3. :func:`ml.deploy_rule.score_holdout`: the candidate, the model deployed now for the same type+symbol+timeframe
   (if any) and the two naive baselines (majority class and logistic regression, fitted on the
   training split) predict every held-out bar.
4. :func:`ml.deploy_rule.decide`: deploy only when the candidate beats EVERY comparator by more
   than the standard error of the paired difference (per-sample correctness differences,
   SE = std / sqrt(n)), and the deployed model also by ``min_improvement``; otherwise the model
   stays a candidate and the decision says why (slice dates, n, both accuracies, difference, SE).
5. The model is registered (candidate) and deployed when the rule says so; the ``training_jobs``
   record (:func:`open_job`, :func:`save_job`) follows every step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.exceptions import InvalidInputError
from core.schemas.training import (
    DeployDecision,
    TrainingResults,
    TrainModelParams,
    TrainModelResult,
)
from ml.deploy_rule import (
    Holdout,
    candidate_windows,
    hold_out,
    incumbent_probabilities,
    score_holdout,
)
from ml.features import FeatureSpec, prepare_dataset
from ml.metrics import baseline_probabilities

if TYPE_CHECKING:
    from integrations.store import Store
    from ml.registry import ModelRecord, ModelRegistry
    from ml.training import Checkpoint, CheckpointStore

log = logging.getLogger(__name__)

#: Per-epoch metrics reach ``training_jobs`` at most this often (and at the end).
JOB_WRITE_INTERVAL_S = 1.0


# ---------------------------------------------------------------- job records
def new_job(params: TrainModelParams, run_id: str) -> dict[str, Any]:
    """The ``training_jobs`` document of a run that starts now (attempt 1)."""
    now = datetime.now(UTC)
    return {
        "task_id": run_id,
        "training_key": params.training_key,
        "model_type": params.model_type,
        "symbol": params.symbol,
        "timeframe": params.timeframe,
        "parameters": params.model_dump(),
        "status": "running",
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        "attempts": 1,
        "resumed_from_epoch": None,
        "epochs": [],
        "progress_pct": 0.0,
        "device": None,
        "results": None,
        "model_id": None,
        "model_path": None,
        "deployment": None,
        "error": None,
    }


def open_job(store: Store, params: TrainModelParams, run_id: str, run_count: int = 1) -> dict:
    """The job record of this flow run: new, or the existing one reopened when the run runs
    again under the same id (a recovery re-run): attempts + 1, status running, error cleared.

    Returns:
        the document (already written).
    """
    existing = store.training_job_get(run_id)
    if existing is None:
        job = new_job(params, run_id)
        job["attempts"] = max(1, run_count)
    else:
        job = {**new_job(params, run_id), **existing}
        job.update(
            attempts=max(int(existing.get("attempts") or 1) + 1, run_count),
            status="running",
            error=None,
            finished_at=None,
        )
    save_job(store, job)
    return job


def save_job(store: Store, job: dict[str, Any], **changes: Any) -> None:
    """Apply ``changes`` to ``job`` and write the whole document (one per task id)."""
    job.update(changes, updated_at=datetime.now(UTC))
    store.training_job_save(job)


# ---------------------------------------------------------------- resume
def resume_point(
    checkpoints: CheckpointStore,
    params: TrainModelParams,
    run_id: str,
    run_count: int,
    logger: Any = log,
) -> tuple[Checkpoint | None, bool]:
    """Where training starts.

    A flow run that runs again under the same id (crash recovery: ``run_count > 1``, or a
    checkpoint of this run id exists) resumes from the newest checkpoint OF THIS RUN, whatever
    its stored ``resume`` says. Otherwise ``resume=true`` takes the newest checkpoint of the
    same type+symbol+timeframe.

    Returns:
        (checkpoint or None, True when it is this run's own checkpoint).
    """
    own = checkpoints.latest(run_id=run_id)
    if own is not None:
        logger.info(
            "run %s runs again (attempt %d): resuming from its checkpoint of epoch %d",
            run_id,
            run_count,
            own.epoch,
        )
        return own, True
    if run_count > 1:
        logger.warning(
            "run %s runs again (attempt %d) without a checkpoint: from scratch", run_id, run_count
        )
    if not params.resume:
        return None, False
    other = checkpoints.latest()
    if other is None:
        logger.warning(
            "resume=true but no checkpoint of %s exists: from scratch", params.training_key
        )
    return other, False


# ---------------------------------------------------------------- the whole lifecycle
@dataclass
class Hooks:
    """What the caller plugs in: progress (pct, stage), a per-batch interrupt check, a logger,
    and the fit boundary for fault injection in tests."""

    progress: Callable[[float, str], None] | None = None
    check_interrupt: Callable[[], None] | None = None
    logger: Any = log
    fit: Any = None
    extra_callbacks: Sequence[Any] = ()


def train_and_register(
    store: Store,
    params: TrainModelParams,
    candles: pd.DataFrame,
    run_id: str,
    job: dict[str, Any],
    *,
    registry: ModelRegistry,
    checkpoints: CheckpointStore,
    min_free_disk_gb: float,
    checkpoint_every_s: float | None = 60.0,
    run_count: int = 1,
    hooks: Hooks | None = None,
) -> TrainModelResult:
    """Hold out, train (or resume / warm-start), score, register, deploy only if better.

    Returns:
        the ``train-model`` result (``deployment`` holds the decision).

    Raises:
        TrainingError: diverged, out of memory at the minimum batch size, soft time limit,
            not enough disk (``ml.files.DiskFullError`` for a full disk).
        InsufficientDataError: too few samples for the split or the held-out slice.
        InvalidInputError: incremental mode without a deployed model.
    """
    from ml.training import TrainConfig, TrainingStopped, check_free_disk, detect_device, train

    hooks = hooks or Hooks()
    logger = hooks.logger
    progress = hooks.progress or (lambda pct, stage: None)
    check_free_disk(checkpoints.directory, min_free_disk_gb)
    device = detect_device()
    resume_from, own_checkpoint = resume_point(checkpoints, params, run_id, run_count, logger)
    spec: FeatureSpec | None = None
    initial_weights = None
    units = params.units
    if resume_from is not None:
        spec = FeatureSpec.from_dict(resume_from.meta["feature_spec"])
        units = int(resume_from.meta.get("config", {}).get("units", units))
    elif params.mode == "incremental":
        deployed = registry.deployed(params.symbol, params.timeframe, params.model_type)
        if deployed is None:
            raise InvalidInputError(
                f"mode=incremental needs a deployed {params.model_type} model for "
                f"{params.symbol} {params.timeframe}; train with mode=scratch first"
            )
        spec = FeatureSpec.from_dict(deployed.feature_spec)
        initial_weights = registry.load(deployed).model.get_weights()
        units = int(deployed.extra.get("units", units))
        logger.info(
            "incremental: warm start from model %s v%d", deployed.model_id, deployed.version
        )
    horizon = spec.horizon_bars if spec else params.horizon_bars
    holdout = hold_out(candles, params.holdout_split, horizon)
    dataset = prepare_dataset(
        candles.iloc[: holdout.cut],
        lookback=params.lookback,
        horizon_bars=params.horizon_bars,
        validation_split=params.validation_split,
        spec=spec,
    )
    if own_checkpoint and resume_from is not None:  # epochs after the checkpoint are redone
        job["epochs"] = [e for e in job.get("epochs", []) if e.get("epoch", 0) <= resume_from.epoch]
    save_job(
        store,
        job,
        device=device,
        train_samples=len(dataset.y_train),
        resumed_from_epoch=resume_from.epoch + 1 if resume_from is not None else None,
        holdout={"start": holdout.start, "end": holdout.end, "samples": holdout.n},
    )
    progress(10, "Loading data")
    last_write, last_pct = [0.0], [10.0]

    def on_epoch(epoch: int, epochs: int, record: dict[str, float]) -> None:
        pct = 10 + 80 * epoch / epochs
        job["epochs"].append(record)
        job["progress_pct"] = round(pct, 1)
        # whole-document writes (nx-27017): at most one a second; the final write has them all
        if time.monotonic() - last_write[0] >= JOB_WRITE_INTERVAL_S or epoch == epochs:
            save_job(store, job)
            last_write[0] = time.monotonic()
        if pct - last_pct[0] >= 5 or epoch == epochs:
            progress(pct, f"Training epoch {epoch}/{epochs}")
            last_pct[0] = pct

    config = TrainConfig(
        model_type=params.model_type,
        epochs=params.epochs,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        checkpoint_interval=params.checkpoint_interval,
        checkpoint_every_s=checkpoint_every_s,
        early_stopping_patience=params.early_stopping_patience,
        soft_time_limit_s=params.soft_time_limit_s,
        units=units,
    )
    try:
        outcome = train(
            dataset,
            config,
            checkpoints=checkpoints,
            run_id=run_id,
            resume=resume_from,
            initial_weights=initial_weights,
            on_epoch=on_epoch,
            fit=hooks.fit,
            extra_callbacks=hooks.extra_callbacks,
            check_interrupt=hooks.check_interrupt,
            finish_if_complete=own_checkpoint,
        )
    except TrainingStopped as e:
        save_job(
            store,
            job,
            status="failed",
            error=str(e),
            finished_at=datetime.now(UTC),
            epochs_completed=e.epochs_completed,
            checkpoint_path=str(e.checkpoint_path) if e.checkpoint_path else None,
        )
        raise
    progress(92, "Scoring on held-out bars")
    decision = evaluate_candidate(registry, params, candles, holdout, outcome, dataset)
    logger.info("%s: %s", params.training_key, decision.reason)
    progress(95, "Saving")
    record = register(registry, params, run_id, outcome, dataset, decision, units, device)
    if decision.deployed:
        record = registry.deploy(record.model_id, by=f"deploy rule (train-model {run_id})")
    results = TrainingResults(
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
    save_job(
        store,
        job,
        status="completed",
        finished_at=datetime.now(UTC),
        results=results.model_dump(),
        model_id=record.model_id,
        model_path=record.file_path,
        val_accuracy=results.val_accuracy,
        deployment=decision.model_dump(),
    )
    return TrainModelResult(
        status="success",
        model_type=params.model_type,
        symbol=params.symbol,
        timeframe=params.timeframe,
        training_results=results,
        model_id=record.model_id,
        model_path=record.file_path,
        model_status=record.status,
        task_id=run_id,
        deployment=decision,
    )


def evaluate_candidate(
    registry: ModelRegistry,
    params: TrainModelParams,
    candles: pd.DataFrame,
    holdout: Holdout,
    outcome: Any,
    dataset: Any,
) -> DeployDecision:
    """Score the trained model, the deployed one (if any) and the baselines on the slice.

    Returns:
        the deploy decision (:func:`decide`).
    """
    x_eval = candidate_windows(candles, holdout, outcome.spec)
    candidate_p = outcome.model.predict(x_eval, batch_size=512, verbose=0).reshape(-1)
    baseline_p = baseline_probabilities(dataset.x_train, dataset.y_train, x_eval)
    current = registry.deployed(params.symbol, params.timeframe, params.model_type)
    incumbent = None
    if current is not None:
        incumbent = (current.model_id, incumbent_probabilities(registry, current, candles, holdout))
    return score_holdout(
        candidate_p, holdout, baseline_p, incumbent, min_improvement=params.min_improvement
    )


def register(
    registry: ModelRegistry,
    params: TrainModelParams,
    run_id: str,
    outcome: Any,
    dataset: Any,
    decision: DeployDecision,
    units: int,
    device: str,
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
        "train_end": dataset.t_val[-1].isoformat(),
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
