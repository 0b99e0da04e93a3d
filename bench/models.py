"""A small model trained and deployed for a bench (one place for every bench that needs one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def deploy_small_gru(
    store: Any,
    model_dir: Path,
    key: bytes,
    symbol: str,
    candles: Any,
    *,
    lookback: int = 24,
    units: int = 16,
    epochs: int = 2,
    created_by: str = "bench",
) -> str:
    """Train a small GRU on ``candles`` (1h), register it and deploy it for ``symbol``.

    Its validation accuracy (on the dataset's own validation split) is recorded as measured.

    Returns:
        the deployed model's id.
    """
    from ml.features import prepare_dataset
    from ml.models import build_model
    from ml.registry import ModelRegistry

    ds = prepare_dataset(candles, lookback=lookback, horizon_bars=1)
    model = build_model("gru", lookback, ds.spec.n_features, units=units)
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=128, verbose=0)
    acc = float(((model.predict(ds.x_val, verbose=0).reshape(-1) > 0.5) == ds.y_val).mean())
    registry = ModelRegistry(store, model_dir, key)
    rec = registry.register(
        model,
        model_type="gru",
        symbol=symbol,
        timeframe="1h",
        metrics={"val_accuracy": acc},
        feature_spec=ds.spec.to_dict(),
        horizon_bars=1,
        created_by=created_by,
    )
    return registry.deploy(rec.model_id, by=created_by).model_id
