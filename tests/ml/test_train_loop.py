"""The training loop without Prefect: accuracy on a known signal, OOM back-off, divergence,
checkpoint + resume. Faults are injected at the fit boundary (a fit callable, a callback)."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest

from core.exceptions import ConfigurationError, TrainingError
from ml.checkpoints import CheckpointStore
from ml.features import prepare_dataset
from ml.models import build_model
from ml.training import TrainConfig, TrainingStopped, check_free_disk, train


@pytest.fixture
def dataset(signal_candles):
    return prepare_dataset(signal_candles, lookback=12, horizon_bars=1, validation_split=0.2)


KEY = bytes(range(32))


def _ckpts(tmp_path: Path, model_type: str = "lstm", key: bytes = KEY) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", model_type, "BTCUSDT", "1h", key)


@pytest.mark.tc("TC-ASYNC-001")
def test_learnable_signal_reaches_spec_accuracy_beside_baselines(dataset, tmp_path):
    cfg = TrainConfig("lstm", epochs=12, batch_size=32, learning_rate=3e-3, units=16)
    out = train(dataset, cfg, checkpoints=_ckpts(tmp_path), run_id="acc")
    assert out.val_metrics["accuracy"] >= 0.60
    assert out.val_metrics["n_samples"] == len(dataset.y_val)
    assert set(out.baselines) == {"majority_class", "logistic_regression"}
    # the majority class cannot see the momentum signal; the model must beat it
    assert out.val_metrics["accuracy"] > out.baselines["majority_class"]["accuracy"] + 0.1
    assert 1 <= out.best_epoch <= out.epochs_completed == 12


@pytest.mark.tc("TC-ASYNC-003")
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


@pytest.mark.tc("TC-ASYNC-003")
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


@pytest.mark.tc("TC-ASYNC-009")
def test_divergence_stops_and_keeps_last_good_checkpoint(dataset, tmp_path):
    store = _ckpts(tmp_path, "gru")
    cfg = TrainConfig("gru", epochs=10, batch_size=64, checkpoint_interval=100, units=8)
    with pytest.raises(TrainingStopped, match="Training diverged: loss increased 10x") as info:
        train(dataset, cfg, checkpoints=store, run_id="div", extra_callbacks=[_Diverge()])
    assert info.value.epochs_completed == 3
    assert (
        info.value.checkpoint_path == store.path("div", 3) and info.value.checkpoint_path.exists()
    )


@pytest.mark.tc("TC-ASYNC-006")
def test_interrupted_training_checkpoints_last_epoch_and_resumes(dataset, tmp_path):
    store = _ckpts(tmp_path, "gru")

    class _Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:  # during epoch 4, like a SIGTERM from a cancel
                raise KeyboardInterrupt

    cfg = TrainConfig("gru", epochs=6, batch_size=64, checkpoint_interval=2, units=8)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, cfg, checkpoints=store, run_id="r1", extra_callbacks=[_Interrupt()])
    latest = store.latest()
    assert latest is not None and latest.epoch == 3 and latest.path == store.path("r1", 3)
    assert store.path("r1", 2).exists()
    out = train(dataset, cfg, checkpoints=store, run_id="r2", resume=latest)
    assert out.resumed_from_epoch == 4
    assert out.epochs_completed == 6
    assert [h["epoch"] for h in out.history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.tc("TC-ASYNC-005")
def test_cancel_intent_without_its_signal_stops_training_at_a_batch_with_a_checkpoint(
    dataset, tmp_path
):
    """The runner recorded "cancel" but no TerminationSignal came (seen with Prefect 3.9.1):
    after the grace the watch raises it itself, between two batches, and the loop keeps the
    last completed epoch."""
    from prefect.exceptions import TerminationSignal

    from tasks.training import CancelWatch

    store = _ckpts(tmp_path, "gru")
    intent: dict[str, str | None] = {"now": None}
    ticks = iter(range(10**6))  # every clock read is one second later

    class _CancelDuringEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                intent["now"] = "cancel"

    watch = CancelWatch(grace_s=3, intent=lambda: intent["now"], clock=lambda: next(ticks))
    cfg = TrainConfig("gru", epochs=6, batch_size=64, checkpoint_interval=100, units=8)
    with pytest.raises(TerminationSignal):
        train(
            dataset,
            cfg,
            checkpoints=store,
            run_id="lost",
            extra_callbacks=[_CancelDuringEpoch3()],
            check_interrupt=watch,
        )
    latest = store.latest()
    assert latest is not None and latest.epoch == 2  # epoch 3 was cut short, not saved


@pytest.mark.tc("TC-ASYNC-005")
def test_cancel_watch_waits_for_the_signal_before_raising():
    from prefect.exceptions import TerminationSignal

    from tasks.training import CancelWatch

    now = {"t": 0.0, "intent": None}
    watch = CancelWatch(grace_s=2, intent=lambda: now["intent"], clock=lambda: now["t"])
    watch()  # no intent: nothing
    now["intent"] = "cancel"
    watch()  # intent seen at t=0
    now["t"] = 1.9
    watch()  # still within the grace: the real SIGTERM may be on its way
    now["intent"], now["t"] = None, 5.0
    watch()  # intent cleared (the engine handled it): the clock restarts
    now["intent"] = "cancel"
    watch()
    now["t"] = 7.0
    with pytest.raises(TerminationSignal):
        watch()


@pytest.mark.tc("TC-ASYNC-030", "TC-ASYNC-006")
def test_checkpoints_are_sealed_and_only_their_key_reads_them(tmp_path, caplog):
    """A checkpoint holds the weights, so it is encrypted like a registered model."""
    store = _ckpts(tmp_path, "gru")
    weights = [np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25]
    path = store.save("s1", 1, weights, [np.ones(2)], {"feature_spec": {}})
    blob = path.read_bytes()
    assert blob.startswith(b"BOTAIGCM1")
    assert weights[0].tobytes() not in blob and b'"feature_spec"' not in blob
    with pytest.raises(ValueError):  # not a readable .npz on disk
        np.load(path)
    w, o, b = store.load_arrays(path)
    assert np.array_equal(w[0], weights[0]) and np.array_equal(o[0], np.ones(2)) and b == []
    assert store.latest().path == path

    other = _ckpts(tmp_path, "gru", key=bytes(32))
    with pytest.raises(ConfigurationError, match="wrong model-store key"):
        other.load_arrays(path)
    with caplog.at_level("WARNING", logger="ml.training"):
        assert other.latest() is None  # resume starts from scratch instead of crashing
    assert "unreadable checkpoint" in caplog.text

    renamed = store.path("s1", 7)  # the file name is bound in as associated data
    renamed.write_bytes(blob)
    with pytest.raises(ConfigurationError, match="modified"):
        store.read_meta(renamed)
    renamed.unlink()

    plain = store.path("old", 1)  # written before checkpoints were sealed
    np.savez(plain, w0=weights[0])
    assert store.latest().path == path
    assert "key=***" in repr(store) and "\\x01" not in repr(store)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        _ckpts(tmp_path, key=b"short")


@pytest.mark.tc("TC-ASYNC-023", "TC-ASYNC-080")
def test_soft_time_limit_checkpoints_then_fails(dataset, tmp_path):
    ticks = iter(range(0, 10_000, 100))  # every clock read is 100 s later
    store = _ckpts(tmp_path, "gru")
    cfg = TrainConfig("gru", epochs=50, batch_size=64, units=8, soft_time_limit_s=250)
    with pytest.raises(TrainingStopped, match="soft time limit of 250 s") as info:
        train(dataset, cfg, checkpoints=store, run_id="slow", clock=lambda: next(ticks))
    n = info.value.epochs_completed
    assert 1 <= n < 50 and info.value.checkpoint_path == store.path("slow", n)
    assert "resume=true" in str(info.value)


@pytest.mark.tc("TC-ASYNC-026")
def test_free_disk_check_names_the_setting(tmp_path):
    assert check_free_disk(tmp_path, 0.0) > 0
    with pytest.raises(TrainingError, match="Insufficient disk space.*BOTAI_MIN_FREE_DISK_GB"):
        check_free_disk(tmp_path, 1e12)


@pytest.mark.tc("TC-ASYNC-016", "TC-ASYNC-017")
def test_three_architectures_are_different_networks():
    layers = {
        t: {type(layer).__name__ for layer in build_model(t, 12, 10, units=8).layers}
        for t in ("lstm", "gru", "transformer")
    }
    assert "LSTM" in layers["lstm"] and "GRU" not in layers["lstm"]
    assert "GRU" in layers["gru"] and "LSTM" not in layers["gru"]
    assert {"MultiHeadAttention", "PositionEmbedding"} <= layers["transformer"]
    assert not {"LSTM", "GRU"} & layers["transformer"]


@pytest.mark.tc("TC-ASYNC-006", "TC-ASYNC-077")
def test_checkpoints_by_time_too_and_keeps_the_newest_three_of_a_run(dataset, tmp_path):
    """Epoch interval 100 never fires; every 60 s of (simulated) training does: a kill loses
    at most about a minute. Each epoch 'takes' 40 s here."""
    now = {"t": 0.0}

    class _FortySeconds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # runs before the loop's own callback
            now["t"] += 40.0

    store = _ckpts(tmp_path, "gru")
    cfg = TrainConfig(
        "gru", epochs=8, batch_size=128, units=4, checkpoint_interval=100, checkpoint_every_s=60
    )
    out = train(
        dataset,
        cfg,
        checkpoints=store,
        run_id="timed",
        clock=lambda: now["t"],
        extra_callbacks=[_FortySeconds()],
    )
    assert out.checkpoints == [str(store.path("timed", e)) for e in (2, 4, 6, 8)]
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert kept == sorted(store.path("timed", e).name for e in (4, 6, 8))  # epoch 2 pruned
    assert store.latest(run_id="timed").epoch == 8 and store.latest(run_id="other") is None
    # a run killed after its last epoch finishes from that checkpoint instead of failing
    done = train(
        dataset,
        cfg,
        checkpoints=store,
        run_id="timed",
        resume=store.latest(),
        finish_if_complete=True,
    )
    assert done.epochs_completed == 8 and done.resumed_from_epoch == 9


def _mount_tiny_fs(folder: Path) -> bool:
    """Mount a 64 KiB tmpfs on ``folder`` (needs root); False where that is not allowed."""
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.tc("TC-ASYNC-081")
def test_full_disk_gives_a_clear_error_and_leaves_no_partial_file(tmp_path, store):
    """A real 64 KiB file system: a checkpoint and a registered model that do not fit fail
    with DiskFullError naming the folder and the bytes needed; nothing partial is left, and no
    model record is written."""
    import subprocess

    from ml.files import DiskFullError
    from ml.registry import ModelRegistry

    tiny = tmp_path / "tiny"
    if not _mount_tiny_fs(tiny):
        pytest.skip("cannot mount a tmpfs here (not root); the RLIMIT_FSIZE test covers it")
    try:
        ckpts = CheckpointStore(tiny, "gru", "BTCUSDT", "1h", KEY)
        big = [np.random.default_rng(0).normal(size=(200, 100)).astype(np.float32)]  # 80 KB
        with pytest.raises(DiskFullError) as info:
            ckpts.save("full", 1, big, [], {"feature_spec": {}})
        msg = str(info.value)
        assert f"to {tiny}:" in msg and "Disk full" in msg and "needed" in msg
        assert "80," in msg  # the bytes needed (80,xxx)
        assert list(tiny.iterdir()) == []  # no partial checkpoint, no temp file

        model = build_model("gru", 12, 10, units=64)  # ~100 KB of weights
        reg = ModelRegistry(store, tiny, KEY)
        with pytest.raises(DiskFullError, match=f"to {tiny}:"):
            reg.register(
                model,
                model_type="gru",
                symbol="BTCUSDT",
                timeframe="1h",
                metrics={},
                feature_spec={},
                horizon_bars=1,
                created_by="test",
            )
        assert list(tiny.iterdir()) == []
        assert store.models_find({"symbol": "BTCUSDT"}) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


@pytest.mark.tc("TC-ASYNC-081")
def test_file_size_limit_is_reported_like_a_full_disk(tmp_path):
    """Without root: a subprocess with RLIMIT_FSIZE 16 KiB writes 64 KiB atomically."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))\n"
        "from pathlib import Path\n"
        "from ml.files import DiskFullError, atomic_write_bytes\n"
        "try:\n"
        f"    atomic_write_bytes(Path({str(tmp_path / 'm.keras')!r}), b'x' * 65536)\n"
        "except DiskFullError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 3, done.stderr
    assert f"to {tmp_path}:" in done.stdout and "65,536 needed" in done.stdout
    assert list(tmp_path.iterdir()) == []
