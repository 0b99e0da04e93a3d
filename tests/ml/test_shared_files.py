"""Models and checkpoints shared through the store (GridFS): a second host, whose state folder
is empty, loads what the first registered and resumes the training the first host's process
was killed in; a file modified in the store is refused with a clear error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pymongo.errors import OperationFailure

from core.exceptions import ConfigurationError, NotFoundError
from integrations.store import Store
from integrations.store.blobs import BUCKET, _drop, _is_gone
from ml.checkpoints import CheckpointStore
from ml.features import prepare_dataset
from ml.models import build_model
from ml.registry import ModelRegistry
from ml.shared_files import SharedFiles
from ml.training import TrainConfig, train
from tests.ml.helpers import make_candles

KEY = bytes(range(32))
REPO = Path(__file__).resolve().parents[2]


def _tamper(store: Store, name: str) -> None:
    """Flip one byte of the stored file ``name`` in its first GridFS chunk."""
    files = store.db[f"{BUCKET}.files"]
    chunks = store.db[f"{BUCKET}.chunks"]
    file_id = files.find_one({"filename": name})["_id"]
    chunk = chunks.find_one({"files_id": file_id, "n": 0})
    data = bytearray(chunk["data"])
    data[40] ^= 0xFF
    # delete + insert: nx-27017 cannot replace a document holding binary data
    assert chunks.delete_one({"files_id": file_id, "n": 0}).deleted_count == 1
    chunks.insert_one({**chunk, "data": bytes(data)})
    assert bytes(chunks.find_one({"files_id": file_id, "n": 0})["data"]) == bytes(data)


@pytest.mark.tc("TC-ASYNC-030", "TC-ASYNC-077")
def test_a_model_registered_on_one_host_loads_on_another_with_an_empty_folder(
    store: Store, tmp_path: Path
):
    ds = prepare_dataset(make_candles(400), lookback=12, horizon_bars=1, validation_split=0.2)
    model = build_model("gru", 12, ds.spec.n_features, units=8)
    expected = model.predict(ds.x_val[:32], verbose=0)
    host_a, host_b = tmp_path / "host-a" / "models", tmp_path / "host-b" / "models"
    record = ModelRegistry(store, host_a, KEY).register(
        model,
        model_type="gru",
        symbol="BTCUSDT",
        timeframe="1h",
        metrics={},
        feature_spec=ds.spec.to_dict(),
        horizon_bars=1,
        created_by="test",
    )
    assert record.file_path == Path(record.file_path).name  # a name, no host's path
    shutil.rmtree(host_a)  # the first host is gone: only the store holds the file

    registry_b = ModelRegistry(store, host_b, KEY)
    loaded = registry_b.load(registry_b.get(record.model_id))
    np.testing.assert_allclose(loaded.model.predict(ds.x_val[:32], verbose=0), expected, rtol=1e-6)
    cached = host_b / record.file_path
    assert cached.exists() and cached.read_bytes().startswith(b"BOTAIGCM1")  # sealed cache

    # a modified cached copy is not used: the stored one is fetched again
    cached.write_bytes(b"BOTAIGCM1" + bytes(64))
    again = registry_b.load(record)
    np.testing.assert_allclose(again.model.predict(ds.x_val[:32], verbose=0), expected, rtol=1e-6)

    # a modified copy in the store is refused, naming the file, on a host with no cache
    _tamper(store, record.file_path)
    host_c = ModelRegistry(store, tmp_path / "host-c", KEY)
    with pytest.raises(ConfigurationError, match=f"{record.file_path}.*modified or damaged"):
        host_c.load(record)
    assert not (tmp_path / "host-c" / record.file_path).exists()

    store.blobs.delete(record.file_path)
    with pytest.raises(NotFoundError, match="not in the store"):
        host_c.load(record)


@pytest.mark.tc("TC-ASYNC-030")
def test_shared_files_refuse_paths_and_keep_one_version_per_name(store: Store, tmp_path: Path):
    files = SharedFiles(store.blobs, tmp_path / "cache")
    with pytest.raises(ConfigurationError, match="plain file names"):
        files.put("../escape.keras", b"x")
    files.put("m.keras", b"first", {"group": "g"})
    files.put("m.keras", b"second", {"group": "g"})
    assert len(list(store.db[f"{BUCKET}.files"].find({"filename": "m.keras"}))) == 1
    assert SharedFiles(store.blobs, tmp_path / "other").get("m.keras") == b"second"
    assert [f["name"] for f in files.listing("g")] == ["m.keras"]
    files.delete("m.keras")
    assert not files.exists("m.keras") and not (tmp_path / "cache" / "m.keras").exists()


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-077")
def test_removing_a_file_the_store_already_removed_is_not_an_error(store: Store):
    """A delete retried after the store did it but its answer was lost (a cut link) finds the
    file gone; that must not fail the training that was pruning its old checkpoints."""
    file_id = store.blobs._bucket().upload_from_stream("ckpt_epoch_10.npz", b"sealed")
    _drop(store.blobs, file_id)
    _drop(store.blobs, file_id)  # the retry: the store answers "not found"
    assert store.blobs.info("ckpt_epoch_10.npz") is None
    assert store.blobs.delete("ckpt_epoch_10.npz") == 0
    other = store.blobs._bucket().upload_from_stream("other.npz", b"x")
    with pytest.raises(OperationFailure, match="not found") as gone:  # what _drop judges
        store.blobs._bucket().delete(file_id)
    assert _is_gone(gone.value, file_id) and not _is_gone(gone.value, other)


_KILLED_TRAINING = textwrap.dedent(
    """
    import os, signal, sys
    import keras
    from integrations.store import Store, connect
    from ml.checkpoints import CheckpointStore
    from ml.features import prepare_dataset
    from ml.shared_files import SharedFiles
    from ml.training import TrainConfig, train
    from tests.ml.helpers import make_candles

    uri, db, cache, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = Store(connect(uri), db)
    ds = prepare_dataset(make_candles(600), lookback=12, horizon_bars=1, validation_split=0.2)
    ckpts = CheckpointStore(
        cache, "gru", "BTCUSDT", "1h", bytes(range(32)),
        files=SharedFiles(store.blobs, cache),
    )

    class KillAtEpochStart(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == kill_at:  # epoch kill_at is checkpointed: the process dies for real
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig("gru", epochs=6, batch_size=64, checkpoint_interval=1, units=8)
    train(ds, cfg, checkpoints=ckpts, run_id="run-1", extra_callbacks=[KillAtEpochStart()])
    """
)


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-006")
def test_a_training_killed_on_one_host_resumes_on_another_from_the_stored_checkpoint(
    store: Store, mongo_uri: str, tmp_path: Path
):
    """Host A's process is killed with SIGKILL after epoch 3; host B, whose state folder is
    empty, finds that checkpoint in the store and continues at epoch 4."""
    host_a, host_b = tmp_path / "host-a" / "checkpoints", tmp_path / "host-b" / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_TRAINING, mongo_uri, store.db.name, str(host_a), "3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    stored = sorted(f["name"] for f in store.blobs.listing("checkpoints:gru_BTCUSDT"))
    assert stored == [f"gru_BTCUSDT_run-1_epoch_{e}.npz" for e in (1, 2, 3)]
    shutil.rmtree(tmp_path / "host-a")  # nothing of host A's folder is read

    ckpts_b = CheckpointStore(
        host_b, "gru", "BTCUSDT", "1h", KEY, files=SharedFiles(store.blobs, host_b)
    )
    latest = ckpts_b.latest(run_id="run-1")
    assert latest is not None and latest.epoch == 3
    assert latest.path.parent == host_b and latest.path.exists()  # fetched from the store
    ds = prepare_dataset(make_candles(600), lookback=12, horizon_bars=1, validation_split=0.2)
    cfg = TrainConfig("gru", epochs=6, batch_size=64, checkpoint_interval=1, units=8)
    out = train(ds, cfg, checkpoints=ckpts_b, run_id="run-1", resume=latest)
    assert out.resumed_from_epoch == 4 and out.epochs_completed == 6
    assert [h["epoch"] for h in out.history] == [1, 2, 3, 4, 5, 6]
    # the newest three of the run are kept in the store, the older ones pruned there too
    kept = sorted(f["name"] for f in store.blobs.listing("checkpoints:gru_BTCUSDT"))
    assert kept == [f"gru_BTCUSDT_run-1_epoch_{e}.npz" for e in (4, 5, 6)]

    # a checkpoint modified in the store is skipped (never resumed from) with a warning
    _tamper(store, "gru_BTCUSDT_run-1_epoch_6.npz")
    host_c = tmp_path / "host-c"
    ckpts_c = CheckpointStore(
        host_c, "gru", "BTCUSDT", "1h", KEY, files=SharedFiles(store.blobs, host_c)
    )
    assert ckpts_c.latest(run_id="run-1").epoch == 5
    with pytest.raises(ConfigurationError, match="epoch_6.npz in the store does not match"):
        ckpts_c.load_arrays(host_c / "gru_BTCUSDT_run-1_epoch_6.npz")
