"""The training loop: checkpoints, resume, OOM back-off, divergence, early stopping, metrics.

Pure layer (no Prefect). The caller passes hooks for progress and per-epoch records, and may
inject a ``fit`` callable or extra Keras callbacks at the fit boundary (fault injection in tests).

Checkpoints are ``{model}_{symbol}_{run_id}_epoch_{n}.npz`` under the checkpoint folder, sealed
with AES-256-GCM under the model-store key like registered models. They hold the weights, the
optimiser state, the epoch, the history, the best weights so far and the feature spec (scaler),
so a resumed run continues exactly where the checkpoint left off. One is written every
``checkpoint_interval`` epochs AND whenever ``checkpoint_every_s`` seconds passed since the last
(so a killed process loses at most about that long, or one epoch when epochs are longer); the
newest :data:`KEEP_PER_RUN` of a run are kept. Writes are atomic (:mod:`ml.files`).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.exceptions import ConfigurationError, TrainingError
from ml.encryption import decrypt_bytes, encrypt_bytes
from ml.features import Dataset, FeatureSpec
from ml.files import DiskFullError, atomic_write_bytes
from ml.metrics import baselines, classification_metrics
from ml.models import build_model

log = logging.getLogger(__name__)

FitFn = Callable[..., Any]
EpochHook = Callable[[int, int, dict[str, float]], None]
#: Checkpoints kept per run (older ones of the same run are deleted after a save).
KEEP_PER_RUN = 3


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


@dataclass
class Checkpoint:
    """A checkpoint on disk: its path and the completed epoch it holds."""

    path: Path
    epoch: int
    meta: dict[str, Any]


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


# ---------------------------------------------------------------- checkpoints
class CheckpointStore:
    """Checkpoints of one model_type+symbol+timeframe under ``directory``, sealed with ``key``.

    A checkpoint holds the network's weights, so it is encrypted like a registered model
    (AES-256-GCM, the file name as associated data, :mod:`ml.encryption`); the ``.npz``
    archive exists only in memory.

    Raises:
        ConfigurationError: ``key`` is not 32 bytes.
    """

    def __init__(
        self, directory: Path, model_type: str, symbol: str, timeframe: str, key: bytes
    ) -> None:
        if len(key) != 32:
            raise ConfigurationError(
                f"checkpoint key must be 32 bytes (AES-256), got {len(key)}; "
                "use the model-store block's key"
            )
        self.directory = Path(directory)
        self.model_type, self.symbol, self.timeframe = model_type, symbol, timeframe
        self._key = key

    def __repr__(self) -> str:  # the key never appears in logs or tracebacks
        return (
            f"CheckpointStore({str(self.directory)!r}, {self.model_type!r}, "
            f"{self.symbol!r}, {self.timeframe!r}, key=***)"
        )

    def path(self, run_id: str, epoch: int) -> Path:
        """``{model}_{symbol}_{run_id}_epoch_{n}.npz``."""
        return self.directory / f"{self.model_type}_{self.symbol}_{run_id}_epoch_{epoch}.npz"

    def save(
        self,
        run_id: str,
        epoch: int,
        weights: list[np.ndarray],
        optimizer_vars: list[np.ndarray],
        meta: dict[str, Any],
        best_weights: list[np.ndarray] | None = None,
    ) -> Path:
        """Write a sealed checkpoint atomically and durably, then delete this run's older
        checkpoints beyond the newest :data:`KEEP_PER_RUN`.

        Returns:
            its path.

        Raises:
            ml.files.DiskFullError: no room in the checkpoint folder (nothing partial is left).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {f"w{i}": w for i, w in enumerate(weights)}
        arrays.update({f"o{i}": v for i, v in enumerate(optimizer_vars)})
        if best_weights is not None:
            arrays.update({f"b{i}": w for i, w in enumerate(best_weights)})
        full_meta = {
            **meta,
            "epoch": epoch,
            "run_id": run_id,
            "model_type": self.model_type,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "n_weights": len(weights),
            "n_optimizer_vars": len(optimizer_vars),
            "has_best": best_weights is not None,
            "saved_at": time.time(),
        }
        arrays["meta"] = np.frombuffer(json.dumps(full_meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = self.path(run_id, epoch)
        atomic_write_bytes(path, encrypt_bytes(buf.getvalue(), self._key, path.name.encode()))
        log.info("checkpoint saved: %s", path.name)
        self._prune(run_id, keep=KEEP_PER_RUN)
        return path

    def _run_files(self, run_id: str) -> list[tuple[int, Path]]:
        """(epoch, path) of this run's checkpoint files, oldest epoch first."""
        out = []
        prefix = f"{self.model_type}_{self.symbol}_{run_id}_epoch_"
        for path in self.directory.glob(f"{prefix}*.npz") if self.directory.exists() else []:
            tail = path.name[len(prefix) : -len(".npz")]
            if tail.isdigit():
                out.append((int(tail), path))
        return sorted(out)

    def _prune(self, run_id: str, keep: int) -> None:
        for _epoch, path in self._run_files(run_id)[:-keep]:
            try:
                path.unlink()
            except OSError as e:  # pragma: no cover - a vanished or read-only file
                log.warning("could not delete old checkpoint %s: %s", path.name, e)

    def _open(self, path: Path) -> Any:
        """The decrypted ``.npz`` archive of ``path`` (``np.load`` of an in-memory buffer).

        Raises:
            ConfigurationError: not sealed, sealed with another key, modified or renamed.
        """
        plain = decrypt_bytes(path.read_bytes(), self._key, path.name.encode())
        return np.load(io.BytesIO(plain))

    def read_meta(self, path: Path) -> dict[str, Any]:
        """The JSON metadata of a checkpoint (see :meth:`_open` for what it raises)."""
        with self._open(path) as z:
            return json.loads(bytes(z["meta"]).decode())

    def load_arrays(
        self, path: Path
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Return (weights, optimizer variables, best weights or []) of a checkpoint."""
        with self._open(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            w = [z[f"w{i}"] for i in range(meta["n_weights"])]
            o = [z[f"o{i}"] for i in range(meta["n_optimizer_vars"])]
            b = [z[f"b{i}"] for i in range(meta["n_weights"])] if meta["has_best"] else []
        return w, o, b

    def latest(self, run_id: str | None = None) -> Checkpoint | None:
        """The newest readable checkpoint (by save time) of this type+symbol+timeframe, or None.

        Args:
            run_id: only checkpoints written by this flow run (automatic resume of a re-run).
        """
        found: list[Checkpoint] = []
        pattern = f"{self.model_type}_{self.symbol}_{run_id or '*'}_epoch_*.npz"
        for path in self.directory.glob(pattern) if self.directory.exists() else []:
            try:
                meta = self.read_meta(path)
            except (OSError, ValueError, KeyError, ConfigurationError) as e:
                log.warning("unreadable checkpoint %s skipped: %s", path.name, e)
                continue
            if meta.get("timeframe") == self.timeframe and run_id in (None, meta.get("run_id")):
                found.append(Checkpoint(path=path, epoch=int(meta["epoch"]), meta=meta))
        if not found:
            return None
        return max(found, key=lambda c: (c.meta.get("saved_at", 0.0), c.epoch))


# ---------------------------------------------------------------- the loop
def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = f"{type(e).__name__}: {e}"
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _default_fit(model: keras.Model, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
    return model.fit(x, y, **kwargs)


class _Loop(keras.callbacks.Callback):
    """Per-epoch bookkeeping: snapshots, checkpoints, divergence, patience, time limit."""

    #: The batch hooks only call ``check_interrupt``, so Keras may keep dispatching them on its
    #: callback threads (without this, overriding them makes Keras wait for every batch's
    #: logs). An exception raised there reaches ``fit`` in the main thread at the next batch.
    async_safe = True

    def __init__(
        self,
        config: TrainConfig,
        checkpoints: CheckpointStore,
        run_id: str,
        meta: dict[str, Any],
        on_epoch: EpochHook | None,
        started: float,
        clock: Callable[[], float],
        check_interrupt: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.check_interrupt = check_interrupt
        self.config, self.checkpoints, self.run_id = config, checkpoints, run_id
        self.meta, self.on_epoch, self.started, self.clock = meta, on_epoch, started, clock
        self.history: list[dict[str, float]] = list(meta.get("history", []))
        self.first_loss: float | None = meta.get("first_loss")
        self.best_val_loss: float = meta.get("best_val_loss", float("inf"))
        self.best_epoch: int = int(meta.get("best_epoch", 0))
        self.best_weights: list[np.ndarray] | None = None
        self.last_epoch: int = int(meta.get("epoch", 0))
        self.snapshot: tuple[list[np.ndarray], list[np.ndarray]] | None = None
        self.diverged: dict[str, float] | None = None
        self.timed_out = False
        self.saved: list[str] = []
        self.last_save = started

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.check_interrupt is not None:
            self.check_interrupt()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.check_interrupt is not None:
            self.check_interrupt()

    def take_snapshot(self) -> None:
        opt = self.model.optimizer
        opt_vars = [np.array(v) for v in opt.variables] if opt.built else []
        self.snapshot = ([np.array(w) for w in self.model.get_weights()], opt_vars)

    def restore_snapshot(self) -> None:
        if self.snapshot is None:
            return
        weights, opt_vars = self.snapshot
        self.model.set_weights(weights)
        if opt_vars:
            restore_optimizer(self.model, opt_vars)

    def save_checkpoint(self) -> Path | None:
        """Checkpoint the last completed epoch (from the snapshot). Returns its path."""
        if self.snapshot is None or self.last_epoch <= 0:
            return None
        weights, opt_vars = self.snapshot
        meta = {
            **{k: v for k, v in self.meta.items() if k not in ("history",)},
            "history": self.history,
            "first_loss": self.first_loss,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
        }
        path = self.checkpoints.save(
            self.run_id, self.last_epoch, weights, opt_vars, meta, self.best_weights
        )
        self.saved.append(str(path))
        self.last_save = self.clock()
        return path

    def checkpoint_due(self, epoch: int) -> bool:
        """Every ``checkpoint_interval`` epochs, or ``checkpoint_every_s`` after the last save."""
        interval, every_s = self.config.checkpoint_interval, self.config.checkpoint_every_s
        if interval and epoch % interval == 0:
            return True
        return every_s is not None and self.clock() - self.last_save >= every_s

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        n = epoch + 1
        loss = logs.get("loss", float("nan"))
        if self.first_loss is None:
            self.first_loss = loss
        elif not np.isfinite(loss) or loss > self.config.divergence_factor * self.first_loss:
            self.diverged = {"epoch": n, "loss": loss, "first_loss": self.first_loss}
            self.model.stop_training = True
            return
        self.last_epoch = n
        record = {"epoch": n, **logs, "seconds": round(self.clock() - self.started, 3)}
        self.history.append(record)
        val_loss = logs.get("val_loss", loss)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, n
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
        self.take_snapshot()
        if self.checkpoint_due(n):
            self.save_checkpoint()
        if self.on_epoch is not None:
            self.on_epoch(n, self.config.epochs, record)
        patience = self.config.early_stopping_patience
        if patience and n - self.best_epoch >= patience:
            log.info("early stopping at epoch %d (best epoch %d)", n, self.best_epoch)
            self.model.stop_training = True
        limit = self.config.soft_time_limit_s
        if limit is not None and self.clock() - self.started > limit:
            self.timed_out = True
            self.model.stop_training = True


def restore_optimizer(model: keras.Model, opt_vars: list[np.ndarray]) -> None:
    """Load saved optimiser variables into ``model.optimizer`` (building it when needed).

    Raises:
        TrainingError: the saved state does not fit this optimiser.
    """
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    if len(opt.variables) != len(opt_vars):
        raise TrainingError(
            f"checkpoint optimiser state has {len(opt_vars)} variables, the model needs "
            f"{len(opt.variables)}: the checkpoint belongs to another architecture"
        )
    for var, value in zip(opt.variables, opt_vars, strict=True):
        var.assign(value)


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
    spec = dataset.spec
    model = build_model(
        config.model_type,
        spec.lookback,
        spec.n_features,
        learning_rate=config.learning_rate,
        units=config.units,
    )
    meta: dict[str, Any] = {"feature_spec": spec.to_dict(), "config": config.__dict__}
    resumed_from: int | None = None
    best_from_ckpt: list[np.ndarray] = []
    if resume is not None:
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
        resumed_from = resume.epoch + 1
        log.info("resuming from %s at epoch %d", resume.path.name, resumed_from)
    elif initial_weights is not None:
        model.set_weights(initial_weights)
    started = clock()
    loop = _Loop(config, checkpoints, run_id, meta, on_epoch, started, clock, check_interrupt)
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
    try:
        while not done:
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
                break
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
    if loop.best_weights is not None:
        model.set_weights(loop.best_weights)
    p_val = model.predict(dataset.x_val, batch_size=512, verbose=0).reshape(-1)
    last = loop.history[-1] if loop.history else {}
    return TrainOutcome(
        model=model,
        spec=spec,
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
