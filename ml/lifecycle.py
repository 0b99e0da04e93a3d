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
   The same held-out signals are traded after fees (:mod:`ml.economics`) beside buy-and-hold
   and logistic regression; the setting ``deploy_rule`` (``BOTAI_DEPLOY_RULE``: accuracy,
   economic or both, default both) says which tests must pass
   (:func:`ml.deploy_rule.apply_rule`), and the decision names the test that decided.
5. The model is registered (candidate) and deployed when the rule says so; the ``training_jobs``
   record (:mod:`ml.training_jobs`) follows every step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.exceptions import InvalidInputError
from core.schemas.economics import DeployRule
from core.schemas.training import TrainModelParams, TrainModelResult
from ml.candidate import evaluate_candidate, register, training_results
from ml.deploy_rule import Holdout, hold_out
from ml.economics import EconomicsConfig
from ml.features import FeatureSpec, prepare_dataset
from ml.training_jobs import EpochRecorder, save_job

if TYPE_CHECKING:
    from integrations.store import Store
    from ml.checkpoints import Checkpoint, CheckpointStore
    from ml.registry import ModelRegistry

log = logging.getLogger(__name__)


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
    deploy_rule: DeployRule = "both",
    economics: EconomicsConfig | None = None,
) -> TrainModelResult:
    """Hold out, train (or resume / warm-start), score, register, deploy only if better.

    ``deploy_rule`` (setting ``BOTAI_DEPLOY_RULE``) says which held-out tests must pass
    (accuracy, economic or both); ``economics`` holds the costs and bootstrap of the economic
    evaluation (``ml.economics``).

    Returns:
        the ``train-model`` result (``deployment`` holds the decision).

    Raises:
        TrainingError: diverged, out of memory at the minimum batch size, soft time limit,
            not enough disk (``ml.files.DiskFullError`` for a full disk).
        InsufficientDataError: too few samples for the split or the held-out slice.
        InvalidInputError: incremental mode without a deployed model.
    """
    from ml.training import check_free_disk, detect_device

    hooks = hooks or Hooks()
    progress = hooks.progress or (lambda pct, stage: None)
    check_free_disk(checkpoints.directory, min_free_disk_gb)
    device = detect_device()
    start = starting_point(registry, checkpoints, params, run_id, run_count, hooks.logger)
    holdout, dataset = split_data(candles, params, start)
    if start.own_checkpoint and start.checkpoint is not None:  # later epochs are redone
        job["epochs"] = [
            e for e in job.get("epochs", []) if e.get("epoch", 0) <= start.checkpoint.epoch
        ]
    save_job(
        store,
        job,
        device=device,
        train_samples=len(dataset.y_train),
        resumed_from_epoch=start.checkpoint.epoch + 1 if start.checkpoint is not None else None,
        holdout={"start": holdout.start, "end": holdout.end, "samples": holdout.n},
    )
    progress(10, "Loading data")
    outcome = run_training(
        store, job, params, dataset, start, run_id, checkpoints, checkpoint_every_s, hooks
    )
    progress(92, "Scoring on held-out bars")
    decision, evaluation = evaluate_candidate(
        registry,
        params,
        candles,
        holdout,
        outcome,
        dataset,
        deploy_rule=deploy_rule,
        economics=economics,
    )
    hooks.logger.info("%s: %s", params.training_key, decision.reason)
    progress(95, "Saving")
    record = register(
        registry, params, run_id, outcome, dataset, decision, start.units, device, evaluation
    )
    if decision.deployed:
        record = registry.deploy(record.model_id, by=f"deploy rule (train-model {run_id})")
    results = training_results(outcome, dataset, decision, device)
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
        economics=evaluation,
    )


