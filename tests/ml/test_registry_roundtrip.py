"""Registry: encrypted file round trip, versions, deploy/archive lifecycle."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.exceptions import ConfigurationError
from integrations.store import Store
from ml.features import prepare_dataset
from ml.models import build_model
from ml.registry import ModelRegistry

pytestmark = pytest.mark.tc("TC-ASYNC-030", "TC-ASYNC-020")


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def test_encrypted_round_trip_and_lifecycle(
    store: Store, tmp_path: Path, key: bytes, signal_candles
):
    ds = prepare_dataset(signal_candles, lookback=12, horizon_bars=1)
    model = build_model("transformer", 12, ds.spec.n_features, units=8)
    expected = model.predict(ds.x_val[:16], verbose=0)
    reg = ModelRegistry(store, tmp_path / "models", key)
    common = dict(
        model_type="transformer",
        symbol="BTCUSDT",
        timeframe="1h",
        metrics={"val_accuracy": 0.55},
        feature_spec=ds.spec.to_dict(),
        horizon_bars=1,
        created_by="test",
    )
    rec1 = reg.register(model, **common)
    # the record names the file in the store, not a path of this host; the folder is a cache
    assert "/" not in rec1.file_path and store.blobs.info(rec1.file_path) is not None
    path = tmp_path / "models" / rec1.file_path
    assert path.name.startswith("transformer_BTCUSDT_1h_") and path.suffix == ".keras"
    assert not zipfile.is_zipfile(path)  # encrypted: not a readable Keras zip
    assert b"config.json" not in path.read_bytes()

    loaded = reg.load(rec1)
    np.testing.assert_allclose(loaded.model.predict(ds.x_val[:16], verbose=0), expected, rtol=1e-5)
    p = loaded.predict_up_probabilities(signal_candles)
    assert p.shape == (len(signal_candles),)
    assert np.isnan(p[:20]).all() and np.isfinite(p[-100:]).all()
    assert 0.0 <= loaded.predict_up_probability(signal_candles) <= 1.0
    ev = loaded.evaluate(signal_candles.iloc[-300:])
    assert 0.0 <= ev["accuracy"] <= 1.0 and ev["n_samples"] > 200

    with pytest.raises(ConfigurationError, match="wrong model-store key"):
        ModelRegistry(store, tmp_path / "models", os.urandom(32)).load(rec1)

    rec2 = reg.register(model, **{**common, "metrics": {"val_accuracy": 0.6}})
    assert (rec1.version, rec2.version) == (1, 2)
    assert reg.deployed("BTCUSDT", "1h") is None
    reg.deploy(rec1.model_id, by="test")
    assert reg.deployed("BTCUSDT", "1h", "transformer").model_id == rec1.model_id
    reg.deploy(rec2.model_id, by="test")
    assert reg.get(rec1.model_id).status == "retired"
    dep = reg.deployed("BTCUSDT", "1h")
    assert dep.model_id == rec2.model_id and dep.deployed_at is not None
    assert [r.version for r in reg.history(symbol="BTCUSDT")] == [2, 1]


@pytest.mark.tc("TC-ASYNC-011")
def test_shared_forward_pass_matches_each_models_own_predict(
    store: Store, tmp_path: Path, key: bytes, signal_candles
):
    """bulk-analysis runs many models of one architecture through one compiled pass: each
    model's probabilities must be its own (weights passed per call), for every architecture."""
    from ml.predictor import SharedForward

    ds = prepare_dataset(signal_candles, lookback=12, horizon_bars=1)
    reg = ModelRegistry(store, tmp_path / "models", key)
    shared = SharedForward()
    records = []
    for i, model_type in enumerate(["gru", "gru", "gru", "lstm"]):
        model = build_model(model_type, 12, ds.spec.n_features, units=8 if i < 3 else 6)
        model.fit(ds.x_train[: 64 * (i + 1)], ds.y_train[: 64 * (i + 1)], epochs=1, verbose=0)
        records.append(
            reg.register(
                model,
                model_type=model_type,
                symbol=f"S{i}USDT",
                timeframe="1h",
                metrics={"val_accuracy": 0.5},
                feature_spec=ds.spec.to_dict(),
                horizon_bars=1,
                created_by="test",
            )
        )
    newest = []
    for rec in records:
        own = reg.load(rec)
        via_shared = reg.load(rec, shared)
        np.testing.assert_allclose(
            via_shared.predict_up_probabilities(signal_candles),
            own.predict_up_probabilities(signal_candles),
            rtol=1e-5,
            equal_nan=True,
        )
        p = via_shared.predict_up_probability(signal_candles)
        np.testing.assert_allclose(p, own.predict_up_probability(signal_candles), rtol=1e-5)
        newest.append(p)
        # predict-price's single pass: the same two answers from one batch
        start = len(signal_candles) // 2
        p_both, history = via_shared.predict_newest_and_history(signal_candles, start)
        np.testing.assert_allclose(p_both, p, rtol=1e-5)
        np.testing.assert_allclose(
            history,
            own.predict_up_probabilities(signal_candles.iloc[start:]),
            rtol=1e-5,
            equal_nan=True,
        )
    assert len(set(np.round(newest, 6))) == len(newest)  # four different models, four answers
    assert len(shared._passes) == 2  # one GRU architecture, one LSTM


@pytest.mark.parametrize("model_type", ["lstm", "gru", "transformer"])
def test_a_rebuilt_model_has_the_saved_weights_without_running_initializers(model_type: str):
    """model_from_bytes skips the layers' (compiled, on JAX) initializers: every variable
    still ends up with exactly the saved value, so predictions are the trained model's."""
    from ml.registry import LOADED_LATER, model_from_bytes, model_to_bytes

    model = build_model(model_type, 12, 5, units=8)
    rng = np.random.default_rng(3)
    model.set_weights(
        [w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    x = rng.normal(size=(7, 12, 5)).astype("float32")
    loaded = model_from_bytes(model_to_bytes(model))
    saved, rebuilt = model.get_weights(), loaded.get_weights()
    assert len(saved) == len(rebuilt)
    assert all(np.array_equal(a, b) for a, b in zip(saved, rebuilt, strict=True))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # the stand-in, not the original initializers, is what the rebuilt layers carry
    assert LOADED_LATER in str(loaded.get_config())
