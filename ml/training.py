"""The training loop: checkpoints, resume, OOM back-off, divergence, early stopping, metrics.

Pure layer (no Prefect). The caller passes hooks for progress and per-epoch records, and may
inject a ``fit`` callable or extra Keras callbacks at the fit boundary (fault injection in tests).

Checkpoints (:mod:`ml.checkpoints`) are written every ``checkpoint_interval`` epochs AND
whenever ``checkpoint_every_s`` seconds passed since the last (so a killed process loses at
most about that long, or one epoch when epochs are longer).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.exceptions import TrainingError
from ml.checkpoints import Checkpoint, CheckpointStore, restore_optimizer
from ml.epoch_loop import EpochHook, EpochLoop
from ml.features import Dataset, FeatureSpec
from ml.files import DiskFullError
from ml.metrics import baselines, classification_metrics
from ml.models import build_model, seed_this_thread

log = logging.getLogger(__name__)

FitFn = Callable[..., Any]


class TrainingStopped(TrainingError):
    """Training ended before its last epoch (diverged, time limit, out of memory).

    Attributes:
        epochs_completed: last epoch whose weights were kept.
        checkpoint_path: the checkpoint written for that epoch, if any.
        history: per-epoch metrics up to the stop.
    """

    def __init__(
        self,
        message: str,
        *,
        epochs_completed: int = 0,
        checkpoint_path: Path | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> None:
        super().__init__(message)
        self.epochs_completed = epochs_completed
        self.checkpoint_path = checkpoint_path
        self.history = history or []


@dataclass
class TrainConfig:
    """Hyper-parameters and guards of one training run."""

    model_type: str
    epochs: int
    batch_size: int
    learning_rate: float = 1e-3
    checkpoint_interval: int = 10
    checkpoint_every_s: float | None = 60.0
    early_stopping_patience: int | None = None
    divergence_factor: float = 10.0
    min_batch_size: int = 8
    soft_time_limit_s: float | None = None
    units: int = 32
    #: seeds Python's, NumPy's and Keras's generators in the thread that builds and fits the
    #: model (Keras keeps its seed per thread: a seed set by the caller's thread may not reach
    #: a training run elsewhere); None: whatever state they are in
    seed: int | None = None


@dataclass
class TrainOutcome:
    """What a finished training produced (the model holds the best epoch's weights)."""

    model: keras.Model
    spec: FeatureSpec
    history: list[dict[str, float]]
    epochs_completed: int
    best_epoch: int
    final_loss: float
    validation_loss: float
    batch_size: int
    resumed_from_epoch: int | None
    training_time_seconds: float
    val_metrics: dict[str, float]
    baselines: dict[str, Any]
    checkpoints: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- environment checks
def detect_device() -> str:
    """Return ``"gpu:<kind>"`` when JAX sees a GPU, else ``"cpu"`` (logging the fallback)."""
    import jax

    devices = jax.devices()
    gpus = [d for d in devices if d.platform in ("gpu", "cuda", "rocm")]
    if gpus:
        return f"gpu:{getattr(gpus[0], 'device_kind', gpus[0].platform)}"
    log.warning("GPU not available, using CPU")
    return "cpu"


def check_free_disk(path: Path, min_free_gb: float) -> float:
    """Ensure ``path``'s file system has ``min_free_gb`` free.

    Returns:
        free space in GB.

    Raises:
        TrainingError: less free space than required (names the setting to change).
    """
    path.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < min_free_gb:
        raise TrainingError(
            f"Insufficient disk space: {free_gb:.1f} GB free at {path}, training needs "
            f"{min_free_gb:g} GB (free space or lower BOTAI_MIN_FREE_DISK_GB)"
        )
    return free_gb


# ---------------------------------------------------------------- the loop
def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = f"{type(e).__name__}: {e}"
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _default_fit(model: keras.Model, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
    return model.fit(x, y, **kwargs)


def train(
    dataset: Dataset,
    config: TrainConfig,
    *,
    checkpoints: CheckpointStore,
    run_id: str,
    resume: Checkpoint | None = None,
    initial_weights: list[np.ndarray] | None = None,
    on_epoch: EpochHook | None = None,
    fit: FitFn | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    clock: Callable[[], float] = time.monotonic,
    check_interrupt: Callable[[], None] | None = None,
    finish_if_complete: bool = False,
) -> TrainOutcome:
    """Train a direction classifier on ``dataset``.

    Args:
        resume: continue from this checkpoint at its epoch + 1 (weights, optimiser, history).
        initial_weights: warm start (incremental mode) from a compatible model's weights.
        on_epoch: called after each kept epoch with (epoch, epochs, metrics).
        fit: ``fit(model, x, y, **kwargs)``; default ``model.fit`` (fault injection point).
        extra_callbacks: Keras callbacks run before the loop's own (fault injection point).
        check_interrupt: called after every training and validation batch; it raises to stop
            training (handled like any interruption: checkpoint of the last epoch, re-raise).
        finish_if_complete: a ``resume`` checkpoint that already holds every epoch is finished
            (best weights restored and measured) instead of refused; automatic resume of a
            run that was killed after its last epoch.

    Returns:
        the outcome; the model holds the weights of the best validation epoch.

    Raises:
        TrainingStopped: diverged ("Training diverged: loss increased 10x"), soft time
            limit, or out of memory at the minimum batch size; a checkpoint of the last good
            epoch is written first.
        BaseException: any interruption (cancellation, SIGTERM) propagates after a checkpoint
            of the last completed epoch was written.
    """
    fit = fit or _default_fit
    if config.seed is not None:
        seed_this_thread(config.seed)
    model, meta, resumed_from, best_from_ckpt = _start_model(
        dataset.spec, config, checkpoints, resume, initial_weights
    )
    started = clock()
    loop = EpochLoop(config, checkpoints, run_id, meta, on_epoch, started, clock, check_interrupt)
    loop.set_model(model)
    if best_from_ckpt:
        loop.best_weights = best_from_ckpt
    if resume is not None:
        loop.take_snapshot()
    done = loop.last_epoch >= config.epochs
    if done and not finish_if_complete:
        raise TrainingError(
            f"checkpoint {resume.path.name if resume else ''} already holds epoch "
            f"{loop.last_epoch} of {config.epochs}: raise epochs to continue training"
        )
    batch_size = config.batch_size
    if not done:
        batch_size = _fit_with_backoff(model, dataset, config, loop, fit, extra_callbacks)
    _raise_if_stopped(loop, config)
    if loop.best_weights is not None:
        model.set_weights(loop.best_weights)
    p_val = model.predict(dataset.x_val, batch_size=512, verbose=0).reshape(-1)
    last = loop.history[-1] if loop.history else {}
    return TrainOutcome(
        model=model,
        spec=dataset.spec,
        history=loop.history,
        epochs_completed=loop.last_epoch,
        best_epoch=loop.best_epoch,
        final_loss=float(last.get("loss", float("nan"))),
        validation_loss=float(last.get("val_loss", float("nan"))),
        batch_size=batch_size,
        resumed_from_epoch=resumed_from,
        training_time_seconds=round(clock() - started, 3),
        val_metrics=classification_metrics(dataset.y_val, p_val),
        baselines=baselines(dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val),
        checkpoints=loop.saved,
    )


def _start_model(
    spec: FeatureSpec,
    config: TrainConfig,
    checkpoints: CheckpointStore,
    resume: Checkpoint | None,
    initial_weights: list[np.ndarray] | None,
) -> tuple[keras.Model, dict[str, Any], int | None, list[np.ndarray]]:
    """Build the network and load the resumed checkpoint or the warm-start weights into it.

    Returns:
        (model, loop metadata, first epoch of a resumed run or None, the checkpoint's best
        weights or []).
    """
    model = build_model(
        config.model_type,
        spec.lookback,
        spec.n_features,
        learning_rate=config.learning_rate,
        units=config.units,
        seed=config.seed,
    )
    meta: dict[str, Any] = {"feature_spec": spec.to_dict(), "config": config.__dict__}
    if resume is None:
        if initial_weights is not None:
            model.set_weights(initial_weights)
        return model, meta, None, []
    weights, opt_vars, best_from_ckpt = checkpoints.load_arrays(resume.path)
    model.set_weights(weights)
    restore_optimizer(model, opt_vars)
    meta.update(
        {
            k: resume.meta[k]
            for k in ("history", "first_loss", "best_val_loss", "best_epoch", "epoch")
            if k in resume.meta
        }
    )
    log.info("resuming from %s at epoch %d", resume.path.name, resume.epoch + 1)
    return model, meta, resume.epoch + 1, best_from_ckpt


def _fit_with_backoff(
    model: keras.Model,
    dataset: Dataset,
    config: TrainConfig,
    loop: EpochLoop,
    fit: FitFn,
    extra_callbacks: Sequence[keras.callbacks.Callback],
) -> int:
    """Fit until the last epoch, halving the batch size on out-of-memory errors.

    Returns:
        the batch size the training finished with.

    Raises:
        TrainingStopped: out of memory at the minimum batch size (checkpoint written first).
        BaseException: any interruption, after a checkpoint of the last completed epoch.
    """
    batch_size = config.batch_size
    try:
        while True:
            try:
                fit(
                    model,
                    dataset.x_train,
                    dataset.y_train,
                    batch_size=batch_size,
                    epochs=config.epochs,
                    initial_epoch=loop.last_epoch,
                    validation_data=(dataset.x_val, dataset.y_val),
                    callbacks=[*extra_callbacks, loop],
                    shuffle=True,
                    verbose=0,
                )
                return batch_size
            except Exception as e:
                if not _is_oom(e):
                    raise
                loop.restore_snapshot()
                if batch_size // 2 < config.min_batch_size:
                    path = loop.save_checkpoint()
                    raise TrainingStopped(
                        f"Out of memory even at the minimum batch_size {batch_size} "
                        f"({type(e).__name__}: {e}); use a smaller model or fewer days_of_data",
                        epochs_completed=loop.last_epoch,
                        checkpoint_path=path,
                        history=loop.history,
                    ) from e
                log.warning(
                    "Out of memory (%s); reducing batch_size from %d to %d and retrying",
                    e,
                    batch_size,
                    batch_size // 2,
                )
                batch_size //= 2
    except BaseException as e:
        # cancellation, SIGTERM (Prefect's TerminationSignal), crashes: keep the last epoch
        if not isinstance(e, TrainingStopped | DiskFullError):
            try:
                loop.save_checkpoint()
            except DiskFullError as full:  # keep the interruption as the error raised
                log.error("no checkpoint of the interrupted run: %s", full)
        raise


def _raise_if_stopped(loop: EpochLoop, config: TrainConfig) -> None:
    """Raise :class:`TrainingStopped` (after a checkpoint of the last good epoch) when the
    loop diverged or ran past the soft time limit."""
    if loop.diverged is not None:
        path = loop.save_checkpoint()
        d = loop.diverged
        raise TrainingStopped(
            f"Training diverged: loss increased {config.divergence_factor:g}x "
            f"(epoch {int(d['epoch'])} loss {d['loss']:.4g} vs first epoch {d['first_loss']:.4g}); "
            f"last good checkpoint: {path.name if path else 'none'}; lower learning_rate",
            epochs_completed=loop.last_epoch,
            checkpoint_path=path,
            history=loop.history,
        )
    if loop.timed_out:
        path = loop.save_checkpoint()
        raise TrainingStopped(
            f"Training exceeded the soft time limit of {config.soft_time_limit_s:g} s at epoch "
            f"{loop.last_epoch}/{config.epochs}; checkpoint {path.name if path else 'none'} saved: "
            "rerun with resume=true to continue",
            epochs_completed=loop.last_epoch,
            checkpoint_path=path,
            history=loop.history,
        )
