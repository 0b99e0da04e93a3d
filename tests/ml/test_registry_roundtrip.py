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
    path = Path(rec1.file_path)
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
    assert reg.get(rec1.model_id).status == "archived"
    dep = reg.deployed("BTCUSDT", "1h")
    assert dep.model_id == rec2.model_id and dep.deployed_at is not None
    assert [r.version for r in reg.history(symbol="BTCUSDT")] == [2, 1]