@dataclass
class Start:
    """Where a training starts: a checkpoint to resume, or warm-start weights, or scratch.

    Attributes:
        checkpoint: the checkpoint resumed (None: a new training).
        own_checkpoint: ``checkpoint`` was written by this very flow run (a re-run).
        spec: the feature spec (scaler) to keep: the checkpoint's or the warm-start model's;
            None fits a new one.
        initial_weights: warm-start weights (incremental mode), or None.
        units: the network's width (the checkpoint's or deployed model's when resuming).
    """

    checkpoint: Checkpoint | None
    own_checkpoint: bool
    spec: FeatureSpec | None
    initial_weights: list[Any] | None
    units: int


def starting_point(
    registry: ModelRegistry,
    checkpoints: CheckpointStore,
    params: TrainModelParams,
    run_id: str,
    run_count: int,
    logger: Any = log,
) -> Start:
    """Resume (:func:`resume_point`), warm-start from the deployed model (incremental
    mode), or start from scratch.

    Returns:
        the :class:`Start`.

    Raises:
        InvalidInputError: incremental mode without a deployed model.
    """
    checkpoint, own = resume_point(checkpoints, params, run_id, run_count, logger)
    if checkpoint is not None:
        spec = FeatureSpec.from_dict(checkpoint.meta["feature_spec"])
        units = int(checkpoint.meta.get("config", {}).get("units", params.units))
        return Start(checkpoint, own, spec, None, units)
    if params.mode != "incremental":
        return Start(None, own, None, None, params.units)
    deployed = registry.deployed(params.symbol, params.timeframe, params.model_type)
    if deployed is None:
        raise InvalidInputError(
            f"mode=incremental needs a deployed {params.model_type} model for "
            f"{params.symbol} {params.timeframe}; train with mode=scratch first"
        )
    logger.info("incremental: warm start from model %s v%d", deployed.model_id, deployed.version)
    return Start(
        None,
        own,
        FeatureSpec.from_dict(deployed.feature_spec),
        registry.load(deployed).model.get_weights(),
        int(deployed.extra.get("units", params.units)),
    )


def split_data(
    candles: pd.DataFrame, params: TrainModelParams, start: Start
) -> tuple[Holdout, Any]:
    """Set the newest bars aside (held out), then window and scale the older ones.

    Returns:
        (the held-out slice, the training/validation ``ml.features.Dataset``).
    """
    horizon = start.spec.horizon_bars if start.spec else params.horizon_bars
    holdout = hold_out(candles, params.holdout_split, horizon)
    dataset = prepare_dataset(
        candles.iloc[: holdout.cut],
        lookback=params.lookback,
        horizon_bars=params.horizon_bars,
        validation_split=params.validation_split,
        spec=start.spec,
    )
    return holdout, dataset


def run_training(
    store: Store,
    job: dict[str, Any],
    params: TrainModelParams,
    dataset: Any,
    start: Start,
    run_id: str,
    checkpoints: CheckpointStore,
    checkpoint_every_s: float | None,
    hooks: Hooks,
) -> Any:
    """Train (:func:`ml.training.train`) with the job record following each epoch.

    Returns:
        the ``ml.training.TrainOutcome``.

    Raises:
        TrainingStopped: after the job record was marked failed with the reason.
    """
    from ml.training import TrainConfig, TrainingStopped, train

    config = TrainConfig(
        model_type=params.model_type,
        epochs=params.epochs,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        checkpoint_interval=params.checkpoint_interval,
        checkpoint_every_s=checkpoint_every_s,
        early_stopping_patience=params.early_stopping_patience,
        soft_time_limit_s=params.soft_time_limit_s,
        units=start.units,
        seed=params.seed,
    )
    try:
        return train(
            dataset,
            config,
            checkpoints=checkpoints,
            run_id=run_id,
            resume=start.checkpoint,
            initial_weights=start.initial_weights,
            on_epoch=EpochRecorder(store, job, hooks.progress or (lambda pct, stage: None)),
            fit=hooks.fit,
            extra_callbacks=hooks.extra_callbacks,
            check_interrupt=hooks.check_interrupt,
            finish_if_complete=start.own_checkpoint,
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
