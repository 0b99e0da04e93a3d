"""The life of one model, in one place: hold out, train, score, register, deploy only if better.

Pure layer (no Prefect). ``tasks.training.train_and_register`` wraps :func:`train_and_register`
with the run's progress, cancel watch and logger; ``train-model`` and ``adaptive-retrain`` (which
runs ``train-model`` as a subflow) both go through it, so there is ONE deploy rule (:func:`decide`).

1. :func:`hold_out` sets the newest ``holdout_split`` of the bars aside BEFORE anything is
   fitted: the scaler, the training, the validation split and the best-epoch selection see only
   the older bars.
2. :func:`ml.training.train` trains on the older bars (resuming from a checkpoint when asked,
   or automatically when this flow run is a re-run that left a checkpoint: :func:`resume_point`).
3. :func:`score_holdout`: the candidate, the model deployed now for the same type+symbol+timeframe
   (if any) and the two naive baselines (majority class and logistic regression, fitted on the
   training split) predict every held-out bar.
4. :func:`decide`: deploy only when the candidate beats EVERY comparator by more than the standard
   error of the paired difference (per-sample correctness differences, SE = std / sqrt(n)), and the
   deployed model also by ``min_improvement``; otherwise the model stays a candidate and the
   decision says why (slice dates, n, both accuracies, difference, SE).
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

import numpy as np
import pandas as pd

from core.exceptions import InsufficientDataError, InvalidInputError
from core.schemas.training import (
    DeployDecision,
    HeldOutComparison,
    TrainingResults,
    TrainModelParams,
    TrainModelResult,
)
from ml.features import FeatureSpec, inference_windows, make_labels, prepare_dataset
from ml.metrics import baseline_probabilities, correct, paired_difference
from ml.predictor import WARMUP_BARS

if TYPE_CHECKING:
    from integrations.store import Store
    from ml.registry import ModelRecord, ModelRegistry
    from ml.training import Checkpoint, CheckpointStore

log = logging.getLogger(__name__)

#: Fewer held-out samples than this cannot support a decision.
MIN_HOLDOUT_SAMPLES = 30
#: Per-epoch metrics reach ``training_jobs`` at most this often (and at the end).
JOB_WRITE_INTERVAL_S = 1.0
#: Names of the comparators in decisions and results.
DEPLOYED = "deployed_model"
BASELINES = ("majority_class", "logistic_regression")


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
        others = [r.name for r in failed[1:]]
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
            "run %s runs again (attempt %d): resuming from epoch %d", run_id, run_count, own.epoch
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
