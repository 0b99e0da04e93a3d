"""The Keras callback that keeps a training run's books, epoch by epoch: the snapshot of the
last completed epoch, checkpoints (every ``checkpoint_interval`` epochs and every
``checkpoint_every_s``), divergence, early-stopping patience and the soft time limit.
:func:`ml.training.train` drives it; it stops ``fit`` and leaves the verdict in its fields
(``diverged``, ``timed_out``) for the driver to raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from ml.checkpoints import CheckpointStore, restore_optimizer

if TYPE_CHECKING:
    from ml.training import TrainConfig

log = logging.getLogger(__name__)

#: ``on_epoch(epoch, epochs, metrics)``: called after each kept epoch.
EpochHook = Callable[[int, int, dict[str, float]], None]


class EpochLoop(keras.callbacks.Callback):
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

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Seed NumPy's global generator from (seed, epoch) before Keras shuffles the epoch.

        Keras draws each epoch's shuffle from NumPy's process-wide generator, which any other
        thread of the process may draw from meanwhile; a seeded training therefore depended
        on what else ran. Seeded per epoch, the order is a function of the seed and the epoch
        alone (a resumed training gets the same order as one that was never interrupted).
        """
        if self.config.seed is not None:
            np.random.seed((self.config.seed * 1_000_003 + epoch) % 2**32)

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
