"""The training loop without Prefect: accuracy on a known signal, OOM back-off, divergence,
checkpoint + resume. Faults are injected at the fit boundary (a fit callable, a callback)."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from core.exceptions import TrainingError
from ml.features import prepare_dataset
from ml.training import CheckpointStore, TrainConfig, TrainingStopped, train


@pytest.fixture
def dataset(signal_candles):
    return prepare_dataset(signal_candles, lookback=12, horizon_bars=1, validation_split=0.2)


def _ckpts(tmp_path: Path, model_type: str = "lstm") -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", model_type, "BTCUSDT", "1h")


def test_learnable_signal_reaches_spec_accuracy_beside_baselines(dataset, tmp_path):
    cfg = TrainConfig("lstm", epochs=12, batch_size=32, learning_rate=3e-3, units=16)
    out = train(dataset, cfg, checkpoints=_ckpts(tmp_path), run_id="acc")
    assert out.val_metrics["accuracy"] >= 0.60
    assert out.val_metrics["n_samples"] == len(dataset.y_val)
    assert set(out.baselines) == {"majority_class", "logistic_regression"}
    # the majority class cannot see the momentum signal; the model must beat it
    assert out.val_metrics["accuracy"] > out.baselines["majority_class"]["accuracy"] + 0.1
    assert 1 <= out.best_epoch <= out.epochs_completed == 12


def test_out_of_memory_halves_batch_size_until_it_fits(dataset, tmp_path):
    sizes: list[int] = []

    def fit(model, x, y, **kw):
        sizes.append(kw["batch_size"])
        if kw["batch_size"] > 256:
            raise MemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return model.fit(x, y, **kw)

    cfg = TrainConfig("gru", epochs=2, batch_size=1024, units=8)
    out = train(dataset, cfg, checkpoints=_ckpts(tmp_path, "gru"), run_id="oom", fit=fit)
    assert sizes == [1024, 512, 256]
    assert out.batch_size == 256 and out.epochs_completed == 2


def test_out_of_memory_below_minimum_batch_fails_clearly(dataset, tmp_path):
    def fit(model, x, y, **kw):
        raise MemoryError("out of memory")

    cfg = TrainConfig("gru", epochs=2, batch_size=32, units=8)
    with pytest.raises(TrainingError, match="minimum batch_size 8"):
        train(dataset, cfg, checkpoints=_ckpts(tmp_path, "gru"), run_id="oom2", fit=fit)


class _Diverge(keras.callbacks.Callback):
    """Reports a loss 50x larger from epoch 4 on (logs are shared with later callbacks)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= 4:
            logs["loss"] = logs["loss"] * 50


def test_divergence_stops_and_keeps_last_good_checkpoint(dataset, tmp_path):
    store = _ckpts(tmp_path)
    cfg = TrainConfig("lstm", epochs=10, batch_size=64, checkpoint_interval=100, units=8)
    with pytest.raises(TrainingStopped, match="Training diverged: loss increased 10x") as info:
        train(dataset, cfg, checkpoints=store, run_id="div", extra_callbacks=[_Diverge()])
    assert info.value.epochs_completed == 3
    assert (
        info.value.checkpoint_path == store.path("div", 3) and info.value.checkpoint_path.exists()
    )


def test_interrupted_training_checkpoints_last_epoch_and_resumes(dataset, tmp_path):
    store = _ckpts(tmp_path)

    class _Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:  # during epoch 4, like a SIGTERM from a cancel
                raise KeyboardInterrupt

    cfg = TrainConfig("lstm", epochs=6, batch_size=64, checkpoint_interval=2, units=8)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, cfg, checkpoints=store, run_id="r1", extra_callbacks=[_Interrupt()])
    latest = store.latest()
    assert latest is not None and latest.epoch == 3 and latest.path == store.path("r1", 3)
    assert store.path("r1", 2).exists()
    out = train(dataset, cfg, checkpoints=store, run_id="r2", resume=latest)
    assert out.resumed_from_epoch == 4
    assert out.epochs_completed == 6
    assert [h["epoch"] for h in out.history] == [1, 2, 3, 4, 5, 6]
